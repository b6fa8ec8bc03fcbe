"""Diagonal-Fisher throughput vs one plain mean-gradient pass (issue 3, deliverable 6).

For each net, the same examples go through (a) a jitted mean-gradient pass
in microbatches and (b) ``fisher_diag`` (fast path by default), alternately,
``--repeats`` times; compile time is excluded (one warm-up call each).
Reports seconds (median), examples/s, ``ratio`` = Fisher / plain gradient,
and peak memory (host RSS high-water mark, or the device's peak bytes).

    python benchmarks/per_example_grads.py --nets tanas_cnn,vgg16,resnet18 --examples 256 --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tanas_jax  # noqa: E402,F401  (sets our XLA defaults before JAX starts)


def _peak_mb() -> float:
    import jax

    d = jax.devices()[0]
    try:
        st = d.memory_stats()
        if st and "peak_bytes_in_use" in st:
            return st["peak_bytes_in_use"] / 2**20
    except Exception:  # noqa: BLE001
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_net(net: str, examples: int, microbatch: int, repeats: int, method: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tanas_jax import models
    from tanas_jax.fisher import fisher_diag

    spec = models.get_net(net)
    C = 10
    variables = models.init(net, C, jax.random.PRNGKey(0))
    apply = models.make_apply(net, C)
    rng = np.random.RandomState(0)
    x = rng.rand(examples, *spec.input_shape).astype(np.float32)
    y = rng.randint(0, C, examples).astype(np.int32)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    @jax.jit
    def grad_step(acc, p, xb, yb):
        def loss(q):
            lp = jax.nn.log_softmax(apply({"params": q, **rest}, xb))
            return -jnp.take_along_axis(lp, yb[:, None], axis=-1).sum()
        return jax.tree_util.tree_map(jnp.add, acc, jax.grad(loss)(p))

    def plain():
        acc = jax.tree_util.tree_map(jnp.zeros_like, params)
        for k in range(0, examples, microbatch):
            acc = grad_step(acc, params, x[k:k + microbatch], y[k:k + microbatch])
        return jax.block_until_ready(acc)

    def fisher():
        return jax.block_until_ready(fisher_diag(apply, variables, x, y, microbatch=microbatch, method=method))

    t0 = time.perf_counter(); plain(); c_plain = time.perf_counter() - t0
    t0 = time.perf_counter(); _, info = fisher_diag(apply, variables, x, y, microbatch=microbatch, method=method,
                                                    return_info=True); c_fisher = time.perf_counter() - t0
    tp, tf = [], []
    for _ in range(repeats):  # alternate the two methods
        t0 = time.perf_counter(); plain(); tp.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); fisher(); tf.append(time.perf_counter() - t0)
    sp, sf = statistics.median(tp), statistics.median(tf)
    return {"net": net, "params": models.param_count(params), "examples": examples, "microbatch": microbatch,
            "method": info["method"], "plain_s": sp, "fisher_s": sf, "ratio": sf / sp,
            "plain_examples_per_s": examples / sp, "fisher_examples_per_s": examples / sf,
            "first_call_s": {"plain": c_plain, "fisher": c_fisher}, "peak_mb": _peak_mb()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench fisher", description=__doc__.split("\n")[0])
    p.add_argument("--nets", default="tanas_cnn,vgg16,resnet18")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--microbatch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--method", default="auto", choices=("auto", "fast", "vmap"))
    p.add_argument("--out", default=None, help="write DIR/result.json")
    args = p.parse_args(argv)
    import jax

    from tanas_jax import provenance

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {len(jax.devices())}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    rows = []
    for net in [n for n in args.nets.split(",") if n]:
        r = bench_net(net, args.examples, args.microbatch, args.repeats, args.method)
        rows.append(r)
        print(f"{net:10s} {r['params'] / 1e6:6.2f}M  plain {r['plain_s']:.3f}s  fisher[{r['method']}] "
              f"{r['fisher_s']:.3f}s  ratio {r['ratio']:.2f}  {r['fisher_examples_per_s']:.0f} ex/s  "
              f"peak {r['peak_mb']:.0f} MB", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump({"benchmark": "per_example_grads", "rows": rows, "settings": vars(args),
                       "provenance": provenance.stamp()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
