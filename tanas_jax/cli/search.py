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

from tanas_jax.cli.common import (
    add_common_args,
    check_out_dir,
    cli_main,
    config_from_args,
    logger,
    make_parser,
    open_bank,
    parse_name,
    parse_seeds,
    parse_task,
    print_table,
    progress_from_args,
    run_as_script,
    write_result,
)

METHODS = ("darts1", "darts2", "tetlo", "fuse")
COLUMNS = ["method", "seed", "skip_connect", "val_acc", "test_acc", "search_s", "compile_s", "cell"]


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("search", "Differentiable cell search (DARTS, TETLO) or FUSE for a target task.")
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


def split_method(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--method`` (checked against :data:`METHODS`, None when absent) and the other arguments."""
    pre = make_parser("search", add_help=False, allow_abbrev=False)
    pre.add_argument("--method", default=None)
    known, rest = pre.parse_known_args(argv)
    method = parse_name(known.method, METHODS, "--method") if known.method is not None else None
    return method, rest


def run(argv) -> int:
    method, rest = split_method(argv)
    if method == "fuse":  # one command family: FUSE keeps its own flags and code
        from tanas_jax.cli.fuse import run as fuse_run

        return fuse_run(rest)
    args = build_parser().parse_args(argv)
    return run_differentiable(args)


def _search_config(cfg, args):
    """The method's settings: section ``search.darts``, ``--steps`` overriding its steps."""
    from tanas_jax.config import DartsConfig, from_section, section

    return from_section(DartsConfig, section(cfg, "search.darts"), steps=args.steps)


def _space(args, cfg, target: str):
    """The one ``--space`` (else search.space), resolved before any work (see :func:`fuse.resolve_spaces`)."""
    from tanas_jax.cli.fuse import resolve_spaces

    spec = cfg.search.space if args.space is None else args.space
    return resolve_spaces({"space": spec}, args, cfg, target)["space"]


def _search_seed(method: str, data, space, settings, seed: int, args, final_data) -> dict:
    """One seed's search (checkpointed in ``--out``), its β plot, and a log line."""
    from tanas_jax.search.darts import plot_beta_history
    from tanas_jax.search.methods import run_search

    ck = None
    if args.out:
        ck = os.path.join(args.out, "checkpoints", f"{method}_seed{seed}")
        if args.restart and os.path.isdir(ck):
            shutil.rmtree(ck)
        os.makedirs(ck, exist_ok=True)
    res = run_search(method, data, space, settings, seed, checkpoint_dir=ck, log=logger.info, final_data=final_data)
    if args.out:
        res["beta_plot"] = plot_beta_history(res, os.path.join(args.out, f"beta_{method}_seed{seed}.png"))
    fin = res.get("final") or {}
    logger.info(f"{method} seed {seed}: {res['genotype_short']}  skip_connect {res['skip_connect']}/{res['edges']}"
                + (f"  val {fin['val_accuracy']:.4f} test {fin['test_accuracy']:.4f}" if fin else ""))
    return res


def _row(method: str, res: dict) -> dict:
    fin = res.get("final") or {}
    return {"method": method, "seed": res["seed"], "skip_connect": f"{res['skip_connect']}/{res['edges']}",
            "val_acc": fin.get("val_accuracy", float("nan")), "test_acc": fin.get("test_accuracy", float("nan")),
            "search_s": res["search_wall_s"], "compile_s": res["search_compile_s"], "cell": res["genotype_short"]}


def _bank_best(runs: list[dict], method: str, bank, target: str, space, data) -> None:
    """Store the best seed's cell (by validation accuracy) as the target's genotype."""
    best = max(runs, key=lambda r: (r.get("final") or {}).get("val_accuracy", -1.0))
    fin = best.get("final") or {}
    bank.save_genotype(target, best["genotype"], {
        "method": method, "seed": best["seed"], "space": space.name,
        "val_accuracy": fin.get("val_accuracy"), "test_accuracy": fin.get("test_accuracy"),
        "skip_connect": best["skip_connect"], "data": data.record()})
    logger.info(f"bank: stored {target}'s genotype (method {method}, seed {best['seed']}) in {bank.root}")


def _summary(runs: list[dict]) -> dict:
    import numpy as np

    skips = [r["skip_connect"] for r in runs]
    tests = [(r.get("final") or {}).get("test_accuracy") for r in runs]
    return {"skip_connect_mean": float(np.mean(skips)),
            "test_accuracy_mean": float(np.mean(tests)) if None not in tests else None,
            "test_accuracy_std": float(np.std(tests)) if None not in tests else None}


def run_differentiable(args) -> int:
    """DARTS (1st/2nd order) or TETLO over ``--seeds``: table on stdout, result file, best cell banked."""
    from tanas_jax.config import section, to_dict
    from tanas_jax.pipeline import search_data
    from tanas_jax.search.methods import SearchSettings
    from tanas_jax.search.runtime import enable_compilation_cache

    method = args.method
    progress_from_args(args)
    cfg = config_from_args(args)
    scfg = _search_config(cfg, args)
    enable_compilation_cache(section(cfg, "fuse").compilation_cache)   # also serves the final training
    settings = SearchSettings(darts=scfg, final=None if args.no_final else section(cfg, "final"))
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    target = parse_task(args.task)
    check_out_dir(args.out, restart=args.restart)
    space = _space(args, cfg, target)
    bank = open_bank(args)
    data = search_data(cfg, target, scfg.input_shape)
    logger.info(data.summary())
    # the derived cell is trained at search.input_shape (FUSE's input), not the supernet's crop
    final_data = data if tuple(cfg.search.input_shape) == scfg.input_shape else search_data(cfg, target)
    if len(space.structures) > 1:
        logger.info(f"search: space {space.name} has {len(space.structures)} cell structures; the supernet "
                    "searches the first (the closest task's)")
    runs = [_search_seed(method, data, space, settings, seed, args, final_data) for seed in seeds]
    print()
    print_table([_row(method, r) for r in runs], COLUMNS)
    banked = not args.no_bank_write and cfg.search.get("write_bank", True)
    if banked:
        _bank_best(runs, method, bank, target, space, data)
    write_result(args.out, {"command": "search", "method": method, "task": target, "seeds": seeds,
                            "data": data.record(), "config": cfg.to_dict(), "settings": to_dict(scfg),
                            "space": space.to_dict(), "runs": runs, "summary": _summary(runs),
                            "bank": bank.root if banked else None})
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
