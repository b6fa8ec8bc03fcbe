"""``bin/bench bank`` ranks a target against banks of K networks and reports its fields (issue 14, deliverable 6).

One subprocess (its synthetic tasks stay out of this process's task registry), K = 2 and 4, tiny
examples.  The counts are checked against what ranking must do: K base Fishers on the target's
data plus the target's own Fisher exactly once, every base ranked.
"""
from __future__ import annotations

import json

import pytest

from conftest import run_cli


def test_bench_bank_reports_time_memory_and_one_target_fisher(tmp_path):
    r = run_cli("bench", "bank", "--ks", "4,2", "--examples", "4", "--out", str(tmp_path),
                env={"TANAS_XLA_CACHE": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "bank.json").read_text())
    rows = out["rows"]
    assert [row["k"] for row in rows] == [2, 4]
    for row in rows:
        k = row["k"]
        assert row["fisher_computed"] == k + 1      # one per base + the target's, computed once
        assert row["fisher_reused"] == k - 1        # the target's Fisher, reused for every other base
        assert row["target_fishers"] == 1
        assert row["ranked"] == k
        assert row["wall_s"] > 0 and abs(row["s_per_base"] - row["wall_s"] / k) < 1e-9
        assert row["peak_host_mb"] > 0 and abs(row["host_mb_per_base"] - row["peak_host_mb"] / k) < 1e-9
        assert row["closest"].startswith("benchbank")
    assert set(out["linearity"]) == {"wall_s", "peak_host_mb"}
    assert "| K | wall s |" in r.stdout and "linearity" in r.stdout


def test_bench_bank_bad_sizes_are_user_errors():
    from tanas_jax.cli import bench
    from tanas_jax.errors import UserError

    for bad in ("0,x", "0", ""):
        with pytest.raises(UserError, match="--ks must be positive integers"):
            bench.run(["bank", "--ks", bad])
