"""``bin/distance``: task-distance tables and closest-base rankings.

    bin/distance --tasks offline8 --metric frechet|logdet|transform --spectrum diag_sorted|diag|full \
        --repeats 10 --out DIR
    bin/distance --target T --bases offline8          # ranked closest bases

Writes ``DIR/result.json`` (matrices, task names, settings, data source,
versions, ``p_closest``), CSV files (mean, std, P(closest)) and a heatmap (mean
and std side by side; column = target task; each column's closest base boxed
with its P(closest)).  P(closest) of a base for a target is the fraction of
(network seed, bootstrap resample of the Fisher examples) pairs in which it is
the closest; ``--bootstrap 0`` makes it over the seeds only.
"""
from __future__ import annotations

import argparse

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
    parse_tasks,
    print_table,
    progress_from_args,
    run_as_script,
    updated,
    write_result,
)
from tanas_jax.cli.fisher import add_fisher_args, fisher_config
from tanas_jax.config import HEAD_MODES, METRICS, NORMALIZATIONS, REDUCTIONS, SPECTRA
from tanas_jax.errors import UserError

VALID = {"metric": METRICS, "spectrum": SPECTRA, "normalization": NORMALIZATIONS, "reduction": REDUCTIONS,
         "head": HEAD_MODES}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("distance", "Fisher (log-det, Fréchet) or transform-network task distances between "
                    "banked networks.")
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
    p.add_argument("--bootstrap", type=int, default=None,
                   help="P(closest): resamples of the Fisher examples per seed, 0 = over seeds only "
                        "(default: config distance.bootstrap)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    add_fisher_args(p)
    add_common_args(p, seed=False)
    return p


FISHER_FLAGS = ("spectrum", "sigma2", "normalization", "reduction", "head", "examples", "estimator", "mc_samples",
                "fisher_method", "memory_budget", "microbatch", "authors_fisher", "recompute", "bootstrap")


def distance_config(cfg, args):
    """A new config with the command line's ``distance`` settings; bad values are one-line errors naming the flag,
    and so are flags the chosen metric would ignore."""
    changes = {f"distance.{name}": parse_name(getattr(args, name), valid, name)
               for name, valid in VALID.items() if getattr(args, name) is not None}
    if args.sigma2 is not None:
        if not 0 < args.sigma2 < float("inf"):
            raise UserError(f"--sigma2 must be positive, got {args.sigma2}; the authors use 1e-10")
        changes["distance.sigma2"] = args.sigma2
    if args.bootstrap is not None:
        if args.bootstrap < 0:
            raise UserError(f"--bootstrap must be >= 0 (0: P(closest) over seeds only), got {args.bootstrap}")
        changes["distance.bootstrap"] = args.bootstrap
    if args.bootstrap_seed < 0:
        raise UserError(f"--bootstrap-seed must be >= 0, got {args.bootstrap_seed}")
    cfg = updated(cfg, changes)
    _check_metric_flags(args, cfg.distance)
    return cfg


def _flag(name: str) -> str:
    return "--" + {"memory_budget": "memory-budget"}.get(name, name.replace("_", "-"))


def _check_metric_flags(args, dc) -> None:
    """Refuse a flag that the metric ignores (transform: every Fisher flag; frechet: --sigma2)."""
    given = [n for n in FISHER_FLAGS if getattr(args, n, None) not in (None, False)]
    ignored = given if dc.metric == "transform" else [n for n in given if n == "sigma2" and dc.metric == "frechet"]
    if ignored:
        raise UserError(f"{', '.join(_flag(n) for n in ignored)}: not used by --metric {dc.metric}; drop it")
    if dc.spectrum == "full" and (dc.normalization != "network" or dc.reduction != "global"):
        raise UserError("full spectra support --normalization network and --reduction global only; "
                        "use --spectrum diag for layer-wise options")


def _seeds(args, cfg) -> list[int]:
    """``--seeds``, else ``0..--repeats-1``, else the config's ``bank.seeds``."""
    if args.seeds is not None:
        if args.repeats is not None:
            raise UserError("give --seeds or --repeats, not both")
        return parse_seeds(args.seeds)
    if args.repeats is not None:
        if args.repeats < 1:
            raise UserError(f"--repeats must be >= 1, got {args.repeats}")
        return list(range(args.repeats))
    return [int(s) for s in cfg.bank.seeds]


def _what(args, cfg) -> tuple[str | None, list[str] | None]:
    """``(target, None)`` for a ranking or ``(None, tasks)`` for a table; names checked before any work."""
    if args.target is not None:
        if args.tasks is not None:
            raise UserError("give --tasks SET for a table or --target T [--bases SET] for a ranking, not both")
        if args.top is not None and args.top < 1:
            raise UserError(f"--top must be >= 1, got {args.top}")
        target = parse_task(args.target)
        bases = [b for b in parse_tasks(cfg.tanas.bases if args.bases is None else args.bases) if b != target]
        if not bases:
            raise UserError(f"no base tasks left once the target {target} is held out; give other --bases")
        return target, None
    unused = [f for f, v in (("--bases", args.bases), ("--top", args.top)) if v is not None]
    if unused:
        raise UserError(f"{', '.join(unused)} only apply to a ranking (--target T); drop them for a table")
    if args.tasks is None:
        raise UserError("give --tasks SET for a table, or --target T [--bases SET] for a ranking")
    return None, parse_tasks(args.tasks)


def _table(bank, tasks, cfg, seeds, progress: bool, recompute: bool, bootstrap_seed: int) -> dict:
    """The K x K table of ``cfg.distance.metric`` over ``tasks``."""
    if cfg.distance.metric == "transform":
        from tanas_jax.distance.table import add_seed_p_closest
        from tanas_jax.distance.transform import transform_distance_table

        result = transform_distance_table(bank, tasks, cfg, seeds=seeds, progress=progress, log=logger.info)
        result.setdefault("settings", {"metric": "transform"})
        return add_seed_p_closest(result)
    from tanas_jax.distance.table import fisher_distance_table

    return fisher_distance_table(bank, tasks, cfg, seeds, targets=None, progress=progress, log=logger.info,
                                 recompute=recompute, bootstrap_seed=bootstrap_seed)


def _print_ranking(ranked, target: str, label: str, result: dict, top: int | None) -> list[dict]:
    shown = ranked[:top] if top else ranked
    p = result.get("p_closest", {}).get(target, {})
    over = result.get("bootstrap", {}).get("over", f"{len(result.get('seeds', []))} seeds")
    print(f"closest base tasks to {target} by {label} distance ({len(result.get('seeds', []))} seeds); "
          f"P(closest) over {over}:")
    print_table([{"rank": i + 1, "base": b, "mean": m, "std": sd, "P(closest)": p.get(b)}
                 for i, (b, m, sd) in enumerate(shown)], ["rank", "base", "mean", "std", "P(closest)"])
    return [{"base": b, "mean": m, "std": sd, "p_closest": p.get(b)} for b, m, sd in ranked]


def _print_p_closest(result: dict) -> None:
    """Per target: its closest base (by mean distance) and that base's P(closest), and the runner-up."""
    pc, closest = result.get("p_closest") or {}, result.get("closest") or {}
    if not pc or not closest:
        return
    rows = []
    for t, b in closest.items():
        others = sorted(((v, o) for o, v in pc[t].items() if o != b), reverse=True)
        rows.append({"target": t, "closest": b, "P(closest)": pc[t].get(b, 0.0),
                     "most often otherwise": f"{others[0][1]} ({others[0][0]:.2f})" if others else ""})
    print(f"P(closest): fraction of {result.get('bootstrap', {}).get('over', 'seeds')} in which a base is the closest")
    print_table(rows, ["target", "closest", "P(closest)", "most often otherwise"])


def _print_table(result: dict, label: str, n_seeds: int, metric: str) -> None:
    names = result["tasks"]
    rows = [dict({"base\\target": b}, **{t: result["mean"][i][j] for j, t in enumerate(names)})
            for i, b in enumerate(names)]
    print(f"{label} distance d[base, target], mean over {n_seeds} seeds:")
    print_table(rows, ["base\\target"] + names)
    if "same_dataset_closest" in result:
        sd = result["same_dataset_closest"]
        print(f"closest base from the same dataset for {sd['count']} of {sd['of']} targets")
    _print_p_closest(result)
    tm = result.get("timing", {})
    cache = result.get("cache", {})
    if metric == "transform" and tm:
        print(f"wall time {tm.get('total_s', 0):.1f} s; pairs from the bank cache "
              f"{tm.get('pairs_cached', 0)} of {tm.get('pairs_total', 0)}")
    elif tm:
        print(f"wall time {tm.get('wall_s', 0):.1f} s; Fishers computed "
              f"{cache.get('computed', 0)}, reused {cache.get('reused', 0)}")


def _write(out: str | None, result: dict, metric: str) -> None:
    """result.json, and the CSVs and heatmap of a table, in ``out``."""
    from tanas_jax.distance.table import write_outputs

    if not out:
        return
    s = result.get("settings", {})
    stem = f"{metric}_{s.get('spectrum', 'diag')}" if metric != "transform" else "transform"
    try:
        result["files"] = write_outputs(out, result, stem)
    except KeyError:   # a ranking has no full matrix to write
        pass
    logger.info(f"wrote {write_result(out, result)}")


def run(argv) -> int:
    from tanas_jax.distance.table import rank_target

    args = build_parser().parse_args(argv)
    progress = progress_from_args(args)
    cfg = distance_config(fisher_config(config_from_args(args), args), args)
    seeds = _seeds(args, cfg)
    target, tasks = _what(args, cfg)
    check_out_dir(args.out)
    bank = open_bank(args)
    metric = cfg.distance.metric
    if target:
        ranked, result = rank_target(bank, target, cfg, bases=args.bases, metric=metric, seeds=seeds,
                                     progress=progress, log=logger.info, recompute=args.recompute,
                                     bootstrap_seed=args.bootstrap_seed)
    else:
        result = _table(bank, tasks, cfg, seeds, progress, args.recompute, args.bootstrap_seed)
    result["command"] = "distance"
    s = result.get("settings", {})
    label = f"{metric}" + (f" ({s.get('spectrum')})" if metric != "transform" else "")
    if target:
        result["ranking"] = _print_ranking(ranked, target, label, result, args.top)
    else:
        _print_table(result, label, len(seeds), metric)
    result["config"] = cfg.to_dict()
    _write(args.out, result, metric)
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
