"""Aligning and normalising diagonal Fishers before a distance.

Fishers are pytrees like the network params (``{'backbone': ..., 'head':
...}``).  Two networks for tasks with different class counts differ only in
the head; ``head='pad'`` zero-pads the smaller head to the larger shape (the
authors' choice), ``head='backbone'`` drops the head (shared part only).

``spectrum='diag_sorted'`` (:func:`sort_diag`) replaces each aligned layer by its entries sorted in
decreasing order: a diagonal Fisher lives in parameter coordinates, so two networks whose hidden
units are permuted have permuted diagonals; per layer, the sorted diagonal does not depend on that
order (nor on any other permutation within a layer), so nets from different initialisations can be
compared.  Normalisation (unit total, or per-layer shares) commutes with the sort.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tanas_jax.config import HEAD_MODES, NORMALIZATIONS
from tanas_jax.errors import UserError
from tanas_jax.fisher.engine import leaf_names


def check_sigma2(sigma2: float) -> float:
    s = float(sigma2)
    if not np.isfinite(s) or s <= 0:
        raise UserError(f"sigma2 must be a positive number, got {sigma2}; e.g. --sigma2 1e-10 (the authors' value)")
    return s


def _leaves(tree) -> dict[str, np.ndarray]:
    return dict(zip(leaf_names(tree), jax.tree_util.tree_leaves(tree)))


def align(fb, ft, head: str = "pad", names: tuple[str, str] = ("base", "target")) -> tuple[list, list, list[str]]:
    """Matching lists of leaves (same names, same shapes) and their names.

    Raises ``UserError`` for Fishers of incompatible networks (different
    layers, or different shapes outside the head).
    """
    if head not in HEAD_MODES:
        raise UserError(f"unknown head mode '{head}': valid: {', '.join(HEAD_MODES)}")
    lb, lt = _leaves(fb), _leaves(ft)
    if head == "backbone":
        lb = {k: v for k, v in lb.items() if not k.startswith("head/") and k != "head"}
        lt = {k: v for k, v in lt.items() if not k.startswith("head/") and k != "head"}
        if not lb:
            raise UserError("head='backbone' needs params under a 'backbone' key; "
                            "these networks have only a head — use --head pad")
    if set(lb) != set(lt):
        only = sorted(set(lb) ^ set(lt))[0]
        raise UserError(f"Fishers of incompatible networks ({names[0]} vs {names[1]}): layer {only} exists in only "
                        "one; compare networks of the same architecture (same --net)")
    out_b, out_t, keys = [], [], []
    for k in leaf_names(fb):
        if k not in lb:
            continue
        a, b = jnp.asarray(lb[k]), jnp.asarray(lt[k])
        if a.shape != b.shape:
            if not k.startswith("head") or a.ndim != b.ndim:
                raise UserError(f"Fishers of incompatible networks ({names[0]} vs {names[1]}): layer {k} has shape "
                                f"{a.shape} vs {b.shape}; only the head may differ — use the same --net")
            shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape))
            a = jnp.pad(a, [(0, s - d) for s, d in zip(shape, a.shape)])
            b = jnp.pad(b, [(0, s - d) for s, d in zip(shape, b.shape)])
        out_b.append(a)
        out_t.append(b)
        keys.append(k)
    return out_b, out_t, keys


def sort_diag(fb, ft, head: str = "pad", names: tuple[str, str] = ("base", "target")) -> tuple[dict, dict]:
    """``(sorted_b, sorted_t)``: flat ``{layer name: 1-D entries sorted in decreasing order}`` of the
    two aligned Fishers (:func:`align`: padded or dropped head), ready for any diagonal distance."""
    b, t, keys = align(fb, ft, head, names)
    return ({k: -jnp.sort(-jnp.ravel(a)) for k, a in zip(keys, b)},
            {k: -jnp.sort(-jnp.ravel(a)) for k, a in zip(keys, t)})


def normalize_leaves(leaves: list, mode: str = "network", what: str = "Fisher") -> list:
    """Unit total (``network``) or every layer an equal share ``1/L`` (``layer``)."""
    if mode not in NORMALIZATIONS:
        raise UserError(f"unknown normalisation '{mode}': valid: {', '.join(NORMALIZATIONS)}")
    sums = [jnp.sum(a) for a in leaves]
    if mode == "network":
        total = float(sum(float(s) for s in sums))
        if not total > 0:
            raise UserError(f"the {what} is zero everywhere, so it cannot be normalised: "
                            "the network's gradients vanish on this data (dead network?); retrain it")
        return [a / total for a in leaves]
    L = len(leaves)
    out = []
    for a, s in zip(leaves, sums):
        s = float(s)
        out.append(a / (s * L) if s > 0 else a)
    return out
