"""Many hosts, proven on one machine: two CPU processes joined by ``jax.distributed.initialize`` on the
loopback address run ``bin/fisher --distributed`` and ``bin/distance --distributed``; each must equal the
single-process result.  This is README's multi-host recipe, run as written (env variables + flag)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--set", "data.max_train=300", "--set", "data.max_eval=100", "--set", "train.epochs=1",
        "--set", "fisher.examples=64", "--no-progress"]
TASKS = "mnist_digit0,mnist_digit3"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update({"TANAS_XLA_CACHE": "0", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def _run_two(cmd: str, args_of, tmp_path) -> list[subprocess.CompletedProcess]:
    """``cmd`` in two processes joined over loopback; ``args_of(i)`` gives process i's arguments."""
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", cmd), *args_of(i), "--distributed"],
                              env=_env(**env, JAX_PROCESS_ID=str(i)), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    out = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    for r in out:
        assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """Two tiny banked networks (bundled MNIST), trained once for the module (in-process)."""
    from tanas_jax.cli.train import main

    d = tmp_path_factory.mktemp("multihost")
    assert main(["--task", TASKS, "--bank", str(d / "bank"), *TINY]) == 0
    return d / "bank"


def _one(cmd: str, args: list[str]) -> None:
    """The single-process reference, in-process (no process boundary needed for it)."""
    import importlib

    assert importlib.import_module(f"tanas_jax.cli.{cmd}").main(args) == 0


def _copy(bank, dest):
    """Each process gets its own copy of the bank, as hosts with their own disks would."""
    shutil.copytree(bank, dest)
    return str(dest)


def test_fisher_two_processes_equal_one(bank, tmp_path):
    args = ["--task", "mnist_digit0", *TINY, "--recompute"]
    _one("fisher", [*args, "--bank", _copy(bank, tmp_path / "b1"), "--out", str(tmp_path / "one")])
    banks = [_copy(bank, tmp_path / f"b2_{i}") for i in range(2)]
    _run_two("fisher", lambda i: [*args, "--bank", banks[i], "--out", str(tmp_path / f"two{i}")], tmp_path)
    ref = json.load(open(tmp_path / "one" / "result.json"))
    assert ref["meta"]["info"]["devices"] == 1
    for i in range(2):
        got = json.load(open(tmp_path / f"two{i}" / "result.json"))
        assert got["meta"]["info"]["devices"] == 2          # the example axis really spans both processes
        np.testing.assert_allclose(got["trace"], ref["trace"], rtol=1e-5)
        assert [r["layer"] for r in got["layers"]] == [r["layer"] for r in ref["layers"]]
        np.testing.assert_allclose([r["trace"] for r in got["layers"]], [r["trace"] for r in ref["layers"]],
                                   rtol=1e-5)


def test_distance_two_processes_equal_one(bank, tmp_path):
    args = ["--tasks", TASKS, "--metric", "logdet", "--bootstrap", "0", *TINY]   # the distances, not P(closest)
    _one("distance", [*args, "--bank", _copy(bank, tmp_path / "b1"), "--out", str(tmp_path / "one")])
    banks = [_copy(bank, tmp_path / f"b2_{i}") for i in range(2)]
    _run_two("distance", lambda i: [*args, "--bank", banks[i], "--out", str(tmp_path / f"two{i}")], tmp_path)
    ref = json.load(open(tmp_path / "one" / "result.json"))
    for i in range(2):
        got = json.load(open(tmp_path / f"two{i}" / "result.json"))
        assert got["tasks"] == ref["tasks"]
        np.testing.assert_allclose(np.array(got["mean"], float), np.array(ref["mean"], float), rtol=1e-5)
