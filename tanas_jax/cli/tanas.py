"""``bin/tanas``: the whole TA-NAS pipeline (TA-NAS Algorithm 1) with a report.

    bin/tanas [--target T] [--bases offline8] [--metric logdet|frechet|transform] [--top-k 1]
              [--baselines standard,random[,darts1,tetlo]] [--seed S | --seeds 0-4]
              [--config quick|paper|FILE] [--bank DIR] [--out DIR]

Parses the command line into a config (``--target`` etc. are the ``tanas``
section's fields), runs :func:`tanas_jax.api.run_tanas` (the pipeline, then
``OUT/report.md``, its PNGs and ``OUT/result.json``), and prints the summary
table.  A user task the ``--bank`` holds networks of is accepted by its bare name.
With ``--seeds`` it runs the pipeline once per seed (``OUT/seedK``) and prints the
paired comparison: each method's final test accuracy minus task-aware FUSE's, paired
by seed, with a 95 % t-interval (:func:`tanas_jax.compare.paired_table`), also
written to ``OUT/paired.json``.
"""
from __future__ import annotations

import argparse
import os

from tanas_jax.cli.common import (
    add_common_args,
    check_out_dir,
    cli_main,
    config_from_args,
    make_parser,
    open_bank,
    parse_name,
    parse_task,
    parse_tasks,
    print_table,
    progress_from_args,
    run_as_script,
    updated,
)
from tanas_jax.config import FUSE_WINNERS, METRICS, TANAS_BASELINES
from tanas_jax.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("tanas", "Task-aware NAS for a target task: distances to the bank's base tasks, search "
                    "space from the closest, FUSE, report.")
    p.add_argument("--target", default=None, help="target task (default: config tanas.target)")
    p.add_argument("--bases", default=None, help="base task set or comma list (default: config tanas.bases); "
                                                 "the target is held out")
    p.add_argument("--metric", default=None, help=f"task distance: {' | '.join(METRICS)} "
                                                  "(default: config tanas.metric)")
    p.add_argument("--top-k", type=int, default=None,
                   help="at most this many closest bases form the space: those whose P(closest) >= "
                        "tanas.material, at least the closest (default 1)")
    p.add_argument("--skip-baselines", action="store_true", help="only the task-aware search (no standard/random)")
    p.add_argument("--baselines", default=None,
                   help=f"comma list of baselines next to task-aware FUSE: {', '.join(TANAS_BASELINES)} "
                        "(default: config tanas.baselines, standard,random)")
    p.add_argument("--seeds", default=None,
                   help="run once per seed and print paired differences vs task-aware FUSE with 95%% "
                        "intervals: a comma list and/or ranges, e.g. 0-4 or 0,2,5-7 (not with --seed)")
    p.add_argument("--winner", default=None, choices=FUSE_WINNERS,
                   help="how a FUSE round picks its winner: alpha (the paper: largest α) | val (best own "
                        "validation accuracy) (default: config fuse.winner)")
    add_common_args(p)
    return p


def pipeline_config(args):
    """The config with the command line's ``tanas`` settings (a new object; names checked before any work,
    whether they come from a flag or the config)."""
    metric = parse_name(args.metric, METRICS, "metric") if args.metric is not None else None
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    cfg = updated(config_from_args(args), {"tanas.target": args.target, "tanas.bases": args.bases,
                                           "tanas.metric": metric, "tanas.top_k": args.top_k,
                                           "fuse.winner": args.winner, "tanas.baselines": args.baselines})
    target = parse_task(cfg.tanas.target)
    if not [b for b in parse_tasks(cfg.tanas.bases) if b != target]:
        raise UserError(f"no base tasks left once the target {target} is held out; give other --bases")
    return cfg


def seed_list(text: str) -> list[int]:
    """``--seeds``: ``'0-4'`` -> [0, 1, 2, 3, 4]; comma lists and ranges mix (``'0,2,5-7'``)."""
    from tanas_jax.cli.common import parse_seeds

    items = []
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            if int(hi) < int(lo):
                raise UserError(f"--seeds: range {part.strip()} is empty (give low-high, e.g. 0-4)")
            items += [str(s) for s in range(int(lo), int(hi) + 1)]
        else:
            items.append(part)
    return parse_seeds(",".join(items))


def run(argv) -> int:
    from tanas_jax import api

    args = build_parser().parse_args(argv)
    progress = progress_from_args(args)
    seeds = seed_list(args.seeds) if args.seeds is not None else None
    cfg = pipeline_config(args)
    out = args.out or os.path.join("runs", f"tanas_{cfg.tanas.target}")
    check_out_dir(out)
    bank = open_bank(args)
    if seeds is None:
        result = api.run_tanas(cfg, bank, out=out, seed=args.seed, baselines=not args.skip_baselines,
                               progress=progress)
        _print_result(result, out)
        return 0
    results = []
    for s in seeds:
        print(f"\n=== seed {s} ===")
        results.append(api.run_tanas(cfg, bank, out=os.path.join(out, f"seed{s}"), seed=s,
                                     baselines=not args.skip_baselines, progress=progress))
        _print_result(results[-1], os.path.join(out, f"seed{s}"))
    _print_paired(results, out)
    return 0


def _print_result(result: dict, out: str) -> None:
    from tanas_jax.report import COLUMNS

    paths = result["files"]
    print()
    print(f"TA-NAS on {result['target']}: closest base(s) {', '.join(result['closest'])} by {result['metric']}")
    conf = result["distance"]["confidence"]
    print(conf["message"] + (f"\nwarning: {conf['warning']}" if conf["warning"] else ""))
    print_table(result["table"], COLUMNS)
    print(f"\nreused {len(result['reused'])} item(s) from the bank, computed {len(result['computed'])}; "
          f"wall time {result['timings']['total_s']:.0f} s")
    print(f"report: {paths['report']}  result: {os.path.join(out, 'result.json')}")


def _print_paired(results: list[dict], out: str) -> None:
    """The paired table over the seeds (each method vs task-aware FUSE), printed and written to
    ``OUT/paired.json``."""
    from tanas_jax.compare import accuracies_by_method, paired_table
    from tanas_jax.io import atomic_write_json
    from tanas_jax.report import PAIRED_COLUMNS, paired_rows

    n_test = results[0]["final_data"]["sizes"]["test"]
    table = paired_table(accuracies_by_method(results), "task-aware", n_test=n_test)
    seeds = [r["seed"] for r in results]
    print(f"\nfinal test accuracy over seeds {seeds} on {n_test} test images; difference = method - "
          "task-aware FUSE, paired by seed, 95 % t-interval; 'significant' only when it excludes 0")
    print_table(paired_rows(table), PAIRED_COLUMNS)
    atomic_write_json(os.path.join(out, "paired.json"), {"target": results[0]["target"], "seeds": seeds,
                                                         "n_test": n_test, "reference": "task-aware",
                                                         "table": table})
    print(f"paired table: {os.path.join(out, 'paired.json')}")


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
