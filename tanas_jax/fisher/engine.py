"""The Fisher engine: one object that owns the compiled functions of the Fisher computations.

:class:`FisherEngine` holds the jitted microbatch steps of the diagonal Fisher
(:mod:`tanas_jax.fisher.diag`), the jitted gradient-block functions of the
Gram spectra (:mod:`tanas_jax.fisher.gram`) and the device meshes, each in an
LRU of ``cache_size`` entries.  Keep one engine for as long as the same
networks are visited (a distance table holds one per store): calls with the
same ``apply`` and options then reuse the compiled code instead of tracing
and compiling again, and a long process holds at most ``cache_size`` entries
per cache.

The module-level functions (:func:`fisher_diag`, :func:`gram_matrix`,
:func:`cross_gram`, :func:`per_example_gradients`) take ``engine=None`` and
then use a short-lived engine of their own; nothing here keeps module-level
state.
"""
from __future__ import annotations

from collections.abc import Callable

from tanas_jax.fisher.core import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MEMORY_BUDGET,
    ESTIMATORS,
    METHODS,
    FisherCaches,
    check_finite,
    choose_microbatch,
    leaf_names,
    make_mesh,
    per_example_grads,
    split_variables,
)
from tanas_jax.fisher.diag import authors_postprocess, bytes_per_example, fisher_diag
from tanas_jax.fisher.fast import LayerPlan, Plan, make_plan
from tanas_jax.fisher.gram import cross_gram, gram_matrix, per_example_gradients


class FisherEngine(FisherCaches):
    """Fisher computations with compiled functions cached in this object (``cache_size`` per cache).

    Methods take the arguments of the module-level functions of the same
    name, without ``engine``::

        engine = FisherEngine(cache_size=16)   # at most 16 entries per cache
        F = engine.fisher_diag(apply, variables, x, y, method="fast")
        K, n = engine.gram_matrix(apply, variables, x, y)
    """

    def fisher_diag(self, apply: Callable, variables, x, y=None, **kwargs):
        """:func:`tanas_jax.fisher.diag.fisher_diag` with this engine's compiled steps."""
        return fisher_diag(apply, variables, x, y, engine=self, **kwargs)

    def per_example_gradients(self, apply: Callable, variables, x, y=None, **kwargs):
        """:func:`tanas_jax.fisher.gram.per_example_gradients` with this engine's block functions."""
        return per_example_gradients(apply, variables, x, y, engine=self, **kwargs)

    def gram_matrix(self, apply: Callable, variables, x, y=None, **kwargs):
        """:func:`tanas_jax.fisher.gram.gram_matrix` with this engine's block functions."""
        return gram_matrix(apply, variables, x, y, engine=self, **kwargs)

    def cross_gram(self, apply_b: Callable, variables_b, apply_t: Callable, variables_t, x, y=None, **kwargs):
        """:func:`tanas_jax.fisher.gram.cross_gram` with this engine's block functions."""
        return cross_gram(apply_b, variables_b, apply_t, variables_t, x, y, engine=self, **kwargs)


__all__ = [
    "DEFAULT_CACHE_SIZE", "DEFAULT_MEMORY_BUDGET", "ESTIMATORS", "METHODS", "FisherCaches", "FisherEngine",
    "LayerPlan", "Plan", "authors_postprocess", "bytes_per_example", "check_finite", "choose_microbatch",
    "cross_gram", "fisher_diag", "gram_matrix", "leaf_names", "make_mesh", "make_plan", "per_example_gradients",
    "per_example_grads", "split_variables",
]
