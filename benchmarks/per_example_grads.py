"""Diagonal-Fisher throughput vs one plain mean-gradient pass, and vs every PyTorch peer
(issue 3, deliverable 6; issue 14, deliverable 2).

For each net, the same examples go through (a) a jitted mean-gradient pass in microbatches and
(b) ``fisher_diag`` (fast path by default), alternately, ``--repeats`` times; compile time is
excluded (one warm-up call each).  Reports seconds (median), examples/s, ``ratio`` = Fisher /
plain gradient, and peak memory (host RSS high-water mark, or the device's peak bytes; on the
host it is the whole process's, so after a net whose torch peers ran it includes theirs).

PyTorch peers (when installed: ``benchmarks/install_peers.sh``) run on a torch twin of each net
(same layers, same eval-mode BatchNorm) into which the project's weights are copied:

* ``func_vmap`` — ``torch.func.vmap(grad)`` per-example gradients, squared and summed;
* ``loop``      — one backward pass per example;
* ``backpack``  — BackPACK's ``SumGradSquared`` extension (sum_i g_i**2 directly);
* ``opacus``    — Opacus ``GradSampleModule`` per-example gradients, squared and summed.

Before timing, each peer's diagonal Fisher is compared with ours on the same examples and labels
(``||F_peer - F_ours|| / ||F_ours||`` over all parameters); a peer above ``TOLERANCE`` is
reported as WRONG and its time is not used.  A peer that cannot run a net says why.

    python benchmarks/per_example_grads.py --nets tanas_cnn,vgg16,resnet18 --examples 256 --out DIR
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tanas_jax  # noqa: E402,F401  (sets our XLA defaults before JAX starts)

NUM_CLASSES = 10
TOLERANCE = 1e-4                       # largest relative Fisher error of a peer that is timed
PEERS = {"func_vmap": "torch", "loop": "torch", "backpack": "backpack", "opacus": "opacus"}
PEER_DISTRIBUTIONS = ("torch", "backpack-for-pytorch", "opacus")
TORCH_NETS = ("tanas_cnn", "small_cnn", "vgg16", "resnet18")


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


def make_problem(net: str, examples: int):
    """``(apply, variables, x, y)``: the net at its seed-0 initialisation and seed-0 random
    examples.  BatchNorm statistics and affine parameters are drawn away from the identity
    (seed 1) so that the peers' Fisher check also checks how BatchNorm is copied."""
    import jax
    import numpy as np

    from tanas_jax import models

    spec = models.get_net(net)
    variables = dict(models.init(net, NUM_CLASSES, jax.random.PRNGKey(0)))
    apply = models.make_apply(net, NUM_CLASSES)
    rng = np.random.RandomState(0)
    x = rng.rand(examples, *spec.input_shape).astype(np.float32)
    y = rng.randint(0, NUM_CLASSES, examples).astype(np.int32)
    if "batch_stats" in variables:
        variables = _perturb_batch_norm(variables, np.random.RandomState(1))
    return apply, variables, x, y


def _perturb_batch_norm(variables: dict, rng) -> dict:
    import jax
    import numpy as np

    def draw(path, a):
        name = path[-1].key
        a = np.asarray(a)
        if name in ("mean", "bias"):
            return (0.1 * rng.randn(*a.shape)).astype(np.float32)
        if name in ("var", "scale"):
            return (1.0 + 0.2 * rng.rand(*a.shape)).astype(np.float32)
        return a

    stats = jax.tree_util.tree_map_with_path(draw, variables["batch_stats"])
    bn_paths = {p[:-1] for p, _ in jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]}
    params = jax.tree_util.tree_map_with_path(lambda p, a: draw(p, a) if p[:-1] in bn_paths else a,
                                              variables["params"])
    return jax.tree_util.tree_map(jax.numpy.asarray, {**variables, "params": params, "batch_stats": stats})


