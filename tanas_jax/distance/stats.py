"""Summary statistics over network seeds: the one convention every table uses.

Distance tables (Fisher and transform) and the experiment reports give ``mean ± std`` over the
networks trained with different seeds.  The spread is the *sample* standard deviation
(``ddof=1``, the unbiased variance's square root), because the seeds are a small sample of
possible trainings, not the whole population.  With a single seed no spread is measured, and
the std is reported as ``0.0`` (never NaN), so tables and CSVs stay numeric.
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
