"""The diagonal Fisher information, computed in microbatches.

Empirical Fisher (LD-NAS appendix eq. (6)):

    F = (1/M) sum_i  grad log p(y_i | x_i)  grad log p(y_i | x_i)^T

with ``y_i`` the data label (``estimator='empirical'``), a label sampled from
the model's own predictive distribution (``'mc'``, the Monte-Carlo estimate of
the true Fisher), or the exact expectation over all labels weighted by
``p(y | x_i)`` (``'exact'``, C times the cost).  Its diagonal is
``(1/M) sum_i w_i g_i**2`` with per-example weights ``w_i``.

Two exact paths compute the same numbers:

* ``method='vmap'`` (general, obviously correct): ``jax.vmap(jax.grad(log p of
  one example))`` inside ``jax.jit``; at most ``microbatch x n_params``
  gradient floats are alive.
* ``method='fast'``: the perturbation trick of :mod:`tanas_jax.fisher.fast`
  (one batched backward pass, per-layer formulas).
* ``method='auto'`` uses ``fast`` when every parameter belongs to a layer it
  understands, each called once, and ``vmap`` otherwise.

On accelerators, microbatches are processed inside one jitted ``fori_loop``
with a donated accumulator: one call for all microbatches, or calls of
``PROGRESS_CHUNK`` microbatches while a progress bar is shown (the trip count
is an argument, so a ragged last chunk needs no new compile).  On CPU, where
XLA runs loop bodies about 2x slower, each call takes one microbatch
(``CPU_HOST_LOOP``); the example axis of each microbatch is sharded
over ``devices`` with a 1-D ``jax.sharding.Mesh`` (results are identical up to
float summation order).  The jitted steps live in the caller's
:class:`~tanas_jax.fisher.core.FisherCaches` (a ``FisherEngine``).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tanas_jax.errors import UserError
from tanas_jax.fisher.core import (
    DEFAULT_MEMORY_BUDGET,
    ESTIMATORS,
    METHODS,
    FisherCaches,
    check_finite,
    check_labels,
    choose_microbatch,
    finite_flags,
    join_variables,
    labels_and_weights,
    shape_signature,
    split_variables,
)
from tanas_jax.fisher.fast import Plan, fast_step, layer_sizes, make_plan

# ----------------------------------------------------------------------------
# steps: acc + (weighted squared per-example gradients of one microbatch)

def vmap_step(acc, params, rest, x, y, w, idx, rng, *, apply, estimator, mc_samples):
    """The general path: ``vmap(grad)`` over examples (and over their S labels)."""
    variables = join_variables(params, rest)
    logits = apply(variables, x) if estimator != "empirical" else None
    if logits is None:
        labels, lw = y[:, None].astype(jnp.int32), w[:, None]
    else:
        labels, lw = labels_and_weights(logits, y, w, idx, rng, estimator, mc_samples)

    def logp_one(p, xi, yi):
        lg = apply(join_variables(p, rest), xi[None])[0]
        return jax.nn.log_softmax(lg)[yi]

    # inner vmap over the S labels of one example: the forward pass does not
    # depend on the label, so JAX keeps it unbatched (computed once).
    g = jax.vmap(jax.vmap(jax.grad(logp_one), in_axes=(None, None, 0)),
                 in_axes=(None, 0, 0))(params, x, labels)
    return jax.tree_util.tree_map(
        lambda a, gi: a + jnp.einsum("bs,bs...->...", lw, gi * gi), acc, g)


def authors_step(acc, params, rest, x, y, w, idx, rng, *, apply, axis_name=None):
    """Square of the mini-batch MEAN gradient (the authors' ``p.grad ** 2``); comparison only."""
    def sum_nll(p):
        logits = apply(join_variables(p, rest), x)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None].astype(jnp.int32), axis=-1)[:, 0]
        return -(w * logp).sum()

    g = jax.grad(sum_nll)(params)
    wsum = w.sum()
    if axis_name is not None:  # the mean is over the whole microbatch, not a shard
        g, wsum = jax.lax.psum((g, wsum), axis_name)
    g = jax.tree_util.tree_map(lambda gi: gi / jnp.maximum(wsum, 1.0), g)
    return jax.tree_util.tree_map(lambda a, gi: a + gi * gi, acc, g)