def bench_net(net: str, examples: int, microbatch: int, repeats: int, method: str):
    """``(row, fisher)``: the timing row of the project's plain gradient and Fisher, and our
    diagonal Fisher of these examples (the reference of the peers' check)."""
    import jax
    import jax.numpy as jnp

    from tanas_jax import models
    from tanas_jax.fisher import FisherEngine

    fisher_diag = FisherEngine().fisher_diag  # one engine: calls after the first reuse its compiled step

    apply, variables, x, y = make_problem(net, examples)
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
    (ours, info), c_fisher = _timed(lambda: jax.block_until_ready(
        fisher_diag(apply, variables, x, y, microbatch=microbatch, method=method, return_info=True)))
    cpu: dict = {}
    med = time_alternating({"plain": plain, "fisher": fisher}, repeats, cpu)   # alternate the two methods
    sp, sf = med["plain"], med["fisher"]
    row = {"net": net, "params": models.param_count(params), "examples": examples, "microbatch": microbatch,
           "method": info["method"], "plain_s": sp, "fisher_s": sf, "ratio": sf / sp,
           "plain_cpu_s": cpu["plain"], "fisher_cpu_s": cpu["fisher"], "cpu_ratio": cpu["fisher"] / cpu["plain"],
           "plain_examples_per_s": examples / sp, "fisher_examples_per_s": examples / sf,
           "first_call_s": {"plain": c_plain, "fisher": c_fisher}, "peak_mb": _peak_mb()}
    return row, ours


# --- PyTorch peers (optional: only when torch is importable) -----------------------------------
def installed_peers() -> list[str]:
    return [p for p, mod in PEERS.items() if importlib.util.find_spec(mod) is not None]


def select_peers(arg: str) -> list[str]:
    """``--peers``: 'all' (every installed peer), 'none', or comma-separated names."""
    if arg == "none":
        return []
    if arg == "all":
        return installed_peers()
    names = [s for s in arg.split(",") if s]
    bad = [s for s in names if s not in PEERS]
    if bad:
        raise SystemExit(f"error: unknown peer(s) {', '.join(bad)}: valid: all, none, {', '.join(PEERS)}")
    return names


def peer_versions() -> dict:
    out = {}
    for dist in PEER_DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _seq(tnn, layers: dict):
    from collections import OrderedDict

    return tnn.Sequential(OrderedDict(layers))


