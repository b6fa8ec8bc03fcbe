"""What every result file records so that it can be reproduced."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import socket
import sys

_PACKAGES = ("tanas_jax", "jax", "jaxlib", "flax", "optax", "chex", "numpy",
             "safetensors", "ml_collections", "tensorflow_datasets", "mlxtend")


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = _md.version(name.replace("_", "-"))
        except _md.PackageNotFoundError:
            try:
                out[name] = _md.version(name)
            except _md.PackageNotFoundError:
                continue
    return out


def machine() -> dict:
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import jax

        info["jax_backend"] = jax.default_backend()
        info["devices"] = [str(d) for d in jax.devices()]
        info["process_count"] = jax.process_count()
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        pass
    return info


def stamp() -> dict:
    """Versions, machine and time: merge into every result.json."""
    return {
        "versions": versions(),
        "machine": machine(),
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
