"""Fisher engine: every path against an explicit one-example-at-a-time loop."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tanas_jax.errors import UserError
from tanas_jax.fisher import (
    FisherEngine,
    choose_microbatch,
    cross_gram,
    fisher_diag,
    gram_matrix,
    leaf_names,
    make_plan,
    per_example_gradients,
    per_example_grads,
)
from tanas_jax.layers import Conv, max_pool_2x2

# ---------------------------------------------------------------- test nets

class ConvNet(nn.Module):
    """Convs of every kind the fast path knows: padded 5x5, strided, depthwise,
    flax nn.Conv, a 3x3 conv on a 2x2 map (im2col), reshape max-pool, dense."""

    classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.relu(Conv(4, (5, 5), padding=2, name="c5")(x))                 # 8x8
        x = nn.relu(Conv(6, (3, 3), strides=2, name="cs")(x))                  # 4x4
        x = nn.relu(Conv(6, (3, 3), feature_group_count=3, name="dw")(x))      # depthwise-ish
        x = nn.tanh(nn.Conv(5, (3, 3), padding="SAME", name="flaxconv")(x))
        x = max_pool_2x2(x)                                                    # 2x2 map
        x = nn.relu(Conv(5, (3, 3), use_bias=False, name="small")(x))         # im2col path
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(7, name="fc")(x))
        return nn.Dense(self.classes, name="head")(x)


class BNNet(nn.Module):
    classes: int = 4

    @nn.compact
    def __call__(self, x):
        x = Conv(4, (3, 3), name="c1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(x))
        x = max_pool_2x2(x)
        x = Conv(6, (3, 3), use_bias=False, name="c2")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn2")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(5, name="fc")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, use_scale=False, name="bn3")(x))
        return nn.Dense(self.classes, name="head")(x)


class SeqDense(nn.Module):
    """A Dense applied to a (B, T, D) input: per-example grads sum over T."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], 4, -1)
        x = nn.tanh(nn.Dense(6, name="tok")(x)).mean(1)
        return nn.Dense(3, name="head")(x)


class Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = nn.Dense(x.shape[-1] if x.ndim == 2 else 8, name="shared")
        x = x.reshape(x.shape[0], -1)[:, :8]
        x = nn.tanh(d(nn.tanh(d(x))))
        return nn.Dense(2, name="head")(x) + self.param("offset", nn.initializers.zeros, (2,))


def _setup(module, shape, m=9, seed=0, classes=None):
    rng = np.random.RandomState(seed)
    x = rng.rand(m, *shape).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(seed), jnp.asarray(x[:2]))
    variables = jax.tree_util.tree_map(lambda a: a, dict(variables))
    if "batch_stats" in variables:  # non-trivial running statistics
        k = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 100))
        variables["batch_stats"] = jax.tree_util.tree_map(
            lambda a: jax.random.uniform(next(k), a.shape, minval=0.1, maxval=0.6), variables["batch_stats"])
        variables["params"] = jax.tree_util.tree_map(
            lambda a: a + 0.3 * jax.random.normal(next(k), a.shape), variables["params"])
    apply = lambda v, xx: module.apply(v, xx)  # noqa: E731
    c = int(apply(variables, x[:1]).shape[-1])
    y = rng.randint(0, c, size=m).astype(np.int32)
    return apply, variables, x, y


