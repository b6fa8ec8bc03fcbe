"""Bank archives: chosen tasks of a bank as one checksummed ``.tar.gz`` (``bin/bank export`` / ``import``).

Ranking bases for a target needs only the bases' banked *networks* and the target's data (a Fisher of a
base network is always taken on the target's data), so a bank carried to another machine without any base
data still ranks, and with the bases' genotypes, still searches.  An archive carries that bank.  (``bin/tanas``
also draws the full K x K table, which takes every task's data, when there are at most
``tanas.full_table_max`` tasks: on a bank without the bases' data pass ``--set tanas.full_table_max=0``.)

Layout of the archive (gzip-compressed tar, plain files only)::

    MANIFEST.json                                   first member: what the archive holds
    tasks/<task>/networks/<net>-seed<S>.{safetensors,json}
    tasks/<task>/genotype.json
    tasks/<task>/artifacts/<kind>/<key>.{safetensors,json}      only with ``with_artifacts``

The paths are the bank's own layout (:class:`~tanas_jax.bank.Bank`).  ``MANIFEST.json`` holds the archive
format, the bank format, the tanas_jax version, the tasks, every entry (network / genotype / artifact with
its identity and its files) and every file's sha256 and size.

Export (:func:`export_tasks`) refuses an entry that is not healthy (:meth:`Bank.verify`) and checks each
entry's bytes (seal, tensor checksum, identity) as it reads them.  Import (:func:`import_archive`) checks
everything before writing anything: the archive's structure (no absolute paths, no ``..``, no links or
other non-files, no duplicates, no file the manifest does not list), every file's sha256 and size, every
entry's record seal and tensor checksum, and that each sealed record names the entry its path says.
An entry the bank already holds byte for byte is skipped; a different one is refused unless ``overwrite``.
Each entry is written with the bank's atomic writes, tensors first (the commit: their header carries the
record) and the JSON last, under the bank's per-entry lock.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import zlib
from typing import Any

from tanas_jax.bank import FORMAT, Bank, check_tensor_bytes, default_bank_dir, meta_path, parse_record
from tanas_jax.errors import CorruptEntryError, UserError
from tanas_jax.io import atomic_write_bytes

ARCHIVE_FORMAT = "tanas_jax-bank-archive-v1"
MANIFEST = "MANIFEST.json"
MANIFEST_MAX_BYTES = 64 * 2**20
ENTRY_KINDS = ("network", "genotype", "artifact")


# --- entries and their files ----------------------------------------------------------------
def entry_label(e: dict) -> str:
    """``network mnist_digit0 small_cnn seed 0`` / ``genotype T`` / ``artifact T kind/key``."""
    if e["entry"] == "network":
        return f"network {e['task']} {e['net']} seed {e['seed']}"
    if e["entry"] == "artifact":
        return f"artifact {e['task']} {e['kind']}/{e['key']}"
    return f"genotype {e['task']}"


def entry_paths(bank: Bank, e: dict) -> list[str]:
    """The files of entry ``e`` in ``bank``, in write order (tensors first, the JSON last);
    the first is the path the bank locks the entry by.  Names are checked by the bank's path functions."""
    kind = e.get("entry")
    if kind == "genotype":
        return [bank.genotype_path(e["task"])]
    if kind == "network":
        seed = e["seed"]
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise UserError(f"invalid seed {seed!r} of a network entry")
        p = bank.network_path(e["task"], e["net"], seed)
    elif kind == "artifact":
        p = bank.artifact_path(e["task"], e["kind"], e["key"])
    else:
        raise UserError(f"unknown entry kind {kind!r}: valid: {', '.join(ENTRY_KINDS)}")
    return [p, meta_path(p)]


def _rel(bank: Bank, path: str) -> str:
    return os.path.relpath(path, bank.root).replace(os.sep, "/")


def _identity(e: dict) -> dict:
    """The fields a sealed record of entry ``e`` must hold."""
    keys = {"network": ("task", "net", "seed"), "artifact": ("task", "kind", "key"), "genotype": ("task",)}
    return {"entry": e["entry"], **{k: e[k] for k in keys[e["entry"]]}}


