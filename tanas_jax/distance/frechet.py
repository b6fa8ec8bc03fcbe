"""Fréchet distance between Fisher matrices (TA-NAS slides eq. (7), (8)).

    d_f[b, t] = (1/sqrt2) tr(F_b + F_t - 2 (F_b^{1/2} F_t F_b^{1/2})^{1/2})^{1/2}     (7)
    diagonal, unit trace:  d_f = (1/sqrt2) || sqrt(F_b) - sqrt(F_t) ||_F  in [0, 1]  (8)

Eq. (8) is the Hellinger distance between the two normalised diagonals.  Eq.
(7) is exact without n x n matrices: with F_b = A A^T, F_t = B B^T,
``tr((F_b^{1/2} F_t F_b^{1/2})^{1/2}) = ||A^T B||_*`` (nuclear norm of the
M_b x M_t cross-Gram) and ``tr F = ||A||_F^2``.

Authors' code: ``0.5 * sum (sqrt F_b - sqrt F_t)^2`` = d_f**2 (same ranking).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tanas_jax.config import REDUCTIONS
from tanas_jax.distance.prepare import align, normalize_leaves
from tanas_jax.errors import UserError

INV_SQRT2 = 1.0 / np.sqrt(2.0)


@jax.jit
def _hellinger(b_leaves, t_leaves):
    sq = sum(jnp.sum((jnp.sqrt(b) - jnp.sqrt(t)) ** 2) for b, t in zip(b_leaves, t_leaves))
    return INV_SQRT2 * jnp.sqrt(sq)


def frechet_distance_diag(fb, ft, *, normalization: str = "network", reduction: str = "global",
                          head: str = "pad", names: tuple[str, str] = ("base", "target")) -> float:
    """Slides eq. (8) on diagonal Fishers (pytrees).

    ``reduction='global'``: unit-trace normalisation (``network``, or every
    layer an equal share with ``layer``) then eq. (8) over all parameters.
    ``'per_layer'``: mean over layers of eq. (8) with each layer at unit trace.
    Always in [0, 1].
    """
    if reduction not in REDUCTIONS:
        raise UserError(f"unknown reduction '{reduction}': valid: {', '.join(REDUCTIONS)}")
    b, t, _ = align(fb, ft, head, names)
    if reduction == "global":
        b = normalize_leaves(b, normalization, f"Fisher of {names[0]}")
        t = normalize_leaves(t, normalization, f"Fisher of {names[1]}")
        return float(_hellinger(b, t))
    ds = []
    for lb, lt in zip(b, t):
        nb, nt = normalize_leaves([lb], "network", f"Fisher of {names[0]}"), normalize_leaves([lt], "network", f"Fisher of {names[1]}")
        ds.append(float(_hellinger(nb, nt)))
    return float(np.mean(ds))


def nuclear_norm(m) -> float:
    """Sum of singular values (float64)."""
    return float(np.sum(np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)))


def frechet_distance_full(tr_b: float, tr_t: float, cross_nuclear: float, *, normalization: str = "network") -> float:
    """Slides eq. (7), exact: (1/sqrt2) sqrt(tr F_b + tr F_t - 2 ||A^T B||_*).

    ``cross_nuclear = ||A^T B||_*`` with A = G_b^T / sqrt(M_b), B = G_t^T / sqrt(M_t)
    (``fisher.gram.cross_gram``); ``normalization='network'`` rescales both
    Fishers to unit trace, so the distance is in [0, 1].
    """
    tr_b, tr_t, nuc = float(tr_b), float(tr_t), float(cross_nuclear)
    if normalization == "network":
        if not (tr_b > 0 and tr_t > 0):
            raise UserError("a Fisher is zero everywhere, so it cannot be normalised; retrain the network")
        nuc = nuc / np.sqrt(tr_b * tr_t)
        tr_b = tr_t = 1.0
    return float(INV_SQRT2 * np.sqrt(max(tr_b + tr_t - 2.0 * nuc, 0.0)))