def _twin_resnet18(tnn):
    """Torch CIFAR ResNet-18 whose module names are the flax names of ``ResNet18Backbone``."""

    class Block(tnn.Module):
        def __init__(self, cin: int, f: int, stride: int):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, f, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(f)
            self.conv2 = tnn.Conv2d(f, f, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(f)
            self.relu1, self.relu2 = tnn.ReLU(), tnn.ReLU()
            self.short = stride != 1 or cin != f
            if self.short:
                self.short_conv = tnn.Conv2d(cin, f, 1, stride, 0, bias=False)
                self.short_bn = tnn.BatchNorm2d(f)

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
            return self.relu2(out + (self.short_bn(self.short_conv(x)) if self.short else x))

    layers, cin = {"conv1": tnn.Conv2d(3, 64, 3, 1, 1, bias=False), "bn1": tnn.BatchNorm2d(64),
                   "relu": tnn.ReLU()}, 64
    for stage, (feat, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
        for b in range(2):
            layers[f"layer{stage + 1}_{b}"] = Block(cin, feat, stride if b == 0 else 1)
            cin = feat
    layers.update(pool=tnn.AdaptiveAvgPool2d(1), flatten=tnn.Flatten(), fc=tnn.Linear(512, 10))
    return _seq(tnn, layers)


def _twin_backbone(net: str, tnn):
    """``(backbone, flatten_from)``: a torch backbone whose module names are our flax names, and
    ``{linear name: (H, W, C)}`` for Linear layers after a Flatten (NHWC vs NCHW order)."""
    if net == "tanas_cnn":
        return _seq(tnn, {"conv": tnn.Conv2d(1, 32, 5, padding=2), "relu0": tnn.ReLU(),
                          "flatten": tnn.Flatten(), "fc": tnn.Linear(32 * 28 * 28, 1024),
                          "relu1": tnn.ReLU()}), {"backbone.fc": (28, 28, 32)}
    if net == "small_cnn":
        layers, cin = {}, 1
        for i, w in enumerate((16, 32, 64)):
            layers.update({f"conv{i}": tnn.Conv2d(cin, w, 3, padding=1), f"relu{i}": tnn.ReLU(),
                           f"pool{i}": tnn.MaxPool2d(2)})
            cin = w
        layers.update(flatten=tnn.Flatten(), fc=tnn.Linear(64 * 4 * 4, 64), relu=tnn.ReLU())
        return _seq(tnn, layers), {"backbone.fc": (4, 4, 64)}
    if net == "vgg16":
        from tanas_jax.models.nets import VGG16_CFG

        layers, cin, i = {}, 3, 0
        for v in VGG16_CFG:
            if v == "M":
                layers[f"pool{len(layers)}"] = tnn.MaxPool2d(2)
                continue
            layers.update({f"conv{i}": tnn.Conv2d(cin, v, 3, padding=1), f"bn{i}": tnn.BatchNorm2d(v),
                           f"relu{i}": tnn.ReLU()})
            cin, i = v, i + 1
        layers.update(flatten=tnn.Flatten(), fc=tnn.Linear(512, 10))
        return _seq(tnn, layers), {}
    if net == "resnet18":
        return _twin_resnet18(tnn), {}
    return None, {}


def torch_twin(net: str, variables):
    """The torch twin of ``net`` (eval mode) holding ``variables`` (our weights and BatchNorm
    statistics), and its ``flatten_from``; ``(None, {})`` for a net without a twin."""
    import torch
    import torch.nn as tnn

    backbone, flat = _twin_backbone(net, tnn)
    if backbone is None:
        return None, {}
    head_in = {"tanas_cnn": 1024, "small_cnn": 64}.get(net, 10)
    model = _seq(tnn, {"backbone": backbone, "head": tnn.Linear(head_in, NUM_CLASSES)}).eval()
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    new = to_torch_layout(model, flat, variables["params"])
    if "batch_stats" in variables:
        new |= to_torch_layout(model, flat, variables["batch_stats"], stats=True)
    missing = {k for k in state if not k.endswith("num_batches_tracked")} - set(new)
    if missing:
        raise RuntimeError(f"torch twin of {net}: no weights for {sorted(missing)[:3]}")
    with torch.no_grad():
        for k, a in new.items():
            if tuple(state[k].shape) != a.shape:
                raise RuntimeError(f"torch twin of {net}: {k} is {tuple(state[k].shape)}, ours {a.shape}")
            state[k].copy_(torch.from_numpy(a.copy()))
    return model, flat


def to_torch_layout(model, flat: dict, tree, stats: bool = False) -> dict:
    """Our pytree (params, a Fisher of that shape, or ``batch_stats`` with ``stats``) as
    ``{torch parameter/buffer name: float32 array}`` in the twin's layouts (OIHW, (out, in))."""
    import numpy as np
    import torch.nn as tnn

    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, tnn.BatchNorm2d if stats else (tnn.Conv2d, tnn.Linear, tnn.BatchNorm2d)):
            continue
        sub = tree
        for part in name.split("."):
            sub = sub[part]
        sub = {k: np.asarray(v, np.float32) for k, v in sub.items()}
        if isinstance(mod, tnn.BatchNorm2d):
            pairs = {"running_mean": "mean", "running_var": "var"} if stats else {"weight": "scale", "bias": "bias"}
            out |= {f"{name}.{t}": sub[j] for t, j in pairs.items()}
            continue
        k = sub["kernel"]
        if isinstance(mod, tnn.Conv2d):
            w = k.transpose(3, 2, 0, 1)
        elif name in flat:
            w = k.reshape(*flat[name], -1).transpose(3, 2, 0, 1).reshape(k.shape[-1], -1)
        else:
            w = k.T
        out[f"{name}.weight"] = np.ascontiguousarray(w)
        if "bias" in sub:
            out[f"{name}.bias"] = sub["bias"]
    return out


def _batches(xt, yt, microbatch: int):
    for k in range(0, len(xt), microbatch):
        yield xt[k:k + microbatch], yt[k:k + microbatch]


def _fisher_func_vmap(model, xt, yt, microbatch: int):
    import torch
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def one(p, xb, yb):
        out = functional_call(model, (p, buffers), (xb[None],))
        return torch.nn.functional.cross_entropy(out, yb[None], reduction="sum")

    per_ex = vmap(grad(one), in_dims=(None, 0, 0))

    def run():
        acc = {k: torch.zeros_like(v) for k, v in params.items()}
        for xb, yb in _batches(xt, yt, microbatch):
            for n, g in per_ex(params, xb, yb).items():
                acc[n] += (g * g).sum(0)
        return {n: v / len(xt) for n, v in acc.items()}
    return run


def _fisher_loop(model, xt, yt, microbatch: int):
    import torch

    def run():
        acc = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
        for i in range(len(xt)):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xt[i:i + 1]), yt[i:i + 1], reduction="sum").backward()
            for n, v in model.named_parameters():
                acc[n] += v.grad * v.grad
        return {n: v / len(xt) for n, v in acc.items()}
    return run