def check_entry(e: dict, rels: list[str], blobs: dict[str, bytes], where: str, fix: str) -> None:
    """Check entry ``e``'s bytes (``blobs[rel]`` for its ``rels``, as :func:`entry_paths` orders them): the
    record seal, the tensors against their checksum, and that the sealed record names ``e``.
    :class:`CorruptEntryError` naming ``where/rel`` and ``fix``."""
    rec_rel = rels[-1]
    rec = parse_record(blobs[rec_rel], f"{where}/{rec_rel}", fix)
    if len(rels) == 2:
        check_tensor_bytes(blobs[rels[0]], rec, f"{where}/{rels[0]}", fix)
    elif not isinstance(rec.get("genotype"), dict):
        raise CorruptEntryError(f"bank entry {where}/{rec_rel} is damaged (no genotype object); {fix}")
    wrong = {k: rec.get(k) for k, v in _identity(e).items() if rec.get(k) != v}
    if wrong:
        raise CorruptEntryError(f"bank entry {where}/{rec_rel} records {wrong}, not the {entry_label(e)} its "
                                f"path says (moved or renamed); {fix}")


# --- export ---------------------------------------------------------------------------------
def _export_entries(bank: Bank, task: str, with_artifacts: bool) -> list[dict]:
    """The entries of ``task`` to export; a :class:`UserError` naming every one that is not healthy."""
    wanted = ("network", "genotype", "artifact") if with_artifacts else ("network", "genotype")
    report = [r for r in bank.verify(task) if r["entry"] in wanted]
    bad = [r for r in report if not r["ok"]]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"cannot export task {task}: {bad[0]['error']}{more}; nothing written")
    keys = {"network": ("net", "seed"), "artifact": ("kind", "key"), "genotype": ()}
    return [{"entry": r["entry"], "task": task, **{k: r[k] for k in keys[r["entry"]]}} for r in report]


def _export_task_list(bank: Bank, tasks) -> list[str]:
    tasks = list(dict.fromkeys([tasks] if isinstance(tasks, str) else list(tasks)))
    if not tasks:
        raise UserError(f"no tasks to export; give tasks of the bank {bank.root}: {', '.join(bank.tasks()) or 'none'}")
    unknown = [t for t in tasks if t not in bank.tasks()]
    if unknown:
        raise UserError(f"the bank {bank.root} has nothing for task {unknown[0]}; bank tasks: "
                        f"{', '.join(bank.tasks()) or 'none'}")
    return tasks


def export_tasks(bank: Bank, tasks, path: str, *, with_artifacts: bool = False) -> dict:
    """Write ``tasks``' entries of ``bank`` (networks, genotype; artifacts when ``with_artifacts``) to the
    archive ``path`` (atomically) with its manifest; returns a summary (archive, tasks, counts, sha256).

    A task the bank lacks, an empty task list or an entry that is incomplete or damaged is a
    :class:`UserError`, and nothing is written."""
    import tanas_jax

    if not path or not str(path).strip():
        raise UserError("export needs an output file (--out FILE.tar.gz)")
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a folder; give a file name such as bank.tar.gz")
    tasks = _export_task_list(bank, tasks)
    entries, blobs = [], {}
    for t in tasks:
        for e in _export_entries(bank, t, with_artifacts):
            paths = entry_paths(bank, e)
            rels = [_rel(bank, p) for p in paths]
            blobs.update(_read_files(paths, rels, bank))
            check_entry(e, rels, blobs, bank.root, _export_fix(bank, e))
            entries.append(dict(e, files=rels))
    if not entries:
        raise UserError(f"the bank {bank.root} has no networks or genotypes for {', '.join(tasks)}; nothing "
                        "to export")
    manifest = {"format": ARCHIVE_FORMAT, "bank_format": FORMAT, "tanas_jax": tanas_jax.__version__,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tasks": tasks,
                "with_artifacts": bool(with_artifacts), "entries": entries,
                "files": {r: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for r, b in blobs.items()}}
    blob = _tar_bytes(manifest, blobs)
    atomic_write_bytes(path, blob)
    counts = {k + "s": sum(e["entry"] == k for e in entries) for k in ENTRY_KINDS}
    return {"archive": path, "bank": bank.root, "tasks": tasks, "entries": len(entries), **counts,
            "files": len(blobs), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
            "with_artifacts": bool(with_artifacts)}


def _export_fix(bank: Bank, e: dict) -> str:
    if e["entry"] == "network":
        return bank.network_fix(e["task"], e["net"], e["seed"])
    if e["entry"] == "artifact":
        return bank.artifact_fix(e["task"], e["kind"], e["key"])
    return bank.genotype_fix(e["task"])


def _read_files(paths: list[str], rels: list[str], bank: Bank) -> dict[str, bytes]:
    out = {}
    for p, r in zip(paths, rels):
        try:
            with open(p, "rb") as f:
                out[r] = f.read()
        except OSError as e:
            raise UserError(f"cannot export {p} from the bank {bank.root}: {e.strerror}; nothing written") from None
    return out