def naive_fisher(apply, variables, x, y):
    """One example at a time: (1/M) sum_i grad(log p(y_i|x_i))**2."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    @jax.jit
    def g1(p, xi, yi):
        return jax.grad(lambda q: jax.nn.log_softmax(apply({"params": q, **rest}, xi[None])[0])[yi])(p)

    acc = jax.tree_util.tree_map(jnp.zeros_like, params)
    for i in range(x.shape[0]):
        g = g1(params, x[i], y[i])
        acc = jax.tree_util.tree_map(lambda a, b: a + b * b, acc, g)
    return jax.tree_util.tree_map(lambda a: a / x.shape[0], acc)


def naive_exact_fisher(apply, variables, x):
    """True Fisher: sum over all labels weighted by p(y|x), one example at a time."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    logits = np.asarray(apply(variables, x))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)

    @jax.jit
    def g1(p, xi, yi):
        return jax.grad(lambda q: jax.nn.log_softmax(apply({"params": q, **rest}, xi[None])[0])[yi])(p)

    acc = jax.tree_util.tree_map(jnp.zeros_like, params)
    for i in range(x.shape[0]):
        for c in range(logits.shape[1]):
            g = g1(params, x[i], c)
            acc = jax.tree_util.tree_map(lambda a, b, p=probs[i, c]: a + p * b * b, acc, g)
    return jax.tree_util.tree_map(lambda a: a / x.shape[0], acc)


def assert_tree_close(a, b, rtol=1e-5):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for name, p, q in zip(leaf_names(a), la, lb):
        p, q = np.asarray(p), np.asarray(q)
        assert p.shape == q.shape, name
        scale = max(float(np.abs(q).max()), 1e-30)
        np.testing.assert_allclose(p, q, rtol=rtol, atol=rtol * scale, err_msg=name)


class FlaxStrideNet(nn.Module):
    """flax nn.Conv at stride 2 with 'SAME' on even maps: XLA pads these asymmetrically (0 before, 1 after)."""

    classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME", name="s2")(x))      # 8x8 -> 4x4
        x = nn.relu(nn.Conv(3, (4, 4), strides=2, padding="SAME", name="s2k4")(x))    # 4x4 -> 2x2
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.classes, name="head")(x)


NETS = {
    "convnet": (ConvNet(), (8, 8, 3)),
    "flax_stride2": (FlaxStrideNet(), (8, 8, 2)),
    "bn": (BNNet(), (6, 6, 2)),
    "seqdense": (SeqDense(), (4, 5)),
}


@pytest.mark.parametrize("net", sorted(NETS))
def test_vmap_and_fast_equal_naive_loop(net):
    module, shape = NETS[net]
    apply, variables, x, y = _setup(module, shape, m=9)
    ref = naive_fisher(apply, variables, x, y)
    plan = make_plan(apply, variables, x[:1])
    assert plan.ok, plan.reason
    # microbatch 4 with 9 examples: exercises the padded (weight-0) last microbatch
    got_vmap, info_v = fisher_diag(apply, variables, x, y, method="vmap", microbatch=4, return_info=True)
    got_fast, info_f = fisher_diag(apply, variables, x, y, method="fast", microbatch=4, return_info=True)
    assert info_v["method"] == "vmap" and info_f["method"] == "fast"
    assert_tree_close(got_vmap, ref)
    assert_tree_close(got_fast, ref)
    if net == "seqdense":  # microbatch size does not change the result
        assert_tree_close(fisher_diag(apply, variables, x, y, method="fast", microbatch=9), ref)


@pytest.mark.parametrize("n,npix,k,o", [(6, 1, 5, 3), (6, 4, 7, 3), (16, 9, 6, 4), (16, 25, 40, 300), (12, 16, 9, 5)])
def test_conv_kernel_square_sum_forms_equal_a_numpy_loop(n, npix, k, o):
    """Every form of ``sum_i w_i (p_i^T d_i)**2`` (pixel pairs, one einsum, chunks of examples) equals
    a float64 numpy loop over examples, whichever form the shape selects."""
    from tanas_jax.fisher import fast

    rng = np.random.RandomState(n + npix)
    p, d = rng.randn(n, npix, k).astype(np.float32), rng.randn(n, npix, o).astype(np.float32)
    wt = rng.rand(n).astype(np.float32)
    ref = sum(float(wt[i]) * (p[i].astype(np.float64).T @ d[i].astype(np.float64)) ** 2 for i in range(n))
    forms = {"quadratic": fast._kernel_sq_quadratic, "direct": fast._kernel_sq_direct,
             "chunked": fast._kernel_sq_chunked, "chosen": fast.conv_kernel_sq}
    for name, f in forms.items():
        np.testing.assert_allclose(np.asarray(jax.jit(f)(p, d, wt)), ref, rtol=2e-5, atol=2e-5 * ref.max(),
                                   err_msg=name)


