"""``bin/bank ls|show TASK|verify|rm TASK|export TASKS|import FILE``: inspect the task bank, check and
remove entries, share tasks as one archive.

Every subcommand shows each entry's health (ok / incomplete: which part is missing / damaged: why) and
takes the global options ``--bank DIR`` and ``--json`` before or after the subcommand.  ``verify`` exits 1
when an entry is not ok; ``rm`` removes one entry (``--net N --seed S``, ``--genotype``,
``--artifact KIND/KEY``), a group (``--net N``, ``--artifact KIND``) or, with no selector, the whole task.
``export TASK[,TASK...] --out FILE.tar.gz [--with-artifacts]`` and ``import FILE.tar.gz [--overwrite]`` are
thin users of :mod:`tanas_jax.bank_archive` (checksummed archives; import checks everything first).
"""
from __future__ import annotations

import argparse
import json
import os

from tanas_jax.cli.common import cli_main, dump_json, make_parser, parse_task, print_table, run_as_script
from tanas_jax.errors import UserError

PROG = "bin/bank"


def _global_options(p: argparse.ArgumentParser, default) -> None:
    """``--bank`` and ``--json``: on the main parser with their defaults, on each subcommand with
    ``default=SUPPRESS`` (so a value given before the subcommand is kept when none is given after)."""
    p.add_argument("--bank", default=default, help="task bank folder (default: $TANAS_BANK or ./bank)")
    p.add_argument("--json", action="store_true", default=default if default is argparse.SUPPRESS else False,
                   help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Inspect the task bank: entries and their health; remove entries; export "
                    "and import tasks as one checksummed archive.")
    _global_options(p, None)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{ls,show,verify,rm,export,import}")
    _global_options(sub.add_parser("ls", help="list tasks, networks and genotypes with their health"),
                    argparse.SUPPRESS)
    s = sub.add_parser("show", help="one task's entries with their metadata and health")
    s.add_argument("task")
    _global_options(s, argparse.SUPPRESS)
    _global_options(sub.add_parser("verify", help="check every entry (exit 1 when one is not ok)"),
                    argparse.SUPPRESS)
    s = sub.add_parser("rm", help="remove an entry (damaged or not) so that it can be rebuilt",
                       description="Remove bank entries of TASK: one network (--net N --seed S), every seed "
                                   "of a net (--net N), the genotype (--genotype), one artifact (--artifact "
                                   "KIND/KEY) or a kind of them (--artifact KIND); with no selector, the whole "
                                   "task.")
    s.add_argument("task")
    s.add_argument("--net", default=None, help="network name (with --seed: one entry; alone: every seed)")
    s.add_argument("--seed", default=None, help="seed of the network to remove (needs --net)")
    s.add_argument("--genotype", action="store_true", help="remove the task's genotype")
    s.add_argument("--artifact", default=None, metavar="KIND[/KEY]", help="remove one artifact or one kind")
    _global_options(s, argparse.SUPPRESS)
    _archive_parsers(sub)
    return p


def _archive_parsers(sub) -> None:
    s = sub.add_parser("export", help="write chosen tasks' entries to one checksummed archive",
                       description="Write the networks and genotype (and with --with-artifacts the derived "
                                   "artifacts) of TASK[,TASK...] to one .tar.gz with a manifest of sha256 "
                                   "checksums; refused when an entry is incomplete or damaged.")
    s.add_argument("tasks", metavar="TASK[,TASK...]")
    s.add_argument("--out", required=True, metavar="FILE.tar.gz", help="the archive to write")
    s.add_argument("--with-artifacts", action="store_true", help="also export Fishers and other artifacts")
    _global_options(s, argparse.SUPPRESS)
    s = sub.add_parser("import", help="add the entries of an archive to the bank (created when absent)",
                       description="Check every checksum and record seal of FILE.tar.gz, then write its "
                                   "entries into --bank; identical entries are skipped, different ones "
                                   "refused unless --overwrite.")
    s.add_argument("archive", metavar="FILE.tar.gz")
    s.add_argument("--overwrite", action="store_true", help="replace entries that differ from the archive's")
    _global_options(s, argparse.SUPPRESS)


