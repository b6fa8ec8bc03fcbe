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
  slicing, :func:`tanas_jax.layers.extract_patches`), squared and summed in a
  scan over small chunks of examples whose steps extract their own patches
  (and tile the output channels of big kernels), or without per-example
  kernels at all on tiny maps (:func:`conv_kernel_fisher`);
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
        if isinstance(mod, nn.Conv) and isinstance(mod.padding, str):
            # flax's string paddings are XLA's: 'SAME' is asymmetric at stride 2 and depends on the map size
            span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
            pad = tuple(tuple(int(v) for v in p)
                        for p in jax.lax.padtype_to_pads(x.shape[1:3], span, strides, mod.padding.upper()))
        else:
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


QUADRATIC_MAX_PIXELS = 4         # output maps of at most this many pixels: no per-example kernels
SCAN_FLOATS = 1 << 21            # otherwise: patches / per-example kernels of one scan step stay below this
CHUNK_EXAMPLES = 8               # ... with at most this many examples per step
DIRECT_MAX_FLOATS = 1 << 17      # (conv_kernel_sq on given patches) one einsum up to this many kernel floats


def _kernel_sq_direct(p, d, wt):
    """All per-example kernels ``p_i^T d_i`` at once, squared, weighted, summed."""
    g = jnp.einsum("npk,npo->nko", p, d)
    return jnp.einsum("n,nko->ko", wt, g * g)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(k for k in range(1, max(1, min(n, at_most)) + 1) if n % k == 0)


