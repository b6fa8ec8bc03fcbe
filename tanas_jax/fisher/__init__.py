"""Fisher information of a trained network: per-example gradients, the diagonal Fisher and the
per-example Gram matrices that give exact full spectra.

This package owns the estimators (empirical, Monte-Carlo, exact over labels), the fast per-layer
path (a zero perturbation on every recognised layer's output gives each example's output gradient in
one backward pass; dense layers by Goodfellow's identity, convolutions by patches times output
gradient) with the ``vmap(grad)`` reference path, microbatching under a memory budget, sharding of
the example axis over devices, and the compiled steps it caches for its caller.  It knows no concrete
model: every function takes ``apply(variables, x) -> logits`` and pytrees, and the layer types it
recognises come from the shared layer module (``tanas_jax.layers``).  One label rule holds on every
path: labels must lie in ``[0, C)`` for the network's C logits (a UserError otherwise, never a clamp or
a dropped example); a network evaluated on data with K > C classes is wrapped in
:func:`~tanas_jax.fisher.core.pad_logits` (K - C zero logits, see ``docs/labels.md``).  It imports only the foundation
modules -- never ``models``, ``data``, ``tasks``, ``train``, ``bank``, ``distance``, ``search`` or
``cli``.

Modules, bottom-up: :mod:`~tanas_jax.fisher.core` (pytree helpers, per-example gradients, the
bounded caches), :mod:`~tanas_jax.fisher.fast` (the per-layer fast path),
:mod:`~tanas_jax.fisher.diag` (the diagonal Fisher driver), :mod:`~tanas_jax.fisher.gram` (Gram /
cross-Gram spectra) and :mod:`~tanas_jax.fisher.engine` (:class:`FisherEngine`, which owns the
compiled functions: hold one to reuse them across calls; the module-level functions take
``engine=`` and otherwise use a short-lived one).
"""
from tanas_jax.fisher.core import (  # noqa: F401
    DEFAULT_CACHE_SIZE,
    DEFAULT_MEMORY_BUDGET,
    ESTIMATORS,
    METHODS,
    FisherCaches,
    LRUCache,
    check_finite,
    check_labels,
    choose_microbatch,
    leaf_names,
    make_mesh,
    output_width,
    pad_logits,
    per_example_grads,
    split_variables,
)
from tanas_jax.fisher.diag import authors_postprocess, fisher_diag  # noqa: F401
from tanas_jax.fisher.engine import FisherEngine  # noqa: F401
from tanas_jax.fisher.fast import Plan, make_plan  # noqa: F401
from tanas_jax.fisher.gram import (  # noqa: F401
    cross_from_gradients,
    cross_gram,
    gram_eigenvalues,
    gram_from_gradients,
    gram_matrix,
    per_example_gradients,
)