def open_bank_folder(path: str | None):
    """The bank at ``--bank`` (never created: these commands only read or remove)."""
    from tanas_jax.bank import Bank, default_bank_dir

    if path is not None and not path.strip():
        raise UserError(f"--bank is empty; give the bank folder (see {PROG} --help)")
    root = os.path.abspath(path or default_bank_dir())
    if not os.path.exists(root):
        raise UserError(f"no bank at {root}; create one with `bin/train --task ... --bank {root}`")
    bank = Bank(root, create=False)   # a file in its place is refused here
    if not (os.path.exists(os.path.join(root, "BANK.json")) or os.path.isdir(os.path.join(root, "tasks"))):
        raise UserError(f"{root} is not a bank (no BANK.json, no tasks/); check --bank")
    return bank


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "rm":
        _check_rm_args(args)
    if args.cmd == "import":
        return cmd_import(args)
    if args.cmd == "export":
        _check_export_args(args)
    bank = open_bank_folder(args.bank)
    return {"ls": cmd_ls, "show": cmd_show, "verify": cmd_verify, "rm": cmd_rm,
            "export": cmd_export}[args.cmd](bank, args)


def bank_task(bank, text: str) -> str:
    """A task folder of ``bank``: the name as given when the bank has it, else the canonical name of a
    task or alias, which the bank must have."""
    if text in bank.tasks():
        return text
    task = parse_task(text)
    if task not in bank.tasks():
        raise UserError(f"the bank {bank.root} has nothing for task {task}; bank tasks: "
                        f"{', '.join(bank.tasks()) or 'none'}")
    return task


# --- reading entries ------------------------------------------------------------------------
def _meta(bank, rec: dict) -> dict:
    """The metadata of a healthy network entry (``{}`` for any other)."""
    if not rec["ok"]:
        return {}
    return bank.find_network(rec["task"], rec["net"], rec["seed"])[1]