def authors_postprocess(tree):
    """Authors' ``.mean(0)`` over torch's first axis, broadcast back.

    Torch's first axis (output channels / output features) is the LAST axis
    of flax's HWIO conv kernels and (in, out) dense kernels, and the only
    axis of biases: the result is constant along it (a bias becomes a scalar).
    """
    return jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a.mean(axis=-1, keepdims=True), a.shape), tree)


STEPS = {"vmap": vmap_step, "fast": fast_step, "authors": authors_step}


PROGRESS_CHUNK = 8  # microbatches per jitted call while a progress bar is shown
# XLA:CPU runs a loop body about 2x slower than the same step jitted on its own (measured,
# docs/performance.md section 4): on CPU devices each call takes ONE microbatch (the same executable,
# no loop); on accelerators all microbatches of a call run in one device loop.
CPU_HOST_LOOP = True


def _loop(base, acc, params, rest, xs, ys, ws, idxs, count, rng, **kw):
    """``acc`` plus ``base`` over the first ``count`` microbatches of stacked ``(C, mb, ...)`` arrays.

    A ``fori_loop`` with a traced trip count: a ragged last chunk reuses the
    executable of full chunks (microbatches past ``count`` are never read).
    """
    if xs.shape[0] == 1:  # one microbatch per call (the CPU default): no loop at all
        return base(acc, params, rest, xs[0], ys[0], ws[0], idxs[0], rng, **kw)

    def body(k, a):
        x, y, w, idx = (jax.lax.dynamic_index_in_dim(t, k, keepdims=False) for t in (xs, ys, ws, idxs))
        return base(a, params, rest, x, y, w, idx, rng, **kw)

    return jax.lax.fori_loop(0, count, body, acc)


def build_step(kind: str, apply: Callable, mesh: Mesh, **kw):
    """Jitted chunk step ``(acc, params, rest, xs, ys, ws, idxs, count, rng) -> acc`` (uncached).

    ``xs, ys, ws, idxs`` hold ``C`` stacked microbatches (leading axis); the
    first ``count`` of them run inside ONE compiled loop, the accumulator is
    donated, so there is no host round trip between microbatches.  The
    example axis (axis 1) is split over the mesh with ``jax.shard_map``: each
    device loops over its own part of every microbatch and one ``psum`` at the
    end adds the devices' sums.  (Letting the SPMD partitioner shard a
    ``vmap(grad)`` automatically gave WRONG per-example conv-kernel gradients
    on 4 host devices in jax 0.10.2 -- the batched kernel gradient is a grouped
    convolution -- and ``device_put`` of the params with a ``NamedSharding``
    made ``vmap`` of a grouped conv's kernel gradient raise
    NotImplementedError; explicit per-shard code avoids both.)
    """
    base = STEPS[kind]
    if mesh.size == 1:  # plain jit: no mesh in the avals (see above)
        def chunk1(acc, params, rest, xs, ys, ws, idxs, count, rng):
            return _loop(base, acc, params, rest, xs, ys, ws, idxs, count, rng, apply=apply, **kw)

        return jax.jit(chunk1, donate_argnums=(0,))
    extra = {"axis_name": "data"} if kind == "authors" else {}

    def local(params, rest, xs, ys, ws, idxs, count, rng):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        part = _loop(base, zeros, params, rest, xs, ys, ws, idxs, count, rng, apply=apply, **kw, **extra)
        return part if kind == "authors" else jax.lax.psum(part, "data")

    ex = P(None, "data")
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), ex, ex, ex, ex, P(), P()),
                            out_specs=P(), check_vma=False)

    def chunk(acc, params, rest, xs, ys, ws, idxs, count, rng):
        part = sharded(params, rest, xs, ys, ws, idxs, count, rng)
        return jax.tree_util.tree_map(jnp.add, acc, part)

    r, d = NamedSharding(mesh, P()), NamedSharding(mesh, ex)
    return jax.jit(chunk, in_shardings=(r, r, r, d, d, d, d, r, r), out_shardings=r, donate_argnums=(0,))


def cached_step(caches: FisherCaches, kind: str, apply: Callable, mesh: Mesh, **kw):
    """:func:`build_step`, cached in ``caches.steps`` per (kind, apply, mesh, options)."""
    key = (kind, apply, mesh, tuple(sorted(kw.items(), key=lambda kv: kv[0])))
    return caches.steps.get_or_build(key, lambda: build_step(kind, apply, mesh, **kw))


# ----------------------------------------------------------------------------
# the driver, in small pieces