def _fisher_backpack(model, xt, yt, microbatch: int):
    """BackPACK ``SumGradSquared`` of the summed loss: sum_i g_i**2 per microbatch (with a mean
    loss it would be sum_i (g_i / B)**2); the sign of the log-likelihood cancels in the square."""
    import copy

    import torch
    from backpack import backpack, extend
    from backpack.extensions import SumGradSquared

    bmodel = extend(copy.deepcopy(model))
    lossf = extend(torch.nn.CrossEntropyLoss(reduction="sum"))

    def run():
        acc = {k: torch.zeros_like(v) for k, v in bmodel.named_parameters()}
        for xb, yb in _batches(xt, yt, microbatch):
            bmodel.zero_grad(set_to_none=True)
            loss = lossf(bmodel(xb), yb)
            with backpack(SumGradSquared()):
                loss.backward()
            for n, v in bmodel.named_parameters():
                acc[n] += v.sum_grad_squared
        return {n: v / len(xt) for n, v in acc.items()}
    return run


def _fisher_opacus(model, xt, yt, microbatch: int):
    """Opacus ``GradSampleModule`` (default, strict validation) per-example gradients of the
    summed loss, squared and summed.  Opacus records activations only in train mode, so the
    wrapped copy is put in train mode (the same function for nets without BatchNorm)."""
    import copy

    import torch
    from opacus import GradSampleModule

    gsm = GradSampleModule(copy.deepcopy(model).train(), batch_first=True, loss_reduction="sum")

    def run():
        acc = {k: torch.zeros_like(v) for k, v in gsm._module.named_parameters()}
        for xb, yb in _batches(xt, yt, microbatch):
            gsm.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(gsm(xb), yb, reduction="sum").backward()
            for n, v in gsm._module.named_parameters():
                acc[n] += (v.grad_sample * v.grad_sample).sum(0)
        return {n: v / len(xt) for n, v in acc.items()}
    return run


PEER_FISHER = {"func_vmap": _fisher_func_vmap, "loop": _fisher_loop, "backpack": _fisher_backpack,
               "opacus": _fisher_opacus}


def relative_error(peer: dict, ours: dict) -> float:
    """``||F_peer - F_ours|| / ||F_ours||`` over all parameters (float64 sums)."""
    import numpy as np

    if set(peer) != set(ours):
        raise RuntimeError(f"parameters differ: {sorted(set(peer) ^ set(ours))[:3]}")
    num = sum(float(((peer[k].detach().double().numpy() - ours[k].astype(np.float64)) ** 2).sum()) for k in ours)
    den = sum(float((ours[k].astype(np.float64) ** 2).sum()) for k in ours)
    return (num / den) ** 0.5


