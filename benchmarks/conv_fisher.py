"""Conv-kernel Fisher techniques per layer shape (issue 14, deliverable 1): which way of getting
``sum_i w_i (per-example kernel gradient)**2`` from a layer's input ``a`` and output gradient
``delta`` is fastest, next to the plain kernel gradient of the summed loss (what a mean-gradient
pass pays for the same layer).

Techniques (all jitted, float32, same inputs; each checked against ``patches`` before timing):

* ``plain``    — the summed kernel gradient (``vjp`` of the convolution w.r.t. its kernel): the
  reference cost, not a Fisher;
* ``patches``  — today's path: patches by slicing, ``einsum('nhwk,nhwo->nko')``, squared, summed;
* ``grouped``  — Rochette et al. 2019, "Efficient per-example gradient computations in
  convolutional neural networks": ONE convolution with the examples as feature groups (input
  ``(Cin, H, W, N)``, ``delta`` as an ``N``-group kernel), squared, summed;
* ``chunked``  — ``patches`` over groups of 8 examples in a ``lax.scan`` so that the per-example
  kernels of only one group are alive (the square-sum is fused per group);
* ``scan``     — ``fisher.fast.conv_kernel_sq_scan``: a ``lax.scan`` whose steps extract the patches
  of their OWN examples (and tile the output channels of big kernels), so neither the patches of the
  microbatch nor its per-example kernels are written out;
* ``pairs``    — no per-example kernel at all: ``sum_i (sum_s p_is^T d_is)**2`` expanded over
  pixel pairs s <= t as one matrix product (timed on maps of <= 16 pixels only: P(P+1)/2 pairs);
* ``chosen``   — what ``fisher.fast.conv_kernel_fisher`` (the Fisher step's path) picks for the shape.

    bin/bench conv --nets tanas_cnn,small_cnn,vgg16,resnet18 [--repeats 5] [--out DIR]

Prints one row per distinct (net, layer shape) with the median ms of each technique and the
fastest one; the per-net totals are the sums over the net's conv layers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tanas_jax  # noqa: E402,F401  (sets our XLA defaults before JAX starts)

TECHNIQUES = ("plain", "patches", "grouped", "chunked", "scan", "pairs", "chosen")
PAIRS_MAX_PIXELS = 16
MICROBATCH = {"tanas_cnn": 64, "small_cnn": 64, "vgg16": 32, "resnet18": 32}


def conv_layers(net: str, mb: int) -> list[tuple]:
    """``(name, a_shape, delta_shape, attrs)`` of every conv layer of ``net`` (one traced forward)."""
    import jax

    from tanas_jax import models
    from tanas_jax.fisher import make_plan

    spec = models.get_net(net)
    variables = models.init(net, 10, jax.random.PRNGKey(0))
    apply = models.make_apply(net, 10)
    x = jax.numpy.zeros((1,) + tuple(spec.input_shape))
    plan = make_plan(apply, variables, x)
    params = variables["params"]
    out = []
    for lp in plan.layers:
        if lp.kind != "conv":
            continue
        sub = params
        for k in lp.path:
            sub = sub[k]
        kh, kw, cin, _ = sub["kernel"].shape
        (sh, sw), ((plo, phi), (qlo, qhi)) = lp.attrs[1], lp.attrs[2]
        ho, wo, cout = lp.out_shape
        h = (ho - 1) * sh + kh - plo - phi
        w = (wo - 1) * sw + kw - qlo - qhi
        out.append(("/".join(lp.path), (mb, h, w, cin * lp.attrs[4]), (mb, ho, wo, cout), lp.attrs))
    return out


def techniques(attrs, pixels: int):
    """``{name: f(a, delta, wt) -> (kh, kw, cin, cout) array}`` for a conv with ``attrs`` whose
    output maps have ``pixels`` pixels."""
    import jax
    import jax.numpy as jnp

    from tanas_jax.fisher import fast
    from tanas_jax.layers import extract_patches

    kernel, strides, pad, dilation, groups = attrs
    kh, kw = kernel
    assert groups == 1, "the study covers dense (groups = 1) convolutions"
    dn = ("NHWC", "HWIO", "NHWC")

    def plain(a, delta, wt):
        def conv(k):
            return jax.lax.conv_general_dilated(a, k, strides, pad, rhs_dilation=dilation, dimension_numbers=dn)
        k0 = jnp.zeros((kh, kw, a.shape[-1], delta.shape[-1]), a.dtype)
        return jax.vjp(conv, k0)[1](delta * wt[:, None, None, None])[0]

    def patches(a, delta, wt):
        p = extract_patches(a, kernel, strides, pad, dilation)
        g = jnp.einsum("nhwk,nhwo->nko", p, delta)
        return jnp.einsum("n,nko->ko", wt, g * g).reshape(kh, kw, a.shape[-1], -1)

    def grouped(a, delta, wt):
        n, _, _, cin = a.shape
        cout = delta.shape[-1]
        lhs = a.transpose(3, 1, 2, 0)                      # (Cin, H, W, N): examples are channels
        rhs = delta.transpose(1, 2, 0, 3).reshape(delta.shape[1], delta.shape[2], 1, n * cout)
        g = jax.lax.conv_general_dilated(lhs, rhs, window_strides=dilation, padding=pad,
                                         rhs_dilation=strides, dimension_numbers=dn,
                                         feature_group_count=n)   # (Cin, kh', kw', N*Cout)
        g = g[:, :kh, :kw].reshape(cin, kh, kw, n, cout)
        return jnp.einsum("n,cijno->ijco", wt, g * g)

    def with_patches(form):
        def f(a, delta, wt):
            p = extract_patches(a, kernel, strides, pad, dilation)
            n, ho, wo, _ = p.shape
            k = form(p.reshape(n, ho * wo, -1), delta.reshape(n, ho * wo, -1), wt)
            return k.reshape(kh, kw, a.shape[-1], -1)
        return f

    def from_inputs(form):
        def f(a, delta, wt):
            return form(a, delta, wt, (kernel, strides, pad, dilation)).reshape(kh, kw, a.shape[-1], -1)
        return f

    fns = {"plain": plain, "patches": patches, "grouped": grouped,
           "chunked": with_patches(fast._kernel_sq_chunked), "scan": from_inputs(fast.conv_kernel_sq_scan),
           "chosen": from_inputs(fast.conv_kernel_fisher)}
    if pixels <= PAIRS_MAX_PIXELS:
        fns["pairs"] = with_patches(fast._kernel_sq_quadratic)
    return fns


def time_layer(a_shape, d_shape, attrs, repeats: int) -> dict:
    """Median ms per technique, alternating, after a warm-up and a check against ``patches``."""
    import jax
    import numpy as np

    rng = np.random.RandomState(0)
    a = jax.numpy.asarray(rng.rand(*a_shape).astype(np.float32))
    d = jax.numpy.asarray(rng.randn(*d_shape).astype(np.float32))
    wt = jax.numpy.ones((a_shape[0],), np.float32)
    fns = {k: jax.jit(f) for k, f in techniques(attrs, d_shape[1] * d_shape[2]).items()}
    ref = np.asarray(fns["patches"](a, d, wt))
    errs = {}
    for k, f in fns.items():
        got = np.asarray(jax.block_until_ready(f(a, d, wt)))
        if k != "plain":
            errs[k] = float(np.abs(got - ref).max() / np.abs(ref).max())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(a, d, wt))
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {"ms": {k: statistics.median(v) for k, v in times.items()}, "rel_err_vs_patches": errs}


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench conv", description=__doc__.split("\n")[0])
    p.add_argument("--nets", default="tanas_cnn,small_cnn,vgg16,resnet18")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="write DIR/conv_fisher.json")
    args = p.parse_args(argv)
    rows, totals = [], {}
    print("| net | layer | a (N,H,W,C) | Cout | " + " | ".join(f"{t} ms" for t in TECHNIQUES) + " | fastest Fisher |")
    print("|" + "---|" * (5 + len(TECHNIQUES)))
    for net in [n for n in args.nets.split(",") if n]:
        seen: dict = {}
        tot = dict.fromkeys(TECHNIQUES, 0.0)
        for name, a_shape, d_shape, attrs in conv_layers(net, MICROBATCH.get(net, 32)):
            key = (a_shape, d_shape, attrs)
            if key not in seen:
                seen[key] = time_layer(a_shape, d_shape, attrs, args.repeats)
                r = seen[key]
                best = min((t for t in r["ms"] if t not in ("plain", "chosen")), key=lambda t: r["ms"][t])
                rows.append({"net": net, "layer": name, "a": a_shape, "delta": d_shape, **r, "fastest": best})
                print(f"| {net} | {name} | {a_shape} | {d_shape[-1]} | " +
                      " | ".join(_ms(r["ms"].get(t)) for t in TECHNIQUES) + f" | {best} |", flush=True)
            for t in TECHNIQUES:   # a technique not timed on a layer counts as the chosen path there
                tot[t] += seen[key]["ms"].get(t, seen[key]["ms"]["chosen"])
        totals[net] = tot
    print("\n| net (all conv layers) | " + " | ".join(f"{t} ms" for t in TECHNIQUES) + " |")
    print("|" + "---|" * (1 + len(TECHNIQUES)))
    for net, tot in totals.items():
        print(f"| {net} | " + " | ".join(f"{tot[t]:.1f}" for t in TECHNIQUES) + " |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "conv_fisher.json"), "w") as f:
            json.dump({"rows": rows, "totals": totals, "settings": vars(args)}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
