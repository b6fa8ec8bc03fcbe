"""Summary statistics over network seeds and bootstrap resamples: the one convention every table uses.

Distance tables (Fisher and transform) and the experiment reports give ``mean ± std`` over the
networks trained with different seeds.  The spread is the *sample* standard deviation
(``ddof=1``, the unbiased variance's square root), because the seeds are a small sample of
possible trainings, not the whole population.  With a single seed no spread is measured, and
the std is reported as ``0.0`` (never NaN), so tables and CSVs stay numeric.

P(closest) (:func:`p_closest`) is the uncertainty of a *choice*: over every replicate (an ε-net
seed, or a seed and a bootstrap resample of the Fisher examples) the fraction in which each base
is the closest.  The bootstrap resamples whole blocks of examples (:func:`block_slices`,
:func:`bootstrap_indices`, :func:`resample_mean`), so no Fisher is recomputed per resample.
"""
from __future__ import annotations

import numpy as np


def seed_mean_std(values, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of ``values`` over the seed axis ``axis``.

    ``std`` is the sample std (``ddof=1``); with one seed it is ``0.0`` everywhere (same shape
    as ``mean``).  NaN entries (pairs that were not computed) stay NaN in both, except that the
    one-seed std is 0.0 there too.
    """
    v = np.asarray(values, dtype=float)
    mean = v.mean(axis)
    if v.shape[axis] < 2:
        return mean, np.zeros_like(mean)
    return mean, v.std(axis, ddof=1)


def finite_lists(m) -> list:
    """A matrix as nested lists of floats, None where it is not finite (a pair not computed)."""
    return [[(None if not np.isfinite(v) else float(v)) for v in row] for row in np.asarray(m)]


# --- P(closest): how often each base is the closest ------------------------------------------
def p_closest(replicates) -> np.ndarray:
    """P(closest) of each base from an ``(R, B)`` array of distances (R replicates, B bases).

    Entry ``b`` is the fraction of the R replicates (ε-net seed x bootstrap resample) in which base
    ``b`` has the smallest distance.  A tie between ``n`` bases gives each ``1/n`` of that
    replicate, so the result sums to 1 whenever a replicate has a finite distance.  A replicate
    whose distances are all NaN (nothing computed) counts for none; NaN bases are never closest.
    """
    d = np.asarray(replicates, dtype=float)
    if d.ndim != 2:
        raise ValueError(f"replicates must be (R, B), got shape {d.shape}")
    d = np.where(np.isfinite(d), d, np.inf)
    best = d.min(axis=1, keepdims=True)
    won = (d == best) & np.isfinite(best)
    share = won / np.maximum(won.sum(axis=1, keepdims=True), 1)
    counted = int(np.isfinite(best).sum())
    return share.sum(axis=0) / max(counted, 1)


def bootstrap_indices(seed: int, stream: int, resamples: int, blocks: int) -> np.ndarray:
    """``(resamples, blocks)`` block indices drawn with replacement (numpy ``SeedSequence([seed, stream])``).

    ``seed`` is the run's ``--seed``; ``stream`` tells the ε-net seeds apart, so each network seed
    gets its own resamples and a table is reproducible from ``(seed, seeds)`` alone.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))
    return rng.integers(0, blocks, size=(int(resamples), int(blocks)))


def block_slices(n: int, blocks: int) -> list[slice]:
    """``blocks`` contiguous slices of ``range(n)`` whose sizes differ by at most one (``np.array_split``)."""
    if not 1 <= blocks <= n:
        raise ValueError(f"need 1 <= blocks <= n, got blocks={blocks}, n={n}")
    edges = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(n), blocks)])
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def resample_mean(blocks, sizes, idx) -> np.ndarray:
    """The example-weighted mean of the blocks ``idx`` (with repeats): ``sum_j n_j F_j / sum_j n_j``.

    ``blocks`` is ``(J, ...)`` (block means), ``sizes`` the J block sizes.  With ``idx = range(J)``
    it is the mean over all the examples, i.e. the full Fisher.
    """
    blocks, sizes, idx = np.asarray(blocks), np.asarray(sizes, dtype=np.float64), np.asarray(idx)
    w = sizes[idx]
    return np.tensordot(w / w.sum(), blocks[idx].astype(np.float64), axes=1)


def replicate_label(seeds: int, resamples: int) -> str:
    """How a P(closest) was measured, e.g. ``'5 seeds x 20 resamples'`` or ``'5 seeds'``."""
    s = f"{seeds} seed{'s' if seeds != 1 else ''}"
    return f"{s} x {resamples} resamples" if resamples else s
