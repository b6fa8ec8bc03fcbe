"""Per-example gradients and the diagonal Fisher information.

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
* ``method='fast'``: one batched backward pass of the *sum* of per-example
  log-likelihoods with a zero perturbation added to every ``Dense`` / ``Conv``
  / eval-mode ``BatchNorm`` output (``flax.linen.intercept_methods``: no model
  cooperation needed).  The perturbation gradient is each example's own output
  gradient ``delta_i`` (examples do not interact in eval mode).  Then per layer:
  dense ``sum_i g_i**2 = (a**2)^T (delta**2)`` (Goodfellow, arXiv 1510.01799;
  no per-example gradient is formed); conv: per-example kernel gradients
  ``patches_i^T delta_i`` (patches by slicing, ``extract_patches``), squared
  and summed; biases ``(sum_hw delta_i)**2``; BatchNorm scale
  ``(sum_hw delta_i * xhat_i)**2``.
* ``method='auto'`` uses ``fast`` when every parameter belongs to a layer it
  understands, each called once, and ``vmap`` otherwise.

Examples are processed in microbatches by a jitted step in a Python loop (so a
progress bar can follow it); the example axis of each microbatch is sharded
over ``devices`` with a 1-D ``jax.sharding.Mesh`` (results are identical up to
float summation order).
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tanas_jax.errors import UserError
from tanas_jax.layers import Conv, extract_patches, resolve_padding

ESTIMATORS = ("empirical", "mc", "exact")
METHODS = ("auto", "fast", "vmap")

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes


# ----------------------------------------------------------------------------
# helpers

def split_variables(variables) -> tuple[Any, dict]:
    """``variables -> (params, rest)``; a bare params tree is accepted too."""
    if isinstance(variables, dict) and "params" in variables:
        rest = {k: v for k, v in variables.items() if k != "params"}
        return variables["params"], rest
    return variables, {}


def _join(params, rest):
    if rest or isinstance(params, dict):
        return {"params": params, **rest}
    return params


def leaf_names(tree) -> list[str]:
    """'/'-joined key paths of a pytree's leaves, in ``tree_leaves`` order."""
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out.append("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path))
    return out


def _example_keys(rng, idx):
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(idx)


def _labels_and_weights(logits, y, w, idx, rng, estimator, mc_samples):
    """Labels (B, S) and weights (B, S) for the chosen estimator."""
    logits = jax.lax.stop_gradient(logits)
    b, c = logits.shape
    if estimator == "empirical":
        return y[:, None].astype(jnp.int32), w[:, None]
    if estimator == "mc":
        keys = _example_keys(rng, idx)
        labels = jax.vmap(lambda k, l: jax.random.categorical(k, l, shape=(mc_samples,)))(keys, logits)
        return labels.astype(jnp.int32), jnp.broadcast_to(w[:, None] / mc_samples, (b, mc_samples))
    if estimator == "exact":
        labels = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (b, c))
        return labels, w[:, None] * jax.nn.softmax(logits, axis=-1)
    raise ValueError(estimator)


# ----------------------------------------------------------------------------
# general path: vmap(grad)

def per_example_grads(apply: Callable, variables, x, y):
    """Per-example gradients of ``log p(y_i | x_i)`` w.r.t. ``variables['params']``.

    Returns a pytree like the params with a leading example axis (B, ...).
    ``apply(variables, x) -> logits``; other collections (``batch_stats``) are
    held fixed (eval mode).  Memory: B x n_params floats.
    """
    params, rest = split_variables(variables)

    def logp_one(p, xi, yi):
        logits = apply(_join(p, rest), xi[None])[0]
        return jax.nn.log_softmax(logits)[yi]

    return jax.vmap(jax.grad(logp_one), in_axes=(None, 0, 0))(params, x, y)


def _vmap_step(acc, params, rest, x, y, w, idx, rng, *, apply, estimator, mc_samples):
    variables = _join(params, rest)
    logits = apply(variables, x) if estimator != "empirical" else None
    if logits is None:
        labels, lw = y[:, None].astype(jnp.int32), w[:, None]
    else:
        labels, lw = _labels_and_weights(logits, y, w, idx, rng, estimator, mc_samples)

    def logp_one(p, xi, yi):
        lg = apply(_join(p, rest), xi[None])[0]
        return jax.nn.log_softmax(lg)[yi]

    # inner vmap over the S labels of one example: the forward pass does not
    # depend on the label, so JAX keeps it unbatched (computed once).
    g = jax.vmap(jax.vmap(jax.grad(logp_one), in_axes=(None, None, 0)),
                 in_axes=(None, 0, 0))(params, x, labels)
    return jax.tree_util.tree_map(
        lambda a, gi: a + jnp.einsum("bs,bs...->...", lw, gi * gi), acc, g)


