"""Atomic, integrity-checked search checkpoints: the one format of FUSE, random search, DARTS, TETLO.

Public API::

    path(directory, name='fuse_checkpoint') -> DIR/<name>.npz
    save(directory, fp, meta, state=None, name=...) -> path
    load(directory, fp, name=..., like=None) -> (meta, arrays | state) or None
    interrupted(directory, name, after=None) -> KeyboardInterrupt naming the saved state (Ctrl-C's one line)

One file ``DIR/<name>.npz`` holds ``__meta__`` (JSON: format, fingerprint of
the run's settings, the method's progress -- round or step, history, timings,
RNG scheme -- and the SHA-256 of that body) and the state's arrays under their
pytree paths (weights, α/β, optimiser states, BatchNorm statistics).  FUSE
resumes from the meta alone (every round re-derives its randomness from
(seed, round)); DARTS/TETLO pass ``like`` (a freshly initialised state) and
get the saved state back in that tree structure, bit for bit.

Written with :func:`tanas_jax.io.atomic_write_bytes` (temp file, fsync,
rename): a crash leaves the previous checkpoint intact.

**One corruption policy.**  A checkpoint is never silently ignored or
overwritten: a file that fails to parse, to verify its checksum or to match
the state's structure raises :class:`~tanas_jax.errors.CorruptEntryError`,
and one made with other settings (data, space, config, method or seed) a
:class:`~tanas_jax.errors.UserError`; both name the file and say how to start
over (delete it, or pass ``--restart``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from tanas_jax.errors import CorruptEntryError, UserError
from tanas_jax.io import atomic_write_bytes, json_default

FORMAT = "tanas-search-checkpoint/1"
START_OVER = "delete it, or pass --restart, to start over"


def path(directory: str, name: str = "fuse_checkpoint") -> str:
    return os.path.join(directory, f"{name}.npz")


def _key(kp) -> str:
    return "state" + jax.tree_util.keystr(kp)


def save(directory: str, fp: str, meta: dict, state=None, name: str = "fuse_checkpoint") -> str:
    """Write ``meta`` (+ fingerprint, format, checksum) and ``state``'s arrays atomically."""
    body = json.dumps({"format": FORMAT, "fingerprint": fp, **meta}, sort_keys=True, default=json_default)
    record = json.dumps({"body": body, "sha256": hashlib.sha256(body.encode()).hexdigest()})
    arrays = {"__meta__": np.frombuffer(record.encode(), np.uint8)}
    if state is not None:
        for kp, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            arrays[_key(kp)] = np.asarray(leaf)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    p = path(directory, name)
    _remove_stale_temps(os.path.dirname(p))
    atomic_write_bytes(p, buf.getvalue())
    return p


def _remove_stale_temps(folder: str) -> None:
    """A search's checkpoint folder has one writer, the search: a temp file there is a write that a
    killed earlier run never finished (``atomic_write_bytes`` cleans up only when it can run)."""
    if os.path.isdir(folder):
        for f in os.listdir(folder):
            if f.startswith(".tmp-"):
                try:
                    os.unlink(os.path.join(folder, f))
                except FileNotFoundError:
                    pass


def load(directory: str, fp: str | None, name: str = "fuse_checkpoint", like=None):
    """(meta, arrays) -- or (meta, state) shaped like ``like`` -- or None when there is no
    checkpoint; refuses damaged and foreign ones (module docstring)."""
    p = path(directory, name)
    if not os.path.exists(p):
        return None
    meta, arrays = _read(p)
    if fp is not None and meta.get("fingerprint") != fp:
        raise UserError(f"checkpoint {p} was made with other settings (data, space, config, method or seed); "
                        f"use another --out folder, or {START_OVER}")
    return meta, (arrays if like is None else _restore(p, arrays, like))


def interrupted(directory: str | None, name: str, after: str | None = None) -> KeyboardInterrupt:
    """The ``KeyboardInterrupt`` a search raises on Ctrl-C: its message (the command line's one line after
    ``interrupted:``) says where the state (after ``after``, e.g. 'round 2') is saved, or that none is."""
    p = path(directory, name) if directory else None
    if p and os.path.exists(p):
        return KeyboardInterrupt(f"the state {'after ' + after if after else 'of the last checkpoint'} "
                                 f"is saved in {p}; rerun the same command to resume")
    return KeyboardInterrupt("nothing saved yet" + ("" if directory else " (no checkpoint folder: give --out)"))


def _read(p: str) -> tuple[dict, dict]:
    try:
        with np.load(p, allow_pickle=False) as z:
            record = json.loads(bytes(z["__meta__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        body = record.get("body", "")
        ok = hashlib.sha256(body.encode()).hexdigest() == record.get("sha256")
    except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CorruptEntryError(f"checkpoint {p} is unreadable ({type(e).__name__}); {START_OVER}") from None
    if not ok:
        raise CorruptEntryError(f"checkpoint {p} failed its checksum; {START_OVER}")
    meta = json.loads(body)
    if meta.get("format") != FORMAT:
        raise CorruptEntryError(f"checkpoint {p} has format {meta.get('format')!r}, expected {FORMAT!r}; "
                                f"{START_OVER}")
    return meta, arrays


def _restore(p: str, arrays: dict, like):
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for kp, ref in flat:
        a = arrays.get(_key(kp))
        if a is None or np.shape(a) != np.shape(ref):
            raise CorruptEntryError(f"checkpoint {p} does not match the search state "
                                    f"({jax.tree_util.keystr(kp)}); {START_OVER}")
        leaves.append(jnp.asarray(a, dtype=jnp.asarray(ref).dtype))
    if len(arrays) != len(flat):
        raise CorruptEntryError(f"checkpoint {p} holds {len(arrays)} arrays, the search state {len(flat)}; "
                                f"{START_OVER}")
    return jax.tree_util.tree_unflatten(treedef, leaves)
