"""``bin/bench SUBCOMMAND [args]``: run a benchmark script from ``benchmarks/``.

Add a benchmark by adding ``name: 'benchmarks/<file>.py'`` to ``BENCHMARKS``;
the file must define ``main(argv) -> int``.
"""
from __future__ import annotations

import importlib.util
import os
import sys

BENCHMARKS = {
    "fisher": "per_example_grads.py",   # Fisher engine (issue 3)
    "fuse": "fuse_step.py",             # FUSE steps (issue 4)
}


def _load(name: str):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "benchmarks", BENCHMARKS[name])
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in BENCHMARKS:
        got = f"'{argv[0]}'" if argv else "nothing"
        print(f"error: bin/bench needs a benchmark name, got {got}: valid: {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    mod = _load(argv[0])
    if mod is None:
        print(f"error: benchmark '{argv[0]}' is not in this checkout (benchmarks/{BENCHMARKS[argv[0]]})",
              file=sys.stderr)
        return 2
    return int(mod.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