def _tar_bytes(manifest: dict, blobs: dict[str, bytes]) -> bytes:
    """The archive: the manifest first, then the files in name order (gzip and tar headers without times)."""
    members = [(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())]
    members += sorted(blobs.items())
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- reading an archive ---------------------------------------------------------------------
def _bad(path: str, why: str) -> UserError:
    return UserError(f"{path} is not a usable bank archive: {why}; nothing written (export it again with "
                     "`bin/bank export TASKS --out FILE.tar.gz`)")


def _check_member(path: str, m: tarfile.TarInfo, seen: set) -> None:
    """A plain file with a relative, normalised name, seen once."""
    name = m.name
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or (len(parts[0]) >= 2 and parts[0][1] == ":"):
        raise _bad(path, f"member {name!r} has an absolute path")
    if any(p in ("", ".", "..") for p in parts):
        raise _bad(path, f"member {name!r} is not a plain relative path (empty, '.' or '..' part)")
    if m.issym() or m.islnk():
        raise _bad(path, f"member {name!r} is a link (links are refused)")
    if not m.isfile():
        raise _bad(path, f"member {name!r} is not a plain file")
    if name in seen:
        raise _bad(path, f"member {name!r} appears twice")
    seen.add(name)


def _check_manifest(path: str, man: Any) -> dict:
    """The manifest's shape: format, tasks, entries (dicts with file lists), files (sha256 and size)."""
    if not isinstance(man, dict) or man.get("format") != ARCHIVE_FORMAT:
        got = man.get("format") if isinstance(man, dict) else type(man).__name__
        raise _bad(path, f"its manifest format is {got!r}, this tanas_jax reads {ARCHIVE_FORMAT}")
    if man.get("bank_format") != FORMAT:
        raise _bad(path, f"it holds bank format {man.get('bank_format')!r}, this tanas_jax reads {FORMAT}")
    files, entries = man.get("files"), man.get("entries")
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
            for v in files.values()):
        raise _bad(path, "its manifest has no valid 'files' table (sha256 and size per file)")
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and isinstance(e.get("files"), list) for e in entries):
        raise _bad(path, "its manifest lists no entries")
    if not isinstance(man.get("tasks"), list):
        raise _bad(path, "its manifest has no task list")
    return man


def read_archive(path: str) -> tuple[dict, dict[str, bytes]]:
    """``(manifest, {name: bytes})`` of the archive at ``path``, every member checked (plain relative file,
    listed in the manifest, size and sha256 as listed; every listed file present).  A :class:`UserError`
    for anything else; reads only."""
    if not path or not os.path.isfile(path):
        raise UserError(f"no archive file at {path!r}; give the FILE.tar.gz that `bin/bank export` wrote")
    try:
        with tarfile.open(path, "r:gz") as tar:
            return _read_members(path, tar)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise _bad(path, f"not a readable .tar.gz ({e})") from None


