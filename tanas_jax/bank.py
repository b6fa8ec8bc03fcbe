"""The task bank: an on-disk dictionary of trained networks, Fishers and genotypes.

Layout (``--bank DIR``, default ``$TANAS_BANK`` or ``./bank``)::

    DIR/BANK.json                                   format marker
    DIR/tasks/<task>/networks/<net>-seed<S>.safetensors   params (+ batch stats)
    DIR/tasks/<task>/networks/<net>-seed<S>.json          metadata, sha256 of the tensors, record checksum
    DIR/tasks/<task>/artifacts/<kind>/<key>.{safetensors,json}   e.g. Fishers, caches
    DIR/tasks/<task>/genotype.json                  searched cell genotype + metadata, record checksum
    (``<net>`` is the bank key ``train.network_key``: the architecture under the default shared
    initialisation ``train.init_seed = 0``, ``<net>-init<I>`` for another shared init I,
    ``<net>-perseed`` for nets that start from init(their own seed); the JSON records ``init_seed``:
    I, or null for a per-seed net)
    DIR/.locks/...                                  one lock file per entry (writers hold it)

Derived artifacts (Fishers, spectra, transform distances) go through :meth:`Bank.cached`: the
caller describes every input of the computation as JSON-able data, the key is a readable prefix
plus a short hash of that description, and the artifact is computed and stored only on a miss.

Why safetensors: one flat file of named tensors per entry, no pickle (safe
to load from a shared bank), readable from PyTorch and numpy alike, and a
plain file can be written atomically.  (Orbax writes directories, fine for
sharded multi-host checkpoints but more than a bank of small nets needs.)

Integrity.  Every write is atomic: the tensors go to a temp file in the same
folder, fsync, rename; the JSON is written after it the same way.  The tensor
file is the commit: its safetensors header carries the entry's sealed record
(with ``tensors_sha256``, a digest of every tensor's name, dtype, shape and
bytes), so a write interrupted between the two files (a kill, a power cut)
leaves a complete tensor file whose JSON the next reader rebuilds from that
record after checking it (roll forward), instead of an entry to refuse.
The JSON holds the tensor file's sha256 *and* ``record_sha256``, the
sha256 of the whole JSON record but that field (metadata such as test accuracy,
ε reached, net, class count are covered, not only the tensors).  Every read
checks both.  An entry that is missing a part is *incomplete*; one that fails a
check, is not a JSON object, or predates the record checksum (format v1, whose
metadata cannot be verified) is *damaged*.  Either is refused with its path and
the command that removes (``bin/bank rm``) or rebuilds it (``bin/train
--retrain``, ``--recompute``); nothing is rebuilt or overwritten silently.

Writers take a per-entry file lock (``filelock``; files under ``DIR/.locks``):
a second process that wants the same entry waits for the first and then reuses
what it wrote.  A bank that cannot be written is refused before any work
(:meth:`Bank.check_writable`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tanas_jax.errors import CorruptEntryError, UserError
from tanas_jax.io import atomic_write_bytes, atomic_write_json, json_default

FORMAT = "tanas_jax-bank-v2"
RECORD_KEY = "record_sha256"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
_LIST_KEY = re.compile(r"^\[(\d+)\]$")
_NETWORK_FILE = re.compile(r"^(.+)-seed(\d+)$")
TENSORS, META = ".safetensors", ".json"
HEADER_KEY = "tanas_record"   # safetensors header metadata: the entry's sealed record (roll-forward)


def default_bank_dir() -> str:
    return os.environ.get("TANAS_BANK") or os.path.join(os.getcwd(), "bank")


# --- pytree <-> flat dict ------------------------------------------------------------------
def flatten_tree(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts/lists/tuples of arrays -> {'a/b/[0]/c': array}."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, dict) or hasattr(tree, "items") and not hasattr(tree, "shape"):
        items = list(tree.items())
        if not items and prefix:
            raise ValueError(f"empty dict at '{prefix}' cannot be stored")
        for k, v in items:
            k = str(k)
            if "/" in k or _LIST_KEY.match(k):
                raise ValueError(f"key '{k}' cannot be stored (contains '/' or looks like a list index)")
            out.update(flatten_tree(v, f"{prefix}/{k}" if prefix else k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(flatten_tree(v, f"{prefix}/[{i}]" if prefix else f"[{i}]"))
    else:   # np.require keeps a 0-d leaf 0-d (np.ascontiguousarray would make it shape (1,))
        out[prefix] = np.require(np.asarray(tree), requirements="C")
    return out


def unflatten_tree(flat: dict[str, np.ndarray]) -> Any:
    root: dict = {}
    for key, val in flat.items():
        parts = key.split("/")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = val

    def fix(node):
        if not isinstance(node, dict):
            return node
        node = {k: fix(v) for k, v in node.items()}
        if node and all(_LIST_KEY.match(k) for k in node):
            return [node[f"[{i}]"] for i in range(len(node))]
        return node

    return fix(root)


# --- sealed JSON records --------------------------------------------------------------------
def record_digest(record: dict) -> str:
    """sha256 of a JSON record without its ``record_sha256`` field (keys sorted, compact)."""
    body = {k: v for k, v in record.items() if k != RECORD_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(record: dict) -> dict:
    """``record`` as JSON will read it back (numpy values as numbers, tuples as lists), with the
    bank format and ``record_sha256`` added."""
    rec = json.loads(json.dumps(dict(record, format=FORMAT), default=json_default))
    rec[RECORD_KEY] = record_digest(rec)
    return rec


def read_record(path: str, fix: str = "delete it and recompute") -> dict:
    """The sealed JSON record at ``path``; :class:`CorruptEntryError` (naming the path and ``fix``) when it
    is unreadable, not a JSON object, written before the record checksum, or fails it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CorruptEntryError(f"bank entry {path} is damaged (unreadable JSON: {e}); {fix}") from None
    return parse_record(data, path, fix)


