"""``bin/tanas``: the whole TA-NAS pipeline (TA-NAS Algorithm 1) with a report.

    bin/tanas [--target T] [--bases offline8] [--metric logdet|frechet|transform] [--top-k 1]
              [--config quick|paper|FILE] [--bank DIR] [--out DIR]

Parses the command line into a config (``--target`` etc. are the ``tanas``
section's fields), runs :func:`tanas_jax.api.run_tanas` (the pipeline, then
``OUT/report.md``, its PNGs and ``OUT/result.json``), and prints the summary
table.  A user task the ``--bank`` holds networks of is accepted by its bare name.
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
from tanas_jax.config import FUSE_WINNERS, METRICS
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
                                           "fuse.winner": args.winner})
    target = parse_task(cfg.tanas.target)
    if not [b for b in parse_tasks(cfg.tanas.bases) if b != target]:
        raise UserError(f"no base tasks left once the target {target} is held out; give other --bases")
    return cfg


def run(argv) -> int:
    from tanas_jax import api
    from tanas_jax.report import COLUMNS

    args = build_parser().parse_args(argv)
    progress = progress_from_args(args)
    cfg = pipeline_config(args)
    out = args.out or os.path.join("runs", f"tanas_{cfg.tanas.target}")
    check_out_dir(out)
    result = api.run_tanas(cfg, open_bank(args), out=out, seed=args.seed, baselines=not args.skip_baselines,
                           progress=progress)
    paths = result["files"]
    print()
    print(f"TA-NAS on {result['target']}: closest base(s) {', '.join(result['closest'])} by {result['metric']}")
    conf = result["distance"]["confidence"]
    print(conf["message"] + (f"\nwarning: {conf['warning']}" if conf["warning"] else ""))
    print_table(result["table"], COLUMNS)
    print(f"\nreused {len(result['reused'])} item(s) from the bank, computed {len(result['computed'])}; "
          f"wall time {result['timings']['total_s']:.0f} s")
    print(f"report: {paths['report']}  result: {os.path.join(out, 'result.json')}")
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
