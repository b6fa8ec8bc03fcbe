"""Shared command-line plumbing: config loading, common flags, errors, result files.

Every entry point is ``main = cli_main(run)`` where ``run(argv)`` does the
work.  A :class:`tanas_jax.errors.UserError` becomes one line on stderr
(``error: ...``) and exit status 2; Ctrl-C exits 130 after the command's own
cleanup; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from tanas_jax.errors import UserError

def cli_main(run: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
    def main(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else argv
        try:
            code = run(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        return int(code or 0)

    return main


def run_as_script(main) -> None:
    sys.exit(main())


# --- configs -------------------------------------------------------------------------------
from tanas_jax.config import PRESETS, apply_override, load_config  # noqa: E402,F401  (moved to the library)


# --- flags ---------------------------------------------------------------------------------
def add_common_args(p: argparse.ArgumentParser, *, out: bool = True, bank: bool = True,
                    seed: bool = True) -> None:
    p.add_argument("--config", default="quick",
                   help="preset name (quick, paper) or path to a config .py (default: quick)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--data-source", choices=("auto", "tfds", "files", "bundled"), default=None,
                   help="where data comes from (default: config data.source, 'auto': tfds -> files -> "
                        "bundled)")
    p.add_argument("--data-dir", default=None, help="folder with downloaded data files / tfds data")
    if bank:
        p.add_argument("--bank", default=None, help="task bank folder (default: $TANAS_BANK or ./bank)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if out:
        p.add_argument("--out", default=None, help="write DIR/result.json (and plots) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() (coordinator, process count and id "
                        "from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID or the cluster)")


def init_distributed(args) -> None:
    """Start JAX's multi-host runtime when ``--distributed`` is given (before any computation)."""
    if not getattr(args, "distributed", False):
        return
    import jax

    try:
        jax.distributed.initialize()
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--distributed: jax.distributed.initialize() failed ({e}); set "
                        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host") from None


def config_from_args(args):
    init_distributed(args)
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "data_source", None):
        cfg.data.source = args.data_source
    if getattr(args, "data_dir", None):
        cfg.data.data_dir = args.data_dir
    return cfg


def open_bank(args):
    from tanas_jax.bank import Bank

    return Bank(args.bank)


# --- results -------------------------------------------------------------------------------
def write_result(out_dir: str | None, result: dict, name: str = "result.json") -> str | None:
    """Atomically write ``result`` (+ provenance) to ``out_dir/name``; returns the path."""
    if not out_dir:
        return None
    from tanas_jax import provenance
    from tanas_jax.io import atomic_write_json

    payload = dict(result)
    payload.setdefault("provenance", provenance.stamp())
    path = os.path.join(out_dir, name)
    atomic_write_json(path, payload)
    return path


def check_out_dir(out_dir: str | None) -> None:
    """Fail early (before any work) when ``--out`` cannot be written."""
    if not out_dir:
        return
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} exists and is not a folder; choose another")
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write-test")
        with open(probe, "w") as f:
            f.write("")
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to --out {out_dir}: {e.strerror}; choose a writable folder") from None


def print_table(rows: list[dict], columns: list[str], file=None) -> str:
    """A plain fixed-width table (also returned as text)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, file=file or sys.stdout)
    return text


def dump_json(obj) -> str:
    from tanas_jax.io import json_default

    return json.dumps(obj, indent=2, sort_keys=True, default=json_default)
