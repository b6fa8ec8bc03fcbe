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
