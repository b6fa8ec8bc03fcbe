"""Shared command-line plumbing: the error wrapper, logging, parsers, common flags, result files.

Every entry point is ``main = cli_main(run)`` where ``run(argv)`` parses its
arguments with a parser from :func:`make_parser` and does the work.  The
wrapper is the one place where errors become exit codes: 0 ok; 2 a user
error: a :class:`tanas_jax.errors.UserError` (argparse's own errors included)
becomes one line on stderr (``error: ...``); 1 a product failure: any other
status a command returns, and any other exception, which is a bug and keeps
its traceback (the interpreter exits 1); Ctrl-C exits 130 after the command's
own cleanup.  Every flag is checked before any work starts (nothing is
written to ``--out`` or the bank by a refused command).

Output: what a command prints with ``print`` on stdout is its product (tables,
JSON).  Progress and log lines go to the ``tanas_jax`` logger (stdlib
``logging``, INFO to stderr, plain messages), configured by :func:`cli_main`,
and bars are tqdm's; ``--no-progress`` (:func:`progress_from_args`) turns both
off, leaving warnings and errors.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from tanas_jax.config import PRESETS, SEED_LIMIT, apply_override, load_config, section, updated  # noqa: F401  (re-exported)
from tanas_jax.errors import UserError, did_you_mean

LOGGER = "tanas_jax"
logger = logging.getLogger(LOGGER)


# --- the one wrapper ----------------------------------------------------------------------
def cli_main(run: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
    """``main(argv) -> exit status`` around ``run``: logging set up, errors mapped to exit codes."""
    def main(argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        configure_logging()
        try:
            code = run(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            print("interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
            return 130
        except SystemExit as e:   # --help from argparse, or a benchmark's own exit
            if e.code is not None and not isinstance(e.code, int):
                print(f"error: {e.code}", file=sys.stderr)
                return 1
            code = e.code
        return exit_status(code)

    return main


EXIT_OK, EXIT_FAILURE, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def exit_status(code) -> int:
    """A command's return value as a documented exit status: 0, 2 (user error), 130, else 1."""
    code = int(code or 0)
    return code if code in (EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED) else EXIT_FAILURE


def run_as_script(main) -> None:
    sys.exit(main())


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so redirection and capture keep working)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """The ``tanas_jax`` logger: plain messages to stderr at ``level``; one handler however often called."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def progress_from_args(args) -> bool:
    """Apply ``--no-progress`` (no bars, no progress messages; warnings still shown); True when progress is on."""
    progress = not getattr(args, "no_progress", False)
    logging.getLogger(LOGGER).setLevel(logging.INFO if progress else logging.WARNING)
    return progress


# --- parsing ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one-line :class:`UserError` s (reported by :func:`cli_main`)."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")

    common_seed = False   # set by add_common_args: --seed defaults to 0 and excludes --seeds

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        if not self.common_seed or not hasattr(ns, "seed"):
            return ns, rest
        if ns.seed is None:   # --seed was not given: its default
            ns.seed = 0
        elif getattr(ns, "seeds", None) is not None:
            raise UserError(f"give --seed or --seeds, not both (see {self.prog} --help)")
        return ns, rest


def make_parser(prog: str, description: str = "", **kw) -> argparse.ArgumentParser:
    """The argument parser every command uses (errors are one line, exit 2)."""
    return _Parser(prog=prog, description=description, **kw)


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """``'0,1,2'`` -> ``[0, 1, 2]``: a non-empty comma list of integers in [0, 2**32) (order kept, duplicates
    dropped)."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        seeds = [int(s) for s in items]
    except ValueError:
        seeds = []
    if not seeds or any(not 0 <= s < SEED_LIMIT for s in seeds):
        raise UserError(f"{flag} must be comma-separated integers >= 0 and < 2**32, e.g. 0,1,2; got '{text}'")
    return list(dict.fromkeys(seeds))


def parse_names(text: str, valid: Sequence[str], what: str) -> list[str]:
    """A comma list of names from ``valid`` (order kept, duplicates dropped); an unknown one is a
    one-line error naming ``what`` with the valid names and a "did you mean"."""
    items = list(dict.fromkeys(s.strip() for s in str(text).split(",") if s.strip()))
    if not items:
        raise UserError(f"empty {what} list; {did_you_mean('', valid)}")
    for name in items:
        if name not in valid:
            raise UserError(f"unknown {what} '{name}'; {did_you_mean(name, valid)}")
    return items


