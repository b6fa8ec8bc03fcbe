"""Ranking one target against a growing bank: wall time and peak memory for K = 8, 32, 128 bases
(issue 14, deliverable 6).

For each K a fresh temporary bank holds K + 1 synthetic tasks (``tasks.register_arrays``: random
images and labels, ``--examples`` per task) and one randomly initialised network per task, written
straight into the bank with :meth:`Bank.save_network` (timing does not need trained networks).
Then :func:`tanas_jax.distance.table.rank_target` ranks the target against the K bases with the
diagonal log-det distance, exactly as ``bin/distance --target`` does.  Reported per K:

* ``wall_s``: the ranking's wall time, and ``s_per_base`` = wall_s / K;
* ``fisher_computed``: Fisher diagonals computed (``FisherStore.stats``, as the table's ``cache``);
  it must be K + 1 — one per base network on the target's data and the target's own Fisher ONCE;
* ``target_fishers``: Fisher artifacts banked under the target task (must be 1);
* ``peak_host_mb``: peak Python-heap bytes allocated during the ranking (``tracemalloc``; numpy
  arrays are counted, XLA's own buffers are not), and ``host_mb_per_base``;
* ``rss_delta_mb``: growth of the process's resident-set high-water mark (``ru_maxrss``) during
  the ranking (0 when an earlier K already reached it).

One warm-up ranking (K = 2, not reported) compiles the Fisher step first, so every K reuses it.

    bin/bench bank [--ks 8,32,128] [--examples 16] [--net small_cnn] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tanas_jax  # noqa: E402,F401  (sets our XLA defaults before JAX starts)
from tanas_jax.errors import UserError  # noqa: E402

NUM_CLASSES = 4


def _register(prefix: str, count: int, examples: int, shape: tuple) -> list[str]:
    """``count`` synthetic tasks ``prefix0..`` of random images (shape ``shape``) and labels."""
    import numpy as np

    from tanas_jax.tasks import register_arrays

    names = []
    for i in range(count):
        rng = np.random.RandomState(i)
        n = 2 * examples + 2 * NUM_CLASSES          # the train split keeps >= examples of them
        x = rng.randint(0, 256, (n,) + shape).astype(np.uint8)
        y = np.arange(n) % NUM_CLASSES
        xt = rng.randint(0, 256, (NUM_CLASSES,) + shape).astype(np.uint8)
        names.append(register_arrays(f"{prefix}{i}", x, y, xt, np.arange(NUM_CLASSES),
                                     description="bench bank: random images"))
    return names


def _fill_bank(bank, names: list[str], net: str) -> None:
    """One random-init network (seed 0) per task, straight into the bank."""
    import jax

    from tanas_jax import models

    for i, t in enumerate(names):
        variables = models.init(net, NUM_CLASSES, jax.random.PRNGKey(i))
        bank.save_network(t, net, 0, variables,
                          {"num_classes": NUM_CLASSES, "class_names": [str(c) for c in range(NUM_CLASSES)],
                           "note": "bench bank: random initialisation, untrained"})


def _config(net: str, examples: int):
    from tanas_jax.config import load_config, updated

    return updated(load_config("quick"), {"train.net": net, "fisher.examples": examples,
                                          "fisher.split": "train", "distance.metric": "logdet",
                                          "distance.spectrum": "diag"})


def rank_once(k: int, names: list[str], cfg, folder: str) -> dict:
    """Rank ``names[k]`` against ``names[:k]`` in a fresh bank in ``folder``: one result row."""
    from tanas_jax.bank import Bank
    from tanas_jax.distance.table import FISHER_KIND, rank_target

    bank = Bank(folder)
    target, bases = names[k], names[:k]
    _fill_bank(bank, bases + [target], cfg.train.net)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    ranked, table = rank_target(bank, target, cfg, bases=bases, seeds=[0], progress=False, log=lambda *_: None)
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    target_fishers = sum(1 for kind, _ in bank.artifact_entries(target) if kind == FISHER_KIND)
    return {"k": k, "wall_s": wall, "s_per_base": wall / k, "fisher_computed": table["cache"]["computed"],
            "fisher_reused": table["cache"]["reused"], "target_fishers": target_fishers,
            "fisher_s": table["timing"]["fisher_s"], "peak_host_mb": peak / 2**20,
            "host_mb_per_base": peak / 2**20 / k, "rss_delta_mb": (rss1 - rss0) / 1024,
            "closest": ranked[0][0], "ranked": len(ranked)}


def linearity(rows: list[dict], field: str) -> float | None:
    """Slope ratio: (per-base cost between the two largest K) / (per-base cost at the largest K).

    Near 1 when ``field`` grows linearly through the origin; None with fewer than two rows."""
    if len(rows) < 2:
        return None
    a, b = rows[-2], rows[-1]
    slope = (b[field] - a[field]) / (b["k"] - a["k"])
    return slope / (b[field] / b["k"]) if b[field] else None


def table(rows: list[dict]) -> str:
    head = ["K", "wall s", "s / base", "Fishers computed (K+1)", "target Fishers", "peak host MB",
            "host MB / base", "RSS growth MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['k']} | {r['wall_s']:.2f} | {r['s_per_base']:.3f} | {r['fisher_computed']} | "
                     f"{r['target_fishers']} | {r['peak_host_mb']:.1f} | {r['host_mb_per_base']:.3f} | "
                     f"{r['rss_delta_mb']:.0f} |")
    return "\n".join(lines)


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise UserError(f"--ks must be positive integers separated by commas, got {text!r}; e.g. --ks 8,32,128")
    return ks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench bank", description=__doc__.split("\n")[0])
    p.add_argument("--ks", default="8,32,128", help="bank sizes K (comma-separated)")
    p.add_argument("--examples", type=int, default=16, help="Fisher examples of the target's data")
    p.add_argument("--net", default="small_cnn")
    p.add_argument("--out", default=None, help="write DIR/bank.json")
    args = p.parse_args(argv)
    ks = _parse_ks(args.ks)
    if args.examples < 1:
        raise UserError(f"--examples must be >= 1, got {args.examples}")
    from tanas_jax import models, provenance

    cfg = _config(args.net, args.examples)
    shape = tuple(models.get_net(args.net).input_shape)
    names = _register(f"benchbank{uuid.uuid4().hex[:8]}_", max(ks) + 1, args.examples, shape)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-bank-") as root:
        rank_once(2, names, cfg, os.path.join(root, "warm-up"))    # compiles the Fisher step
        for k in ks:
            rows.append(rank_once(k, names, cfg, os.path.join(root, f"bank-k{k}")))
            r = rows[-1]
            print(f"K={k:4d}  wall {r['wall_s']:.2f}s  ({r['s_per_base'] * 1e3:.1f} ms/base)  "
                  f"Fishers computed {r['fisher_computed']} (target {r['target_fishers']})  "
                  f"peak host {r['peak_host_mb']:.1f} MB  RSS growth {r['rss_delta_mb']:.0f} MB", flush=True)
    lin = {f: linearity(rows, f) for f in ("wall_s", "peak_host_mb")}
    print()
    print(table(rows))
    print("\nlinearity (marginal / average cost per base between the two largest K; 1 = linear): " +
          ", ".join(f"{f} {v:.2f}" if v is not None else f"{f} n/a" for f, v in lin.items()))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bank.json"), "w") as f:
            json.dump({"benchmark": "bank", "rows": rows, "linearity": lin, "settings": vars(args),
                       "memory": "peak_host_mb: tracemalloc peak (Python heap incl. numpy); "
                                 "rss_delta_mb: ru_maxrss growth", "provenance": provenance.stamp()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