# ----------------------------------------------------------------------------
# fast path: perturbation trick

@dataclasses.dataclass(frozen=True)
class LayerPlan:
    path: tuple            # module path == params subtree path
    kind: str              # 'dense' | 'conv' | 'bn'
    out_shape: tuple       # per-example output shape (without batch)
    in_ndim: int
    attrs: tuple = ()      # conv: (kernel, strides, padding, dilation, groups); bn: (eps, use_scale, use_bias)
    leaves: tuple = ()     # parameter names in this layer


@dataclasses.dataclass(frozen=True)
class Plan:
    layers: tuple
    ok: bool
    reason: str = ""


def _classify(mod, args, kwargs):
    """LayerPlan fields for a module call the fast path understands, else None."""
    if isinstance(mod, nn.Dense):
        if getattr(mod, "dot_general", None) not in (None,) or getattr(mod, "dot_general_cls", None) is not None:
            return None
        leaves = ("kernel", "bias") if mod.use_bias else ("kernel",)
        return "dense", (), leaves
    if isinstance(mod, (Conv, nn.Conv)):
        x = args[0]
        if x.ndim != 4:
            return None
        ks = mod.kernel_size
        kernel = (ks, ks) if isinstance(ks, int) else tuple(ks)
        if len(kernel) != 2:
            return None
        st = mod.strides if mod.strides is not None else 1
        strides = (st, st) if isinstance(st, int) else tuple(st)
        dl = mod.kernel_dilation if mod.kernel_dilation is not None else 1
        dilation = (dl, dl) if isinstance(dl, int) else tuple(dl)
        if isinstance(mod, nn.Conv):
            if getattr(mod, "input_dilation", 1) not in (1, None, (1, 1)):
                return None
            if isinstance(mod.padding, str) and mod.padding.upper() not in ("SAME", "VALID"):
                return None
            if getattr(mod, "mask", None) is not None:
                return None
        try:
            pad = resolve_padding(mod.padding, kernel, dilation)
        except (ValueError, TypeError):
            return None
        leaves = ("kernel", "bias") if mod.use_bias else ("kernel",)
        return "conv", (kernel, strides, pad, dilation, int(mod.feature_group_count)), leaves
    if isinstance(mod, nn.BatchNorm):
        ura = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
        ura = mod.use_running_average if ura is None else ura
        if not ura or mod.axis not in (-1,) or args[0].ndim < 2:
            return None
        if getattr(mod, "axis_name", None) is not None:
            pass  # unused in eval mode
        leaves = tuple(n for n, on in (("scale", mod.use_scale), ("bias", mod.use_bias)) if on)
        return "bn", (float(mod.epsilon), bool(mod.use_scale), bool(mod.use_bias)), leaves
    return None


def make_plan(apply: Callable, variables, x_example) -> Plan:
    """Trace ``apply`` once (abstractly) and list the layers the fast path handles.

    ``ok`` is False (with a ``reason``) when a parameter is not owned by a
    recognised layer or a layer is called more than once (shared weights).
    """
    params, rest = split_variables(variables)
    records: dict = {}
    unknown_calls: list = []

    def interceptor(next_fun, args, kwargs, ctx):
        if ctx.method_name != "__call__":
            return next_fun(*args, **kwargs)
        mod = ctx.module
        cls = _classify(mod, args, kwargs) if args else None
        out = next_fun(*args, **kwargs)
        if cls is not None:
            kind, attrs, leaves = cls
            key = tuple(mod.path)
            if key in records:
                unknown_calls.append(f"layer {'/'.join(key)} is called more than once")
            records[key] = LayerPlan(key, kind, tuple(out.shape[1:]), args[0].ndim, attrs, leaves)
        return out

    def run(xx):
        with nn.intercept_methods(interceptor):
            return apply(_join(params, rest), xx)

    jax.eval_shape(run, jax.ShapeDtypeStruct((2,) + tuple(x_example.shape[1:]), jnp.float32))
    covered = set()
    for lp in records.values():
        for leaf in lp.leaves:
            covered.add("/".join(lp.path + (leaf,)))
    missing = [n for n in leaf_names(params) if n not in covered]
    if unknown_calls:
        return Plan(tuple(records.values()), False, unknown_calls[0])
    if missing:
        return Plan(tuple(records.values()), False,
                    f"parameter {missing[0]} is not in a Dense/Conv/eval-BatchNorm layer")
    return Plan(tuple(records.values()), True)


