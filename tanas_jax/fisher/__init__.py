"""Fisher engine: per-example gradients, diagonal Fisher, Gram spectra, sharding.

Knows no concrete model: everything takes ``apply(variables, x) -> logits``
and pytrees; the layer types its fast path recognises come from
:mod:`tanas_jax.layers`, never from the model zoo.  Modules, bottom-up:
:mod:`~tanas_jax.fisher.core` (pytree helpers, per-example gradients, bounded
caches), :mod:`~tanas_jax.fisher.fast` (the per-layer fast path),
:mod:`~tanas_jax.fisher.diag` (the diagonal Fisher driver),
:mod:`~tanas_jax.fisher.gram` (Gram / cross-Gram spectra) and
:mod:`~tanas_jax.fisher.engine` (:class:`FisherEngine`, which owns the
compiled functions; hold one to reuse them across calls).
"""
from tanas_jax.fisher.core import (  # noqa: F401
    DEFAULT_CACHE_SIZE, DEFAULT_MEMORY_BUDGET, ESTIMATORS, METHODS, FisherCaches, LRUCache, check_finite,
    choose_microbatch, leaf_names, make_mesh, per_example_grads, split_variables,
)
from tanas_jax.fisher.diag import authors_postprocess, fisher_diag  # noqa: F401
from tanas_jax.fisher.engine import FisherEngine  # noqa: F401
from tanas_jax.fisher.fast import Plan, make_plan  # noqa: F401
from tanas_jax.fisher.gram import (  # noqa: F401
    cross_from_gradients, cross_gram, gram_eigenvalues, gram_from_gradients, gram_matrix, per_example_gradients,
)
