"""Per-example gradient Gram matrices: exact full-matrix spectra at M x M cost.

With G the M x n matrix of per-example gradients and F = G^T G / M:

* the non-zero eigenvalues of F are those of the Gram ``G G^T / M``, so the
  full log-det is exact from an M x M eigenproblem (the non-zero spectra of
  ``G^T G`` and ``G G^T`` coincide);
* with A = G_b^T / sqrt(M_b), B = G_t^T / sqrt(M_t), ``||A^T B||_*`` (nuclear
  norm of the cross-Gram ``G_b G_t^T / sqrt(M_b M_t)``) is
  ``tr((F_b^{1/2} F_t F_b^{1/2})^{1/2})``: the exact full Fréchet distance.

Blocks of ``microbatch`` examples are computed with ``vmap(grad)``; at most
two blocks (2 x microbatch x n floats) live on the device.  When all M x n
gradients fit in half of ``memory_budget`` they are kept on the host and each
block is computed once; otherwise blocks are recomputed per block pair.  The
jitted block functions live in the caller's ``FisherEngine``.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tanas_jax.errors import UserError
from tanas_jax.fisher.core import (
    DEFAULT_MEMORY_BUDGET,
    FisherCaches,
    check_finite,
    check_labels,
    choose_microbatch,
    example_keys,
    leaf_names,
    output_width,
    per_example_grads,
    split_variables,
)


def _selection(params, head: str, common_shapes: dict | None = None):
    """(names, slices) of the leaves that enter the flattened gradient."""
    names = leaf_names(params)
    shapes = [a.shape for a in jax.tree_util.tree_leaves(params)]
    keep = []
    for i, (nm, sh) in enumerate(zip(names, shapes)):
        if head == "backbone" and (nm == "head" or nm.startswith("head/")):
            continue
        crop = common_shapes.get(nm, sh) if common_shapes else sh
        keep.append((i, nm, tuple(slice(0, c) for c in crop)))
    return keep


def _make_block_fn(caches: FisherCaches, apply, variables, estimator: str, selection, leaf_scale):
    params, rest = split_variables(variables)
    # one jitted block function per (apply, estimator, layout): a table visits many networks of the
    # same architecture, which must not recompile per network (the params are arguments)
    key = (apply, estimator, tuple((i, nm, tuple((sl.start, sl.stop) for sl in sls)) for i, nm, sls in selection),
           tuple(float(x) for x in leaf_scale), jax.tree_util.tree_structure(rest))
    fn = caches.block_fns.get_or_build(key, lambda: _block_fn(apply, estimator, selection, leaf_scale))
    return lambda x, y, idx, rng: fn(params, rest, x, y, idx, rng)


def _block_fn(apply, estimator: str, selection, leaf_scale):
    @jax.jit
    def block(params, rest, x, y, idx, rng):
        if estimator == "mc":
            logits = jax.lax.stop_gradient(apply({"params": params, **rest}, x))
            keys = example_keys(rng, idx)
            y = jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
        g = per_example_grads(apply, {"params": params, **rest}, x, y)
        leaves = jax.tree_util.tree_leaves(g)
        cols = []
        for (i, _nm, sl), sc in zip(selection, leaf_scale):
            a = leaves[i][(slice(None),) + sl]
            cols.append(a.reshape(a.shape[0], -1) * sc)
        return jnp.concatenate(cols, axis=1)

    return block


class _Blocks:
    """Per-example gradient blocks (B, n) of one network on one data set."""

    def __init__(self, caches: FisherCaches, apply, variables, x, y, estimator, rng, microbatch, selection,
                 leaf_scale, cache: bool):
        self.fn = _make_block_fn(caches, apply, variables, estimator, selection, leaf_scale)
        self.x, self.y, self.rng, self.mb = np.asarray(x, np.float32), np.asarray(y, np.int32), rng, microbatch
        self.m = self.x.shape[0]
        self.n_blocks = -(-self.m // microbatch)
        self.cache = {} if cache else None

    def get(self, k):
        if self.cache is not None and k in self.cache:
            return self.cache[k]
        lo, hi = k * self.mb, min(self.m, (k + 1) * self.mb)
        pad = self.mb - (hi - lo)
        xb, yb = self.x[lo:hi], self.y[lo:hi]
        idx = np.arange(lo, lo + self.mb, dtype=np.int32)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], np.float32)])
            yb = np.concatenate([yb, np.zeros((pad,), np.int32)])
        g = self.fn(xb, yb, idx, self.rng)[: hi - lo]
        if not bool(jnp.all(jnp.isfinite(g))):
            raise UserError("non-finite per-example gradients in the Gram matrix: the network or data "
                            "contain NaN/inf; retrain the network or check the data")
        if self.cache is not None:
            self.cache[k] = g
        return g


def _prep(x, y, estimator, apply=None, variables=None, name: str | None = None):
    """``(x, y int32)`` checked; given labels must lie in ``[0, C)`` for ``apply``'s C logits (the label rule)."""
    x = np.asarray(x)
    if x.shape[0] == 0:
        raise UserError("no examples for the Gram matrix: the data set is empty; check --examples")
    if estimator not in ("empirical", "mc"):
        raise UserError(f"full spectra support estimators empirical|mc, not '{estimator}'")
    if y is None:
        if estimator == "empirical":
            raise UserError("the empirical Fisher needs labels y")
        return x, np.zeros((x.shape[0],), np.int32)
    if apply is not None:  # nothing clamped: log_softmax(logits)[y] would clamp y to C - 1
        check_labels(y, output_width(apply, variables, x), name)
    return x, np.asarray(y, np.int32)