def _numpy_conv_kernel_sq(a, delta, wt, kernel, strides, pad, dilation):
    """``sum_i wt_i g_i**2`` with each example's kernel gradient ``g_i[u, v, c, o] = sum_{y, x}
    a_pad[i, y*sh + u*dh, x*sw + v*dw, c] * delta[i, y, x, o]``: float64 loops, no patches."""
    a64 = np.pad(a.astype(np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
    n, ho, wo, o = delta.shape
    out = np.zeros(kernel + (a.shape[-1], o))
    for i in range(n):
        g = np.zeros_like(out)
        for u in range(kernel[0]):
            for v in range(kernel[1]):
                rows = u * dilation[0] + strides[0] * np.arange(ho)
                cols = v * dilation[1] + strides[1] * np.arange(wo)
                g[u, v] = np.einsum("yxc,yxo->co", a64[i][np.ix_(rows, cols)], delta[i].astype(np.float64))
        out += float(wt[i]) * g * g
    return out


@pytest.mark.parametrize("geometry", [
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),       # 3x3 SAME
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),       # stride 2
    ((3, 2), (1, 2), ((0, 1), (2, 0)), (2, 1)),       # asymmetric padding, dilation
    ((1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),       # 1x1 shortcut
])
def test_conv_kernel_fisher_from_inputs_equals_a_numpy_loop(geometry):
    """``conv_kernel_sq_scan`` (patches per scan step, output-channel tiles) at every chunk / tile
    size, and ``conv_kernel_fisher`` (which also picks the pixel-pair form on tiny maps), equal a
    float64 loop over examples, kernel offsets and pixels; so does ``scan_tiles``' own choice."""
    from tanas_jax.fisher import fast

    kernel, strides, pad, dilation = geometry
    rng = np.random.RandomState(sum(kernel) + strides[0])
    n, cin, o = 6, 3, 4

    def out_size(h, w):
        return ((h + sum(pad[0]) - (kernel[0] - 1) * dilation[0] - 1) // strides[0] + 1,
                (w + sum(pad[1]) - (kernel[1] - 1) * dilation[1] - 1) // strides[1] + 1)

    tiny = next(hw for hw in ((2, 2), (3, 2), (4, 3), (5, 3)) if 1 <= np.prod(out_size(*hw)) <= 4)
    for h, w in ((7, 6), tiny):         # tiny: an output map of <= 4 pixels (pixel pairs)
        a = rng.randn(n, h, w, cin).astype(np.float32)
        ho, wo = out_size(h, w)
        assert ho * wo > (4 if h == 7 else 0)
        delta = rng.randn(n, ho, wo, o).astype(np.float32)
        wt = rng.rand(n).astype(np.float32)
        ref = _numpy_conv_kernel_sq(a, delta, wt, kernel, strides, pad, dilation).reshape(-1, o)
        runs = {"chosen": jax.jit(lambda a_, d_, w_: fast.conv_kernel_fisher(a_, d_, w_, geometry))}
        for c, ot in ((1, 1), (2, 2), (3, 4), (6, 2), (None, None)):
            runs[f"scan c={c} tile={ot}"] = jax.jit(
                lambda a_, d_, w_, c=c, ot=ot: fast.conv_kernel_sq_scan(a_, d_, w_, geometry, c, ot))
        for name, f in runs.items():
            np.testing.assert_allclose(np.asarray(f(a, delta, wt)), ref, rtol=2e-5, atol=2e-5 * ref.max(),
                                       err_msg=f"{name} {h}x{w}")


def test_scan_tiles_bound_the_working_set():
    """A scan step's patches and per-example kernels stay below ``SCAN_FLOATS`` (unless one example
    alone is larger), the chunk divides the microbatch, the tile divides the channels."""
    from tanas_jax.fisher import fast

    for n, npix, k, o in ((32, 16, 4608, 512), (32, 1024, 576, 64), (64, 1024, 9, 16), (7, 3, 5, 6),
                          (32, 64, 1152, 256), (4, 4096, 4608, 512)):
        c, ot = fast.scan_tiles(n, npix, k, o)
        assert n % c == 0 and o % ot == 0 and 1 <= c <= fast.CHUNK_EXAMPLES
        assert k * ot <= fast.SCAN_FLOATS or ot == 1
        step = c * max(npix * k, k * ot, npix * ot)
        assert step <= fast.SCAN_FLOATS or c == 1, (n, npix, k, o, c, ot)
    assert fast.scan_tiles(32, 16, 4608, 512) == (1, 256)    # VGG-16 4x4 maps: tiles, one example per step
    assert fast.scan_tiles(64, 1024, 9, 16) == (8, 16)       # small layers: 8 examples per step


def test_real_model_zoo_net_small_cnn():
    from tanas_jax.models import init, make_apply
    v = init("small_cnn", 2, jax.random.PRNGKey(3))
    ap = make_apply("small_cnn", 2)
    rng = np.random.RandomState(0)
    x = rng.rand(5, 32, 32, 1).astype(np.float32)
    y = rng.randint(0, 2, 5)
    ref = naive_fisher(ap, v, x, y)
    assert_tree_close(fisher_diag(ap, v, x, y, method="fast", microbatch=5), ref)


def test_per_example_grads_shape_and_values():
    apply, variables, x, y = _setup(*NETS["convnet"], m=3)
    g = per_example_grads(apply, variables, x, y)
    for leaf, p in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(variables["params"])):
        assert leaf.shape == (3,) + p.shape
    sq = jax.tree_util.tree_map(lambda a: (a * a).mean(0), g)
    assert_tree_close(sq, naive_fisher(apply, variables, x, y))


def test_exact_estimator_equals_naive_expectation():
    apply, variables, x, y = _setup(*NETS["bn"], m=5)
    ref = naive_exact_fisher(apply, variables, x)
    assert_tree_close(fisher_diag(apply, variables, x, estimator="exact", method="vmap", microbatch=3), ref)
    assert_tree_close(fisher_diag(apply, variables, x, estimator="exact", method="fast", microbatch=3), ref)
    # microbatch from the memory budget (C labels per example: the cached output width)
    got, info = fisher_diag(apply, variables, x, estimator="exact", method="fast", return_info=True,
                            memory_budget=1 << 20)
    assert_tree_close(got, ref)
    assert info["microbatch"] >= 1


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head")(nn.tanh(nn.Dense(4, name="fc")(x)))


def test_mc_estimator_converges_to_exact_expectation():
    apply, variables, x, _ = _setup(Tiny(), (5,), m=4, seed=2)
    exact = naive_exact_fisher(apply, variables, x)
    flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])  # noqa: E731
    errs = []
    for s in (20, 2000):
        mc = fisher_diag(apply, variables, x, estimator="mc", mc_samples=s, method="fast",
                         rng=jax.random.PRNGKey(7), microbatch=4)
        errs.append(np.linalg.norm(flat(mc) - flat(exact)) / np.linalg.norm(flat(exact)))
    assert errs[1] < 0.05, errs
    assert errs[1] < errs[0]
    # fast and vmap draw the same labels (per-example keys)
    mc_v = fisher_diag(apply, variables, x, estimator="mc", mc_samples=20, method="vmap",
                       rng=jax.random.PRNGKey(7), microbatch=2)
    mc_f = fisher_diag(apply, variables, x, estimator="mc", mc_samples=20, method="fast",
                       rng=jax.random.PRNGKey(7), microbatch=4)
    assert_tree_close(mc_f, mc_v)


