"""``bin/bank ls|show TASK|verify``: inspect the task bank (``--json`` for scripts)."""
from __future__ import annotations

import argparse

from tanas_jax.cli.common import cli_main, dump_json, print_table, run_as_script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bank", description="Inspect the task bank.")
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
    import os

    from tanas_jax.bank import Bank, read_meta
    from tanas_jax.errors import CorruptEntryError, UserError

    args = build_parser().parse_args(argv)
    root = args.bank
    from tanas_jax.bank import default_bank_dir

    root = os.path.abspath(root or default_bank_dir())
    if not os.path.isdir(root):
        raise UserError(f"no bank at {root}; create one with `bin/train --task ... --bank {root}`")
    bank = Bank(root, create=False)

    def network_rows(task=None):
        rows = []
        for t, net, seed in bank.network_entries(task):
            p = bank.network_path(t, net, seed)
            try:
                meta = read_meta(p[: -len(".safetensors")] + ".json")
                m = meta.get("metrics", {})
                rows.append({"task": t, "net": net, "seed": seed, "test_acc": m.get("test_accuracy"),
                             "reached_1-eps": m.get("reached_epsilon"),
                             "source": meta.get("data", {}).get("source"), "time": meta.get("time_utc"),
                             "path": p})
            except CorruptEntryError as e:
                rows.append({"task": t, "net": net, "seed": seed, "error": str(e), "path": p})
        return rows

    if args.cmd == "ls":
        rows = network_rows()
        genos = {}
        for t in bank.tasks():
            try:
                g = bank.load_genotype(t)
            except CorruptEntryError as e:
                g = ({"error": str(e)}, {})
            if g is not None:
                genos[t] = g[0]
        if args.json:
            print(dump_json({"bank": bank.root, "networks": rows, "genotypes": genos}))
            return 0
        print(f"bank {bank.root}: {len(bank.tasks())} tasks, {len(rows)} networks, {len(genos)} genotypes")
        if rows:
            print_table(rows, ["task", "net", "seed", "test_acc", "reached_1-eps", "source"])
        for t, g in genos.items():
            print(f"genotype {t}: {dump_json(g) if 'error' in g else _short_genotype(g)}")
        return 0
    if args.cmd == "show":
        from tanas_jax.tasks import canonical

        task = canonical(args.task)
        if task not in bank.tasks():
            raise UserError(f"the bank {bank.root} has nothing for task {task}; bank tasks: "
                            f"{', '.join(bank.tasks()) or 'none'}")
        entries = []
        for t, net, seed in bank.network_entries(task):
            p = bank.network_path(t, net, seed)
            try:
                meta = read_meta(p[: -len(".safetensors")] + ".json")
            except CorruptEntryError as e:
                meta = {"error": str(e)}
            entries.append({"path": p, "meta": meta})
        art_dir = os.path.join(bank.task_dir(task), "artifacts")
        artifacts = []
        if os.path.isdir(art_dir):
            for kind in sorted(os.listdir(art_dir)):
                for f in sorted(os.listdir(os.path.join(art_dir, kind))):
                    if f.endswith(".json"):
                        artifacts.append(f"{kind}/{f[:-5]}")
        g = None
        try:
            g = bank.load_genotype(task)
        except CorruptEntryError as e:
            g = ({"error": str(e)}, {})
        out = {"task": task, "networks": entries, "artifacts": artifacts,
               "genotype": g[0] if g else None, "genotype_meta": g[1] if g else None}
        if args.json:
            print(dump_json(out))
            return 0
        print(f"task {task} in {bank.root}")
        for e in entries:
            m = e["meta"]
            if "error" in m:
                print(f"  CORRUPT {e['path']}: {m['error']}")
                continue
            met = m.get("metrics", {})
            print(f"  {m.get('net')} seed {m.get('seed')}: test accuracy {met.get('test_accuracy'):.4f} "
                  f"(epsilon {met.get('epsilon')}, reached {met.get('reached_epsilon')}), "
                  f"{met.get('n_params')} params, data {m.get('data', {}).get('source')} "
                  f"{m.get('data', {}).get('sizes')}, trained {m.get('time_utc')}")
        if artifacts:
            print(f"  artifacts: {', '.join(artifacts)}")
        if g:
            print(f"  genotype: {_short_genotype(g[0])}")
        return 0
    report = bank.verify()
    bad = [r for r in report if not r["ok"]]
    if args.json:
        print(dump_json({"bank": bank.root, "entries": report, "ok": not bad}))
    else:
        print(f"bank {bank.root}: {len(report)} entries checked, {len(bad)} bad")
        for r in bad:
            print(f"  BAD {r['path']}: {r['error']}")
    return 1 if bad else 0


def _short_genotype(g) -> str:
    import json

    s = json.dumps(g, sort_keys=True)
    return s if len(s) < 200 else s[:197] + "..."


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
