"""``bin/search``: differentiable cell search (DARTS 1st/2nd order, TETLO) or FUSE for a target task.

    bin/search --method darts1|darts2|tetlo --task mnist_10way [--space standard] [--seeds 0,1,2]
               [--steps N] [--out DIR] [--bank DIR] [--restart] [--no-bank-write]
    bin/search --method fuse ...      # the same as bin/fuse ... (FUSE's own flags)

Searches ``--space`` (standard | from:TASK | from:closest[:k] | ops:a,b,c |
JSON file) with the settings of config section ``search.darts`` (``--set
search.darts.steps=100``, ``--set search.darts.tetlo.qrs_weight=0.5``),
derives the cell (top op per edge, ``none`` excluded), trains it from scratch
and tests it once.  With ``--out`` each seed is checkpointed every
``search.darts.checkpoint_every`` steps in ``OUT/checkpoints/``; rerunning the
same command resumes (``--restart`` starts over).  Writes ``OUT/result.json``
(per seed: genotype, skip_connect count, val/test accuracy, β history, wall
and compile time, settings, data source, provenance) and
``OUT/beta_<method>_seed<k>.png``; stores the best seed's cell (by validation
accuracy) in the bank as the task's genotype unless ``--no-bank-write``.
"""
from __future__ import annotations

import argparse
import os
import shutil

from tanas_jax.cli.common import (add_common_args, check_out_dir, cli_main, config_from_args, open_bank,
                                  print_table, run_as_script, write_result)

METHODS = ("darts1", "darts2", "tetlo", "fuse")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search", description="Differentiable cell search (DARTS, TETLO) or FUSE "
                                "for a target task.")
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    p.add_argument("--task", required=True, help="target task name or alias (e.g. mnist_10way, task3)")
    p.add_argument("--space", default=None, help="standard | from:TASK | from:closest[:k] | ops:a,b,c | FILE.json "
                   "(default: config search.space)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, searched one after the other "
                   "(default: --seed)")
    p.add_argument("--steps", type=int, default=None, help="search iterations (config search.darts.steps)")
    p.add_argument("--no-final", action="store_true", help="skip training the derived cell from scratch")
    p.add_argument("--restart", action="store_true", help="ignore and replace existing checkpoints in --out")
    p.add_argument("--no-bank-write", action="store_true", help="do not store the found cell in the bank")
    add_common_args(p)
    return p


def _method_of(argv) -> str | None:
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return None


def _without_method(argv) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--method":
            skip = True
            continue
        if a.startswith("--method="):
            continue
        out.append(a)
    return out


