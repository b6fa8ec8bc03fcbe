"""P(closest): how often each base is the closest over ε-net seeds and bootstrap resamples.

Pure checks against hand counts and naive loops, and the bin/tanas confidence note and warning.
The in-process ``bin/distance`` run with P(closest) (JSON, CSV, the block Fishers averaging to the
full Fisher, the point estimate unchanged) shares the tiny bank of tests/test_distance_cli.py.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from tanas_jax.distance.stats import block_slices, bootstrap_indices, p_closest, replicate_label, resample_mean


# --- pure functions -----------------------------------------------------------------------------
def test_p_closest_matches_a_hand_count_with_ties_and_nan():
    d = np.array([[1.0, 2.0, 3.0],      # base 0
                  [2.0, 1.0, 3.0],      # base 1
                  [0.5, 0.9, 0.1],      # base 2
                  [1.0, 1.0, 5.0],      # tie 0/1: half each
                  [np.nan, 4.0, 3.0],   # NaN is never the closest: base 2
                  [np.nan] * 3])        # nothing computed: not counted
    # counted replicates: 5; base 0: 1 + 0.5, base 1: 1 + 0.5, base 2: 2
    np.testing.assert_allclose(p_closest(d), [1.5 / 5, 1.5 / 5, 2 / 5])
    assert p_closest(d).sum() == pytest.approx(1.0)


def test_p_closest_equals_a_naive_loop_and_sums_to_one():
    rng = np.random.default_rng(3)
    d = rng.integers(0, 4, size=(50, 5)).astype(float)   # many ties
    want = np.zeros(5)
    for row in d:
        winners = [i for i in range(5) if row[i] == min(row)]
        for i in winners:
            want[i] += 1 / len(winners)
    np.testing.assert_allclose(p_closest(d), want / len(d))
    assert p_closest(d).sum() == pytest.approx(1.0)


def test_bootstrap_indices_are_seeded_per_stream_and_in_range():
    a = bootstrap_indices(7, 0, 20, 10)
    assert a.shape == (20, 10) and a.min() >= 0 and a.max() <= 9
    np.testing.assert_array_equal(a, bootstrap_indices(7, 0, 20, 10))
    assert not np.array_equal(a, bootstrap_indices(7, 1, 20, 10))   # each ε-net seed its own resamples
    assert not np.array_equal(a, bootstrap_indices(8, 0, 20, 10))   # --seed changes them


def test_block_slices_and_resample_mean_against_a_naive_mean():
    rng = np.random.default_rng(0)
    per_example = rng.random((23, 3, 2))
    sl = block_slices(23, 5)
    assert [s.stop - s.start for s in sl] == [5, 5, 5, 4, 4] and sl[0].start == 0 and sl[-1].stop == 23
    blocks = np.stack([per_example[s].mean(0) for s in sl])
    sizes = [s.stop - s.start for s in sl]
    # all blocks once: the mean over every example
    np.testing.assert_allclose(resample_mean(blocks, sizes, np.arange(5)), per_example.mean(0), rtol=1e-12)
    # a resample with repeats: the mean over the examples of the drawn blocks, repeats counted
    idx = np.array([3, 3, 0, 4, 1])
    rows = np.concatenate([per_example[sl[j]] for j in idx])
    np.testing.assert_allclose(resample_mean(blocks, sizes, idx), rows.mean(0), rtol=1e-12)
    assert replicate_label(5, 20) == "5 seeds x 20 resamples" and replicate_label(1, 0) == "1 seed"


def test_seed_only_p_closest_of_a_table_without_bootstrap():
    from tanas_jax.distance.table import add_seed_p_closest

    nan = None
    per_seed = [[[0.0, 1.0, 5.0], [2.0, 0.0, 4.0], [1.0, 3.0, 0.0]],   # seed 0
                [[0.0, 1.0, 3.0], [0.5, 0.0, 4.0], [3.0, 1.0, 0.0]],   # seed 1
                [[0.0, 2.0, nan], [0.7, 0.0, nan], [3.0, 1.5, 0.0]]]   # seed 2 (column c missing)
    table = add_seed_p_closest({"tasks": ["a", "b", "c"], "targets": ["a", "b", "c"], "seeds": [0, 1, 2],
                                "per_seed": per_seed})
    pc = table["p_closest"]
    # column a: seed 0 c (1 < 2), seeds 1, 2 b;  column b: seed 0 a, seed 1 a/c tie, seed 2 c;
    # column c: seed 0 b (4 < 5), seed 1 a (3 < 4), seed 2 not computed (not counted)
    assert pc["a"] == {"b": pytest.approx(2 / 3), "c": pytest.approx(1 / 3)}
    assert pc["b"] == {"a": pytest.approx(1 / 2), "c": pytest.approx(1 / 2)}
    assert pc["c"] == {"a": pytest.approx(1 / 2), "b": pytest.approx(1 / 2)}
    assert table["bootstrap"]["over"] == "3 seeds" and table["bootstrap"]["resamples"] == 0
    for t in "abc":
        assert sum(pc[t].values()) == pytest.approx(1.0)


# --- bin/tanas: confidence and the choice of bases ----------------------------------------------
def test_choose_bases_uses_material_bases_at_most_k_at_least_one():
    from tanas_jax.pipeline import choose_bases

    ranking = ["a", "b", "c", "d"]
    p = {"a": 0.5, "b": 0.05, "c": 0.3, "d": 0.15}
    assert choose_bases(ranking, p, 1, 0.1) == ["a"]                  # k = 1: the paper's rule
    assert choose_bases(ranking, p, 2, 0.1) == ["a", "c"]             # b is not material
    assert choose_bases(ranking, p, 4, 0.1) == ["a", "c", "d"]        # at most k, only material ones
    assert choose_bases(ranking, p, 3, 0.9) == ["a"]                  # none material: the closest


def test_confidence_note_and_low_confidence_warning(caplog):
    from tanas_jax import pipeline

    p = {"a": 0.84, "b": 0.16}
    note = pipeline.confidence_note("t", ["a"], p, "5 seeds x 20 resamples", 0.5)
    assert note["message"] == "closest base: a (P(closest) = 0.84 over 5 seeds x 20 resamples)"
    assert note["warning"] is None and note["p"] == pytest.approx(0.84)
    low = pipeline.confidence_note("t", ["b"], p, "5 seeds x 20 resamples", 0.5)
    assert "0.16 < tanas.min_confidence = 0.5" in low["warning"] and "a 0.84" in low["warning"]
    assert pipeline.confidence_note("t", ["a", "b"], p, "1 seed", 0.99)["p"] == pytest.approx(1.0)
    logs = []
    run = type("R", (), {"log": logs.append})
    with caplog.at_level(logging.WARNING, logger="tanas_jax.pipeline"):
        pipeline._announce_confidence(run, note)
        assert not caplog.records
        pipeline._announce_confidence(run, low)
    assert logs == [note["message"], low["message"]]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "low confidence" in caplog.records[0].getMessage()


def test_confidence_settings_are_validated():
    from tanas_jax.config import load_config, section
    from tanas_jax.errors import UserError

    cfg = load_config("quick")
    assert section(cfg, "distance").bootstrap == 20 and section(cfg, "tanas").min_confidence == 0.5
    for bad in ("distance.bootstrap=-1", "distance.bootstrap_blocks=1", "tanas.min_confidence=1.5",
                "tanas.material=-0.1"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            section(load_config("quick", [bad]), bad.split(".")[0])