def _set_path(tree: dict, path: tuple, value):
    node = tree
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value


def _layer_diag(lp: LayerPlan, a, delta, wt, module_vars):
    """Weighted sum over examples of squared per-example grads of one layer.

    a: layer input (N, ...), delta: output gradient (N, ...), wt: (N,).
    """
    out = {}
    if lp.kind == "dense":
        if a.ndim == 2:
            out["kernel"] = (a * a).T @ (delta * delta * wt[:, None])
        else:  # Dense on (N, ..., in): per-example grad sums over the middle axes
            g = jnp.einsum("n...i,n...o->nio", a, delta)
            out["kernel"] = jnp.einsum("n,nio->io", wt, g * g)
        if "bias" in lp.leaves:
            gb = delta.reshape(delta.shape[0], -1, delta.shape[-1]).sum(1)
            out["bias"] = jnp.einsum("n,no->o", wt, gb * gb)
        return out
    if lp.kind == "conv":
        kernel, strides, pad, dilation, groups = lp.attrs
        patches = extract_patches(a, kernel, strides, pad, dilation)  # (N, Ho, Wo, kh*kw*Cin)
        n, ho, wo, _ = patches.shape
        cin = a.shape[-1]
        cout = delta.shape[-1]
        kh, kw = kernel
        if groups == 1:
            g = jnp.einsum("nhwk,nhwo->nko", patches, delta)
            kd = jnp.einsum("n,nko->ko", wt, g * g)
            out["kernel"] = kd.reshape(kh, kw, cin, cout)
        else:
            cg, og = cin // groups, cout // groups
            pt = patches.reshape(n, ho, wo, kh * kw, groups, cg)
            dt = delta.reshape(n, ho, wo, groups, og)
            g = jnp.einsum("nhwpgc,nhwgo->npcgo", pt, dt)
            kd = jnp.einsum("n,npcgo->pcgo", wt, g * g)
            out["kernel"] = kd.reshape(kh, kw, cg, cout)
        if "bias" in lp.leaves:
            gb = delta.sum((1, 2))
            out["bias"] = jnp.einsum("n,no->o", wt, gb * gb)
        return out
    if lp.kind == "bn":
        eps, use_scale, use_bias = lp.attrs
        n = a.shape[0]
        c = a.shape[-1]
        d2 = delta.reshape(n, -1, c)
        if use_scale:
            stats = module_vars
            xhat = (a - stats["mean"]) * jax.lax.rsqrt(stats["var"] + eps)
            gs = (d2 * xhat.reshape(n, -1, c)).sum(1)
            out["scale"] = jnp.einsum("n,nc->c", wt, gs * gs)
        if use_bias:
            gb = d2.sum(1)
            out["bias"] = jnp.einsum("n,nc->c", wt, gb * gb)
        return out
    raise ValueError(lp.kind)


def _get_path(tree, path):
    node = tree
    for k in path:
        node = node[k]
    return node