@dataclasses.dataclass(frozen=True)
class _Job:
    """Validated inputs and the chosen method of one ``fisher_diag`` call."""
    apply: Callable
    params: Any
    rest: dict
    x: Any                   # (M, ...) numpy or jax
    y: np.ndarray            # (M,) int32
    estimator: str
    mc_samples: int
    rng: Any
    used: str                # 'fast' | 'vmap' | 'authors'
    plan: Plan | None
    n_params: int
    name: str | None

    @property
    def m(self) -> int:
        return int(self.x.shape[0])

    def step_options(self) -> dict:
        if self.used == "fast":
            return {"estimator": self.estimator, "mc_samples": self.mc_samples, "plan": self.plan}
        if self.used == "vmap":
            return {"estimator": self.estimator, "mc_samples": self.mc_samples}
        return {}


def _validate(x, y, estimator, method, mc_samples, authors, name):
    """``(x, y int32)`` checked; UserError (naming ``name``) on bad arguments or data."""
    label = f" for {name}" if name else ""
    if estimator not in ESTIMATORS:
        raise UserError(f"unknown Fisher estimator '{estimator}': valid: {', '.join(ESTIMATORS)}")
    if method not in METHODS:
        raise UserError(f"unknown Fisher method '{method}': valid: {', '.join(METHODS)}")
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    m = int(x.shape[0]) if x.ndim else 0
    if m == 0:
        raise UserError(f"no examples to compute the Fisher{label}: the data set is empty; "
                        "pass data with at least one example (check --examples)")
    if (estimator == "empirical" or authors) and y is None:
        raise UserError(f"the empirical Fisher{label} needs labels y; pass them or use --estimator mc")
    if estimator == "mc" and mc_samples < 1:
        raise UserError(f"mc_samples must be >= 1, got {mc_samples}")
    if y is None:
        y = np.zeros((m,), np.int32)
    y = np.asarray(y).astype(np.int32)
    if y.shape[0] != m:
        raise UserError(f"{m} inputs but {y.shape[0]} labels{label}; they must match")
    return x, y


def _choose_method(caches: FisherCaches, apply, variables, x, method, authors, name) -> tuple[str, Plan | None]:
    """``(used, plan)``: 'authors', 'fast' (with its plan, cached per apply and shapes) or 'vmap'."""
    if authors:
        return "authors", None
    if method not in ("auto", "fast"):
        return "vmap", None
    key = ("plan", apply, shape_signature(variables, x))
    plan = caches.traces.get_or_build(key, lambda: make_plan(apply, variables, x[:1]))
    if plan.ok:
        return "fast", plan
    if method == "fast":
        label = f" for {name}" if name else ""
        raise UserError(f"the fast Fisher path cannot handle this network{label}: {plan.reason}; "
                        "use --fisher-method vmap (or auto)")
    return "vmap", plan


def bytes_per_example(plan: Plan | None, n_params: int, labels_per_example: int,
                      max_layer_params: int = 0, act_floats: int = 0) -> int:
    """Rough peak bytes per example of one microbatch step (float32)."""
    if plan is not None and plan.ok:
        return 4 * labels_per_example * (3 * max_layer_params + 4 * act_floats + 1)
    return 4 * labels_per_example * (3 * n_params + 4 * act_floats + 1)


def _labels_per_example(caches: FisherCaches, job: _Job, variables) -> int:
    s = {"empirical": 1, "mc": job.mc_samples, "exact": None}[job.estimator]
    if s is None:  # exact: one label per class
        s = caches.output_width(job.apply, variables, job.x)
    return s


def _choose_microbatch(caches: FisherCaches, job: _Job, variables, microbatch, memory_budget, nd) -> int:
    """The given microbatch, or the largest that fits ``memory_budget``; a multiple of ``nd``."""
    if microbatch is None:
        s = _labels_per_example(caches, job, variables)
        if job.used == "fast":
            ml, acts = layer_sizes(job.plan, job.params)
            per = bytes_per_example(job.plan, job.n_params, s, ml, acts)
        elif job.used == "authors":
            per = 4 * 8 * int(np.prod(job.x.shape[1:])) * 8
        else:
            per = bytes_per_example(None, job.n_params, s)
        microbatch = choose_microbatch(per, memory_budget, nd)
    microbatch = max(1, int(microbatch))
    if microbatch % nd:
        microbatch += nd - microbatch % nd
    return microbatch


