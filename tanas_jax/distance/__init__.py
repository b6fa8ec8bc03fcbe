"""Task distances between trained networks: how far a target task is from each base task.

This package takes Fishers and Gram spectra from :mod:`tanas_jax.fisher` and trained networks from
the bank; it never imports ``search``, ``pipeline`` or ``cli``.  The maths is in docs/background.md.

* :mod:`tanas_jax.distance.logdet` — LD-NAS eq. (1)/(2), diagonal and full spectra.
* :mod:`tanas_jax.distance.frechet` — slides eq. (8) (diagonal) and (7) (full).
* :mod:`tanas_jax.distance.table` — K x K tables over seeds, CSV, heatmap, ranking,
  :func:`closest_bases` (bases ordered by distance to a target).
* :mod:`tanas_jax.distance.transform` — transform-network distance (TA-NAS),
  imported lazily (it pulls optax training code).
* :mod:`tanas_jax.distance.stats` — mean and sample std over network seeds.

The settings (metric, spectrum, σ², normalisation, head, transform schedule) and their valid
values live in :mod:`tanas_jax.config`; the names below are re-exported from there.
"""
from tanas_jax.config import HEAD_MODES, METRICS, NORMALIZATIONS, REDUCTIONS, SPECTRA  # noqa: F401
from tanas_jax.distance.frechet import frechet_distance_diag, frechet_distance_full, nuclear_norm  # noqa: F401
from tanas_jax.distance.logdet import logdet_distance_diag, logdet_distance_eq1_diag, logdet_distance_full, logdet_full  # noqa: F401
from tanas_jax.distance.prepare import align  # noqa: F401
from tanas_jax.distance.stats import seed_mean_std  # noqa: F401
from tanas_jax.distance.table import closest_bases, rank_target  # noqa: F401
