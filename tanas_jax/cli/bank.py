"""``bin/bank ls|show TASK|verify``: inspect the task bank (``--json`` for scripts)."""
from __future__ import annotations

import argparse
import json
import os

from tanas_jax.cli.common import cli_main, dump_json, make_parser, parse_task, print_table, run_as_script
from tanas_jax.errors import CorruptEntryError, UserError


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("bank", "Inspect the task bank.")
    p.add_argument("--bank", default=None, help="task bank folder (default: $TANAS_BANK or ./bank)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("ls", "list tasks, networks, genotypes"), ("verify", "check every entry's checksum")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--json", action="store_true")
    s = sub.add_parser("show", help="one task's entries with their metadata")
    s.add_argument("task")
    s.add_argument("--json", action="store_true")
    return p


def run(argv) -> int:
    from tanas_jax.bank import Bank, default_bank_dir

    args = build_parser().parse_args(argv)
    root = os.path.abspath(args.bank or default_bank_dir())
    if not os.path.isdir(root):
        raise UserError(f"no bank at {root}; create one with `bin/train --task ... --bank {root}`")
    bank = Bank(root, create=False)
    return {"ls": cmd_ls, "show": cmd_show, "verify": cmd_verify}[args.cmd](bank, args)


# --- reading entries ------------------------------------------------------------------------
def _network_meta(bank, task: str, net: str, seed: int) -> tuple[str, dict]:
    """The network file's path and its metadata (``{'error': ...}`` when the entry is corrupt)."""
    from tanas_jax.bank import read_meta

    p = bank.network_path(task, net, seed)
    try:
        return p, read_meta(p[: -len(".safetensors")] + ".json")
    except CorruptEntryError as e:
        return p, {"error": str(e)}


def _network_rows(bank, task=None) -> list[dict]:
    rows = []
    for t, net, seed in bank.network_entries(task):
        p, meta = _network_meta(bank, t, net, seed)
        if "error" in meta:
            rows.append({"task": t, "net": net, "seed": seed, "error": meta["error"], "path": p})
            continue
        m = meta.get("metrics", {})
        rows.append({"task": t, "net": net, "seed": seed, "test_acc": m.get("test_accuracy"),
                     "reached_1-eps": m.get("reached_epsilon"), "source": meta.get("data", {}).get("source"),
                     "time": meta.get("time_utc"), "path": p})
    return rows


def _genotype(bank, task: str):
    """``(genotype, meta)``, None when the task has none, ``({'error': ...}, {})`` when it is corrupt."""
    try:
        return bank.load_genotype(task)
    except CorruptEntryError as e:
        return {"error": str(e)}, {}


def _artifacts(bank, task: str) -> list[str]:
    art_dir = os.path.join(bank.task_dir(task), "artifacts")
    if not os.path.isdir(art_dir):
        return []
    return [f"{kind}/{f[:-5]}" for kind in sorted(os.listdir(art_dir))
            for f in sorted(os.listdir(os.path.join(art_dir, kind))) if f.endswith(".json")]


def _short_genotype(g) -> str:
    s = json.dumps(g, sort_keys=True)
    return s if len(s) < 200 else s[:197] + "..."


# --- subcommands ----------------------------------------------------------------------------
def cmd_ls(bank, args) -> int:
    rows = _network_rows(bank)
    genos = {t: g[0] for t in bank.tasks() if (g := _genotype(bank, t)) is not None}
    if args.json:
        print(dump_json({"bank": bank.root, "networks": rows, "genotypes": genos}))
        return 0
    print(f"bank {bank.root}: {len(bank.tasks())} tasks, {len(rows)} networks, {len(genos)} genotypes")
    if rows:
        print_table(rows, ["task", "net", "seed", "test_acc", "reached_1-eps", "source"])
    for t, g in genos.items():
        print(f"genotype {t}: {dump_json(g) if 'error' in g else _short_genotype(g)}")
    return 0


def cmd_show(bank, args) -> int:
    task = parse_task(args.task)
    if task not in bank.tasks():
        raise UserError(f"the bank {bank.root} has nothing for task {task}; bank tasks: "
                        f"{', '.join(bank.tasks()) or 'none'}")
    entries = [dict(zip(("path", "meta"), _network_meta(bank, t, net, seed)))
               for t, net, seed in bank.network_entries(task)]
    g = _genotype(bank, task)
    out = {"task": task, "networks": entries, "artifacts": _artifacts(bank, task),
           "genotype": g[0] if g else None, "genotype_meta": g[1] if g else None}
    if args.json:
        print(dump_json(out))
        return 0
    print(f"task {task} in {bank.root}")
    for e in entries:
        print(_entry_line(e))
    if out["artifacts"]:
        print(f"  artifacts: {', '.join(out['artifacts'])}")
    if g:
        print(f"  genotype: {_short_genotype(g[0])}")
    return 0


def _entry_line(e: dict) -> str:
    m = e["meta"]
    if "error" in m:
        return f"  CORRUPT {e['path']}: {m['error']}"
    met, data = m.get("metrics", {}), m.get("data", {})
    return (f"  {m.get('net')} seed {m.get('seed')}: test accuracy {met.get('test_accuracy'):.4f} "
            f"(epsilon {met.get('epsilon')}, reached {met.get('reached_epsilon')}), "
            f"{met.get('n_params')} params, data {data.get('source')} "
            f"{data.get('sizes')}, trained {m.get('time_utc')}")


def cmd_verify(bank, args) -> int:
    report = bank.verify()
    bad = [r for r in report if not r["ok"]]
    if args.json:
        print(dump_json({"bank": bank.root, "entries": report, "ok": not bad}))
    else:
        print(f"bank {bank.root}: {len(report)} entries checked, {len(bad)} bad")
        for r in bad:
            print(f"  BAD {r['path']}: {r['error']}")
    return 1 if bad else 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
