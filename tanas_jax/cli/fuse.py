"""``bin/fuse``: FUSE architecture search for a target task (TA-NAS Algorithms 1-2).

    bin/fuse --task mnist_10way --space from:task7 [--candidates 3] [--rounds 10] [--bank DIR] [--out DIR]
    bin/fuse --task mnist_10way --compare standard,from:task7,random --out DIR

Searches cells in ``--space`` (standard | from:TASK | from:closest[:k] |
ops:a,b,c | a JSON file), trains the winner from scratch, tests it once and
stores its genotype in the bank as the target's (the target becomes a base
task; ``--no-bank-write`` to skip).  ``--compare`` runs several spaces and the
random-search baseline (``random``: same budget, samples ``--random-space``)
and prints a table.  With ``--out`` every run is checkpointed after each round
in ``OUT/checkpoints/``; rerunning the same command resumes (``--restart``
starts over).  Writes ``OUT/result.json`` and ``OUT/alpha_<space>.png``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

from tanas_jax.cli.common import (add_common_args, check_out_dir, cli_main, config_from_args, open_bank,
                                  print_table, run_as_script, write_result)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fuse", description="FUSE architecture search for a target task.")
    p.add_argument("--task", required=True, help="target task name or alias (e.g. mnist_10way, task3)")
    p.add_argument("--space", default=None,
                   help="search space: standard | from:TASK | from:closest[:k] | ops:a,b,c | FILE.json "
                        "(default: config search.space)")
    p.add_argument("--compare", default=None,
                   help="comma-separated spaces and/or 'random', run side by side, e.g. "
                        "standard,from:task7,random")
    p.add_argument("--random-space", default="standard", help="space the random baseline samples (default standard)")
    p.add_argument("--candidates", type=int, default=None, help="C, candidates per round (config fuse.candidates)")
    p.add_argument("--rounds", type=int, default=None, help="I, rounds (config fuse.rounds)")
    p.add_argument("--restart", action="store_true", help="ignore and replace existing checkpoints in --out")
    p.add_argument("--no-bank-write", action="store_true", help="do not store the winner in the bank")
    add_common_args(p)
    return p


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s)


def closest_fn_for(bank, cfg, log=print):
    """Ranking of base tasks for ``from:closest``: ``tanas_jax.distance.closest_bases``.

    Bases are ``cfg.tanas.bases`` minus the target, ranked by ``cfg.tanas.metric``
    (Fishers and networks come from the bank, computed when missing).
    """
    def fn(target):
        from tanas_jax.distance import closest_bases

        cfg.distance.metric = cfg.tanas.metric if cfg.tanas.metric != "transform" else cfg.distance.metric
        return list(closest_bases(bank, target, cfg, metric=cfg.tanas.metric, log=log))

    return fn


def run(argv) -> int:
    from tanas_jax import tasks
    from tanas_jax.errors import UserError
    from tanas_jax.search import checkpoint as ckpt
    from tanas_jax.config import FuseConfig, from_section, section
    from tanas_jax.search.fuse import fuse_search
    from tanas_jax.search.network import get_skeleton
    from tanas_jax.search.runtime import enable_compilation_cache
    from tanas_jax.search.genotype import Genotype
    from tanas_jax.search.plots import plot_alpha
    from tanas_jax.search.random_search import random_search
    from tanas_jax.search.spaces import resolve_space

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    fcfg = from_section(FuseConfig, cfg.fuse, candidates=args.candidates, rounds=args.rounds)
    enable_compilation_cache(fcfg.compilation_cache)
    target = tasks.canonical(args.task)
    check_out_dir(args.out)
    bank = open_bank(args)
    log = (lambda m: None) if args.no_progress else (lambda m: print(m, flush=True))

    methods = [m.strip() for m in args.compare.split(",") if m.strip()] if args.compare else \
        [args.space or cfg.search.space]
    if not methods:
        raise UserError("--compare is empty; give e.g. standard,from:task7,random")
    closest = closest_fn_for(bank, cfg, log)
    spaces = {}
    for m in methods:  # resolve every space before any work: bad input fails fast
        spec = args.random_space if m == "random" else m
        spaces[m] = resolve_space(spec, bank=bank, target=target, closest_fn=closest, log=log)

    data = tasks.load_task_data(
        target, tuple(cfg.search.input_shape), cfg.data.source, split_seed=cfg.data.split_seed,
        val_fraction=cfg.data.val_fraction, max_train=cfg.search.max_train, max_eval=cfg.data.max_eval,
        normalization=cfg.data.normalization, data_dir=cfg.data.data_dir)
    log(data.summary())

    runs, rows = {}, []
    t_all = time.perf_counter()
    for m in methods:
        space = spaces[m]
        ck_dir = os.path.join(args.out, "checkpoints", _slug(m)) if args.out else None
        if ck_dir and args.restart and os.path.exists(ckpt.path(ck_dir)):
            os.unlink(ckpt.path(ck_dir))
        log(f"== {m}: space {space.name} ({len(space.ops)} ops: {', '.join(space.ops)}; {space.size()} cells)")
        if m == "random":
            res = random_search(data, space, fcfg, args.seed, final=section(cfg, "final"), log=log)
        else:
            res = fuse_search(data, space, fcfg, args.seed, final=section(cfg, "final"), checkpoint_dir=ck_dir, log=log)
            if args.out and res["history"]:
                res["alpha_plot"] = plot_alpha(res["history"], os.path.join(args.out, f"alpha_{_slug(m)}.png"),
                                               f"FUSE {target}, space {m}")
        runs[m] = res
        f = res["final"]
        rows.append({"method": "random" if m == "random" else "fuse", "space": space.name,
                     "test_acc": f["test_accuracy"], "val_acc": f["val_accuracy"], "params": f["params"],
                     "search_s": res["search_wall_s"], "compile_s": res["search_compile_s"],
                     "evals": res["candidate_evaluations"], "winner": res["winner_short"]})
    print()
    table = print_table(rows, ["method", "space", "test_acc", "val_acc", "params", "search_s", "compile_s",
                               "evals", "winner"])

    fuse_runs = [(m, r) for m, r in runs.items() if m != "random"]
    banked = None
    if fuse_runs and not args.no_bank_write and cfg.search.write_bank:
        m, best = max(fuse_runs, key=lambda mr: mr[1]["final"]["val_accuracy"])
        meta = {"source": "bin/fuse", "space": m, "seed": args.seed, "skeleton": get_skeleton(fcfg.skeleton).to_dict(),
                "val_accuracy": best["final"]["val_accuracy"], "test_accuracy": best["final"]["test_accuracy"],
                "params": best["final"]["params"], "data": data.record(), "out": args.out}
        bank.save_genotype(target, Genotype.from_dict(best["winner"]).to_dict(), meta)
        banked = m
        log(f"bank: stored the {m} winner as {target}'s genotype in {bank.root}")
    result = {"command": "fuse", "task": target, "seed": args.seed, "config": cfg.to_dict(),
              "data": data.record(), "methods": methods, "runs": runs, "table": rows, "table_text": table,
              "banked": banked, "wall_s": time.perf_counter() - t_all}
    path = write_result(args.out, result)
    if path:
        log(f"wrote {path}")
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