def _get(d, *keys):
    """``d[k0][k1]...`` or None where a level is missing or not an object."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _network_row(bank, rec: dict) -> dict:
    m = _meta(bank, rec)
    row = {"task": rec["task"], "net": rec["net"], "seed": rec["seed"], "health": rec["health"],
           "test_acc": _get(m, "metrics", "test_accuracy"), "reached_1-eps": _get(m, "metrics", "reached_epsilon"),
           "source": _get(m, "data", "source"), "time": m.get("time_utc"), "path": rec["path"]}
    if not rec["ok"]:
        row["error"] = rec["error"]
    return row


def _short_genotype(g) -> str:
    s = json.dumps(g, sort_keys=True)
    return s if len(s) < 200 else s[:197] + "..."


def _fmt(v, spec: str = "") -> str:
    return "?" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


# --- subcommands ----------------------------------------------------------------------------
def cmd_ls(bank, args) -> int:
    report = bank.verify()
    rows = [_network_row(bank, r) for r in report if r["entry"] == "network"]
    genos = {r["task"]: _genotype_view(bank, r) for r in report if r["entry"] == "genotype"}
    others = [r for r in report if r["entry"] not in ("network", "genotype")]
    bad_others = [r for r in others if not r["ok"]]
    if args.json:
        print(dump_json({"bank": bank.root, "networks": rows, "genotypes": genos,
                         "artifacts": {"count": sum(r["entry"] == "artifact" for r in others)},
                         "problems": bad_others, "ok": all(r["ok"] for r in report)}))
        return 0
    print(f"bank {bank.root}: {len(bank.tasks())} tasks, {len(rows)} networks, {len(genos)} genotypes, "
          f"{sum(r['entry'] == 'artifact' for r in others)} artifacts; "
          f"{sum(not r['ok'] for r in report)} not ok")
    if rows:
        print_table([{k: "-" if v is None else v for k, v in dict(r, health=_health_word(r)).items()} for r in rows],
                    ["task", "net", "seed", "health", "test_acc", "reached_1-eps", "source"])
    for t, g in genos.items():
        print(f"genotype {t}: " + (_short_genotype(g["genotype"]) if g["health"] == "ok" else g["health"]))
    for r in [r for r in rows if "error" in r] + [g for g in genos.values() if "error" in g] + bad_others:
        print(f"  {r['health'].upper()} {r['path']}: {r['error']}")
    return 0


def _health_word(r: dict) -> str:
    return "ok" if r["health"] == "ok" else r["health"].upper()


def _genotype_view(bank, rec: dict) -> dict:
    if not rec["ok"]:
        return {"health": rec["health"], "path": rec["path"], "error": rec["error"]}
    g, meta = bank.load_genotype(rec["task"])
    return {"health": "ok", "path": rec["path"], "genotype": g, "meta": meta}


def cmd_show(bank, args) -> int:
    task = bank_task(bank, args.task)
    report = bank.verify(task)
    entries = [dict(r, meta=_meta(bank, r)) for r in report if r["entry"] == "network"]
    genos = [_genotype_view(bank, r) for r in report if r["entry"] == "genotype"]
    g = genos[0] if genos else None
    artifacts = [r for r in report if r["entry"] == "artifact"]
    out = {"task": task, "networks": entries,
           "artifacts": [dict(r, name=f"{r['kind']}/{r['key']}") for r in artifacts],
           "problems": [r for r in report if r["entry"] == "temp"],
           "genotype": g["genotype"] if g and g["health"] == "ok" else None,
           "genotype_meta": g["meta"] if g and g["health"] == "ok" else None, "genotype_health": g}
    if args.json:
        print(dump_json(out))
        return 0
    print(f"task {task} in {bank.root}")
    for e in entries:
        print(_entry_line(e))
    for r in artifacts:
        print(f"  artifact {r['kind']}/{r['key']}: " + ("ok" if r["ok"] else f"{r['health'].upper()} {r['error']}"))
    if g:
        print("  genotype: " + (_short_genotype(g["genotype"]) if g["health"] == "ok"
                                else f"{g['health'].upper()} {g['error']}"))
    for r in out["problems"]:
        print(f"  {r['health'].upper()} {r['path']}: {r['error']}")
    return 0


def _entry_line(e: dict) -> str:
    if not e["ok"]:
        return f"  {e['net']} seed {e['seed']}: {e['health'].upper()} {e['error']}"
    m = e["meta"]
    met = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
    data = m.get("data") if isinstance(m.get("data"), dict) else {}
    return (f"  {m.get('net')} seed {m.get('seed')}: ok, test accuracy {_fmt(met.get('test_accuracy'), '.4f')} "
            f"(epsilon {_fmt(met.get('epsilon'))}, reached {_fmt(met.get('reached_epsilon'))}), "
            f"{_fmt(met.get('n_params'))} params, data {_fmt(data.get('source'))} "
            f"{_fmt(data.get('sizes'))}, trained {_fmt(m.get('time_utc'))}")


def cmd_verify(bank, args) -> int:
    report = bank.verify()
    bad = [r for r in report if not r["ok"]]
    if args.json:
        print(dump_json({"bank": bank.root, "entries": report, "ok": not bad}))
    else:
        print(f"bank {bank.root}: {len(report)} entries checked, {len(bad)} bad")
        for r in report:
            print(f"  ok {r['path']}" if r["ok"] else f"  {r['health'].upper()} {r['path']}: {r['error']}")
    return 1 if bad else 0


# --- rm -------------------------------------------------------------------------------------
def _check_rm_args(args) -> None:
    """One selector at most; ``--seed`` an integer >= 0 and only with ``--net`` (before touching the bank)."""
    chosen = [f for f, on in (("--net", args.net is not None), ("--genotype", args.genotype),
                              ("--artifact", args.artifact is not None)) if on]
    if len(chosen) > 1:
        raise UserError(f"rm: give one of --net, --genotype, --artifact, not {' and '.join(chosen)} "
                        f"(see {PROG} rm --help)")
    if args.seed is not None:
        if args.net is None:
            raise UserError(f"rm: --seed needs --net (see {PROG} rm --help)")
        if not args.seed.strip().isdigit():
            raise UserError(f"rm: --seed must be one integer >= 0, got '{args.seed}' (see {PROG} rm --help)")
    for flag, value in (("--net", args.net), ("--artifact", args.artifact)):
        if value is not None and not value.strip():
            raise UserError(f"rm: {flag} is empty (see {PROG} rm --help)")


def _rm_targets(bank, task: str, args) -> list[tuple]:
    """The entries ``rm`` selects, as (kind, *ids); refuses a selection that matches nothing."""
    if args.genotype:
        found = [("genotype",)] if os.path.lexists(bank.genotype_path(task)) else []
        what = "genotype"
    elif args.net is not None:
        bank.network_path(task, args.net, 0)          # checks the name
        entries = {(n, s) for _, n, s in bank.network_entries(task)}
        seeds = [int(args.seed)] if args.seed is not None else sorted(s for n, s in entries if n == args.net)
        found = [("network", args.net, s) for s in seeds if (args.net, s) in entries]
        what = f"{args.net} network" + (f" of seed {args.seed}" if args.seed is not None else "")
    elif args.artifact is not None:
        kind, _, key = args.artifact.partition("/")
        bank.artifact_path(task, kind, key or "x")   # checks the names
        found = [("artifact", k, x) for k, x in bank.artifact_entries(task) if k == kind and (not key or x == key)]
        what = f"artifact {args.artifact}"
    else:
        return [("task",)]
    if not found:
        raise UserError(f"rm: the bank {bank.root} has no {what} for task {task}; nothing removed "
                        f"(see `{PROG} show {task} --bank {bank.root}`)")
    return found


def cmd_rm(bank, args) -> int:
    task = bank_task(bank, args.task)
    removed = []
    for target in _rm_targets(bank, task, args):
        kind, ids = target[0], target[1:]
        fn = {"task": bank.remove_task, "genotype": bank.remove_genotype, "network": bank.remove_network,
              "artifact": bank.remove_artifact}[kind]
        removed += fn(task, *ids)
    if args.json:
        print(dump_json({"bank": bank.root, "task": task, "removed": removed}))
    else:
        for p in removed:
            print(f"removed {p}")
        print(f"{len(removed)} files removed from {bank.root}")
    return 0


# --- export / import ------------------------------------------------------------------------
def _check_export_args(args) -> None:
    """A non-empty task list and --out (before touching the bank)."""
    if not [t for t in args.tasks.split(",") if t.strip()]:
        raise UserError(f"export: empty task list; give TASK[,TASK...] (see `{PROG} ls` for the bank's tasks)")
    if not args.out.strip():
        raise UserError(f"export: --out is empty; give the archive to write, e.g. bank.tar.gz (see {PROG} "
                        "export --help)")


def export_names(bank, text: str) -> list[str]:
    """Task folders of ``bank`` from a comma list of bank task names, task names / aliases and task sets
    (``offline8``); every one must be in the bank."""
    from tanas_jax.tasks import TASK_SETS

    names = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        names += list(TASK_SETS[item]) if item in TASK_SETS and item not in bank.tasks() else [item]
    return list(dict.fromkeys(bank_task(bank, t) for t in names))


def cmd_export(bank, args) -> int:
    from tanas_jax.bank_archive import export_tasks

    summary = export_tasks(bank, export_names(bank, args.tasks), args.out, with_artifacts=args.with_artifacts)
    if args.json:
        print(dump_json(summary))
    else:
        print(f"wrote {summary['archive']}: {', '.join(summary['tasks'])}; {summary['networks']} networks, "
              f"{summary['genotypes']} genotypes, {summary['artifacts']} artifacts ({summary['files']} files, "
              f"{summary['bytes']} bytes, sha256 {summary['sha256']})")
    return 0


def cmd_import(args) -> int:
    from tanas_jax.bank_archive import import_archive

    if args.bank is not None and not args.bank.strip():
        raise UserError(f"--bank is empty; give the bank folder (see {PROG} --help)")
    report = import_archive(args.archive, args.bank, overwrite=args.overwrite)
    if args.json:
        print(dump_json(report))
        return 0
    for kind in ("imported", "overwritten", "skipped"):
        for label in report[kind]:
            print(f"{kind} {label}" + (" (identical)" if kind == "skipped" else ""))
    print(f"{len(report['imported'])} entries imported, {len(report['overwritten'])} overwritten, "
          f"{len(report['skipped'])} identical skipped into {report['bank']} ({report['files_written']} files)")
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