def test_auto_falls_back_for_shared_or_unknown_layers():
    apply, variables, x, y = _setup(Shared(), (8,), m=4)
    plan = make_plan(apply, variables, x[:1])
    assert not plan.ok
    got, info = fisher_diag(apply, variables, x, y, return_info=True)
    assert info["method"] == "vmap"
    assert_tree_close(got, naive_fisher(apply, variables, x, y))
    with pytest.raises(UserError, match="fast Fisher path"):
        fisher_diag(apply, variables, x, y, method="fast")


def test_authors_variant_is_squared_batch_mean_then_mean_over_out_axis():
    apply, variables, x, y = _setup(Tiny(), (5,), m=8, seed=1)
    got = fisher_diag(apply, variables, x, y, authors=True, microbatch=4)
    params = variables["params"]

    def mean_nll(p, xb, yb):
        lp = jax.nn.log_softmax(apply({"params": p}, xb))
        return -jnp.take_along_axis(lp, yb[:, None], axis=-1).mean()

    g1 = jax.grad(mean_nll)(params, x[:4], y[:4])
    g2 = jax.grad(mean_nll)(params, x[4:], y[4:])
    ref = jax.tree_util.tree_map(lambda a, b: (a * a + b * b) / 2, g1, g2)
    ref = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a.mean(-1, keepdims=True), a.shape), ref)
    assert_tree_close(got, ref)
    # a bias becomes a constant, head rows identical: not a diagonal
    assert np.ptp(np.asarray(got["head"]["bias"])) == 0