def _microbatch_arrays(x_np, y, m, lo, microbatch):
    """``[x, y, w, idx]`` of the microbatch starting at ``lo``, padded to ``microbatch`` with weight 0."""
    hi = min(m, lo + microbatch)
    nb = hi - lo
    xb, yb = x_np[lo:hi], y[lo:hi]
    wb = np.ones((nb,), np.float32)
    ib = np.arange(lo, hi, dtype=np.int32)
    if nb < microbatch:  # pad the last microbatch (weight 0): one compiled shape
        padn = microbatch - nb
        xb = np.concatenate([xb, np.zeros((padn,) + xb.shape[1:], xb.dtype)])
        yb = np.concatenate([yb, np.zeros((padn,), np.int32)])
        wb = np.concatenate([wb, np.zeros((padn,), np.float32)])
        ib = np.concatenate([ib, np.arange(m, m + padn, dtype=np.int32)])
    return [xb.astype(np.float32), yb, wb, ib], nb


class _Unshardable(Exception):
    """The first sharded step raised NotImplementedError (retry on one device)."""


def _chunk_arrays(x_np, y, m, step0, chunk, microbatch):
    """``([xs, ys, ws, idxs] shaped (chunk, microbatch, ...), count, examples)`` from microbatch ``step0`` on.

    Padding examples (weight 0) complete the last microbatch; microbatches past
    ``count`` are zeros that the loop never reads.
    """
    lo = step0 * microbatch
    args, nb = _microbatch_arrays(x_np, y, m, lo, chunk * microbatch)
    count = -(-nb // microbatch)
    return [a.reshape((chunk, microbatch) + a.shape[1:]) for a in args], count, nb


def _chunk_size(n_steps: int, progress: bool, cpu: bool) -> int:
    """Microbatches per jitted call: one on CPU (:data:`CPU_HOST_LOOP`); elsewhere
    :data:`PROGRESS_CHUNK` with a progress bar, else all of them, rounded up to a power of two so
    that data sets of similar size share one executable."""
    if cpu and CPU_HOST_LOOP:
        return 1
    if progress:
        return min(PROGRESS_CHUNK, n_steps)
    return 1 << (n_steps - 1).bit_length()


def _accumulate(job: _Job, step, mesh: Mesh, microbatch: int, bar):
    """Run ``step`` over all microbatches; the summed (unnormalised) tree and the microbatch count.

    On accelerators, without a progress bar every microbatch runs in one jitted
    call; with one, in calls of :data:`PROGRESS_CHUNK` microbatches.  On CPU,
    one microbatch per call (:data:`CPU_HOST_LOOP`).  A chunk is padded to its
    fixed shape and its trip count is an argument, so the last, shorter chunk
    reuses the same compiled executable.
    """
    nd = mesh.size
    m = job.m
    acc = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, jnp.float32), job.params)
    if nd > 1:
        # the accumulator carries the step's output sharding from the start, so
        # the first and later calls share one compiled executable
        acc = jax.device_put(acc, NamedSharding(mesh, P()))
    data_sh = NamedSharding(mesh, P(None, "data"))
    x_np = np.asarray(job.x)
    n_steps = -(-m // microbatch)
    chunk = _chunk_size(n_steps, bar is not None, mesh.devices.flat[0].platform == "cpu")
    for k in range(0, n_steps, chunk):
        args, count, nb = _chunk_arrays(x_np, job.y, m, k, chunk, microbatch)
        if nd > 1:
            args = [jax.device_put(a, data_sh) for a in args]
        try:
            acc = step(acc, job.params, job.rest, *args, np.int32(count), job.rng)
        except NotImplementedError as e:
            if nd == 1 or k > 0:
                raise
            raise _Unshardable() from e
        if bar is not None:
            bar.update(nb)
    return acc, n_steps


def _progress_bar(progress: bool, m: int, name: str | None):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=m, desc=f"fisher{(' ' + name) if name else ''}", unit="ex", leave=False)


def _run(caches: FisherCaches, job: _Job, devs: list, microbatch: int, progress: bool):
    """One attempt on ``devs``: ``(normalised tree, seconds)``."""
    mesh = caches.mesh(devs)
    step = cached_step(caches, job.used, job.apply, mesh, **job.step_options())
    bar = _progress_bar(progress, job.m, job.name)
    t0 = time.perf_counter()
    try:
        acc, n_steps = _accumulate(job, step, mesh, microbatch, bar)
    finally:
        if bar is not None:
            bar.close()
    if job.used == "authors":
        out = authors_postprocess(jax.tree_util.tree_map(lambda a: a / n_steps, acc))
        flags = finite_flags(out)
    else:
        out, flags = caches.traces.get_or_build(("finish",), lambda: jax.jit(_finish))(acc, np.float32(job.m))
    out = jax.block_until_ready(out)
    return out, flags, time.perf_counter() - t0


