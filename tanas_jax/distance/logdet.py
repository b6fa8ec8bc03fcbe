"""Log-determinant task distance (LD-NAS eq. (1), (2)).

    d[b, t] = | log det(F_bt + s I_n) / n  -  log det(F_tt + s I_m) / m |      (1)
    d[b, t] = (1/n) | sum_i log((lam_bt^i + s) / (lam_tt^i + s)) |           (2)

``F_bt`` is the Fisher of base network b on target data t.  On diagonal
spectra the eigenvalues are the diagonal entries; on full spectra they are
the Gram eigenvalues plus ``n - M`` zeros (``tanas_jax.fisher.gram``).

Authors' code (``docs/authors_code.md``): s = 1e-10 after unit-total normalisation and
the absolute value taken PER LAYER, ``reduction='per_layer'``:
``sum_l |sum_{i in l} log((F_b+s)/(F_t+s))| / n``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from tanas_jax.config import REDUCTIONS
from tanas_jax.distance.prepare import align, check_sigma2, normalize_leaves
from tanas_jax.errors import UserError


@partial(jax.jit, static_argnames=("per_layer",))
def _logratio_reduce(fb_leaves, ft_leaves, sigma2, per_layer: bool):
    parts = [jnp.sum(jnp.log(b + sigma2) - jnp.log(t + sigma2)) for b, t in zip(fb_leaves, ft_leaves)]
    n = sum(b.size for b in fb_leaves)
    parts = jnp.stack(parts)
    if per_layer:
        return jnp.sum(jnp.abs(parts)) / n
    return jnp.abs(jnp.sum(parts)) / n


def logdet_distance_diag(fb, ft, *, sigma2: float = 1e-10, normalization: str = "network",
                         reduction: str = "global", head: str = "pad",
                         names: tuple[str, str] = ("base", "target")) -> float:
    """LD-NAS eq. (2) on diagonal Fishers (pytrees), after ``align``/normalise.

    ``reduction='global'`` is the paper; ``'per_layer'`` the authors' code.
    """
    s = check_sigma2(sigma2)
    if reduction not in REDUCTIONS:
        raise UserError(f"unknown reduction '{reduction}': valid: {', '.join(REDUCTIONS)}")
    b, t, _ = align(fb, ft, head, names)
    b = normalize_leaves(b, normalization, f"Fisher of {names[0]}")
    t = normalize_leaves(t, normalization, f"Fisher of {names[1]}")
    return float(_logratio_reduce(b, t, s, reduction == "per_layer"))


def logdet_diag(f_leaves, sigma2: float) -> float:
    """``log det(diag(f) + s I)`` = sum log(f_i + s)."""
    return float(sum(float(jnp.sum(jnp.log(jnp.asarray(a) + sigma2))) for a in f_leaves))


def logdet_distance_eq1_diag(fb, ft, *, sigma2: float = 1e-10, normalization: str = "network") -> float:
    """LD-NAS eq. (1) on diagonal Fishers of networks of any sizes n, m."""
    from tanas_jax.fisher.engine import leaf_names  # noqa: F401

    s = check_sigma2(sigma2)
    lb = normalize_leaves(jax.tree_util.tree_leaves(fb), normalization, "base Fisher")
    lt = normalize_leaves(jax.tree_util.tree_leaves(ft), normalization, "target Fisher")
    n = sum(int(np.prod(a.shape)) for a in lb)
    m = sum(int(np.prod(a.shape)) for a in lt)
    return abs(logdet_diag(lb, s) / n - logdet_diag(lt, s) / m)


def logdet_full(gram_eigs, n: int, sigma2: float) -> float:
    """Exact ``log det(F + s I_n)`` from the eigenvalues of ``G G^T / M``.

    F = G^T G / M (n x n) has the Gram's M eigenvalues plus n - M zeros.
    """
    mu = np.clip(np.asarray(gram_eigs, np.float64), 0.0, None)
    if mu.size > n:  # more examples than params: the extra eigenvalues are zeros
        mu = np.sort(mu)[::-1][:n]
    return float(np.sum(np.log(mu + sigma2)) + (n - mu.size) * np.log(sigma2))


def normalize_eigs(eigs, normalization: str = "network", what: str = "Fisher"):
    """Unit trace: eigenvalues divided by their sum (= tr F)."""
    e = np.clip(np.asarray(eigs, np.float64), 0.0, None)
    if normalization in ("none", None):
        return e
    tot = e.sum()
    if not tot > 0:
        raise UserError(f"the {what} is zero everywhere, so it cannot be normalised; retrain the network")
    return e / tot


def logdet_distance_full(eigs_b, n: int, eigs_t, m: int, *, sigma2: float = 1e-10,
                         normalization: str = "network") -> float:
    """LD-NAS eq. (1) on full spectra (eq. (2) when n == m), exact via Gram eigenvalues.

    ``eigs_*`` are eigenvalues of ``G G^T / M``; ``normalization='network'``
    rescales each Fisher to unit trace (``'layer'`` must be applied to the
    gradients before the Gram, see ``fisher.gram``; then pass ``'none'``).
    """
    s = check_sigma2(sigma2)
    eb = normalize_eigs(eigs_b, normalization, "base Fisher")
    et = normalize_eigs(eigs_t, normalization, "target Fisher")
    return abs(logdet_full(eb, n, s) / n - logdet_full(et, m, s) / m)
