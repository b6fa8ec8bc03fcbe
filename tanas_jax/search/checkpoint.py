"""Atomic, integrity-checked FUSE / random-search checkpoints.

One file ``DIR/<name>.npz`` holds ``__meta__`` (JSON: format, fingerprint of
the run's settings, round, seed genotype, history, timings, RNG scheme) and
the last round's state arrays under their pytree paths (weights, α, Adam
states, BatchNorm statistics) for inspection.  Resuming needs only the meta:
every round re-derives its randomness from (seed, round), so the winner of
the last finished round and the history determine the rest of the run.

Written with :func:`tanas_jax.bank.atomic_write_bytes` (temp file, fsync,
rename): a crash leaves the previous checkpoint intact.  The meta carries the
SHA-256 of its own body; a file that fails to parse or to verify raises
:class:`tanas_jax.errors.CorruptEntryError` and is never used.  A checkpoint
made with other settings (data, space, config, seed) is refused with a
:class:`UserError` naming the folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import jax
import numpy as np

from tanas_jax.io import json_default
from tanas_jax.errors import CorruptEntryError, UserError

FORMAT = "tanas-search-checkpoint/1"


def path(directory: str, name: str = "fuse_checkpoint") -> str:
    return os.path.join(directory, f"{name}.npz")


def save(directory: str, fp: str, meta: dict, state=None, name: str = "fuse_checkpoint") -> str:
    from tanas_jax.io import atomic_write_bytes

    body = json.dumps({"format": FORMAT, "fingerprint": fp, **meta}, sort_keys=True, default=json_default)
    record = json.dumps({"body": body, "sha256": hashlib.sha256(body.encode()).hexdigest()})
    arrays = {"__meta__": np.frombuffer(record.encode(), np.uint8)}
    if state is not None:
        for kp, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            arrays["state" + jax.tree_util.keystr(kp)] = np.asarray(leaf)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    p = path(directory, name)
    atomic_write_bytes(p, buf.getvalue())
    return p


def load(directory: str, fp: str | None, name: str = "fuse_checkpoint"):
    """(meta, arrays) or None when there is no checkpoint; checks integrity and settings."""
    p = path(directory, name)
    if not os.path.exists(p):
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            record = json.loads(bytes(z["__meta__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptEntryError(f"checkpoint {p} is unreadable ({type(e).__name__}); delete it to start over") from None
    body = record.get("body", "")
    if hashlib.sha256(body.encode()).hexdigest() != record.get("sha256"):
        raise CorruptEntryError(f"checkpoint {p} failed its checksum; delete it to start over")
    meta = json.loads(body)
    if meta.get("format") != FORMAT:
        raise CorruptEntryError(f"checkpoint {p} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if fp is not None and meta.get("fingerprint") != fp:
        raise UserError(f"checkpoint {p} was made with other settings (data, space, config or seed); "
                        "use another --out folder, or delete it (or pass --restart) to start over")
    return meta, arrays
