"""Fisher engine: per-example gradients, diagonal Fisher, Gram spectra, sharding.

Knows no concrete model: everything takes ``apply(variables, x) -> logits``
and pytrees.  See :mod:`tanas_jax.fisher.engine` and :mod:`tanas_jax.fisher.gram`.
"""
from tanas_jax.fisher.engine import (  # noqa: F401
    DEFAULT_MEMORY_BUDGET, ESTIMATORS, METHODS, Plan, authors_postprocess, check_finite,
    choose_microbatch, fisher_diag, leaf_names, make_mesh, make_plan, per_example_grads,
    split_variables,
)
from tanas_jax.fisher.gram import (  # noqa: F401,E402
    cross_from_gradients, cross_gram, gram_eigenvalues, gram_from_gradients, gram_matrix, per_example_gradients,
)
