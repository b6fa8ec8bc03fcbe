"""Architecture search: cell genotypes and spaces, FUSE, random search, DARTS and TETLO.

Layers (each imports only those above it): ``genotype`` -> ``ops`` -> ``network`` -> ``runtime``
(seeding, compiled-step cache, padded evaluation, the one final training) and ``checkpoint`` ->
``fuse``, ``random_search``, ``darts`` -> ``tetlo`` -> ``methods`` (the registry
``SEARCH_METHODS``); ``spaces`` and ``plots`` serve the entry points.

Exported here (imported on first use, so ``import tanas_jax.search.genotype`` stays light)::

    fuse_candidates(candidates, data, cfg, seed=0, *, round_index=0) -> record   # FUSE on a fixed list
    fuse_search(data, space, cfg, seed=0, *, final=..., final_data=None, checkpoint_dir=None, log=print)
    run_search(method, data, space, settings, seed=0, **kw); SEARCH_METHODS; SearchSettings
"""
from __future__ import annotations

import importlib

_EXPORTS = {"fuse_candidates": "fuse", "fuse_search": "fuse", "run_search": "methods",
            "SEARCH_METHODS": "methods", "SearchSettings": "methods"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The exported names, each from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tanas_jax.search' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tanas_jax.search.{_EXPORTS[name]}"), name)
