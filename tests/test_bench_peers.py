"""The PyTorch peers of ``bin/bench fisher`` compute our diagonal Fisher (issue 14, deliverable 2).

Runs the benchmark's check (not its timing): our weights copied into the torch twin of small_cnn,
8 examples, each peer's ``||F_peer - F_ours|| / ||F_ours||`` <= 1e-4.  Skips where the peer is not
installed (CI); install the peers with ``benchmarks/install_peers.sh``.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS = {"func_vmap": "torch", "loop": "torch", "backpack": "backpack", "opacus": "opacus"}


def _bench():
    spec = importlib.util.spec_from_file_location("bench_per_example_grads",
                                                  os.path.join(ROOT, "benchmarks", "per_example_grads.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("peer", sorted(NEEDS))
def test_peer_fisher_matches_ours_on_small_cnn(peer):
    pytest.importorskip("torch")
    pytest.importorskip(NEEDS[peer])
    bench = _bench()
    assert set(bench.PEERS) == set(NEEDS)
    res = bench.peer_errors("small_cnn", examples=8, microbatch=4, peers=[peer])[peer]
    assert "reason" not in res, res.get("reason")
    assert res["rel_error"] <= 1e-4
    assert res["ok"]


def test_select_peers_names_and_errors():
    bench = _bench()
    assert bench.select_peers("none") == []
    assert bench.select_peers("backpack,opacus") == ["backpack", "opacus"]
    assert set(bench.select_peers("all")) <= set(bench.PEERS)
    with pytest.raises(SystemExit, match="unknown peer"):
        bench.select_peers("backpak")


def test_timing_reports_cpu_time_and_the_table_shows_its_ratio():
    """``time_alternating`` gives CPU seconds next to wall seconds: a sleep costs wall time but
    (almost) no CPU time, a busy loop costs CPU time; the table prints the CPU-time ratio."""
    import time

    bench = _bench()

    def busy():
        t0 = time.process_time()
        while time.process_time() - t0 < 0.02:
            pass

    cpu: dict = {}
    wall = bench.time_alternating({"sleep": lambda: time.sleep(0.03), "busy": busy}, 3, cpu)
    assert wall["sleep"] >= 0.03 and cpu["sleep"] < 0.015
    assert cpu["busy"] >= 0.02
    row = {"net": "small_cnn", "examples": 8, "microbatch": 4, "plain_s": 1.0, "fisher_s": 1.5,
           "ratio": 1.5, "cpu_ratio": 1.25}
    head, _, line = bench.table([row], []).splitlines()
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[[c.strip() for c in head.strip("|").split("|")].index("CPU-time ratio")] == "1.25"
