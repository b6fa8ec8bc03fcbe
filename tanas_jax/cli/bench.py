"""``bin/bench NAME [args]``: run a benchmark script from ``benchmarks/``.

Add a benchmark by adding ``name: '<file>.py'`` to ``BENCHMARKS``; the file
(in ``benchmarks/`` of a source checkout) must define ``main(argv) -> int``,
which gets the arguments after ``NAME`` (``bin/bench fisher --help`` is the
benchmark's own help).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
from unittest import mock

from tanas_jax.cli.common import cli_main, make_parser, parse_name, run_as_script
from tanas_jax.errors import UserError

BENCHMARKS = {
    "fisher": "per_example_grads.py",   # Fisher engine (issue 3)
    "fuse": "fuse_step.py",             # FUSE steps (issue 4)
    "bank": "bank.py",                  # ranking against banks of K networks (issue 14)
    "conv": "conv_fisher.py",           # conv-kernel Fisher techniques per layer shape (issue 14)
}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("bench", "Run a benchmark from benchmarks/ (source checkouts only).",
                    epilog="benchmarks: " + ", ".join(f"{k} ({v})" for k, v in BENCHMARKS.items()))
    p.add_argument("name", metavar="NAME", help=f"benchmark: {' | '.join(BENCHMARKS)}")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (its own --help)")
    return p


def _load(name: str):
    """The benchmark's module, or a one-line error when this checkout lacks the file."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "benchmarks", BENCHMARKS[name])
    if not os.path.exists(path):
        raise UserError(f"benchmark '{name}' is not in this checkout (benchmarks/{BENCHMARKS[name]})")
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def _one_line_usage_errors():
    """A benchmark's own argparse errors become one-line UserErrors (exit 2), like every command's."""
    def error(parser, message):
        raise UserError(f"{parser.prog}: {message} (see {parser.prog} --help)")

    with mock.patch.object(argparse.ArgumentParser, "error", error):
        yield


def run(argv) -> int:
    if not argv:
        raise UserError(f"bin/bench needs a benchmark name; valid: {', '.join(BENCHMARKS)} (see bench --help)")
    args = build_parser().parse_args(argv)
    name = parse_name(args.name, BENCHMARKS, "benchmark")
    module = _load(name)
    with _one_line_usage_errors():
        return int(module.main(args.args) or 0)


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