def _fast_step(acc, params, rest, x, y, w, idx, rng, *, apply, estimator, mc_samples, plan: Plan):
    variables = _join(params, rest)
    b = x.shape[0]
    if estimator == "empirical":
        xr, labels, lw = x, y.astype(jnp.int32), w
    else:
        logits = apply(variables, x)
        lab, lww = _labels_and_weights(logits, y, w, idx, rng, estimator, mc_samples)
        s = lab.shape[1]
        # every (example, label) pair needs its own output gradient: repeat inputs
        xr = jnp.repeat(x, s, axis=0)
        labels, lw = lab.reshape(-1), lww.reshape(-1)
    n = xr.shape[0]
    layers = {lp.path: lp for lp in plan.layers}
    perturb = {lp.path: jnp.zeros((n,) + lp.out_shape, xr.dtype) for lp in plan.layers}

    def total_logp(pert):
        captured = {}

        def interceptor(next_fun, args, kwargs, ctx):
            if ctx.method_name != "__call__":
                return next_fun(*args, **kwargs)
            key = tuple(ctx.module.path)
            if key not in layers:
                return next_fun(*args, **kwargs)
            out = next_fun(*args, **kwargs)
            lp = layers[key]
            entry = {"a": args[0]}
            if lp.kind == "bn" and lp.attrs[1]:
                entry["mean"] = ctx.module.get_variable("batch_stats", "mean")
                entry["var"] = ctx.module.get_variable("batch_stats", "var")
            captured[key] = entry
            return out + pert[key]

        with nn.intercept_methods(interceptor):
            logits = apply(variables, xr)
        logp = jax.nn.log_softmax(logits, axis=-1)
        # SUM over examples: d/d pert_i is example i's own output gradient
        return jnp.take_along_axis(logp, labels[:, None], axis=-1).sum(), captured

    deltas, captured = jax.grad(total_logp, has_aux=True)(perturb)
    contrib: dict = {}
    for lp in plan.layers:
        cap = captured[lp.path]
        stats = {"mean": cap.get("mean"), "var": cap.get("var")}
        layer = _layer_diag(lp, cap["a"], deltas[lp.path], lw, stats)
        for leaf, val in layer.items():
            _set_path(contrib, lp.path + (leaf,), val)
    return jax.tree_util.tree_map(lambda a_, c_: a_ + c_, acc, _retree(contrib, params))


