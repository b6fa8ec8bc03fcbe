"""FUSE step cost: one joint weight step over C candidates vs the C separate steps.

    python benchmarks/fuse_step.py [--space from:task7] [--candidates 3] [--batch 64]
        [--size 28] [--skeleton tiny] [--repeats 20] [--round] [--out DIR]

Reports (one run, same machine, same batch): median time of the FUSE weight
step (all C candidates in one jitted function, the mixture loss), the sum of
the medians of each candidate's own weight step (C = 1, plain CE), their ratio
(target <= 1.1), the α step, compile times, and with ``--round`` the wall time
of two FUSE rounds with the config's stage settings and other candidates each (the second round reuses
the first one's executables: the candidates' ops are data of one compiled step per space; its compile
time is 0).  Prints a table and writes ``OUT/fuse_step.json``.  ``bin/bench fuse`` calls :func:`main`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_time(fn, repeats):
    import jax
    import numpy as np

    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench fuse", description=__doc__.split("\n")[0])
    p.add_argument("--space", default="from:task7")
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=28, help="image side (MNIST 28 -> crop/pad)")
    p.add_argument("--skeleton", default="tiny")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round", action="store_true", help="also time one FUSE round (quick-preset stages)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import numpy as np

    import tanas_jax  # noqa: F401  (XLA flags before JAX starts)
    from tanas_jax import provenance
    from tanas_jax.config import FuseConfig, from_section
    from tanas_jax.search.fuse import FuseSteps, run_round
    from tanas_jax.search.runtime import CACHE_ENV, enable_compilation_cache
    from tanas_jax.search.runtime import rng as stream
    from tanas_jax.search.spaces import resolve_space

    shape = (args.size, args.size, 3)
    space = resolve_space(args.space, log=lambda m: None)
    cands = ([space.seeds[0]] if space.seeds else []) + space.sample_distinct(
        stream(args.seed, 0, 0), args.candidates - (1 if space.seeds else 0), exclude=space.seeds[:1])
    cfg = FuseConfig(candidates=args.candidates, batch_size=args.batch, skeleton=args.skeleton)
    enable_compilation_cache(cfg.compilation_cache)   # $TANAS_XLA_CACHE, as before
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, *shape), dtype=np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int32)

    joint = FuseSteps(cands, args.skeleton, 10, cfg, shape, space.ops)   # the space's ops, as a search
    sj = joint.init_state([args.seed, 0, 1])
    t_joint = _median_time(lambda: joint.weight_step(sj, x, y), args.repeats)
    t_alpha = _median_time(lambda: joint.alpha_step(sj, x, y), args.repeats)
    singles = []
    for c, g in enumerate(cands):
        fs = FuseSteps([g], args.skeleton, 10, cfg, shape)
        s = fs.init_state([args.seed, 0, 1, c])
        step_s = _median_time(lambda fs=fs, s=s: fs.weight_step(s, x, y), args.repeats)
        singles.append({"genotype": g.short(), "step_s": step_s, "compile_s": fs.compile_s})
    t_sep = sum(s["step_s"] for s in singles)
    res = {"benchmark": "fuse_step", "space": space.name, "candidates": args.candidates, "batch": args.batch,
           "input_shape": list(shape), "skeleton": args.skeleton, "repeats": args.repeats,
           "fuse_weight_step_s": t_joint, "separate_steps_sum_s": t_sep, "ratio": t_joint / t_sep,
           "fuse_alpha_step_s": t_alpha, "fuse_compile_s": joint.compile_s, "separate": singles}
    rows = [("FUSE weight step (C joint)", f"{t_joint * 1e3:.1f} ms"),
            ("sum of C separate steps", f"{t_sep * 1e3:.1f} ms"),
            ("ratio (target <= 1.1)", f"{t_joint / t_sep:.3f}"),
            ("FUSE alpha step", f"{t_alpha * 1e3:.1f} ms"),
            ("compile, joint weight+alpha", f"{joint.compile_s:.1f} s")]
    if args.round:
        from tanas_jax.tasks import load_task_data

        data = load_task_data("mnist_10way", shape, "auto", max_train=3000, max_eval=500)
        from tanas_jax.cli.common import load_config

        qcfg = from_section(FuseConfig, load_config("quick").fuse, candidates=args.candidates,
                            batch_size=args.batch, skeleton=args.skeleton)
        enable_compilation_cache(qcfg.compilation_cache)
        recs = []
        for r in (1, 2):
            others = space.sample_distinct(stream(args.seed, r, 0), args.candidates - 1, exclude=cands[:1])
            recs.append(run_round([cands[0]] + others, data, qcfg, args.seed, r, ops=space.ops)[0])
            rows.append((f"round {r} wall time (quick stages)", f"{recs[-1]['wall_s']:.1f} s (compile "
                         f"{recs[-1]['compile_s']:.1f} s, {recs[-1]['stages']} stages)"))
        res["rounds"] = [{"wall_s": rec["wall_s"], "compile_s": rec["compile_s"], "stages": rec["stages"]}
                         for rec in recs]
        res["round_settings"] = {"weight_steps_per_stage": qcfg.weight_steps,
                                 "alpha_steps_per_stage": qcfg.alpha_steps, "data": data.record()}
    w = max(len(r[0]) for r in rows)
    print(f"FUSE step, space {space.name}, C={args.candidates}, batch {args.batch}, {shape}, skeleton {args.skeleton}")
    for k, v in rows:
        print(f"  {k.ljust(w)}  {v}")

    # compile times above are cold unless the persistent cache (TANAS_XLA_CACHE / fuse.compilation_cache)
    # already held these executables: run twice with TANAS_XLA_CACHE=DIR for the warm numbers
    res["xla_cache_env"] = os.environ.get(CACHE_ENV)
    print(f"  ({CACHE_ENV}={os.environ.get(CACHE_ENV)!r}; quick preset caches in ~/.cache/tanas_jax/xla)")
    res["provenance"] = provenance.stamp()
    if args.out:
        from tanas_jax.io import atomic_write_json

        path = os.path.join(args.out, "fuse_step.json")
        atomic_write_json(path, res)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