def parse_name(text: str, valid: Sequence[str], what: str) -> str:
    """One name from ``valid`` (see :func:`parse_names`)."""
    names = parse_names(text, valid, what)
    if len(names) != 1:
        raise UserError(f"give one {what}, got '{text}'; {did_you_mean('', valid)}")
    return names[0]


def parse_tasks(text: str) -> list[str]:
    """A task set (``offline8``) or comma list of task names / aliases -> canonical task names."""
    from tanas_jax.tasks import resolve_tasks

    return resolve_tasks(text)


def parse_task(text: str) -> str:
    """One task name or alias -> its canonical name."""
    from tanas_jax.tasks import canonical

    return canonical(text)


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
        p.add_argument("--seed", type=_seed, default=None, help="random seed (default 0)")
        p.common_seed = True
    if out:
        p.add_argument("--out", default=None, help="write DIR/result.json (and plots) here")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or progress messages (warnings and errors still shown)")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() (coordinator, process count and id "
                        "from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID or the cluster)")


def _seed(text: str) -> int:
    """``--seed``: one integer >= 0 (a one-line error otherwise)."""
    seeds = parse_seeds(text, "--seed")
    if "," in text:
        raise UserError(f"--seed takes one integer >= 0, got '{text}'; use --seeds for several")
    return seeds[0]


def init_distributed(args) -> None:
    """Start JAX's multi-host runtime when ``--distributed`` is given (before any computation)."""
    if not getattr(args, "distributed", False):
        return
    from tanas_jax.distributed import initialize

    initialize()


def config_from_args(args):
    """A new config from ``--config``, ``--set`` and ``--data-source``/``--data-dir``, checked whole: the
    data folder exists and every skeleton is known (the checks that need later layers than the config)."""
    from tanas_jax.data import check_data_dir
    from tanas_jax.tasks import attach_bank

    if getattr(args, "data_dir", None) and getattr(args, "data_source", None) == "bundled":
        raise UserError("--data-dir is not used by --data-source bundled; drop one of them")
    init_distributed(args)
    cfg = load_config(args.config, args.overrides)
    cfg = updated(cfg, {"data.source": getattr(args, "data_source", None) or None,
                        "data.data_dir": getattr(args, "data_dir", None) or None})
    check_data_dir(cfg.data.data_dir, "--data-dir" if getattr(args, "data_dir", None) else "data.data_dir")
    check_skeletons(cfg)
    if hasattr(args, "bank"):   # the user tasks banked there resolve by bare name (tasks.attach_bank)
        attach_bank(open_bank(args, create=False))
    return cfg


def check_skeletons(cfg) -> None:
    """Every skeleton of the config (fuse, final, search.darts) names a known preset or valid fields."""
    from tanas_jax.search.network import get_skeleton

    for name in ("fuse", "final", "search.darts"):
        try:
            get_skeleton(section(cfg, name).skeleton)
        except UserError as e:
            raise UserError(f"{name}.skeleton: {e}") from None


def open_bank(args, create: bool = True):
    """The ``--bank`` folder; ``create=False`` only reads (used while checking flags: nothing is written)."""
    from tanas_jax.bank import Bank

    return Bank(args.bank, create=create)


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


def check_out_dir(out_dir: str | None, restart: bool = False) -> None:
    """Fail early (before any work) when ``--out`` cannot be written (or ``--restart``, which starts over
    from the checkpoints in ``--out``, comes without it); creates nothing (the folder is made by the first
    file written into it, so a refused command leaves no empty folder)."""
    if restart and not out_dir:
        raise UserError("--restart starts over from the checkpoints in --out; it needs --out DIR")
    if not out_dir:
        return
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} exists and is not a folder; choose another")
    parent = os.path.abspath(out_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"--out {out_dir}: {parent} is not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --out {out_dir}: {parent} is not writable; choose a writable folder")


def print_table(rows: list[dict], columns: list[str], file=None) -> str:
    """A plain fixed-width table on stdout (also returned as text)."""
    from tanas_jax.report import format_table

    text = format_table(rows, columns)
    print(text, file=file or sys.stdout)
    return text


def dump_json(obj) -> str:
    from tanas_jax.io import json_default

    return json.dumps(obj, indent=2, sort_keys=True, default=json_default)
