"""House rules of the package, checked on its source (no imports of the product needed).

* the import graph has no cycles and follows the layers (a module never imports a later layer);
* no module imports another module's ``_private`` name;
* no function is longer than ``MAX_LINES`` lines, except the ones listed with a reason;
* nothing outside ``tanas_jax/_xla.py`` imports ``jax._src`` or mutates ``jax.config``;
* the code cites no file outside the repository.
"""
from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "tanas_jax")
MAX_LINES = 80

# Layers, bottom first: a module may import its own layer and the layers below it.
LAYERS = [
    {"tanas_jax._xla", "tanas_jax.errors", "tanas_jax.io", "tanas_jax.provenance", "tanas_jax.distributed"},
    {"tanas_jax.config", "tanas_jax.layers"},
    {"tanas_jax.data"},
    {"tanas_jax.tasks"},
    {"tanas_jax.models"},
    {"tanas_jax.train"},
    {"tanas_jax.bank", "tanas_jax.bank_archive"},
    {"tanas_jax.fisher"},
    {"tanas_jax.distance"},
    {"tanas_jax.search"},
    {"tanas_jax.pipeline", "tanas_jax.report", "tanas_jax.compare"},
    {"tanas_jax.api"},
    {"tanas_jax.cli"},
]

# Functions allowed to be longer than MAX_LINES, with the reason.
LONG_OK: dict[str, str] = {}


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-9] if rel.endswith(".__init__") else rel] = path
    return out


MODULES = _modules()


def _tree(path):
    with open(path) as f:
        return ast.parse(f.read(), path)


def _imports(mod: str, path: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every tanas_jax import, at any depth."""
    out = []
    pkg = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("tanas_jax")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("tanas_jax"):
                names = [a.name for a in node.names]
                subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
                out.append((base, [n for n in names if f"{base}.{n}" not in MODULES], node.lineno))
                out += [(s, [], node.lineno) for s in subs]
    return out


def _layer(mod: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(mod == m or mod.startswith(m + ".") for m in layer):
            return i
    return -1


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "tanas_jax" and _layer(m) < 0] == []


def test_imports_follow_the_layers():
    bad = []
    for mod, path in MODULES.items():
        if mod == "tanas_jax":
            continue
        for target, _, line in _imports(mod, path):
            if target != "tanas_jax" and _layer(target) > _layer(mod):
                bad.append(f"{path}:{line}: {mod} imports {target} (a later layer)")
    assert bad == []


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}
    graph["tanas_jax"] = set()   # the package root only sets XLA flags
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if not t.startswith(m + "."):   # a package importing its own submodules is not a cycle
                visit(t)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert cycles == []


def test_no_private_imports_across_modules():
    bad = []
    for mod, path in MODULES.items():
        for target, names, line in _imports(mod, path):
            if target == mod:
                continue
            bad += [f"{path}:{line}: {mod} imports {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert bad == []


def _functions():
    for mod, path in MODULES.items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield mod, path, node


def test_functions_are_short():
    long = []
    for mod, path, node in _functions():
        n = node.end_lineno - node.lineno + 1
        key = f"{mod}.{node.name}"
        if n > MAX_LINES and key not in LONG_OK:
            long.append(f"{path}:{node.lineno}: {node.name} has {n} lines")
    assert long == []


@pytest.mark.parametrize("pattern,what", [
    (r"jax\._src", "imports jax._src"),
    (r"jax\.config\.update\(", "mutates jax.config"),
    (r"DESIGN\.md|REFERENCE\.md|papers/[a-z_-]+\.txt", "cites a file outside the repository"),
])
def test_source_patterns(pattern, what):
    allowed = {"tanas_jax._xla"}
    if "config" in what:   # the public switches: persistent compilation cache, multi-host CPU collectives
        allowed |= {"tanas_jax.search.runtime", "tanas_jax.distributed"}
    bad = []
    for mod, path in MODULES.items():
        if mod in allowed:
            continue
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if re.search(pattern, line):
                    bad.append(f"{path}:{i}: {what}")
    assert bad == []
