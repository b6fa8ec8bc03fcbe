"""The fast diagonal-Fisher path: one batched backward pass and per-layer formulas.

One backward pass of the *sum* of per-example log-likelihoods with a zero
perturbation added to every ``Dense`` / ``Conv`` / eval-mode ``BatchNorm``
output (``flax.linen.intercept_methods``: no model cooperation needed).  The
perturbation gradient is each example's own output gradient ``delta_i``
(examples do not interact in eval mode).  Then per layer:

* dense ``sum_i g_i**2 = (a**2)^T (delta**2)`` (Goodfellow, "Efficient
  per-example gradient computations", arXiv 1510.01799; no per-example
  gradient is formed);
* conv: per-example kernel gradients ``patches_i^T delta_i`` (patches by
  slicing, :func:`tanas_jax.layers.extract_patches`), squared and summed;
* biases ``(sum_hw delta_i)**2``; BatchNorm scale ``(sum_hw delta_i * xhat_i)**2``.

:func:`make_plan` traces a network once and lists the layers this path
understands; layer types are recognised from :mod:`tanas_jax.layers` and
``flax.linen``, never from the model zoo.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tanas_jax.fisher.core import join_variables, labels_and_weights, leaf_names, split_variables
from tanas_jax.layers import Conv, extract_patches, resolve_padding


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


# ----------------------------------------------------------------------------
# plan: which layers the fast path handles

def _pair_or_none(v, default=1):
    v = default if v is None else v
    return (v, v) if isinstance(v, int) else tuple(v)


def _classify_dense(mod):
    if getattr(mod, "dot_general", None) not in (None,) or getattr(mod, "dot_general_cls", None) is not None:
        return None
    leaves = ("kernel", "bias") if mod.use_bias else ("kernel",)
    return "dense", (), leaves


def _classify_conv(mod, x):
    if x.ndim != 4:
        return None
    kernel = _pair_or_none(mod.kernel_size)
    if len(kernel) != 2:
        return None
    strides, dilation = _pair_or_none(mod.strides), _pair_or_none(mod.kernel_dilation)
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


def _classify_bn(mod, args, kwargs):
    ura = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
    ura = mod.use_running_average if ura is None else ura
    if not ura or mod.axis not in (-1,) or args[0].ndim < 2:
        return None  # (axis_name is unused in eval mode)
    leaves = tuple(n for n, on in (("scale", mod.use_scale), ("bias", mod.use_bias)) if on)
    return "bn", (float(mod.epsilon), bool(mod.use_scale), bool(mod.use_bias)), leaves


def _classify(mod, args, kwargs):
    """``(kind, attrs, leaves)`` for a module call the fast path understands, else None."""
    if isinstance(mod, nn.Dense):
        return _classify_dense(mod)
    if isinstance(mod, (Conv, nn.Conv)):
        return _classify_conv(mod, args[0])
    if isinstance(mod, nn.BatchNorm):
        return _classify_bn(mod, args, kwargs)
    return None


def _record_layers(apply: Callable, variables, x_example) -> tuple[dict, list]:
    """Trace ``apply`` abstractly: ``({module path: LayerPlan}, [problems])``."""
    params, rest = split_variables(variables)
    records: dict = {}
    problems: list = []

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
                problems.append(f"layer {'/'.join(key)} is called more than once")
            records[key] = LayerPlan(key, kind, tuple(out.shape[1:]), args[0].ndim, attrs, leaves)
        return out

    def run(xx):
        with nn.intercept_methods(interceptor):
            return apply(join_variables(params, rest), xx)

    jax.eval_shape(run, jax.ShapeDtypeStruct((2,) + tuple(x_example.shape[1:]), jnp.float32))
    return records, problems


def make_plan(apply: Callable, variables, x_example) -> Plan:
    """Trace ``apply`` once (abstractly) and list the layers the fast path handles.

    ``ok`` is False (with a ``reason``) when a parameter is not owned by a
    recognised layer or a layer is called more than once (shared weights).
    """
    params, _ = split_variables(variables)
    records, problems = _record_layers(apply, variables, x_example)
    covered = set()
    for lp in records.values():
        for leaf in lp.leaves:
            covered.add("/".join(lp.path + (leaf,)))
    missing = [n for n in leaf_names(params) if n not in covered]
    if problems:
        return Plan(tuple(records.values()), False, problems[0])
    if missing:
        return Plan(tuple(records.values()), False,
                    f"parameter {missing[0]} is not in a Dense/Conv/eval-BatchNorm layer")
    return Plan(tuple(records.values()), True)


def layer_sizes(plan: Plan, params) -> tuple[int, int]:
    """``(largest layer's parameter count, activation floats per example)`` of a plan."""
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


# ----------------------------------------------------------------------------
# per-layer formulas: weighted sums over examples of squared per-example grads
# (a: layer input (N, ...), delta: output gradient (N, ...), wt: (N,))

def _dense_diag(lp: LayerPlan, a, delta, wt) -> dict:
    out = {}
    if a.ndim == 2:
        out["kernel"] = (a * a).T @ (delta * delta * wt[:, None])
    else:  # Dense on (N, ..., in): per-example grad sums over the middle axes
        g = jnp.einsum("n...i,n...o->nio", a, delta)
        out["kernel"] = jnp.einsum("n,nio->io", wt, g * g)
    if "bias" in lp.leaves:
        gb = delta.reshape(delta.shape[0], -1, delta.shape[-1]).sum(1)
        out["bias"] = jnp.einsum("n,no->o", wt, gb * gb)
    return out


def _conv_diag(lp: LayerPlan, a, delta, wt) -> dict:
    out = {}
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


def _bn_diag(lp: LayerPlan, a, delta, wt, stats) -> dict:
    out = {}
    eps, use_scale, use_bias = lp.attrs
    n = a.shape[0]
    c = a.shape[-1]
    d2 = delta.reshape(n, -1, c)
    if use_scale:
        xhat = (a - stats["mean"]) * jax.lax.rsqrt(stats["var"] + eps)
        gs = (d2 * xhat.reshape(n, -1, c)).sum(1)
        out["scale"] = jnp.einsum("n,nc->c", wt, gs * gs)
    if use_bias:
        gb = d2.sum(1)
        out["bias"] = jnp.einsum("n,nc->c", wt, gb * gb)
    return out


def _layer_diag(lp: LayerPlan, a, delta, wt, stats) -> dict:
    """Weighted sum over examples of squared per-example grads of one layer."""
    if lp.kind == "dense":
        return _dense_diag(lp, a, delta, wt)
    if lp.kind == "conv":
        return _conv_diag(lp, a, delta, wt)
    if lp.kind == "bn":
        return _bn_diag(lp, a, delta, wt, stats)
    raise ValueError(lp.kind)


# ----------------------------------------------------------------------------
# the step

def _set_path(tree: dict, path: tuple, value):
    node = tree
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value


def _get_path(tree, path):
    node = tree
    for k in path:
        node = node[k]
    return node


def _retree(contrib: dict, params):
    """Arrange ``contrib`` (nested dict keyed by module path) like ``params``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    vals = []
    for path, _ in flat:
        keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
        vals.append(_get_path(contrib, keys))
    return jax.tree_util.tree_unflatten(treedef, vals)


def _perturbed_grads(apply, variables, xr, labels, plan: Plan):
    """Output gradients ``delta`` and captured layer inputs of ``sum_i log p(labels_i | xr_i)``."""
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
        # SUM over examples: d/d pert_i is example i's own output gradient.  Labels lie in [0, C)
        # (fisher_diag checks them on the host): out of range, take_along_axis would drop the example
        return jnp.take_along_axis(logp, labels[:, None], axis=-1).sum(), captured

    return jax.grad(total_logp, has_aux=True)(perturb)


def fast_step(acc, params, rest, x, y, w, idx, rng, *, apply, estimator, mc_samples, plan: Plan):
    """``acc + sum_i w_i g_i**2`` over one microbatch by the perturbation trick."""
    variables = join_variables(params, rest)
    if estimator == "empirical":
        xr, labels, lw = x, y.astype(jnp.int32), w
    else:
        logits = apply(variables, x)
        lab, lww = labels_and_weights(logits, y, w, idx, rng, estimator, mc_samples)
        s = lab.shape[1]
        # every (example, label) pair needs its own output gradient: repeat inputs
        xr = jnp.repeat(x, s, axis=0)
        labels, lw = lab.reshape(-1), lww.reshape(-1)
    deltas, captured = _perturbed_grads(apply, variables, xr, labels, plan)
    contrib: dict = {}
    for lp in plan.layers:
        cap = captured[lp.path]
        stats = {"mean": cap.get("mean"), "var": cap.get("var")}
        layer = _layer_diag(lp, cap["a"], deltas[lp.path], lw, stats)
        for leaf, val in layer.items():
            _set_path(contrib, lp.path + (leaf,), val)
    return jax.tree_util.tree_map(lambda a_, c_: a_ + c_, acc, _retree(contrib, params))
