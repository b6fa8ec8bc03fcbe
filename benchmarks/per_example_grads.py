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


def _timed(fn):
    """``(fn(), seconds it took)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_net(net: str, examples: int, microbatch: int, repeats: int, method: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tanas_jax import models
    from tanas_jax.fisher import FisherEngine
    fisher_diag = FisherEngine().fisher_diag  # one engine: calls after the first reuse its compiled step

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

    _, c_plain = _timed(plain)
    (_, info), c_fisher = _timed(lambda: fisher_diag(apply, variables, x, y, microbatch=microbatch, method=method,
                                                     return_info=True))
    tp, tf = [], []
    for _ in range(repeats):  # alternate the two methods
        tp.append(_timed(plain)[1])
        tf.append(_timed(fisher)[1])
    sp, sf = statistics.median(tp), statistics.median(tf)
    return {"net": net, "params": models.param_count(params), "examples": examples, "microbatch": microbatch,
            "method": info["method"], "plain_s": sp, "fisher_s": sf, "ratio": sf / sp,
            "plain_examples_per_s": examples / sp, "fisher_examples_per_s": examples / sf,
            "first_call_s": {"plain": c_plain, "fisher": c_fisher}, "peak_mb": _peak_mb()}


# --- PyTorch peers (optional: only when torch is importable) -----------------------------------
TORCH_NETS = ("tanas_cnn", "small_cnn", "vgg16")


def _torch_model(net: str, C: int):
    import torch.nn as tnn

    if net == "tanas_cnn":
        return tnn.Sequential(tnn.Conv2d(1, 32, 5, padding=2), tnn.ReLU(), tnn.Flatten(),
                              tnn.Linear(32 * 28 * 28, 1024), tnn.ReLU(), tnn.Linear(1024, C))
    if net == "small_cnn":
        layers, cin = [], 1
        for w in (16, 32, 64):
            layers += [tnn.Conv2d(cin, w, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2)]
            cin = w
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(64 * 4 * 4, 64), tnn.ReLU(), tnn.Linear(64, C))
    if net == "vgg16":
        from tanas_jax.models.nets import VGG16_CFG

        layers, cin = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(tnn.MaxPool2d(2))
                continue
            layers += [tnn.Conv2d(cin, v, 3, padding=1), tnn.BatchNorm2d(v), tnn.ReLU()]
            cin = v
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(512, 10), tnn.Linear(10, C))
    return None


def torch_peers(net: str, x, y, microbatch: int, repeats: int, methods: list[str]) -> dict | None:
    """Seconds (median) of torch plain mean gradient and torch.func vmap(grad) diagonal Fisher
    (+ a per-example loop) on the same architecture and examples; None without torch."""
    try:
        import torch
        from torch.func import functional_call, grad, vmap
    except ImportError:
        return None
    C = 10
    model = _torch_model(net, C)
    if model is None:
        return None
    torch.manual_seed(0)
    model.eval()                                   # BatchNorm in eval mode, as our Fisher
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y.astype("int64"))
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    lossf = torch.nn.functional.cross_entropy

    def plain():
        model.zero_grad(set_to_none=True)
        for k in range(0, len(xt), microbatch):
            lossf(model(xt[k:k + microbatch]), yt[k:k + microbatch], reduction="sum").backward()

    def one(p, xb, yb):
        out = functional_call(model, (p, buffers), (xb[None],))
        return lossf(out, yb[None], reduction="sum")

    per_ex = vmap(grad(one), in_dims=(None, 0, 0))

    def func():
        acc = {k: torch.zeros_like(v) for k, v in params.items()}
        for k in range(0, len(xt), microbatch):
            g = per_ex(params, xt[k:k + microbatch], yt[k:k + microbatch])
            for n, v in g.items():
                acc[n] += (v * v).sum(0)
        return acc

    def loop():
        acc = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
        for i in range(len(xt)):
            model.zero_grad(set_to_none=True)
            lossf(model(xt[i:i + 1]), yt[i:i + 1], reduction="sum").backward()
            for n, v in model.named_parameters():
                acc[n] += v.grad * v.grad
        return acc

    fns = {"torch_plain": plain, "torch_func_vmap": func, "torch_loop": loop}
    fns = {k: v for k, v in fns.items() if k == "torch_plain" or k.split("_", 1)[1] in methods}
    times = {k: [] for k in fns}
    for f in fns.values():
        f()                                        # warm-up
    for _ in range(repeats):                       # alternate
        for k, f in fns.items():
            times[k].append(_timed(f)[1])
    out = {k: statistics.median(v) for k, v in times.items()}
    out["torch_version"] = torch.__version__
    out["torch_threads"] = torch.get_num_threads()
    out.update(_peer_notes())
    return out


def _peer_notes() -> dict:
    """Whether the other per-example-gradient libraries are installed (they are not benchmarked here)."""
    out = {}
    for name in ("opacus", "backpack"):
        try:
            __import__(name)
            out[f"{name}_note"] = "installed but not wired in this benchmark"
        except ImportError:
            out[f"{name}_note"] = "not installed (skipped)"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench fisher", description=__doc__.split("\n")[0])
    p.add_argument("--nets", default="tanas_cnn,vgg16,resnet18")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--microbatch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--method", default="auto", choices=("auto", "fast", "vmap"))
    p.add_argument("--out", default=None, help="write DIR/result.json")
    p.add_argument("--peers", default="func_vmap",
                   help="torch peers besides the plain torch gradient when torch is importable: comma-separated "
                        "func_vmap, loop; 'none' to skip torch")
    args = p.parse_args(argv)
    import jax

    from tanas_jax import provenance

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {len(jax.devices())}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    rows = []
    for net in [n for n in args.nets.split(",") if n]:
        r = bench_net(net, args.examples, args.microbatch, args.repeats, args.method)
        if args.peers != "none" and net in TORCH_NETS:
            import numpy as np

            from tanas_jax import models

            spec = models.get_net(net)
            rng = np.random.RandomState(0)        # the same examples as bench_net
            x = rng.rand(args.examples, *spec.input_shape).astype(np.float32)
            y = rng.randint(0, 10, args.examples).astype(np.int32)
            t = torch_peers(net, x, y, args.microbatch, args.repeats, args.peers.split(","))
            if t:
                r["torch"] = t
                fisher_peers = [v for k, v in t.items() if k in ("torch_func_vmap", "torch_loop")]
                if fisher_peers:
                    r["faster_than_torch_fisher_peers"] = r["fisher_s"] < min(fisher_peers)
                r["fisher_vs_torch_plain"] = r["fisher_s"] / t["torch_plain"]
                print("           torch " + ", ".join(f"{k} {v:.3f}s" for k, v in t.items()
                                                      if isinstance(v, float)), flush=True)
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