def _scales(selection, leaf_scale):
    if leaf_scale is None:
        return [1.0] * len(selection)
    return [float(leaf_scale[nm]) for _, nm, _ in selection]


def gram_matrix(apply: Callable, variables, x, y=None, *, estimator: str = "empirical", rng=None,
                microbatch: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                head: str = "all", leaf_scale: dict | None = None, progress: bool = False,
                engine: FisherCaches | None = None, name: str | None = None) -> tuple[np.ndarray, int]:
    """``(G G^T / M, n)``: the M x M Gram of per-example gradients (accumulated in float64) and n.

    ``head='backbone'`` leaves the head out; ``leaf_scale`` ({leaf name:
    factor}) multiplies each layer's gradients (``layer`` normalisation).
    ``engine``: a ``FisherEngine`` whose compiled block functions are reused
    (default a short-lived one).  Labels must lie in ``[0, C)`` for the C logits of ``apply``
    (:func:`~tanas_jax.fisher.core.pad_logits` for data with more classes); ``name`` is used in errors.
    """
    x, y = _prep(x, y, estimator, apply, variables, name)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    params, _ = split_variables(variables)
    sel = _selection(params, head)
    shapes = [a.shape for a in jax.tree_util.tree_leaves(params)]
    n = int(sum(int(np.prod(shapes[i])) for i, _, _ in sel))
    m = x.shape[0]
    mb = microbatch or choose_microbatch(4 * 4 * n, memory_budget // 2, 1)
    blocks = _Blocks(FisherCaches() if engine is None else engine, apply, variables, x, y, estimator, rng, mb,
                     sel, _scales(sel, leaf_scale), cache=(m * n * 4 <= memory_budget // 2))
    K = np.zeros((m, m), np.float64)
    pairs = [(i, j) for i in range(blocks.n_blocks) for j in range(i, blocks.n_blocks)]
    bar = _bar(progress, len(pairs), "gram")
    for i, j in pairs:
        gi, gj = blocks.get(i), blocks.get(j)
        kij = _dot64(gi, gj)
        K[i * mb: i * mb + kij.shape[0], j * mb: j * mb + kij.shape[1]] = kij
        K[j * mb: j * mb + kij.shape[1], i * mb: i * mb + kij.shape[0]] = kij.T
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return K / m, n


def _head_crop(names_b, shapes_b, names_t, shapes_t) -> dict:
    """``{leaf: common shape}`` where two networks' leaf shapes differ; only head leaves may differ."""
    if names_b != names_t:
        only = sorted(set(names_b) ^ set(names_t))
        raise UserError(f"Fishers of incompatible networks: layer {only[0] if only else '?'} differs; "
                        "use networks of the same architecture")
    crop = {}
    for nm, a, b in zip(names_b, shapes_b, shapes_t):
        a, b = tuple(a), tuple(b)
        if a != b:
            if not nm.startswith("head") or len(a) != len(b):
                raise UserError(f"Fishers of incompatible networks: layer {nm} has shape {a} vs {b}; "
                                "only the head may differ")
            crop[nm] = tuple(min(p, q) for p, q in zip(a, b))
    return crop


def cross_gram(apply_b: Callable, variables_b, apply_t: Callable, variables_t, x, y=None, *,
               x_t=None, y_t=None, estimator: str = "empirical", rng=None, microbatch: int | None = None,
               memory_budget: int = DEFAULT_MEMORY_BUDGET, head: str = "pad",
               progress: bool = False, engine: FisherCaches | None = None,
               name: str | None = None) -> np.ndarray:
    """``A^T B = G_b G_t^T / sqrt(M_b M_t)`` (float64), M_b x M_t.

    Network b's per-example gradients on (x, y) against network t's on
    (x_t, y_t) (default the same data).  Gradients are aligned leaf by leaf;
    with ``head='pad'`` heads of different class counts are compared on their
    common part (zero padding adds nothing to inner products); ``'backbone'``
    drops the heads.  ``engine``, ``name`` and the label rule as in :func:`gram_matrix` (each
    network's labels must fit its own logits).
    """
    given_t = y if x_t is None else y_t
    x, y = _prep(x, y, estimator, apply_b, variables_b, name)
    x_t, y_t = _prep(x if x_t is None else x_t, given_t, estimator, apply_t, variables_t, name)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    pb, _ = split_variables(variables_b)
    pt, _ = split_variables(variables_t)
    common = _head_crop(leaf_names(pb), [a.shape for a in jax.tree_util.tree_leaves(pb)],
                        leaf_names(pt), [a.shape for a in jax.tree_util.tree_leaves(pt)])
    sel_b = _selection(pb, "backbone" if head == "backbone" else "all", common)
    sel_t = _selection(pt, "backbone" if head == "backbone" else "all", common)
    n = int(sum(int(np.prod([s.stop for s in sl])) for _, _, sl in sel_b))
    mb = microbatch or choose_microbatch(4 * 4 * n, memory_budget // 2, 1)
    cache = (x.shape[0] + x_t.shape[0]) * n * 4 <= memory_budget // 2
    caches = FisherCaches() if engine is None else engine
    bb = _Blocks(caches, apply_b, variables_b, x, y, estimator, rng, mb, sel_b, [1.0] * len(sel_b), cache)
    bt = _Blocks(caches, apply_t, variables_t, x_t, y_t, estimator, rng, mb, sel_t, [1.0] * len(sel_t), cache)
    C = np.zeros((bb.m, bt.m), np.float64)
    bar = _bar(progress, bb.n_blocks * bt.n_blocks, "cross-gram")
    for i in range(bb.n_blocks):
        gi = bb.get(i)
        for j in range(bt.n_blocks):
            c = _dot64(gi, bt.get(j))
            C[i * mb: i * mb + c.shape[0], j * mb: j * mb + c.shape[1]] = c
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    return C / np.sqrt(bb.m * bt.m)


def per_example_gradients(apply: Callable, variables, x, y=None, *, estimator: str = "empirical", rng=None,
                          microbatch: int | None = None,
                          memory_budget: int = DEFAULT_MEMORY_BUDGET,
                          engine: FisherCaches | None = None,
                          name: str | None = None) -> tuple[np.ndarray, list[str], list[tuple]]:
    """``(G, names, shapes)``: all M x n per-example gradients (float32, host) and the leaf layout.

    For reusing one network's gradients across several Grams / cross-Grams
    (the distance tables): ``gram_from_gradients`` and ``cross_from_gradients``
    give the same matrices as ``gram_matrix`` / ``cross_gram``.  ``engine``, ``name`` and the label
    rule as in :func:`gram_matrix`.
    """
    x, y = _prep(x, y, estimator, apply, variables, name)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    params, _ = split_variables(variables)
    sel = _selection(params, "all")
    shapes = [tuple(a.shape) for a in jax.tree_util.tree_leaves(params)]
    n = int(sum(int(np.prod(sh)) for sh in shapes))
    mb = microbatch or choose_microbatch(4 * 4 * n, memory_budget // 2, 1)
    blocks = _Blocks(FisherCaches() if engine is None else engine, apply, variables, x, y, estimator, rng, mb,
                     sel, [1.0] * len(sel), cache=False)
    G = np.concatenate([np.asarray(blocks.get(k)) for k in range(blocks.n_blocks)], axis=0)
    return G, [nm for _, nm, _ in sel], shapes


def _columns(G, names, shapes, head: str, crop: dict | None = None) -> np.ndarray:
    """The columns of G for ``head`` ('all' | 'backbone'), each leaf cropped to ``crop[name]``."""
    out, off = [], 0
    for nm, sh in zip(names, shapes):
        size = int(np.prod(sh))
        block = G[:, off: off + size]
        off += size
        if head == "backbone" and (nm == "head" or nm.startswith("head/")):
            continue
        if crop and nm in crop and tuple(crop[nm]) != tuple(sh):
            block = block.reshape((G.shape[0],) + tuple(sh))[(slice(None),) + tuple(slice(0, c) for c in crop[nm])]
            block = block.reshape(G.shape[0], -1)
        out.append(block)
    return np.concatenate(out, axis=1)


def gram_from_gradients(grads, head: str = "all") -> tuple[np.ndarray, int]:
    """``gram_matrix`` from ``per_example_gradients``' output."""
    G, names, shapes = grads
    Gs = _columns(G, names, shapes, "backbone" if head == "backbone" else "all")
    return _dot64(Gs, Gs) / G.shape[0], int(Gs.shape[1])


def cross_from_gradients(grads_b, grads_t, head: str = "pad") -> np.ndarray:
    """``cross_gram`` from two ``per_example_gradients`` outputs (same architecture, heads may differ)."""
    (Gb, nb, sb), (Gt, nt, st) = grads_b, grads_t
    crop = _head_crop(nb, sb, nt, st)
    h = "backbone" if head == "backbone" else "all"
    return _dot64(_columns(Gb, nb, sb, h, crop), _columns(Gt, nt, st, h, crop)) / np.sqrt(Gb.shape[0] * Gt.shape[0])


def _dot64(a, b) -> np.ndarray:
    """``a @ b.T`` of two float32 gradient blocks, accumulated in float64 on the host.

    A float32 product has absolute errors ~1e-7 x max|K|: after unit-trace
    normalisation the small Gram eigenvalues are then noise far above the
    authors' sigma^2 = 1e-10, and the full log-det depends on the noise (the
    float32 path needed sigma^2 >= 1e-4 to match ``slogdet``).  In float64 the
    Gram is, to ~1e-16 x max|K|, exactly the PSD Gram of the float32
    gradients, so sigma^2 = 1e-10 is meaningful; the cost (M^2 n flops) is
    small next to computing the gradients.
    """
    return np.asarray(a, np.float64) @ np.asarray(b, np.float64).T


def gram_eigenvalues(K: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending, clipped at 0) of a symmetric PSD Gram."""
    e = np.linalg.eigvalsh(np.asarray(K, np.float64))
    return np.clip(e[::-1], 0.0, None)


def _bar(progress, total, desc):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


__all__ = ["gram_matrix", "cross_gram", "gram_eigenvalues", "check_finite", "per_example_gradients",
           "gram_from_gradients", "cross_from_gradients"]
