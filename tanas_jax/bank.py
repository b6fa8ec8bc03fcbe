"""The task bank: an on-disk dictionary of trained networks, Fishers and genotypes.

Layout (``--bank DIR``, default ``$TANAS_BANK`` or ``./bank``)::

    DIR/BANK.json                                   format marker
    DIR/tasks/<task>/networks/<net>-seed<S>.safetensors   params (+ batch stats)
    DIR/tasks/<task>/networks/<net>-seed<S>.json          metadata + sha256 of the tensors
    DIR/tasks/<task>/artifacts/<kind>/<key>.{safetensors,json}   e.g. Fishers, caches
    DIR/tasks/<task>/genotype.json                  searched cell genotype + metadata

Derived artifacts (Fishers, spectra, transform distances) go through :meth:`Bank.cached`: the
caller describes every input of the computation as JSON-able data, the key is a readable prefix
plus a short hash of that description, and the artifact is computed and stored only on a miss.

Why safetensors: one flat file of named tensors per entry, no pickle (safe
to load from a shared bank), readable from PyTorch and numpy alike, and a
plain file can be written atomically.  (Orbax writes directories, fine for
sharded multi-host checkpoints but more than a bank of small nets needs.)

Every write is atomic: the tensors go to a temp file in the same folder,
fsync, rename; the JSON (which holds the tensors' sha256) is written last the
same way, so it is the commit marker.  Every read checks the checksum; a
missing, truncated or altered entry raises :class:`CorruptEntryError` naming
the path, and is never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Callable

import numpy as np

from tanas_jax.errors import CorruptEntryError, UserError
from tanas_jax.io import atomic_write_bytes, atomic_write_json

FORMAT = "tanas_jax-bank-v1"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
_LIST_KEY = re.compile(r"^\[(\d+)\]$")


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


def save_tensors(path: str, tree: Any, meta: dict) -> dict:
    """Atomically write ``tree`` as safetensors at ``path`` and ``meta`` (+ checksum) beside it."""
    from safetensors.numpy import save

    flat = flatten_tree(tree)
    data = save(flat) if flat else save({"__empty__": np.zeros((0,), np.float32)})
    atomic_write_bytes(path, data)
    meta = dict(meta)
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    meta["n_tensors"] = len(flat)
    meta["n_values"] = int(sum(v.size for v in flat.values()))
    atomic_write_json(_meta_path(path), meta)
    return meta


def _meta_path(tensor_path: str) -> str:
    return tensor_path[: -len(".safetensors")] + ".json"


def read_meta(path_json: str) -> dict:
    try:
        with open(path_json) as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise CorruptEntryError(f"bank entry {path_json} is corrupt (unreadable JSON: {e}); "
                                "delete it and recompute") from None


def load_tensors(path: str) -> tuple[Any, dict]:
    """Read a tensor file written by :func:`save_tensors`, verifying its checksum."""
    from safetensors.numpy import load

    meta_path = _meta_path(path)
    if not os.path.exists(meta_path):
        raise CorruptEntryError(f"bank entry {path} has no metadata file {meta_path} "
                                "(interrupted write?); delete it and recompute")
    meta = read_meta(meta_path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CorruptEntryError(f"bank entry {path} cannot be read ({e.strerror}); delete it and "
                                "recompute") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CorruptEntryError(f"bank entry {path} failed its checksum (truncated or altered); "
                                "delete it and recompute")
    try:
        flat = load(data)
    except Exception as e:  # noqa: BLE001 - a malformed file is a corrupt entry
        raise CorruptEntryError(f"bank entry {path} is not a valid safetensors file ({e})") from None
    flat.pop("__empty__", None)
    return unflatten_tree(flat), meta


def inputs_digest(inputs: Any, chars: int = 20) -> str:
    """Stable short hash of a JSON-able description of a computation's inputs.

    sha256 of ``json.dumps(inputs, sort_keys=True, default=str)``, first ``chars`` hex digits: key
    order does not matter, values that are not JSON (numpy scalars, paths) hash by their ``str``.
    """
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:chars]


def _check_name(kind: str, name: str) -> str:
    if not _SAFE.match(name or ""):
        raise UserError(f"invalid {kind} '{name}': use letters, digits, '.', '_', '-', '=', '+'")
    return name


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
                            f"{_check_name('net', net)}-seed{int(seed)}.safetensors")

    def artifact_path(self, task: str, kind: str, key: str) -> str:
        return os.path.join(self.task_dir(task), "artifacts", _check_name("artifact kind", kind),
                            _check_name("artifact key", key) + ".safetensors")

    def genotype_path(self, task: str) -> str:
        return os.path.join(self.task_dir(task), "genotype.json")

    # networks
    def save_network(self, task: str, net: str, seed: int, variables: Any, meta: dict) -> dict:
        meta = dict(meta, task=task, net=net, seed=int(seed), entry="network")
        return save_tensors(self.network_path(task, net, seed), variables, meta)

    def has_network(self, task: str, net: str, seed: int) -> bool:
        p = self.network_path(task, net, seed)
        return os.path.exists(p) and os.path.exists(_meta_path(p))

    def load_network(self, task: str, net: str, seed: int) -> tuple[Any, dict]:
        p = self.network_path(task, net, seed)
        if not os.path.exists(p) and not os.path.exists(_meta_path(p)):
            raise UserError(f"the bank {self.root} has no {net} network for task {task} seed {seed}; "
                            f"train it with `bin/train --task {task} --net {net} --seed {seed} "
                            f"--bank {self.root}`")
        if not os.path.exists(p):
            raise CorruptEntryError(f"bank entry {p} is missing its tensor file; delete "
                                    f"{_meta_path(p)} and retrain")
        return load_tensors(p)

    def network_entries(self, task: str | None = None) -> list[tuple[str, str, int]]:
        """(task, net, seed) of every network entry with metadata."""
        out = []
        for t in [task] if task else self.tasks():
            d = os.path.join(self.task_dir(t), "networks")
            if not os.path.isdir(d):
                continue
            for f in sorted(os.listdir(d)):
                m = re.match(r"^(.+)-seed(\d+)\.json$", f)
                if m:
                    out.append((t, m.group(1), int(m.group(2))))
        return out

    def network_seeds(self, task: str, net: str) -> list[int]:
        return sorted(s for (_, n, s) in self.network_entries(task) if n == net)

    # artifacts
    def save_artifact(self, task: str, kind: str, key: str, tree: Any, meta: dict) -> dict:
        meta = dict(meta, task=task, kind=kind, key=key, entry="artifact")
        return save_tensors(self.artifact_path(task, kind, key), tree, meta)

    def load_artifact(self, task: str, kind: str, key: str) -> tuple[Any, dict] | None:
        """The stored artifact, or None when absent.  Corrupt entries raise."""
        p = self.artifact_path(task, kind, key)
        if not os.path.exists(p) and not os.path.exists(_meta_path(p)):
            return None
        return load_tensors(p)

    def cached(self, task: str, kind: str, inputs: dict, compute: Callable[[], tuple[Any, dict]], *,
               key_prefix: str = "", digest_chars: int = 20, recompute: bool = False) -> tuple[Any, dict, bool]:
        """``(tree, meta, hit)``: the artifact of ``task``/``kind`` computed from ``inputs``.

        The key is ``key_prefix + inputs_digest(inputs, digest_chars)``.  On a hit (and not
        ``recompute``) the stored tree and metadata are returned; otherwise ``compute()`` gives
        ``(tree, meta)``, which is stored under the key and returned as computed (the stored
        metadata also holds the bank's own fields: task, kind, key, sha256, ...).  ``inputs``
        must name everything the result depends on; a corrupt entry raises, it is never used.
        """
        key = key_prefix + inputs_digest(inputs, digest_chars)
        if not recompute:
            hit = self.load_artifact(task, kind, key)
            if hit is not None:
                return hit[0], hit[1], True
        tree, meta = compute()
        self.save_artifact(task, kind, key, tree, meta)
        return tree, meta, False

    # genotypes
    def save_genotype(self, task: str, genotype: dict, meta: dict) -> None:
        body = json.dumps(genotype, sort_keys=True)
        record = {"task": task, "genotype": genotype, "meta": meta,
                  "sha256": hashlib.sha256(body.encode()).hexdigest(), "entry": "genotype"}
        atomic_write_json(self.genotype_path(task), record)

    def load_genotype(self, task: str) -> tuple[dict, dict] | None:
        p = self.genotype_path(task)
        if not os.path.exists(p):
            return None
        rec = read_meta(p)
        body = json.dumps(rec.get("genotype"), sort_keys=True)
        if hashlib.sha256(body.encode()).hexdigest() != rec.get("sha256"):
            raise CorruptEntryError(f"bank entry {p} failed its checksum; delete it and search again")
        return rec["genotype"], rec.get("meta", {})

    # listing / integrity
    def tasks(self) -> list[str]:
        d = os.path.join(self.root, "tasks")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def verify(self) -> list[dict]:
        """Check every entry; returns one record per entry with 'ok' and, if not, 'error'."""
        records = (self._verify_file(t, path) for t, path in self._entry_files())
        return [r for r in records if r is not None]

    def _entry_files(self):
        """``(task, path)`` of every file under every task folder, in a stable order."""
        for t in self.tasks():
            for dirpath, _, files in os.walk(self.task_dir(t)):
                for f in sorted(files):
                    yield t, os.path.join(dirpath, f)

    def _verify_file(self, task: str, path: str) -> dict | None:
        """The verify record of one file (None for files checked with their partner or not ours)."""
        f = os.path.basename(path)
        if f.startswith(".tmp-"):
            return {"path": path, "ok": False, "error": "leftover temp file of an interrupted write"}
        try:
            if f == "genotype.json":
                self.load_genotype(task)
            elif f.endswith(".json"):
                tp = path[: -len(".json")] + ".safetensors"
                if not os.path.exists(tp):
                    raise CorruptEntryError(f"bank entry {path} has no tensor file {tp}")
                load_tensors(tp)
            elif f.endswith(".safetensors"):
                if not os.path.exists(_meta_path(path)):
                    raise CorruptEntryError(f"bank entry {path} has no metadata file")
                return None  # checked with its JSON
            else:
                return None
        except CorruptEntryError as e:
            return {"path": path, "ok": False, "error": str(e)}
        return {"path": path, "ok": True}