def parse_record(data: bytes, path: str, fix: str = "delete it and recompute") -> dict:
    """The sealed JSON record in ``data`` (the bytes of the file ``path``), checked as :func:`read_record`
    checks a file: a bank archive checks its entries' bytes before writing them."""
    try:
        rec = json.loads(data)
    except ValueError as e:
        raise CorruptEntryError(f"bank entry {path} is damaged (unreadable JSON: {e}); {fix}") from None
    if not isinstance(rec, dict):
        raise CorruptEntryError(f"bank entry {path} is damaged (its JSON is a {type(rec).__name__}, not an "
                                f"object); {fix}")
    if RECORD_KEY not in rec:
        raise CorruptEntryError(f"bank entry {path} has no record checksum (written by bank format v1, whose "
                                f"metadata cannot be verified); {fix}")
    if rec[RECORD_KEY] != record_digest(rec):
        raise CorruptEntryError(f"bank entry {path} is damaged (its metadata failed the record checksum: "
                                f"edited or truncated); {fix}")
    return rec


class IncompleteEntryError(CorruptEntryError):
    """A bank entry with one of its two parts (tensors, metadata) missing."""


# --- tensor entries ---------------------------------------------------------------------------
def meta_path(tensor_path: str) -> str:
    """The metadata JSON beside a tensor file."""
    return tensor_path[: -len(TENSORS)] + META