def test_step_compiles_once_for_repeated_calls():
    apply, variables, x, y = _setup(Tiny(), (5,), m=8, seed=1)
    eng = FisherEngine()
    eng.fisher_diag(apply, variables, x, y, method="fast", microbatch=4)
    (fn,) = eng.steps.values()
    before = fn._cache_size()
    variables2 = jax.tree_util.tree_map(lambda a: a * 1.5, variables)
    fisher_diag(apply, variables2, x[:7], y[:7], method="fast", microbatch=4, engine=eng)
    (fn2,) = eng.steps.values()
    assert fn2 is fn
    assert fn._cache_size() == before == 1


def test_microbatches_run_in_one_compiled_loop_with_or_without_progress(monkeypatch):
    """On accelerators all microbatches go through ONE jitted loop per call; with a progress bar in
    chunks of ``PROGRESS_CHUNK`` (a ragged last chunk reuses the same executable); on CPU one
    microbatch per call.  Every way gives the one-example-at-a-time loop's result."""
    from tanas_jax.fisher import diag

    apply, variables, x, y = _setup(*NETS["bn"], m=9)
    ref = naive_fisher(apply, variables, x, y)
    calls = []
    real = diag._accumulate

    def counting(job, step, mesh, microbatch, bar):
        def counted(*args):
            calls.append(int(args[-2]))       # the trip count of this call
            return step(*args)
        return real(job, counted, mesh, microbatch, bar)

    monkeypatch.setattr(diag, "_accumulate", counting)
    monkeypatch.setattr(diag, "PROGRESS_CHUNK", 2)
    host = FisherEngine().fisher_diag(apply, variables, x, y, method="fast", microbatch=2)
    assert calls == [1] * 5            # CPU default: one microbatch per call, no device loop
    calls.clear()
    monkeypatch.setattr(diag, "CPU_HOST_LOOP", False)   # what accelerators do
    eng = FisherEngine()
    one = eng.fisher_diag(apply, variables, x, y, method="fast", microbatch=2)       # 5 microbatches
    assert calls == [5]
    calls.clear()
    chunked = eng.fisher_diag(apply, variables, x, y, method="fast", microbatch=2, progress=True)
    assert calls == [2, 2, 1]
    (fn,) = eng.steps.values()
    assert fn._cache_size() == 2    # one executable for 8 stacked microbatches, one for chunks of 2
    assert_tree_close(one, ref)
    assert_tree_close(chunked, ref)
    assert_tree_close(chunked, one, rtol=1e-6)
    assert_tree_close(host, ref)
    assert_tree_close(host, one, rtol=1e-6)


