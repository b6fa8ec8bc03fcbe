"""Paired comparisons and anytime traces (tanas_jax.compare): checked against hand-computed values and
scipy's paired t-test, on made-up search results; the final test split of bin/tanas on real data."""
import math

import numpy as np
import pytest

from tanas_jax.compare import accuracies_by_method, anytime_trace, binomial_std, paired_difference, paired_table


def test_binomial_std_by_hand():
    assert binomial_std(0.9, 10_000) == pytest.approx(0.003)          # sqrt(0.09 / 10^4)
    assert binomial_std(0.5, 2_000) == pytest.approx(math.sqrt(0.25 / 2000))
    assert binomial_std(1.0, 100) == 0.0
    with pytest.raises(ValueError):
        binomial_std(0.5, 0)


def test_paired_difference_by_hand():
    # d = (0.01, 0.02, 0.03): mean 0.02, sd 0.01, t_{0.975, 2} = 4.302652729911275
    r = paired_difference([0.81, 0.82, 0.83], [0.80, 0.80, 0.80])
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert r["n"] == 3 and r["mean"] == pytest.approx(0.02) and r["sd"] == pytest.approx(0.01)
    assert (r["low"], r["high"]) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))
    assert r["significant"] is False                      # 0.02 - 0.0248 < 0 < 0.02 + 0.0248
    # a consistent small gain is significant, though its mean is below the first case's
    r2 = paired_difference([0.811, 0.812, 0.8105, 0.8115, 0.8112], [0.80] * 5)
    assert r2["significant"] is True and r2["low"] > 0
    # a negative one too, on the other side
    assert paired_difference([0.7, 0.71], [0.8, 0.805])["high"] < 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_difference_matches_scipy_ttest_rel(seed):
    from scipy import stats

    gen = np.random.default_rng(seed)
    a = gen.uniform(0.8, 0.9, 5)
    b = a + gen.normal(0.003, 0.004, 5)
    r = paired_difference(a, b, confidence=0.9)
    ci = stats.ttest_rel(a, b).confidence_interval(0.9)
    assert (r["low"], r["high"]) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    assert r["significant"] == (stats.ttest_rel(a, b).pvalue < 0.1)


def test_paired_difference_one_pair_and_bad_input():
    r = paired_difference([0.9], [0.8])
    assert r["mean"] == pytest.approx(0.1) and math.isnan(r["low"]) and r["significant"] is False
    with pytest.raises(ValueError):
        paired_difference([0.9, 0.8], [0.8])


def test_paired_table_pairs_by_seed():
    acc = {"task-aware": {0: 0.80, 1: 0.82, 2: 0.81},
           "random": {2: 0.83, 0: 0.81, 1: 0.84},           # order of seeds does not matter
           "tetlo": {0: 0.79, 1: 0.80, 3: 0.99}}            # seed 3 has no reference: left out of the pair
    rows = {r["method"]: r for r in paired_table(acc, "task-aware", n_test=10_000)}
    assert "vs_reference" not in rows["task-aware"]
    assert rows["random"]["vs_reference"]["differences"] == pytest.approx([0.01, 0.02, 0.02])
    assert rows["tetlo"]["vs_reference"]["differences"] == pytest.approx([-0.01, -0.02])
    assert rows["tetlo"]["mean"] == pytest.approx((0.79 + 0.80 + 0.99) / 3)
    assert rows["random"]["binomial_std"] == pytest.approx(np.mean([math.sqrt(p * (1 - p) / 1e4)
                                                                     for p in (0.81, 0.84, 0.83)]))
    with pytest.raises(ValueError):
        paired_table(acc, "darts1")


def test_accuracies_by_method_from_results():
    results = [{"seed": s, "runs": {"task-aware": {"final": {"test_accuracy": 0.8 + s / 50}},
                                    "random": {"final": {"test_accuracy": 0.7 + s / 50}}}} for s in (0, 4)]
    expect = {"task-aware": {0: 0.8, 4: 0.8 + 4 / 50}, "random": {0: 0.7, 4: 0.7 + 4 / 50}}
    assert accuracies_by_method(results) == expect


def test_anytime_traces():
    fuse = {"method": "fuse", "history": [{"wall_s": 10.0, "val_accuracy": [0.5, 0.7, 0.6]},
                                          {"wall_s": 4.0, "val_accuracy": [0.65, 0.6, 0.55]},
                                          {"wall_s": 5.0, "val_accuracy": [0.75, 0.1, 0.2]}]}
    t = anytime_trace(fuse)
    assert t["seconds"] == pytest.approx([10, 14, 19]) and t["best_val"] == pytest.approx([0.7, 0.7, 0.75])
    rnd = {"method": "random", "evaluations": [{"wall_s": 3.0, "val_accuracy": 0.4},
                                               {"wall_s": 1.0, "val_accuracy": 0.6},
                                               {"wall_s": 2.0, "val_accuracy": 0.5}]}
    t = anytime_trace(rnd)
    assert t["seconds"] == pytest.approx([3, 4, 6]) and t["best_val"] == pytest.approx([0.4, 0.6, 0.6])
    t = anytime_trace({"method": "tetlo", "search_wall_s": 42.0, "supernet_val_accuracy": 0.3})
    assert t == {"kind": "supernet", "seconds": [42.0], "best_val": [0.3],
                 "measured": "supernet val accuracy at the end"}
    with pytest.raises(ValueError):
        anytime_trace({"method": "nope"})


def test_final_data_full_test_split_keeps_search_splits():
    """data.max_test caps only the final test split; the capped split is the prefix of the longer one."""
    from tanas_jax.config import load_config
    from tanas_jax.pipeline import final_data, search_data

    over = ["data.source=bundled", "data.max_eval=200", "search.max_train=300", "search.input_shape=(16,16,1)"]
    cfg = load_config("quick", over)
    data = search_data(cfg, "mnist_5class")
    assert final_data(cfg, data) is data                                    # default: unchanged
    cfg2 = load_config("quick", over + ["data.max_test=100000"])
    fd = final_data(cfg2, data)
    assert len(fd.y_test) > 200 and fd.sizes["train"] == 300 and fd.sizes["val"] == 200
    np.testing.assert_array_equal(fd.x_train, data.x_train)
    np.testing.assert_array_equal(fd.y_val, data.y_val)
    np.testing.assert_array_equal(fd.x_test[:200], data.x_test)
    np.testing.assert_array_equal(fd.y_test[:200], data.y_test)
    assert fd.record()["max_test"] == 100000 and fd.record()["sizes"]["test"] == len(fd.y_test)


def test_baselines_config_and_seed_ranges():
    from tanas_jax.cli.tanas import seed_list
    from tanas_jax.config import load_config
    from tanas_jax.errors import UserError
    from tanas_jax.pipeline import baseline_names

    assert baseline_names(load_config("quick")) == ["standard", "random"]
    cfg = load_config("quick", ["tanas.baselines=tetlo,darts1,tetlo"])
    assert baseline_names(cfg) == ["tetlo", "darts1"]
    with pytest.raises(UserError, match="tanas.baselines"):
        load_config("quick", ["tanas.baselines=standard,dart1"])
    assert seed_list("0-4") == [0, 1, 2, 3, 4]
    assert seed_list("0,2,5-7") == [0, 2, 5, 6, 7]
    for bad in ("4-1", "a-b", "-1"):
        with pytest.raises(UserError):
            seed_list(bad)
