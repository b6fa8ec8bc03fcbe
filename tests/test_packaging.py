"""The package list in pyproject.toml covers every subpackage, and the presets ship with it."""
import os
import tomllib

from conftest import ROOT


def test_every_subpackage_is_listed_and_configs_ship():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        st = tomllib.load(f)["tool"]["setuptools"]
    listed = set(st["packages"])
    found = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tanas_jax")):
        if "__init__.py" in files and "__pycache__" not in dirpath:
            found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"
    assert st["package-dir"]["tanas_jax.configs"] == "configs"
    for f in ("quick.py", "paper.py", "__init__.py"):
        assert os.path.exists(os.path.join(ROOT, "configs", f))
    assert os.listdir(os.path.join(ROOT, "configs", "genotypes"))