def tensors_digest(flat: dict[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name): what a tensor file's
    header record vouches for, independent of how safetensors lays the file out."""
    h = hashlib.sha256()
    for k in sorted(flat):
        a = np.ascontiguousarray(flat[k])
        h.update(json.dumps([k, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_tensors(path: str, tree: Any, meta: dict) -> dict:
    """Atomically write ``tree`` as safetensors at ``path`` (its header holding the sealed record: the
    commit) and ``meta`` (sealed, with the file's sha256) beside it; returns the metadata as stored."""
    from safetensors.numpy import save

    flat = flatten_tree(tree)
    record = seal(dict(meta, n_tensors=len(flat), n_values=int(sum(v.size for v in flat.values())),
                       tensors_sha256=tensors_digest(flat)))
    data = save(flat or {"__empty__": np.zeros((0,), np.float32)},
                metadata={HEADER_KEY: json.dumps(record, sort_keys=True)})
    atomic_write_bytes(path, data)
    meta = seal(dict(record, sha256=hashlib.sha256(data).hexdigest()))
    atomic_write_json(meta_path(path), meta)
    return meta


def _header_record(data: bytes) -> str | None:
    """The record a tensor file's safetensors header carries (``HEADER_KEY``), None when it has none
    (written before records were embedded) or the header is unreadable."""
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        return header.get("__metadata__", {}).get(HEADER_KEY)
    except (ValueError, AttributeError):
        return None


def _file_has_record(path: str) -> bool:
    """Whether the tensor file ``path`` carries its record in its header (reads the header only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            return _header_record(head + f.read(int.from_bytes(head, "little"))) is not None
    except (OSError, OverflowError, ValueError):
        return False


def recover_metadata(path: str, fix: str = "delete it and recompute") -> dict | None:
    """Roll an interrupted write forward: the metadata of the tensor file ``path`` (whose JSON is
    missing), rebuilt from the sealed record in its header after checking the record's seal and the
    tensors against ``tensors_digest``; the JSON is written back when the bank is writable.  None when
    the file carries no record (an older entry: it stays incomplete)."""
    from safetensors.numpy import load

    with open(path, "rb") as f:
        data = f.read()
    text = _header_record(data)
    if text is None:
        return None
    rec = parse_record(text.encode(), path, fix)
    try:
        flat = load(data)
    except Exception as e:  # noqa: BLE001 - a malformed file is a corrupt entry
        raise CorruptEntryError(f"bank entry {path} is damaged (not a valid safetensors file: {e}); {fix}") from None
    flat.pop("__empty__", None)
    if tensors_digest(flat) != rec.get("tensors_sha256"):
        raise CorruptEntryError(f"bank entry {path} is damaged (its tensors failed the checksum in its header: "
                                f"truncated or altered) and its metadata file is missing; {fix}")
    meta = seal(dict(rec, sha256=hashlib.sha256(data).hexdigest()))
    try:
        atomic_write_json(meta_path(path), meta)
    except OSError:
        pass   # a read-only bank: the entry is still usable, its JSON is rebuilt on every read
    return meta


def missing_part(path: str) -> str | None:
    """Which part of the tensor entry at ``path`` is missing ('tensor file' / 'metadata file'), None
    when both or neither are there."""
    has_t, has_m = os.path.exists(path), os.path.exists(meta_path(path))
    if has_t == has_m:
        return None
    return "metadata file " + meta_path(path) if has_t else "tensor file " + path


def load_tensors(path: str, fix: str = "delete it and recompute") -> tuple[Any, dict]:
    """Read a tensor entry written by :func:`save_tensors`, verifying both checksums.

    An incomplete or damaged entry raises :class:`CorruptEntryError` naming ``path`` and ``fix``."""
    missing = missing_part(path)
    if missing and os.path.exists(path) and recover_metadata(path, fix) is not None:
        missing = None   # an interrupted write, rolled forward
    if missing or not os.path.exists(path):
        what = f"{missing} is" if missing else "tensor and metadata files are"
        raise IncompleteEntryError(f"bank entry {path} is incomplete: its {what} missing (interrupted write or "
                                   f"deleted file); {fix}")
    meta = read_record(meta_path(path), fix)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CorruptEntryError(f"bank entry {path} cannot be read ({e.strerror}); {fix}") from None
    return unflatten_tree(check_tensor_bytes(data, meta, path, fix)), meta


def check_tensor_bytes(data: bytes, meta: dict, path: str, fix: str = "delete it and recompute") -> dict:
    """The flat tensors in ``data`` (the bytes of the tensor file ``path``) after checking them against the
    sha256 in their sealed metadata ``meta``; :class:`CorruptEntryError` naming ``path`` and ``fix``."""
    from safetensors.numpy import load

    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CorruptEntryError(f"bank entry {path} is damaged (its tensors failed their checksum: truncated "
                                f"or altered); {fix}")
    try:
        flat = load(data)
    except Exception as e:  # noqa: BLE001 - a malformed file is a corrupt entry
        raise CorruptEntryError(f"bank entry {path} is damaged (not a valid safetensors file: {e}); {fix}") from None
    flat.pop("__empty__", None)
    return flat


def inputs_digest(inputs: Any, chars: int = 20) -> str:
    """Stable short hash of a JSON-able description of a computation's inputs.

    sha256 of ``json.dumps(inputs, sort_keys=True, default=str)``, first ``chars`` hex digits: key
    order does not matter, values that are not JSON (numpy scalars, paths) hash by their ``str``.
    """
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:chars]


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _SAFE.match(name):
        raise UserError(f"invalid {kind} '{name}': use letters, digits, '.', '_', '-', '=', '+'")
    return name


def _check_finite(tree: Any, what: str) -> None:
    """A network with a NaN or infinite weight is never banked."""
    bad = [k for k, v in flatten_tree(tree).items()
           if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        raise UserError(f"{what} has non-finite values in {', '.join(bad[:3])}; it is not banked "
                        "(training diverged: lower train.learning_rate)")


def _stems(folder: str) -> list[str]:
    """Names (without extension) of the tensor entries in ``folder``, complete or not."""
    if not os.path.isdir(folder):
        return []
    return sorted({f[: -len(ext)] for f in os.listdir(folder) for ext in (TENSORS, META)
                   if f.endswith(ext) and not f.startswith(".") and _SAFE.match(f[: -len(ext)])})


def _q(s: str) -> str:
    return shlex.quote(str(s))


class Bank:
    """A folder of trained networks (per task, net and seed), artifacts and genotypes."""

    def __init__(self, root: str | None = None, create: bool = True):
        self.root = os.path.abspath(root or default_bank_dir())
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise UserError(f"bank path {self.root} exists and is not a folder; choose another --bank")
        marker = os.path.join(self.root, "BANK.json")
        if create and not os.path.exists(marker):
            atomic_write_json(marker, {"format": FORMAT})

    # paths
    def task_dir(self, task: str) -> str:
        return os.path.join(self.root, "tasks", _check_name("task", task))

    def network_path(self, task: str, net: str, seed: int) -> str:
        return os.path.join(self.task_dir(task), "networks",
                            f"{_check_name('net', net)}-seed{int(seed)}{TENSORS}")

    def artifact_path(self, task: str, kind: str, key: str) -> str:
        return os.path.join(self.task_dir(task), "artifacts", _check_name("artifact kind", kind),
                            _check_name("artifact key", key) + TENSORS)

    def genotype_path(self, task: str) -> str:
        return os.path.join(self.task_dir(task), "genotype.json")

    # the commands that remove or rebuild an entry (named in every refusal)
    def network_fix(self, task: str, net: str, seed: int) -> str:
        return (f"remove it with `bin/bank rm {_q(task)} --net {_q(net)} --seed {int(seed)} --bank {_q(self.root)}` "
                f"or retrain it with `bin/train --task {_q(task)} --net {_q(net)} --seed {int(seed)} --retrain "
                f"--bank {_q(self.root)}`")

    def artifact_fix(self, task: str, kind: str, key: str) -> str:
        return (f"remove it with `bin/bank rm {_q(task)} --artifact {_q(kind + '/' + key)} --bank {_q(self.root)}` "
                "or rerun the command that made it with --recompute")

    def genotype_fix(self, task: str) -> str:
        return (f"remove it with `bin/bank rm {_q(task)} --genotype --bank {_q(self.root)}` and search again "
                f"(bin/fuse or bin/search --task {_q(task)})")

    # writing: permission check and per-entry lock
    def check_writable(self, path: str) -> None:
        """A :class:`UserError` naming the folder when ``path`` (a file in this bank) cannot be written;
        called before any work whose result would be banked."""
        folder = os.path.dirname(os.path.abspath(path))
        while not os.path.lexists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            raise UserError(f"cannot write to the bank {self.root}: {folder} is not a folder; remove it or "
                            "choose another --bank")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to the bank {self.root}: the folder {folder} is read-only; choose a "
                            "writable --bank or fix its permissions")

    def lock_path(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.root)
        return os.path.join(self.root, ".locks", os.path.splitext(rel)[0] + ".lock")

    @contextlib.contextmanager
    def lock(self, path: str, log: Callable[[str], Any] | None = None) -> Iterator[None]:
        """Hold the writer lock of the entry at ``path`` (re-entrant in one process); waits for another
        process holding it."""
        from filelock import FileLock, Timeout

        lp = self.lock_path(path)
        self.check_writable(path)
        self.check_writable(lp)
        lock = FileLock(lp, is_singleton=True)
        try:
            try:
                lock.acquire(timeout=0.5)
            except Timeout:
                (log or (lambda m: None))(f"waiting for another process writing {path}")
                lock.acquire()
        except OSError as e:
            raise UserError(f"cannot lock {lp} in the bank {self.root}: {e.strerror}; choose a writable --bank "
                            "or fix its permissions") from None
        try:
            yield
        finally:
            lock.release()

    # networks
    def save_network(self, task: str, net: str, seed: int, variables: Any, meta: dict) -> dict:
        """Bank a trained network (refused when a weight is NaN or infinite); returns the metadata as stored."""
        path = self.network_path(task, net, seed)
        _check_finite(variables, f"network {net} for task {task} seed {seed}")
        meta = dict(meta, task=task, net=net, seed=int(seed), entry="network")
        meta.setdefault("init_seed", None)     # which initialisation convention (None: init(seed))
        with self.lock(path):
            return save_tensors(path, variables, meta)

    def has_network(self, task: str, net: str, seed: int) -> bool:
        """Both parts of the entry are there, or its tensor file can roll an interrupted write forward (it
        may still be damaged: loading checks)."""
        p = self.network_path(task, net, seed)
        return os.path.exists(p) and (os.path.exists(meta_path(p)) or _file_has_record(p))

    def find_network(self, task: str, net: str, seed: int) -> tuple[Any, dict] | None:
        """``(variables, meta)`` of the banked network, None when the bank has no part of it; an
        incomplete or damaged entry raises :class:`CorruptEntryError` saying how to remove or retrain it."""
        p = self.network_path(task, net, seed)
        if not os.path.exists(p) and not os.path.exists(meta_path(p)):
            return None
        return load_tensors(p, self.network_fix(task, net, seed))

    def load_network(self, task: str, net: str, seed: int) -> tuple[Any, dict]:
        found = self.find_network(task, net, seed)
        if found is None:
            raise UserError(f"the bank {self.root} has no {net} network for task {task} seed {seed}; "
                            f"train it with `bin/train --task {task} --net {net} --seed {seed} "
                            f"--bank {self.root}`")
        return found

    def network_entries(self, task: str | None = None) -> list[tuple[str, str, int]]:
        """(task, net, seed) of every network entry with at least one of its parts."""
        out = []
        for t in [task] if task else self.tasks():
            for stem in _stems(os.path.join(self.task_dir(t), "networks")):
                m = _NETWORK_FILE.match(stem)
                if m:
                    out.append((t, m.group(1), int(m.group(2))))
        return out

    def network_seeds(self, task: str, net: str) -> list[int]:
        return sorted(s for (_, n, s) in self.network_entries(task) if n == net)

    # artifacts
    def save_artifact(self, task: str, kind: str, key: str, tree: Any, meta: dict) -> dict:
        path = self.artifact_path(task, kind, key)
        meta = dict(meta, task=task, kind=kind, key=key, entry="artifact")
        with self.lock(path):
            return save_tensors(path, tree, meta)

    def load_artifact(self, task: str, kind: str, key: str) -> tuple[Any, dict] | None:
        """The stored artifact, or None when absent.  Incomplete or damaged entries raise."""
        p = self.artifact_path(task, kind, key)
        if not os.path.exists(p) and not os.path.exists(meta_path(p)):
            return None
        return load_tensors(p, self.artifact_fix(task, kind, key))

    def artifact_entries(self, task: str) -> list[tuple[str, str]]:
        """(kind, key) of every artifact of ``task`` with at least one of its parts."""
        d = os.path.join(self.task_dir(task), "artifacts")
        kinds = sorted(k for k in os.listdir(d) if _SAFE.match(k)) if os.path.isdir(d) else []
        return [(k, key) for k in kinds for key in _stems(os.path.join(d, k))]

    def cached(self, task: str, kind: str, inputs: dict, compute: Callable[[], tuple[Any, dict]], *,
               key_prefix: str = "", digest_chars: int = 20, recompute: bool = False) -> tuple[Any, dict, bool]:
        """``(tree, meta, hit)``: the artifact of ``task``/``kind`` computed from ``inputs``.

        The key is ``key_prefix + inputs_digest(inputs, digest_chars)``.  On a hit (and not
        ``recompute``) the stored tree and metadata are returned; otherwise ``compute()`` gives
        ``(tree, meta)``, which is stored under the key and returned as computed (the stored
        metadata also holds the bank's own fields: task, kind, key, sha256, ...).  ``inputs``
        must name everything the result depends on; an incomplete or damaged entry raises, it is
        never used nor overwritten (``recompute`` replaces it).  The computation runs under the
        entry's lock: a concurrent process wanting the same artifact waits, then reuses it.
        """
        key = key_prefix + inputs_digest(inputs, digest_chars)
        path = self.artifact_path(task, kind, key)
        if not recompute and (hit := self.load_artifact(task, kind, key)) is not None:
            return hit[0], hit[1], True
        self.check_writable(path)
        with self.lock(path):
            if not recompute and (hit := self.load_artifact(task, kind, key)) is not None:
                return hit[0], hit[1], True
            tree, meta = compute()
            self.save_artifact(task, kind, key, tree, meta)
        return tree, meta, False

    # genotypes
    def save_genotype(self, task: str, genotype: dict, meta: dict) -> None:
        path = self.genotype_path(task)
        with self.lock(path):
            atomic_write_json(path, seal({"task": task, "genotype": genotype, "meta": meta, "entry": "genotype"}))

    def load_genotype(self, task: str) -> tuple[dict, dict] | None:
        """``(genotype, meta)``, None when the task has none; a damaged record raises."""
        p = self.genotype_path(task)
        if not os.path.lexists(p):
            return None
        fix = self.genotype_fix(task)
        rec = read_record(p, fix)
        if not isinstance(rec.get("genotype"), dict) or not isinstance(rec.get("meta", {}), dict):
            raise CorruptEntryError(f"bank entry {p} is damaged (no genotype object); {fix}")
        return rec["genotype"], rec.get("meta", {})

    # removal (bin/bank rm)
    def remove_network(self, task: str, net: str, seed: int) -> list[str]:
        return self._remove_parts(self.network_path(task, net, seed))

    def remove_artifact(self, task: str, kind: str, key: str) -> list[str]:
        return self._remove_parts(self.artifact_path(task, kind, key))

    def remove_genotype(self, task: str) -> list[str]:
        p = self.genotype_path(task)
        if not os.path.lexists(p):
            return []
        with self.lock(p):
            return _unlink([p])

    def remove_task(self, task: str) -> list[str]:
        """Every entry of ``task`` (each under its lock), then the task's folder."""
        removed = [p for _, n, s in self.network_entries(task) for p in self.remove_network(task, n, s)]
        removed += [p for k, key in self.artifact_entries(task) for p in self.remove_artifact(task, k, key)]
        removed += self.remove_genotype(task)
        d = self.task_dir(task)
        for dirpath, _, files in os.walk(d):
            removed += [os.path.join(dirpath, f) for f in sorted(files)]
        shutil.rmtree(d, ignore_errors=True)
        return removed

    def _remove_parts(self, path: str) -> list[str]:
        with self.lock(path):
            return _unlink([path, meta_path(path)])   # tensors first: a JSON alone never rolls forward

    # listing / integrity
    def tasks(self) -> list[str]:
        d = os.path.join(self.root, "tasks")
        return sorted(t for t in os.listdir(d) if _SAFE.match(t)) if os.path.isdir(d) else []

    def verify(self, task: str | None = None) -> list[dict]:
        """The health of every entry (of ``task``, or all): one record each with ``entry`` (network,
        artifact, genotype, temp), ``path``, ``health`` ('ok', 'incomplete', 'damaged'), ``ok`` and, when
        not ok, ``error`` (why, with the command that removes or rebuilds it)."""
        out = []
        for t in [task] if task else self.tasks():
            out += [self.network_health(t, n, s) for _, n, s in self.network_entries(t)]
            out += [self._artifact_health(t, k, key) for k, key in self.artifact_entries(t)]
            if os.path.lexists(self.genotype_path(t)):
                out.append(_health({"entry": "genotype", "task": t, "path": self.genotype_path(t)},
                                   lambda t=t: self.load_genotype(t)))
            out += [{"entry": "temp", "task": t, "path": p, "health": "damaged", "ok": False,
                     "error": f"leftover temp file of an interrupted write; delete it (rm {_q(p)})"}
                    for p in self._temp_files(t)]
        return out

    def network_health(self, task: str, net: str, seed: int) -> dict:
        rec = {"entry": "network", "task": task, "net": net, "seed": seed, "path": self.network_path(task, net, seed)}
        return _health(rec, lambda: self.find_network(task, net, seed))

    def _artifact_health(self, task: str, kind: str, key: str) -> dict:
        rec = {"entry": "artifact", "task": task, "kind": kind, "key": key,
               "path": self.artifact_path(task, kind, key)}
        return _health(rec, lambda: self.load_artifact(task, kind, key))

    def _temp_files(self, task: str) -> list[str]:
        return [os.path.join(dirpath, f) for dirpath, _, files in os.walk(self.task_dir(task))
                for f in sorted(files) if f.startswith(".tmp-")]


def _health(rec: dict, load: Callable[[], Any]) -> dict:
    """``rec`` with its health from trying ``load()``."""
    try:
        load()
    except CorruptEntryError as e:
        health = "incomplete" if isinstance(e, IncompleteEntryError) else "damaged"
        return dict(rec, health=health, ok=False, error=str(e))
    return dict(rec, health="ok", ok=True)


def _unlink(paths: list[str]) -> list[str]:
    removed = []
    for p in paths:
        try:
            os.unlink(p)
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UserError(f"cannot remove {p}: {e.strerror}") from None
    return removed
