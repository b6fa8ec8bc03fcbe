"""``bin/train``: train epsilon-approximation networks for tasks and store them in the bank."""
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
    parse_seeds,
    parse_tasks,
    print_table,
    progress_from_args,
    run_as_script,
    updated,
    write_result,
)
from tanas_jax.errors import UserError

COLUMNS = ["task", "net", "seed", "test_acc", "val_acc", "reached_1-eps", "train_s", "status", "source"]


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("train", "Train epsilon-approximation networks for tasks (or task sets) and store them in "
                    "the task bank.")
    p.add_argument("--task", help="task name/alias, comma-separated list, or task set (e.g. offline8)")
    p.add_argument("--net", default=None, help="network (default: config train.net); see --list-nets")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (overrides --seed)")
    p.add_argument("--epsilon", type=float, default=None, help="required test accuracy is 1 - epsilon")
    p.add_argument("--retrain", action="store_true", help="train again even if the bank has the network")
    p.add_argument("--list-tasks", action="store_true", help="list registered tasks and task sets")
    p.add_argument("--list-nets", action="store_true", help="list networks")
    add_common_args(p)
    return p


def _list_tasks(bank=None) -> None:
    """The built-in tasks and sets, then (``bank``) the user tasks the bank holds networks of."""
    from tanas_jax import tasks

    for name in tasks.task_names():
        t = tasks.get_task(name)
        alias = f" (alias {', '.join(t.aliases)})" if t.aliases else ""
        print(f"{name:28s} {t.num_classes:3d} classes  {t.description}{alias}")
    for s, members in tasks.TASK_SETS.items():
        print(f"set {s}: {', '.join(members)}")
    if bank is not None:
        _list_user_tasks(bank)


def _list_user_tasks(bank) -> None:
    """One line per user task in ``bank``: name, class count, source and class names."""
    from tanas_jax import tasks
    from tanas_jax.data.spec import from_record

    found = tasks.banked_user_tasks(bank)
    print(f"user tasks in the bank {bank.root}: {len(found) or 'none'}")
    for name, rec in found.items():
        spec = from_record(rec["spec"], f"task {name} (bank {bank.root})")
        names = rec["class_names"]
        print(f"{name:28s} {len(names):3d} classes  source: {spec.source_text()}  classes: {', '.join(names)}")


def _existing_bank(args):
    """The ``--bank`` folder when it exists (listing creates nothing), else None."""
    import os

    bank = open_bank(args, create=False)
    return bank if os.path.isdir(bank.root) else None


def _list_nets() -> None:
    from tanas_jax import models

    for n, spec in models.NETS.items():
        print(f"{n:12s} {spec.description}")


def train_config(cfg, args):
    """A new config with ``--net`` and ``--epsilon`` (checked) in section ``train``."""
    from tanas_jax import models

    if args.epsilon is not None and not 0 < args.epsilon < 1:
        raise UserError(f"--epsilon must be in (0, 1), got {args.epsilon}")
    cfg = updated(cfg, {"train.net": args.net, "train.epsilon": args.epsilon})
    models.get_net(cfg.train.net)
    return cfg


def train_networks(cfg, bank, task_list: list[str], seeds: list[int], *, retrain: bool = False,
                   progress: bool = True) -> list[dict]:
    """Ensure a banked network per (task, seed) (trained when missing or ``retrain``); one row each."""
    from tanas_jax.train import bank_key, ensure_network

    rows, net_key = [], bank_key(cfg.train)   # the bank's name for it
    for task in task_list:
        for seed in seeds:
            reused = bank.has_network(task, net_key, seed) and not retrain
            _, meta = ensure_network(bank, task, seed, cfg, progress=progress, log=logger.info, retrain=retrain)
            m = meta["metrics"]
            rows.append({"task": task, "net": cfg.train.net, "seed": seed,
                         "test_acc": m["test_accuracy"], "val_acc": m["val_accuracy"],
                         "reached_1-eps": "yes" if m["reached_epsilon"] else "NO",
                         "train_s": m["wall_s"], "source": meta["data"]["source"],
                         "status": "reused" if reused else "trained"})
    return rows


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.list_tasks or args.list_nets:
        if args.task is not None or args.list_tasks and args.list_nets:
            raise UserError("--list-tasks and --list-nets only list: give one of them alone, or --task to train")
        if args.list_nets:
            _list_nets()
        else:
            _list_tasks(_existing_bank(args))
        return 0
    if not args.task:
        raise UserError("give --task NAME (or a set such as offline8); list them with --list-tasks")
    progress = progress_from_args(args)
    cfg = train_config(config_from_args(args), args)
    task_list = parse_tasks(args.task)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    check_out_dir(args.out)
    bank = open_bank(args)
    rows = train_networks(cfg, bank, task_list, seeds, retrain=args.retrain, progress=progress)
    print()
    print_table(rows, COLUMNS)
    missed = [r for r in rows if r["reached_1-eps"] == "NO"]
    if missed:
        print(f"note: {len(missed)} network(s) did not reach test accuracy 1 - epsilon = "
              f"{1 - cfg.train.epsilon:.2f}; train longer (--set train.epochs=N) or relax --epsilon")
    write_result(args.out, {"command": "train", "config": cfg.to_dict(), "bank": bank.root, "networks": rows})
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