def _finish(acc, m):
    """``(acc / m, finite_flags)`` in one jitted call: one dispatch and one host read per Fisher,
    not three per leaf (it mattered for small networks)."""
    out = jax.tree_util.tree_map(lambda a: a / m, acc)
    return out, finite_flags(out)


def _info(job: _Job, microbatch: int, seconds: float, nd: int) -> dict:
    return {"method": job.used, "microbatch": microbatch, "examples": job.m, "seconds": seconds,
            "n_params": job.n_params, "devices": nd, "estimator": job.estimator,
            "mc_samples": job.mc_samples, "fast_path_reason": (job.plan.reason if job.plan else "")}


def fisher_diag(apply: Callable, variables, x, y=None, *, estimator: str = "empirical",
                rng=None, mc_samples: int = 1, method: str = "auto",
                microbatch: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                devices: Sequence | None = None, authors: bool = False,
                progress: bool = False, name: str | None = None, return_info: bool = False,
                engine: FisherCaches | None = None):
    """Diagonal of the Fisher information of ``apply`` at ``variables``.

    Args:
      apply: ``apply(variables, x) -> logits`` (B, C), eval mode.
      variables: ``{'params': ..., <other collections held fixed>}``.
      x: inputs (M, ...), numpy or jax; y: int labels (M,) (needed for
        ``empirical`` and ``authors``), each in ``[0, C)`` for the C logits
        of ``apply`` (else a UserError; wrap ``apply`` in
        :func:`~tanas_jax.fisher.core.pad_logits` for data with more classes).
      estimator: ``'empirical'`` (data labels, LD-NAS eq. (6)), ``'mc'``
        (``mc_samples`` labels per example drawn from the model; key per
        example ``fold_in(rng, i)``, so results do not depend on the
        microbatch), or ``'exact'`` (expectation over all labels).
      method: ``'auto' | 'fast' | 'vmap'`` (module docstring).
      microbatch: examples per step; default from ``memory_budget`` (bytes).
      devices: shard the example axis over these (default ``jax.devices()``);
        when a sharded step is not supported (grouped convolutions under
        ``vmap`` in jax 0.10.2) it warns and uses the first device.
      authors: reproduce the authors' variant (square of the microbatch-mean
        gradient, averaged over microbatches, then ``authors_postprocess``);
        comparison only.
      name: used in error messages (e.g. the task name).
      engine: a ``FisherEngine`` whose compiled steps are reused across calls;
        default a short-lived one (every call traces and compiles afresh).

    Returns:
      A pytree like ``variables['params']``: ``(1/M) sum_i w_i g_i**2``;
      with ``return_info`` also a dict (method, microbatch, seconds, ...).
    """
    caches = FisherCaches() if engine is None else engine
    labels_given = y is not None
    x, y = _validate(x, y, estimator, method, mc_samples, authors, name)
    if labels_given:  # the label rule: nothing clamped (vmap) or dropped (fast); pad_logits for K > C
        check_labels(y, caches.output_width(apply, variables, x), name)
    params, rest = split_variables(variables)
    used, plan = _choose_method(caches, apply, variables, x, method, authors, name)
    job = _Job(apply, params, rest, x, y, estimator, mc_samples, jax.random.PRNGKey(0) if rng is None else rng,
               used, plan, int(sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))), name)
    devs = list(jax.devices() if devices is None else devices)
    microbatch = _choose_microbatch(caches, job, variables, microbatch, memory_budget, len(devs))
    while True:
        try:
            out, flags, seconds = _run(caches, job, devs, microbatch, progress)
            break
        except _Unshardable:
            # jax 0.10.2: vmap of a grouped conv's kernel gradient inside
            # shard_map raises NotImplementedError; one device still works.
            warnings.warn("per-example gradients of grouped convolutions cannot be sharded "
                          "with the vmap path in this jax version; using one device", stacklevel=2)
            devs = devs[:1]
    check_finite(out, name, flags)
    if return_info:
        return out, _info(job, microbatch, seconds, len(devs))
    return out