def _read_members(path: str, tar: tarfile.TarFile) -> tuple[dict, dict[str, bytes]]:
    members, seen = tar.getmembers(), set()
    for m in members:
        _check_member(path, m, seen)
    if not members or members[0].name != MANIFEST:
        raise _bad(path, f"its first member is not {MANIFEST}")
    if members[0].size > MANIFEST_MAX_BYTES:
        raise _bad(path, f"its {MANIFEST} is too large ({members[0].size} bytes)")
    try:
        man = _check_manifest(path, json.loads(tar.extractfile(members[0]).read()))
    except ValueError as e:
        raise _bad(path, f"its {MANIFEST} is not JSON ({e})") from None
    files, blobs = man["files"], {}
    for m in members[1:]:
        want = files.get(m.name)
        if want is None:
            raise _bad(path, f"member {m.name!r} is not listed in its manifest")
        if m.size != want["size"]:
            raise _bad(path, f"member {m.name} has {m.size} bytes, its manifest says {want['size']}")
        data = tar.extractfile(m).read()
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise _bad(path, f"member {m.name} failed its checksum (altered or damaged in transit)")
        blobs[m.name] = data
    missing = sorted(set(files) - set(blobs))
    if missing:
        raise _bad(path, f"file {missing[0]} of its manifest is missing" + (
            f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return man, blobs


# --- import ---------------------------------------------------------------------------------
def _check_destination(root: str) -> None:
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"bank path {root} exists and is not a folder; choose another --bank")
    if os.path.isdir(root) and os.listdir(root) and not (
            os.path.exists(os.path.join(root, "BANK.json")) or os.path.isdir(os.path.join(root, "tasks"))):
        raise UserError(f"{root} is neither a bank nor an empty folder; choose another --bank")


def _plan(bank: Bank, path: str, man: dict, blobs: dict[str, bytes]) -> list[tuple[dict, list[str], str]]:
    """``(entry, its bank paths, state)`` for every manifest entry, each checked; state is 'new', 'same'
    (the bank holds it byte for byte) or 'different'."""
    plan, claimed = [], set()
    fix = "export it again from a healthy bank"
    for raw in man["entries"]:
        try:
            e = {k: v for k, v in raw.items() if k != "files"}
            paths = entry_paths(bank, e)
            e = _identity(e)
        except (UserError, KeyError, TypeError) as err:
            raise _bad(path, f"its manifest entry {raw!r} is invalid ({err})") from None
        rels = [_rel(bank, p) for p in paths]
        if rels != raw["files"] or any(r not in blobs for r in rels) or claimed & set(rels):
            raise _bad(path, f"the files of {entry_label(e)} are not the bank's paths {rels}")
        claimed.update(rels)
        try:
            check_entry(e, rels, blobs, path, fix)
        except CorruptEntryError as err:
            raise _bad(path, str(err)) from None
        plan.append((e, paths, _state(paths, rels, blobs)))
    extra = sorted(set(blobs) - claimed)
    if extra:
        raise _bad(path, f"file {extra[0]} belongs to no entry of its manifest")
    return plan


def _state(paths: list[str], rels: list[str], blobs: dict[str, bytes]) -> str:
    present = [os.path.lexists(p) for p in paths]
    if not any(present):
        return "new"
    if not all(present):
        return "different"
    for p, r in zip(paths, rels):
        try:
            with open(p, "rb") as f:
                if f.read() != blobs[r]:
                    return "different"
        except OSError:
            return "different"
    return "same"


def import_archive(path: str, bank_root: str | None = None, *, overwrite: bool = False) -> dict:
    """Import the archive ``path`` into the bank at ``bank_root`` (default ``$TANAS_BANK`` or ``./bank``;
    created when absent).  Everything is checked before anything is written (see the module docstring);
    an existing entry that differs is refused unless ``overwrite``; identical ones are skipped.  Returns
    ``{'archive', 'bank', 'tasks', 'imported', 'overwritten', 'skipped', 'files_written'}`` (entry labels)."""
    root = os.path.abspath(bank_root or default_bank_dir())
    path = os.path.abspath(path) if path else path
    _check_destination(root)
    man, blobs = read_archive(path)
    bank = Bank(root, create=False)
    plan = _plan(bank, path, man, blobs)
    conflicts = [e for e, _, state in plan if state == "different"]
    if conflicts and not overwrite:
        more = f" and {len(conflicts) - 1} more" if len(conflicts) > 1 else ""
        raise UserError(f"the bank {root} already holds a different {entry_label(conflicts[0])}{more}; nothing "
                        "written (pass --overwrite to replace them, or import into another --bank)")
    for _, paths, state in plan:
        for p in paths if state != "same" else []:
            bank.check_writable(p)
            bank.check_writable(bank.lock_path(p))
    bank = Bank(root)   # writes BANK.json into a new bank
    out = {"archive": path, "bank": root, "tasks": man["tasks"], "imported": [], "overwritten": [], "skipped": [],
           "files_written": 0}
    for e, paths, _ in plan:
        outcome = _write_entry(bank, e, paths, blobs, overwrite)
        out[outcome].append(entry_label(e))
        out["files_written"] += len(paths) if outcome != "skipped" else 0
    return out


def _write_entry(bank: Bank, e: dict, paths: list[str], blobs: dict[str, bytes], overwrite: bool) -> str:
    """Write one entry's files under its lock (state checked again there); 'imported', 'overwritten' or
    'skipped'."""
    rels = [_rel(bank, p) for p in paths]
    with bank.lock(paths[0]):
        state = _state(paths, rels, blobs)
        if state == "same":
            return "skipped"
        if state == "different" and not overwrite:
            raise UserError(f"another process wrote a different {entry_label(e)} into the bank {bank.root} "
                            "during the import; pass --overwrite to replace it")
        for p, r in zip(paths, rels):
            atomic_write_bytes(p, blobs[r])
    return "imported" if state == "new" else "overwritten"
