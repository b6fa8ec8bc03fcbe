"""``bin/fisher``: the diagonal Fisher of a banked network on a task's data, cached in the bank.

    bin/fisher --task mnist_digit0 [--net-of task7] [--seed S] [--examples M]

computes the Fisher of ``--net-of``'s network (default: the task's own) on
``--task``'s data (LD-NAS: F_{b,t} with b = --net-of, t = --task).
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
    parse_task,
    print_table,
    progress_from_args,
    run_as_script,
    updated,
    write_result,
)
from tanas_jax.config import ESTIMATORS, FISHER_METHODS
from tanas_jax.errors import UserError


def add_fisher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Fisher engine")
    g.add_argument("--examples", type=int, default=None, help="examples of the data task (config fisher.examples)")
    g.add_argument("--estimator", choices=ESTIMATORS, default=None,
                   help="empirical: data labels (LD-NAS eq. 6); mc: labels sampled from the model; "
                        "exact: expectation over all labels")
    g.add_argument("--mc-samples", type=int, default=None, help="labels per example for --estimator mc")
    g.add_argument("--fisher-method", choices=FISHER_METHODS, default=None,
                   help="fast: per-layer identities; vmap: generic vmap(grad); auto: fast when possible")
    g.add_argument("--memory-budget", type=int, default=None, metavar="MB",
                   help="memory budget for the per-example microbatch, in MiB (config fisher.memory_budget_mb)")
    g.add_argument("--microbatch", type=int, default=None, help="examples per step (default: from the budget)")
    g.add_argument("--authors-fisher", action="store_true",
                   help="authors' variant: square of the batch-mean gradient + mean over the out axis "
                        "(comparison only; not the empirical Fisher)")
    g.add_argument("--recompute", action="store_true", help="ignore cached Fishers")


def _positive(args, flag: str, unit: str = "") -> int | None:
    v = getattr(args, flag.lstrip("-").replace("-", "_"))
    if v is not None and v <= 0:
        raise UserError(f"{flag} must be {'a positive number of ' + unit if unit else 'positive'}, got {v}")
    return v


def fisher_config(cfg, args):
    """A new config with the command line's Fisher-engine settings (``cfg`` is not changed); a bad value
    is a one-line error naming the flag."""
    examples = _positive(args, "--examples")
    changes = {"fisher.examples": examples,
               "fisher.full_examples": min(cfg.fisher.full_examples, examples) if examples else None,
               "fisher.estimator": args.estimator, "fisher.mc_samples": _positive(args, "--mc-samples"),
               "fisher.method": args.fisher_method,
               "fisher.memory_budget_mb": _positive(args, "--memory-budget", "MiB"),
               "fisher.microbatch": _positive(args, "--microbatch"),
               "distance.authors_fisher": True if args.authors_fisher else None}
    cfg = updated(cfg, changes)
    if args.mc_samples is not None and cfg.fisher.estimator != "mc":
        raise UserError(f"--mc-samples is used only with --estimator mc (the estimator is "
                        f"'{cfg.fisher.estimator}'); drop it or add --estimator mc")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("fisher", "Diagonal Fisher information of a banked network on a task's data (trained and "
                    "cached in the bank as needed).")
    p.add_argument("--task", required=True, help="data task t (name or alias)")
    p.add_argument("--net-of", default=None, help="task b whose banked network is used (default: --task)")
    add_fisher_args(p)
    add_common_args(p)
    return p


def _layer_rows(tree) -> tuple[list[dict], float]:
    """Per layer: parameter count, trace and share of the total trace; and the total."""
    import jax
    import numpy as np

    from tanas_jax.fisher import leaf_names

    leaves = jax.tree_util.tree_leaves(tree)
    total = float(sum(float(np.sum(a)) for a in leaves))
    rows = [{"layer": n, "params": int(np.size(a)), "trace": float(np.sum(a)),
             "share": float(np.sum(a)) / total if total else 0.0} for n, a in zip(leaf_names(tree), leaves)]
    return rows, total


def run(argv) -> int:
    from tanas_jax.distance.table import FisherStore

    args = build_parser().parse_args(argv)
    progress = progress_from_args(args)
    cfg = fisher_config(config_from_args(args), args)
    check_out_dir(args.out)
    data_task = parse_task(args.task)
    net_task = parse_task(args.net_of) if args.net_of is not None else data_task
    store = FisherStore(open_bank(args), cfg, progress=progress, log=logger.info, recompute=args.recompute)
    tree, meta = store.fisher(net_task, data_task, args.seed)
    rows, total = _layer_rows(tree)
    print_table(rows, ["layer", "params", "trace", "share"])
    cached = store.stats["cached"] > 0
    info = meta.get("info", {})
    print(f"Fisher of {net_task}'s {store.net} (seed {args.seed}) on {data_task} data: "
          f"{meta.get('examples')} examples, trace {total:.6g}, "
          + ("reused from the bank" if cached else
             f"{info.get('method')} path, microbatch {info.get('microbatch')}, {meta.get('seconds', 0):.2f} s"))
    write_result(args.out, {"command": "fisher", "net_task": net_task, "data_task": data_task, "seed": args.seed,
                            "net": store.net, "trace": total, "layers": rows, "cached": cached,
                            "meta": meta, "config": cfg.to_dict()})
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