def _retree(contrib: dict, params):
    """Arrange ``contrib`` (nested dict keyed by module path) like ``params``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    vals = []
    for path, _ in flat:
        keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
        vals.append(_get_path(contrib, keys))
    return jax.tree_util.tree_unflatten(treedef, vals)


# ----------------------------------------------------------------------------
# authors' variant (comparison only)

def _authors_step(acc, params, rest, x, y, w, idx, rng, *, apply, axis_name=None):
    """Square of the mini-batch MEAN gradient (the authors' ``p.grad ** 2``)."""
    def sum_nll(p):
        logits = apply(_join(p, rest), x)
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


# ----------------------------------------------------------------------------
# driver

def bytes_per_example(plan: Plan | None, n_params: int, labels_per_example: int,
                      max_layer_params: int = 0, act_floats: int = 0) -> int:
    """Rough peak bytes per example of one microbatch step (float32)."""
    if plan is not None and plan.ok:
        return 4 * labels_per_example * (3 * max_layer_params + 4 * act_floats + 1)
    return 4 * labels_per_example * (3 * n_params + 4 * act_floats + 1)


def choose_microbatch(per_example_bytes: int, memory_budget: int, n_devices: int = 1,
                      max_mb: int = 256) -> int:
    """Largest microbatch (a multiple of ``n_devices``) whose working set fits."""
    mb = max(1, int(memory_budget // max(per_example_bytes, 1)))
    mb = min(mb, max_mb)
    if mb >= 8:
        mb = 1 << int(math.floor(math.log2(mb)))
    mb = max(n_devices, (mb // n_devices) * n_devices)
    return mb


_STEP_CACHE: dict = {}


def _jitted(kind, apply, mesh=None, **kw):
    """Jitted microbatch step, cached per (kind, apply, mesh, options).

    The example axis is split over the mesh with ``jax.shard_map``: each
    device computes the squared per-example gradients of its own examples and
    a ``psum`` adds them.  (Letting the SPMD partitioner shard a ``vmap(grad)``
    automatically gave WRONG per-example conv-kernel gradients on 4 host
    devices in jax 0.10.2 -- the batched kernel gradient is a grouped
    convolution -- and ``device_put`` of the params with a ``NamedSharding``
    made ``vmap`` of a grouped conv's kernel gradient raise
    NotImplementedError; explicit per-shard code avoids both.)
    """
    mesh = make_mesh() if mesh is None else mesh
    key = (kind, apply, mesh, tuple(sorted(kw.items(), key=lambda kv: kv[0])))
    fn = _STEP_CACHE.get(key)
    if fn is None:
        base = {"vmap": _vmap_step, "fast": _fast_step, "authors": _authors_step}[kind]

        if mesh.size == 1:  # plain jit: no mesh in the avals (see above)
            def step1(acc, params, rest, x, y, w, idx, rng):
                return base(acc, params, rest, x, y, w, idx, rng, apply=apply, **kw)

            fn = jax.jit(step1, donate_argnums=(0,))
            _STEP_CACHE[key] = fn
            return fn
        extra = {"axis_name": "data"} if kind == "authors" else {}

        def local(params, rest, x, y, w, idx, rng):
            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            part = base(zeros, params, rest, x, y, w, idx, rng, apply=apply, **kw, **extra)
            return part if kind == "authors" else jax.lax.psum(part, "data")

        sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data"), P("data"), P("data"), P("data"), P()),
                                out_specs=P(), check_vma=False)

        def step(acc, params, rest, x, y, w, idx, rng):
            part = sharded(params, rest, x, y, w, idx, rng)
            return jax.tree_util.tree_map(jnp.add, acc, part)

        r, d = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        fn = jax.jit(step, in_shardings=(r, r, r, d, d, d, d, r), out_shardings=r,
                     donate_argnums=(0,))
        _STEP_CACHE[key] = fn
    return fn


def _layer_sizes(plan: Plan, params) -> tuple[int, int]:
    max_layer, acts = 0, 0
    for lp in plan.layers:
        sub = _get_path(params, lp.path)
        for leaf in lp.leaves:
            max_layer = max(max_layer, int(np.prod(sub[leaf].shape)))
        acts += int(np.prod(lp.out_shape))
        if lp.kind == "conv":
            kh, kw = lp.attrs[0]
            acts += int(np.prod(lp.out_shape[:-1])) * kh * kw * int(sub["kernel"].shape[2])
    return max_layer, acts


_MESHES: dict = {}


def make_mesh(devices=None) -> Mesh:
    """1-D mesh ``('data',)`` over ``devices`` (default all), cached."""
    devs = tuple(jax.devices() if devices is None else devices)
    if devs not in _MESHES:
        _MESHES[devs] = Mesh(np.array(devs), ("data",))
    return _MESHES[devs]


def fisher_diag(apply: Callable, variables, x, y=None, *, estimator: str = "empirical",
                rng=None, mc_samples: int = 1, method: str = "auto",
                microbatch: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                devices: Sequence | None = None, authors: bool = False,
                progress: bool = False, name: str | None = None, return_info: bool = False):
    """Diagonal of the Fisher information of ``apply`` at ``variables``.

    Args:
      apply: ``apply(variables, x) -> logits`` (B, C), eval mode.
      variables: ``{'params': ..., <other collections held fixed>}``.
      x: inputs (M, ...), numpy or jax; y: int labels (M,) (needed for
        ``empirical`` and ``authors``).
      estimator: ``'empirical'`` (data labels, LD-NAS eq. (6)), ``'mc'``
        (``mc_samples`` labels per example drawn from the model; key per
        example ``fold_in(rng, i)``, so results do not depend on the
        microbatch), or ``'exact'`` (expectation over all labels).
      method: ``'auto' | 'fast' | 'vmap'`` (module docstring).
      microbatch: examples per step; default from ``memory_budget`` (bytes).
      devices: shard the example axis over these (default ``jax.devices()``).
      authors: reproduce the authors' variant (square of the microbatch-mean
        gradient, averaged over microbatches, then ``authors_postprocess``);
        comparison only.
      name: used in error messages (e.g. the task name).

    Returns:
      A pytree like ``variables['params']``: ``(1/M) sum_i w_i g_i**2``;
      with ``return_info`` also a dict (method, microbatch, seconds, ...).
    """
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
    rng = jax.random.PRNGKey(0) if rng is None else rng

    params, rest = split_variables(variables)
    n_params = int(sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params)))
    devs = list(jax.devices() if devices is None else devices)
    nd = len(devs)

    plan = None
    used = "vmap"
    if authors:
        used = "authors"
    elif method in ("auto", "fast"):
        plan = make_plan(apply, variables, x[:1])
        if plan.ok:
            used = "fast"
        elif method == "fast":
            raise UserError(f"the fast Fisher path cannot handle this network{label}: {plan.reason}; "
                            "use --fisher-method vmap (or auto)")
    s = {"empirical": 1, "mc": mc_samples, "exact": None}[estimator]
    if s is None:
        s = int(jax.eval_shape(lambda xx: apply(variables, xx),
                               jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), jnp.float32)).shape[-1])
    if microbatch is None:
        if used == "fast":
            ml, acts = _layer_sizes(plan, params)
            per = bytes_per_example(plan, n_params, s, ml, acts)
        elif used == "authors":
            per = 4 * 8 * int(np.prod(x.shape[1:])) * 8
        else:
            per = bytes_per_example(None, n_params, s)
        microbatch = choose_microbatch(per, memory_budget, nd)
    microbatch = max(1, int(microbatch))
    if microbatch % nd:
        microbatch += nd - microbatch % nd

    kw: dict = {}
    if used == "fast":
        kw = {"estimator": estimator, "mc_samples": mc_samples, "plan": plan}
    elif used == "vmap":
        kw = {"estimator": estimator, "mc_samples": mc_samples}
    mesh = make_mesh(devs)
    step = _jitted(used, apply, mesh, **kw)
    data_sh = NamedSharding(mesh, P("data"))
    params_d, rest_d, rng_d = params, rest, rng
    acc = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, jnp.float32), params)
    if nd > 1:
        # the accumulator carries the step's output sharding from the start, so
        # the first and later steps share one compiled executable
        acc = jax.device_put(acc, NamedSharding(mesh, P()))

    n_steps = -(-m // microbatch)
    it = range(n_steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=m, desc=f"fisher{(' ' + name) if name else ''}", unit="ex", leave=False)
    t0 = time.perf_counter()
    x_np = np.asarray(x)
    for k in it:
        lo, hi = k * microbatch, min(m, (k + 1) * microbatch)
        nb = hi - lo
        xb = x_np[lo:hi]
        yb = y[lo:hi]
        wb = np.ones((nb,), np.float32)
        ib = np.arange(lo, hi, dtype=np.int32)
        if nb < microbatch:  # pad the last microbatch (weight 0): one compiled shape
            padn = microbatch - nb
            xb = np.concatenate([xb, np.zeros((padn,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((padn,), np.int32)])
            wb = np.concatenate([wb, np.zeros((padn,), np.float32)])
            ib = np.concatenate([ib, np.arange(m, m + padn, dtype=np.int32)])
        args = [xb.astype(np.float32), yb, wb, ib]
        if nd > 1:
            args = [jax.device_put(a, data_sh) for a in args]
        try:
            acc = step(acc, params_d, rest_d, *args, rng_d)
        except NotImplementedError:
            if nd == 1 or k > 0:
                raise
            # jax 0.10.2: vmap of a grouped conv's kernel gradient inside
            # shard_map raises NotImplementedError; one device still works.
            warnings.warn("per-example gradients of grouped convolutions cannot be sharded "
                          "with the vmap path in this jax version; using one device")
            kwargs = dict(estimator=estimator, rng=rng, mc_samples=mc_samples, method=method,
                          microbatch=microbatch, memory_budget=memory_budget, devices=devs[:1],
                          authors=authors, progress=progress, name=name, return_info=return_info)
            return fisher_diag(apply, variables, x, y, **kwargs)
        if bar is not None:
            bar.update(nb)
    if bar is not None:
        bar.close()
    if used == "authors":
        out = jax.tree_util.tree_map(lambda a: a / n_steps, acc)
        out = authors_postprocess(out)
    else:
        out = jax.tree_util.tree_map(lambda a: a / m, acc)
    out = jax.block_until_ready(out)
    seconds = time.perf_counter() - t0
    check_finite(out, name)
    if return_info:
        return out, {"method": used, "microbatch": microbatch, "examples": m, "seconds": seconds,
                     "n_params": n_params, "devices": nd, "estimator": estimator,
                     "mc_samples": mc_samples, "fast_path_reason": (plan.reason if plan else "")}
    return out


def check_finite(tree, name: str | None = None):
    """UserError naming the first layer whose Fisher is not finite."""
    bad = [n for n, a in zip(leaf_names(tree), jax.tree_util.tree_leaves(tree))
           if not bool(jnp.all(jnp.isfinite(a)))]
    if bad:
        who = f" of {name}" if name else ""
        raise UserError(f"non-finite gradients in the Fisher{who} at layer {bad[0]}: "
                        "the network or its inputs contain NaN/inf; retrain the network or check the data")