def run(argv) -> int:
    from tanas_jax.errors import UserError, did_you_mean

    method = _method_of(argv)
    if method == "fuse":  # one command family: FUSE keeps its own flags and code
        from tanas_jax.cli.fuse import run as fuse_run

        return fuse_run(_without_method(argv))
    if method is not None and method not in METHODS:
        raise UserError(f"unknown --method {method!r}; {did_you_mean(method, METHODS)}")
    args = build_parser().parse_args(argv)

    import numpy as np

    from tanas_jax import tasks
    from tanas_jax.config import DartsConfig, from_section, section, to_dict
    from tanas_jax.search.darts import plot_beta_history
    from tanas_jax.search.methods import SearchSettings, run_search
    from tanas_jax.search.runtime import enable_compilation_cache
    from tanas_jax.search.spaces import resolve_space

    cfg = config_from_args(args)
    scfg = from_section(DartsConfig, section(cfg, "search.darts"), steps=args.steps)
    enable_compilation_cache(section(cfg, "fuse").compilation_cache)   # also serves the final training
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    target = tasks.canonical(args.task)
    check_out_dir(args.out)
    bank = open_bank(args)
    log = (lambda m: None) if args.no_progress else (lambda m: print(m, flush=True))

    closest = None
    spec = args.space or cfg.search.space
    if spec.startswith("from:closest"):
        from tanas_jax.cli.fuse import closest_fn_for

        closest = closest_fn_for(bank, cfg, log)
    space = resolve_space(spec, bank=bank, target=target, closest_fn=closest, log=log)
    data = tasks.load_task_data(
        target, scfg.input_shape, cfg.data.source, split_seed=cfg.data.split_seed,
        val_fraction=cfg.data.val_fraction, max_train=cfg.search.max_train, max_eval=cfg.data.max_eval,
        normalization=cfg.data.normalization, data_dir=cfg.data.data_dir)
    log(data.summary())
    final_data = data if tuple(cfg.search.input_shape) == scfg.input_shape else tasks.load_task_data(
        target, tuple(cfg.search.input_shape), cfg.data.source, split_seed=cfg.data.split_seed,
        val_fraction=cfg.data.val_fraction, max_train=cfg.search.max_train, max_eval=cfg.data.max_eval,
        normalization=cfg.data.normalization, data_dir=cfg.data.data_dir)
    if len(space.structures) > 1:
        log(f"search: space {space.name} has {len(space.structures)} cell structures; the supernet searches the "
            "first (the closest task's)")

    runs, rows = [], []
    for seed in seeds:
        ck = None
        if args.out:
            ck = os.path.join(args.out, "checkpoints", f"{method}_seed{seed}")
            if args.restart and os.path.isdir(ck):
                shutil.rmtree(ck)
            os.makedirs(ck, exist_ok=True)
        res = run_search(method, data, space, SearchSettings(darts=scfg, final=None if args.no_final else
                                                             section(cfg, "final")),
                         seed, checkpoint_dir=ck, log=log, final_data=final_data)
        if args.out:
            res["beta_plot"] = plot_beta_history(res, os.path.join(args.out, f"beta_{method}_seed{seed}.png"))
        runs.append(res)
        fin = res.get("final") or {}
        rows.append({"method": method, "seed": seed, "skip_connect": f"{res['skip_connect']}/{res['edges']}",
                     "val_acc": fin.get("val_accuracy", float("nan")), "test_acc": fin.get("test_accuracy", float("nan")),
                     "search_s": res["search_wall_s"], "compile_s": res["search_compile_s"],
                     "cell": res["genotype_short"]})
        log(f"{method} seed {seed}: {res['genotype_short']}  skip_connect {res['skip_connect']}/{res['edges']}"
            + (f"  val {fin['val_accuracy']:.4f} test {fin['test_accuracy']:.4f}" if fin else ""))
    print()
    print_table(rows, ["method", "seed", "skip_connect", "val_acc", "test_acc", "search_s", "compile_s", "cell"])

    best = max(runs, key=lambda r: (r.get("final") or {}).get("val_accuracy", -1.0))
    banked = False
    if not args.no_bank_write and cfg.search.get("write_bank", True):
        bank.save_genotype(target, best["genotype"], {
            "method": method, "seed": best["seed"], "space": space.name,
            "val_accuracy": (best.get("final") or {}).get("val_accuracy"),
            "test_accuracy": (best.get("final") or {}).get("test_accuracy"),
            "skip_connect": best["skip_connect"], "data": data.record()})
        banked = True
        log(f"bank: stored {target}'s genotype (method {method}, seed {best['seed']}) in {bank.root}")
    skips = [r["skip_connect"] for r in runs]
    tests = [(r.get("final") or {}).get("test_accuracy") for r in runs]
    summary = {"skip_connect_mean": float(np.mean(skips)),
               "test_accuracy_mean": float(np.mean(tests)) if None not in tests else None,
               "test_accuracy_std": float(np.std(tests)) if None not in tests else None}
    write_result(args.out, {"command": "search", "method": method, "task": target, "seeds": seeds,
                            "data": data.record(), "config": cfg.to_dict(), "settings": to_dict(scfg),
                            "space": space.to_dict(), "runs": runs, "summary": summary,
                            "bank": bank.root if banked else None})
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