def test_engine_caches_stay_bounded_over_many_calls():
    """A long run of calls with ever new ``apply`` closures keeps every cache at its bound."""
    module = Tiny()
    _, variables, x, y = _setup(module, (5,), m=4, seed=1)
    eng = FisherEngine(cache_size=3)
    seen = []
    for i in range(8):
        apply = lambda v, xx: module.apply(v, xx)  # noqa: E731  (a new closure: a new cache key)
        got = eng.fisher_diag(apply, variables, x, y, method=("fast", "vmap")[i % 2], microbatch=4)
        if i == 0:
            first = got
        eng.gram_matrix(apply, variables, x, y, microbatch=4)
        seen.append(eng.cache_sizes())
        assert all(n <= 3 for n in seen[-1].values()), seen
    assert seen[-1]["steps"] == 3 and seen[-1]["block_fns"] == 3 and seen[-1]["meshes"] == 1
    # evictions do not change the numbers
    assert_tree_close(eng.fisher_diag(apply, variables, x, y, method="fast", microbatch=4), first, rtol=0)
    with pytest.raises(ValueError, match="cache size"):
        FisherEngine(cache_size=0)


def test_engine_methods_equal_module_functions():
    apply, variables, x, y = _setup(*NETS["bn"], m=6)
    eng = FisherEngine()
    for a, b in ((eng.fisher_diag(apply, variables, x, y, microbatch=4),
                  fisher_diag(apply, variables, x, y, microbatch=4)),
                 (eng.gram_matrix(apply, variables, x, y, microbatch=4)[0],
                  gram_matrix(apply, variables, x, y, microbatch=4)[0]),
                 (eng.cross_gram(apply, variables, apply, variables, x, y, microbatch=4),
                  cross_gram(apply, variables, apply, variables, x, y, microbatch=4, engine=None)),
                 (eng.per_example_gradients(apply, variables, x, y, microbatch=4)[0],
                  per_example_gradients(apply, variables, x, y, microbatch=4)[0])):
        for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    # traces: fisher_diag's output width, layer plan and finishing step
    assert eng.cache_sizes() == {"steps": 1, "block_fns": 1, "meshes": 1, "traces": 3}


def test_engine_traces_apply_once_per_shape():
    """A second ``fisher_diag`` call with the same apply and shapes does not trace the network again
    (plan, output width and step are cached), and gives the same numbers; new values of the
    variables and other examples of the same shape reuse them."""
    module = Tiny()
    _, variables, x, y = _setup(module, (5,), m=6, seed=1)
    calls = []

    def apply(v, xx):
        calls.append(xx.shape)
        return module.apply(v, xx)

    eng = FisherEngine()
    first = eng.fisher_diag(apply, variables, x, y, method="fast", microbatch=4)
    n_first = len(calls)
    assert n_first > 0
    v2 = jax.tree_util.tree_map(lambda a: 2.0 * a, variables)
    again = eng.fisher_diag(apply, v2, x[:5], y[:5], method="fast", microbatch=4)
    assert len(calls) == n_first
    assert_tree_close(eng.fisher_diag(apply, variables, x, y, method="fast", microbatch=4), first, rtol=0)
    assert len(calls) == n_first
    assert_tree_close(again, fisher_diag(apply, v2, x[:5], y[:5], method="vmap", microbatch=4))


FISHER_IMPORTS_SCRIPT = textwrap.dedent("""
    import sys
    import tanas_jax.fisher
    import tanas_jax.fisher.core, tanas_jax.fisher.diag, tanas_jax.fisher.engine, tanas_jax.fisher.fast
    import tanas_jax.fisher.gram
    bad = sorted(m for m in sys.modules if m == "tanas_jax.models" or m.startswith("tanas_jax.models."))
    print("LOADED", bad)
""")