def _kernel_sq_chunked(p, d, wt):
    """:func:`_kernel_sq_direct` over groups of examples in a ``lax.scan``: only one group's
    per-example kernels are alive, and their square-sum is fused per group."""
    n = p.shape[0]
    c = _largest_divisor(n, CHUNK_EXAMPLES)
    xs = (p.reshape((n // c, c) + p.shape[1:]), d.reshape((n // c, c) + d.shape[1:]), wt.reshape(n // c, c))

    def body(acc, t):
        return acc + _kernel_sq_direct(*t), None

    return jax.lax.scan(body, jnp.zeros((p.shape[-1], d.shape[-1]), p.dtype), xs)[0]


def _kernel_sq_quadratic(p, d, wt):
    """``sum_i w_i (sum_s p_is^T d_is)**2`` expanded over pixel pairs s <= t, as ONE matrix product:
    ``sum_{i,s<=t} c_st (p_is * p_it)^T (w_i d_is * d_it)`` (c = 1 on the diagonal, 2 off it).
    No per-example kernel is formed; it pays for small maps only (P(P+1)/2 pairs for P pixels)."""
    iu, ju = np.triu_indices(p.shape[1])
    coef = jnp.asarray(np.where(iu == ju, 1.0, 2.0), p.dtype)
    a = p[:, iu, :] * p[:, ju, :]
    b = d[:, iu, :] * d[:, ju, :] * (wt[:, None, None] * coef[None, :, None])
    return jnp.einsum("ntk,nto->ko", a, b)


def conv_kernel_sq(p, d, wt):
    """``sum_i wt_i (p_i^T d_i)**2`` (K, O) from patches ``p`` (N, P, K) and output gradients
    ``d`` (N, P, O) of a convolution: the pixel-pair product on maps of <= ``QUADRATIC_MAX_PIXELS``
    pixels, one einsum when the per-example kernels are few, else per-example kernels in chunks of
    examples.  (The Fisher step uses :func:`conv_kernel_fisher`, which also avoids the patches of the
    whole microbatch.)"""
    n, npix, k = p.shape
    if npix <= QUADRATIC_MAX_PIXELS:
        return _kernel_sq_quadratic(p, d, wt)
    if n * k * d.shape[-1] <= DIRECT_MAX_FLOATS:
        return _kernel_sq_direct(p, d, wt)
    return _kernel_sq_chunked(p, d, wt)


def scan_tiles(n: int, npix: int, k: int, o: int) -> tuple[int, int]:
    """``(examples per scan step, output channels per tile)`` of :func:`conv_kernel_sq_scan`: the
    largest divisors of ``n`` (at most ``CHUNK_EXAMPLES``) and ``o`` for which one step's patches
    (c, P, K) and per-example kernels (c, K, O_tile) stay below ``SCAN_FLOATS`` floats."""
    o_tile = _largest_divisor(o, SCAN_FLOATS // k)
    per_example = max(npix * k, k * o_tile, npix * o_tile)
    return _largest_divisor(n, min(CHUNK_EXAMPLES, SCAN_FLOATS // per_example)), o_tile


def conv_kernel_sq_scan(a, delta, wt, geometry, chunk: int | None = None, o_tile: int | None = None):
    """``sum_i wt_i (per-example kernel gradient)**2`` (kh*kw*Cin, O) of a convolution with
    ``geometry = (kernel, strides, pad, dilation)``, from its input ``a`` (N, H, W, Cin) and output
    gradient ``delta`` (N, Ho, Wo, O), in a ``lax.scan`` over chunks of ``chunk`` examples, for each
    tile of ``o_tile`` output channels; each step extracts its OWN examples' patches, so neither the
    patches of the microbatch nor its per-example kernels are ever written out: a step's working set
    stays in cache (measured 1.5-3x faster than patches of the whole microbatch on VGG-16 /
    ResNet-18 layers, docs/performance.md section 4).  ``chunk``/``o_tile`` default to
    :func:`scan_tiles`."""
    kernel, strides, pad, dilation = geometry
    n, ho, wo, o = delta.shape
    k = kernel[0] * kernel[1] * a.shape[-1]
    dc, dt = scan_tiles(n, ho * wo, k, o)
    c, ot = chunk or dc, o_tile or dt
    xa, xw = a.reshape((n // c, c) + a.shape[1:]), wt.reshape(n // c, c)

    def body(acc, t):
        ac, dc_, wc = t
        p = extract_patches(ac, kernel, strides, pad, dilation).reshape(c, ho * wo, k)
        return acc + _kernel_sq_direct(p, dc_.reshape(c, ho * wo, -1), wc), None

    tiles = []
    for o0 in range(0, o, ot):
        dd = delta[..., o0:o0 + ot]
        xs = (xa, dd.reshape((n // c, c) + dd.shape[1:]), xw)
        tiles.append(jax.lax.scan(body, jnp.zeros((k, dd.shape[-1]), a.dtype), xs)[0])
    return tiles[0] if len(tiles) == 1 else jnp.concatenate(tiles, axis=1)


def conv_kernel_fisher(a, delta, wt, geometry):
    """``sum_i wt_i (per-example kernel gradient)**2`` (kh*kw*Cin, O) of a (groups = 1) convolution,
    in the fastest exact form measured for the shape: the pixel-pair product on output maps of <=
    ``QUADRATIC_MAX_PIXELS`` pixels, else :func:`conv_kernel_sq_scan`."""
    kernel, strides, pad, dilation = geometry
    n, ho, wo, o = delta.shape
    if ho * wo <= QUADRATIC_MAX_PIXELS:
        p = extract_patches(a, kernel, strides, pad, dilation)
        return _kernel_sq_quadratic(p.reshape(n, ho * wo, -1), delta.reshape(n, ho * wo, o), wt)
    return conv_kernel_sq_scan(a, delta, wt, geometry)


def _conv_diag(lp: LayerPlan, a, delta, wt) -> dict:
    out = {}
    kernel, strides, pad, dilation, groups = lp.attrs
    cin = a.shape[-1]
    n, _, _, cout = delta.shape
    kh, kw = kernel
    if groups == 1:
        kd = conv_kernel_fisher(a, delta, wt, (kernel, strides, pad, dilation))
        out["kernel"] = kd.reshape(kh, kw, cin, cout)
    else:
        patches = extract_patches(a, kernel, strides, pad, dilation)  # (N, Ho, Wo, kh*kw*Cin)
        cg, og = cin // groups, cout // groups
        pt = patches.reshape(patches.shape[:3] + (kh * kw, groups, cg))
        dt = delta.reshape(delta.shape[:3] + (groups, og))
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