def _reason(peer: str, err: Exception) -> str:
    """One short reason why ``peer`` could not run."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if peer == "opacus" and "buffers" in msg:
        return "no BatchNorm support (Opacus rejects trainable layers with buffers)"
    return f"{type(err).__name__}: {msg[:90]}"


def prepare_peers(net: str, variables, x, y, ours, microbatch: int, peers: list[str]):
    """Copy our weights into the torch twin and check each peer's Fisher against ``ours``.

    Returns ``(results, fns)``: per peer ``{'rel_error', 'ok'}`` or ``{'reason'}``, and the
    callables to time: ``torch_plain`` (the twin's mean-gradient pass) and every peer that ran
    (its checked call was its warm-up); no callables without torch."""
    if not peers:
        return {}, {}
    if importlib.util.find_spec("torch") is None:
        return {p: {"reason": "torch not installed (benchmarks/install_peers.sh)"} for p in peers}, {}
    import numpy as np
    import torch

    model, flat = torch_twin(net, variables)
    if model is None:
        return {p: {"reason": f"no torch twin of {net}"} for p in peers}, {}
    # .copy() gives NCHW strides even on a size-1 channel axis (np.ascontiguousarray keeps the
    # transposed strides there, torch then picks channels-last, and Opacus' unfold goes wrong).
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(np.asarray(y).astype("int64"))
    ref = to_torch_layout(model, flat, ours)
    results, fns = {}, {}
    for p in peers:
        if importlib.util.find_spec(PEERS[p]) is None:
            results[p] = {"reason": "not installed (benchmarks/install_peers.sh)"}
            continue
        try:
            fn = PEER_FISHER[p](model, xt, yt, microbatch)
            err = relative_error(fn(), ref)
        except Exception as e:  # noqa: BLE001  (a peer that cannot run this net says why)
            results[p] = {"reason": _reason(p, e)}
            continue
        results[p] = {"rel_error": err, "ok": err <= TOLERANCE}
        fns[p] = fn

    def plain():
        model.zero_grad(set_to_none=True)
        for xb, yb in _batches(xt, yt, microbatch):
            torch.nn.functional.cross_entropy(model(xb), yb, reduction="sum").backward()

    plain()                                        # warm-up
    return results, {"torch_plain": plain, **fns}


def peer_errors(net: str, examples: int, microbatch: int, peers: list[str], method: str = "auto") -> dict:
    """Per peer ``{'rel_error', 'ok'}`` or ``{'reason'}`` on ``make_problem(net, examples)``
    (the check of the benchmark, without timing)."""
    from tanas_jax.fisher import fisher_diag

    apply, variables, x, y = make_problem(net, examples)
    ours = fisher_diag(apply, variables, x, y, microbatch=microbatch, method=method)
    return prepare_peers(net, variables, x, y, ours, microbatch, peers)[0]


def time_alternating(fns: dict, repeats: int, cpu: dict | None = None) -> dict:
    """Median seconds of each (warmed-up) callable, the callables alternating ``repeats`` times;
    with a ``cpu`` dict, also the median CPU seconds of this process (all its threads) per callable
    there: on a machine shared with other jobs, CPU time moves much less than wall time."""
    times = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            c0 = time.process_time()
            times[k].append(_timed(f)[1])
            cpus[k].append(time.process_time() - c0)
    if cpu is not None:
        cpu.update({k: statistics.median(v) for k, v in cpus.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def add_peers(row: dict, results: dict, fns: dict, repeats: int) -> dict:
    """``row`` with torch plain seconds, each peer's seconds/error/reason, and
    ``faster_than_every_peer`` (over the peers whose Fisher passed the check)."""
    if not fns:
        return {**row, "peers": results}
    import torch

    secs = time_alternating(fns, repeats)
    peers = {p: ({**r, "seconds": secs[p]} if p in secs else r) for p, r in results.items()}
    good = [r["seconds"] for r in peers.values() if r.get("ok")]
    return {**row, "peers": peers, "torch_plain_s": secs["torch_plain"],
            "fisher_vs_torch_plain": row["fisher_s"] / secs["torch_plain"],
            "faster_than_every_peer": (row["fisher_s"] < min(good)) if good else None,
            "torch_threads": torch.get_num_threads()}


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if "reason" in r:
        return r["reason"]
    t = f"{r['seconds']:.3f}" if "seconds" in r else "?"
    return f"{t} (err {r['rel_error']:.1e})" if r["ok"] else f"WRONG {t} (err {r['rel_error']:.1e})"


def table(rows: list[dict], peers: list[str]) -> str:
    """Markdown table: per net our plain grad and Fisher seconds, their ratio, torch plain, each
    peer's seconds and relative Fisher error (or why it did not run), faster than every peer."""
    head = ["net", "plain grad s", "**Fisher s**", "ratio", "CPU-time ratio", "torch plain s"] + \
           [f"{p} s (rel. err)" for p in peers] + ["faster than every peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        fast = {True: "yes", False: "no", None: "n/a"}[r.get("faster_than_every_peer")]
        tp = f"{r['torch_plain_s']:.3f}" if "torch_plain_s" in r else "-"
        cells = [f"{r['net']}, {r['examples']} ex, mb {r['microbatch']}", f"{r['plain_s']:.3f}",
                 f"**{r['fisher_s']:.3f}**", f"{r['ratio']:.2f}", f"{r['cpu_ratio']:.2f}", tp] + \
                [_cell(r.get("peers", {}).get(p)) for p in peers] + [fast]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench fisher", description=__doc__.split("\n")[0])
    p.add_argument("--nets", default="tanas_cnn,vgg16,resnet18")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--microbatch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--method", default="auto", choices=("auto", "fast", "vmap"))
    p.add_argument("--out", default=None, help="write DIR/result.json")
    p.add_argument("--peers", default="all",
                   help="PyTorch peers, timed after a Fisher check against ours: 'all' (every installed one, "
                        f"the default), 'none', or comma-separated names from {', '.join(PEERS)}; "
                        "install them with benchmarks/install_peers.sh")
    args = p.parse_args(argv)
    peers = select_peers(args.peers)
    # BackPACK's and Opacus' module hooks fire on the first layer, whose input needs no gradient
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    # ... and BackPACK names containers (ResNet blocks) whose parameters live in extended children
    warnings.filterwarnings("ignore", message="Extension saving to .* does not have an extension for Module")
    import jax

    from tanas_jax import provenance

    versions = peer_versions()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {len(jax.devices())}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("peers: " + (", ".join(peers) or "none") + "  (" +
          ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()) + ")", flush=True)
    rows = []
    for net in [n for n in args.nets.split(",") if n]:
        r, ours = bench_net(net, args.examples, args.microbatch, args.repeats, args.method)
        print(f"{net:10s} {r['params'] / 1e6:6.2f}M  plain {r['plain_s']:.3f}s  fisher[{r['method']}] "
              f"{r['fisher_s']:.3f}s  ratio {r['ratio']:.2f} (CPU time {r['cpu_ratio']:.2f})  "
              f"{r['fisher_examples_per_s']:.0f} ex/s  "
              f"peak {r['peak_mb']:.0f} MB", flush=True)
        _, variables, x, y = make_problem(net, args.examples)
        results, fns = prepare_peers(net, variables, x, y, ours, args.microbatch, peers)
        for name, res in results.items():
            print(f"           check {name:9s} " + (f"rel. error {res['rel_error']:.2e} "
                  f"{'ok' if res['ok'] else 'WRONG'}" if "rel_error" in res else res["reason"]), flush=True)
        r = add_peers(r, results, fns, args.repeats)
        if "torch_plain_s" in r:
            print(f"           torch plain {r['torch_plain_s']:.3f}s  " +
                  "  ".join(f"{k} {v['seconds']:.3f}s" for k, v in r["peers"].items() if "seconds" in v), flush=True)
        rows.append(r)
    print()
    print(table(rows, peers))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump({"benchmark": "per_example_grads", "rows": rows, "settings": vars(args),
                       "tolerance": TOLERANCE, "peer_versions": versions,
                       "provenance": provenance.stamp()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
