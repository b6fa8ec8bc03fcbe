"""``bin/distance``: task-distance tables and closest-base rankings.

    bin/distance --tasks offline8 --metric logdet|frechet|transform --spectrum diag|full --repeats 10 --out DIR
    bin/distance --target T --bases offline8          # ranked closest bases

Writes ``DIR/result.json`` (matrices, task names, settings, data source,
versions), CSV files and a heatmap (mean and std side by side; column =
target task).
"""
from __future__ import annotations

import argparse

from tanas_jax.cli.common import (add_common_args, check_out_dir, cli_main, config_from_args, open_bank,
                                  print_table, run_as_script, write_result)
from tanas_jax.cli.fisher import add_fisher_args, apply_fisher_args

METRICS = ("logdet", "frechet", "transform")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distance", description="Fisher (log-det, Fréchet) or transform-network "
                                "task distances between banked networks.")
    p.add_argument("--tasks", default=None, help="task set or comma-separated tasks for a K x K table")
    p.add_argument("--target", default=None, help="rank the --bases by distance to this target task")
    p.add_argument("--bases", default=None, help="base tasks for --target (default: config tanas.bases)")
    p.add_argument("--metric", default=None, help="logdet | frechet | transform (default: config distance.metric)")
    p.add_argument("--spectrum", default=None,
                   help="diag: diagonal Fisher; full: exact full-matrix spectra via Gram matrices")
    p.add_argument("--repeats", type=int, default=None, help="networks per task, seeds 0..R-1 (default: bank.seeds)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (overrides --repeats)")
    p.add_argument("--sigma2", type=float, default=None, help="sigma^2 of the log-det (authors: 1e-10)")
    p.add_argument("--normalization", default=None,
                   help="unit total per network (authors) or an equal share per layer")
    p.add_argument("--reduction", default=None,
                   help="global: paper eq. (2); per_layer: |.| per layer as in the authors' code")
    p.add_argument("--head", default=None,
                   help="heads of different class counts: zero-pad (authors) or compare backbones only")
    p.add_argument("--top", type=int, default=None, help="with --target: print this many closest bases")
    add_fisher_args(p)
    add_common_args(p, seed=False)
    return p


VALID = {"metric": METRICS, "spectrum": ("diag", "full"), "normalization": ("network", "layer"),
         "reduction": ("global", "per_layer"), "head": ("pad", "backbone")}


def _apply_distance_args(cfg, args):
    """Command-line settings into ``cfg.distance``; bad names are one-line user errors (not argparse's two)."""
    from tanas_jax.errors import UserError, did_you_mean

    d = cfg.distance
    for name in ("metric", "spectrum", "sigma2", "normalization", "reduction", "head"):
        v = getattr(args, name)
        if v is not None:
            d[name] = v
    for name, valid in VALID.items():
        if str(d[name]) not in valid:
            raise UserError(f"unknown {name} '{d[name]}': {did_you_mean(str(d[name]), valid)}")


def run(argv) -> int:
    from tanas_jax.distance.table import fisher_distance_table, rank_target, write_outputs
    from tanas_jax.errors import UserError
    from tanas_jax.tasks import canonical, resolve_tasks

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    apply_fisher_args(cfg, args)
    _apply_distance_args(cfg, args)
    if args.sigma2 is not None and not args.sigma2 > 0:
        raise UserError(f"--sigma2 must be positive, got {args.sigma2}; the authors use 1e-10")
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds must be comma-separated integers, got '{args.seeds}'") from None
    elif args.repeats is not None:
        if args.repeats < 1:
            raise UserError(f"--repeats must be >= 1, got {args.repeats}")
        seeds = list(range(args.repeats))
    else:
        seeds = [int(s) for s in cfg.bank.seeds]
    target = canonical(args.target) if args.target else None
    if target:
        resolve_tasks(args.bases or cfg.tanas.bases)   # bad names fail before any work
    else:
        if not args.tasks:
            raise UserError("give --tasks SET for a table, or --target T [--bases SET] for a ranking")
        tasks = resolve_tasks(args.tasks)
        targets = None
    check_out_dir(args.out)
    bank = open_bank(args)
    metric = cfg.distance.metric
    progress = not args.no_progress
    if target:
        ranked, result = rank_target(bank, target, cfg, bases=args.bases, metric=metric, seeds=seeds,
                                     progress=progress, recompute=args.recompute)
    elif metric == "transform":
        try:
            from tanas_jax.distance.transform import transform_distance_table
        except ImportError as e:  # another engineer's module
            raise UserError(f"--metric transform is not available in this build ({e})") from None
        result = transform_distance_table(bank, tasks, cfg, seeds=seeds, progress=progress)
        result.setdefault("settings", {"metric": "transform"})
    else:
        result = fisher_distance_table(bank, tasks, cfg, seeds, targets=targets, progress=progress,
                                       recompute=args.recompute)
    result["command"] = "distance"
    s = result.get("settings", {})
    label = f"{metric}" + (f" ({s.get('spectrum')})" if metric != "transform" else "")
    if target:
        top = ranked[: args.top] if args.top else ranked
        print(f"closest base tasks to {target} by {label} distance ({len(seeds)} seeds):")
        print_table([{"rank": i + 1, "base": b, "mean": m, "std": sd} for i, (b, m, sd) in enumerate(top)],
                    ["rank", "base", "mean", "std"])
        result["ranking"] = [{"base": b, "mean": m, "std": sd} for b, m, sd in ranked]
    else:
        names = result["tasks"]
        rows = [dict({"base\\target": b}, **{t: result["mean"][i][j] for j, t in enumerate(names)})
                for i, b in enumerate(names)]
        print(f"{label} distance d[base, target], mean over {len(seeds)} seeds:")
        print_table(rows, ["base\\target"] + names)
        if "same_dataset_closest" in result:
            sd = result["same_dataset_closest"]
            print(f"closest base from the same dataset for {sd['count']} of {sd['of']} targets")
        tm = result.get("timing", {})
        if metric == "transform" and tm:
            print(f"wall time {tm.get('total_s', 0):.1f} s; pairs from the bank cache "
                  f"{tm.get('pairs_cached', 0)} of {tm.get('pairs_total', 0)}")
        elif tm:
            print(f"wall time {tm.get('wall_s', 0):.1f} s; Fishers computed "
                  f"{result.get('cache', {}).get('computed', 0)}, reused {result.get('cache', {}).get('reused', 0)}")
    result["config"] = cfg.to_dict()
    if args.out:
        stem = f"{metric}_{s.get('spectrum', 'diag')}" if metric != "transform" else "transform"
        try:
            result["files"] = write_outputs(args.out, result, stem)
        except KeyError:
            pass
        path = write_result(args.out, result)
        print(f"wrote {path}")
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
