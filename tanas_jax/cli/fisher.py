"""``bin/fisher``: the diagonal Fisher of a banked network on a task's data, cached in the bank.

    bin/fisher --task mnist_digit0 [--net-of task7] [--seed S] [--examples M]

computes the Fisher of ``--net-of``'s network (default: the task's own) on
``--task``'s data (LD-NAS: F_{b,t} with b = --net-of, t = --task).
"""
from __future__ import annotations

import argparse

from tanas_jax.cli.common import (add_common_args, check_out_dir, cli_main, config_from_args, open_bank,
                                  print_table, run_as_script, write_result)


def add_fisher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Fisher engine")
    g.add_argument("--examples", type=int, default=None, help="examples of the data task (config fisher.examples)")
    g.add_argument("--estimator", choices=("empirical", "mc", "exact"), default=None,
                   help="empirical: data labels (LD-NAS eq. 6); mc: labels sampled from the model; "
                        "exact: expectation over all labels")
    g.add_argument("--mc-samples", type=int, default=None, help="labels per example for --estimator mc")
    g.add_argument("--fisher-method", choices=("auto", "fast", "vmap"), default=None,
                   help="fast: per-layer identities; vmap: generic vmap(grad); auto: fast when possible")
    g.add_argument("--memory-budget", type=int, default=None, metavar="MB",
                   help="memory budget for the per-example microbatch, in MiB (config fisher.memory_budget_mb)")
    g.add_argument("--microbatch", type=int, default=None, help="examples per step (default: from the budget)")
    g.add_argument("--authors-fisher", action="store_true",
                   help="authors' variant: square of the batch-mean gradient + mean over the out axis "
                        "(comparison only; not the empirical Fisher)")
    g.add_argument("--recompute", action="store_true", help="ignore cached Fishers")


def apply_fisher_args(cfg, args) -> None:
    f = cfg.fisher
    if args.examples is not None:
        f.examples = args.examples
        f.full_examples = min(f.full_examples, args.examples)
    if args.estimator:
        f.estimator = args.estimator
    if args.mc_samples is not None:
        f.mc_samples = args.mc_samples
    if args.fisher_method:
        f.method = args.fisher_method
    if args.memory_budget is not None:
        if args.memory_budget <= 0:
            from tanas_jax.errors import UserError
            raise UserError(f"--memory-budget must be a positive number of MiB, got {args.memory_budget}")
        f.memory_budget_mb = args.memory_budget
    if args.microbatch is not None:
        f.microbatch = args.microbatch
    if args.authors_fisher:
        cfg.distance.authors_fisher = True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fisher", description="Diagonal Fisher information of a banked network "
                                "on a task's data (trained and cached in the bank as needed).")
    p.add_argument("--task", required=True, help="data task t (name or alias)")
    p.add_argument("--net-of", default=None, help="task b whose banked network is used (default: --task)")
    add_fisher_args(p)
    add_common_args(p)
    return p


def run(argv) -> int:
    import jax
    import numpy as np

    from tanas_jax.distance.table import FisherStore
    from tanas_jax.fisher import leaf_names
    from tanas_jax.tasks import canonical

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    apply_fisher_args(cfg, args)
    check_out_dir(args.out)
    data_task = canonical(args.task)
    net_task = canonical(args.net_of) if args.net_of else data_task
    bank = open_bank(args)
    store = FisherStore(bank, cfg, progress=not args.no_progress, recompute=args.recompute)
    tree, meta = store.fisher(net_task, data_task, args.seed)
    leaves = jax.tree_util.tree_leaves(tree)
    names = leaf_names(tree)
    total = float(sum(float(np.sum(a)) for a in leaves))
    rows = [{"layer": n, "params": int(np.size(a)), "trace": float(np.sum(a)),
             "share": float(np.sum(a)) / total if total else 0.0} for n, a in zip(names, leaves)]
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