def test_fisher_never_imports_the_model_zoo():
    """``tanas_jax.fisher`` reaches layer types through ``tanas_jax.layers`` only."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for path in sorted((root / "tanas_jax" / "fisher").glob("*.py")):
        src = path.read_text()
        for node in ast.walk(ast.parse(src)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.startswith("tanas_jax.models"), f"{path.name} imports {n}"
                assert not n.startswith("jax._src"), f"{path.name} imports {n}"
        assert "jax.config.update" not in src, f"{path.name} mutates jax.config"
    r = subprocess.run([sys.executable, "-c", FISHER_IMPORTS_SCRIPT], capture_output=True, text=True,
                       timeout=300, cwd=str(root))
    assert "LOADED []" in r.stdout, (r.stdout, r.stderr[-3000:])


def test_bad_inputs_are_user_errors():
    apply, variables, x, y = _setup(Tiny(), (5,), m=4)
    with pytest.raises(UserError, match="empty"):
        fisher_diag(apply, variables, x[:0], y[:0], name="mnist_digit0")
    with pytest.raises(UserError, match="estimator"):
        fisher_diag(apply, variables, x, y, estimator="bogus")
    bad = jax.tree_util.tree_map(lambda a: a, variables)
    bad["params"]["fc"]["kernel"] = bad["params"]["fc"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(UserError, match=r"mnist_digit0.*layer (fc|head)/"):
        fisher_diag(apply, bad, x, y, name="mnist_digit0")


def test_choose_microbatch_respects_budget_and_devices():
    assert choose_microbatch(1000, 64_000) == 64
    assert choose_microbatch(10**9, 1000) == 1
    assert choose_microbatch(1000, 50_000, n_devices=4) % 4 == 0


SHARD_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, flax.linen as nn
    assert len(jax.devices()) == 4, jax.devices()
    import sys; sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_fisher import _setup, NETS, assert_tree_close
    from tanas_jax.fisher import fisher_diag
    for net, methods in (("bn", ("fast", "vmap")),):
        apply, variables, x, y = _setup(*NETS[net], m=10)
        for method in methods:
            one = fisher_diag(apply, variables, x, y, method=method, microbatch=4, devices=jax.devices()[:1])
            four = fisher_diag(apply, variables, x, y, method=method, microbatch=4)
            assert_tree_close(four, one, rtol=1e-5)
    one = fisher_diag(apply, variables, x, y, authors=True, microbatch=4, devices=jax.devices()[:1])
    assert_tree_close(fisher_diag(apply, variables, x, y, authors=True, microbatch=4), one, rtol=1e-5)
    mc1 = fisher_diag(apply, variables, x, estimator="mc", microbatch=4, devices=jax.devices()[:1])
    mc4 = fisher_diag(apply, variables, x, estimator="mc", microbatch=4)
    assert_tree_close(mc4, mc1, rtol=1e-5)
    # grouped convs under vmap cannot be sharded in jax 0.10.2: one warning, then one device
    import warnings
    apply, variables, x, y = _setup(*NETS["convnet"], m=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, info = fisher_diag(apply, variables, x, y, method="vmap", microbatch=4, return_info=True)
    one = fisher_diag(apply, variables, x, y, method="vmap", microbatch=4, devices=jax.devices()[:1])
    assert_tree_close(got, one, rtol=1e-5)
    if info["devices"] == 1:
        assert len([w for w in caught if "one device" in str(w.message)]) == 1, caught
    print("SHARDED_OK")
""")


def test_sharded_equals_unsharded_on_4_host_devices():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    code = SHARD_SCRIPT.format(root=root, tests=os.path.join(root, "tests"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "SHARDED_OK" in r.stdout, r.stderr[-3000:]
