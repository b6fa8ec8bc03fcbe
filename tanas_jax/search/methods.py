"""The registry of search methods: one name -> one function with one signature.

Public API::

    SearchSettings(fuse, darts, final)          # the sections a search reads; .from_config(cfg)
    SEARCH_METHODS = {'fuse', 'random', 'darts1', 'darts2', 'tetlo'}
        # each: run(data, space, settings, seed, *, checkpoint_dir=None, log=print, final_data=None) -> dict
    run_search(method, data, space, settings, seed, **kw) -> dict   # unknown names: UserError

``settings.final`` is the one final-training protocol
(:func:`tanas_jax.search.runtime.train_final`); None skips the final training.
``final_data`` is the data the winner is trained on (default: ``data``); the
differentiable searches pass their cropped supernet data as ``data`` and the
target at ``search.input_shape`` as ``final_data``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

from tanas_jax.config import DartsConfig, FinalConfig, FuseConfig, section
from tanas_jax.errors import UserError, did_you_mean
from tanas_jax.search.darts import differentiable_search
from tanas_jax.search.fuse import fuse_search
from tanas_jax.search.random_search import random_search
from tanas_jax.search.runtime import DEFAULT_FINAL
from tanas_jax.search.tetlo import tetlo_search


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The config sections a search method reads."""

    fuse: FuseConfig = dataclasses.field(default_factory=FuseConfig)
    darts: DartsConfig = dataclasses.field(default_factory=DartsConfig)
    final: FinalConfig | None = DEFAULT_FINAL

    @classmethod
    def from_config(cls, cfg, *, final: bool = True) -> SearchSettings:
        """Sections ``fuse``, ``search.darts`` and ``final`` of a loaded config (``final=False``: skip
        the final training)."""
        return cls(section(cfg, "fuse"), section(cfg, "search.darts"), section(cfg, "final") if final else None)


def _fuse(data, space, settings: SearchSettings, seed: int, **kw) -> dict:
    return fuse_search(data, space, settings.fuse, seed, final=settings.final, **kw)


def _random(data, space, settings: SearchSettings, seed: int, *, checkpoint_dir=None, **kw) -> dict:
    del checkpoint_dir  # a random search is cheap: it does not checkpoint
    return random_search(data, space, settings.fuse, seed, final=settings.final, **kw)


def _darts(method: str, data, space, settings: SearchSettings, seed: int, **kw) -> dict:
    return differentiable_search(method, data, space, settings.darts, seed, final=settings.final, **kw)


def _tetlo(data, space, settings: SearchSettings, seed: int, **kw) -> dict:
    return tetlo_search(data, space, settings.darts, seed, final=settings.final, **kw)


SearchMethod = Callable[..., dict]
SEARCH_METHODS: dict[str, SearchMethod] = {
    "fuse": _fuse,
    "random": _random,
    "darts1": partial(_darts, "darts1"),
    "darts2": partial(_darts, "darts2"),
    "tetlo": _tetlo,
}


def run_search(method: str, data, space, settings: SearchSettings, seed: int = 0, **kw) -> dict:
    """``SEARCH_METHODS[method](data, space, settings, seed, **kw)``; an unknown name is a UserError."""
    run = SEARCH_METHODS.get(method)
    if run is None:
        raise UserError(f"unknown search method {method!r}; {did_you_mean(method, SEARCH_METHODS)}")
    return run(data, space, settings, seed, **kw)
