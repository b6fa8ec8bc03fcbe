"""Task distances against explicit dense-matrix ground truths."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings, strategies as st

from tanas_jax.distance import (align, frechet_distance_diag, frechet_distance_full, logdet_distance_diag,
                                logdet_distance_eq1_diag, logdet_distance_full, logdet_full, nuclear_norm)
from tanas_jax.errors import UserError
from tanas_jax.fisher import cross_gram, fisher_diag, gram_eigenvalues, gram_matrix, per_example_grads


class Tiny(nn.Module):
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.tanh(nn.Dense(4, name="fc")(x))
        return nn.Dense(self.classes, name="head")(h)


class TinyBB(nn.Module):
    """{'backbone', 'head'} layout like the model zoo."""

    classes: int = 3

    def setup(self):
        self.backbone = nn.Dense(4)
        self.head = nn.Dense(self.classes)

    def __call__(self, x):
        return self.head(nn.tanh(self.backbone(x)))


def _net(seed, classes=3, module=Tiny, din=5):
    mod = module(classes=classes)
    v = mod.init(jax.random.PRNGKey(seed), jnp.zeros((1, din)))
    return (lambda vv, xx: mod.apply(vv, xx)), dict(v)


def _data(m, seed=0, din=5, classes=3):
    r = np.random.RandomState(seed)
    return r.randn(m, din).astype(np.float32), r.randint(0, classes, m).astype(np.int32)


def _dense_G(apply, v, x, y):
    g = per_example_grads(apply, v, x, y)
    return np.concatenate([np.asarray(a, np.float64).reshape(x.shape[0], -1)
                           for a in jax.tree_util.tree_leaves(g)], axis=1)


# ------------------------------------------------------------- full spectra

@pytest.mark.parametrize("m", [12, 50])  # M < n (39 params) and M > n
def test_full_logdet_via_gram_equals_dense_slogdet(m):
    apply, v = _net(0)
    x, y = _data(m)
    K, n = gram_matrix(apply, v, x, y, microbatch=7)  # blocks that do not divide M
    G = _dense_G(apply, v, x, y)
    assert n == G.shape[1] == 39
    np.testing.assert_allclose(K, G @ G.T / m, rtol=1e-5, atol=1e-8)
    F = G.T @ G / m
    for s2 in (1e-2, 1e-4, 1e-10):  # Gram accumulated in float64: the authors' sigma^2 is meaningful
        sign, ref = np.linalg.slogdet(F + s2 * np.eye(n))
        assert sign > 0
        got = logdet_full(gram_eigenvalues(K), n, s2)
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    # recompute-per-block-pair path (budget too small to cache) gives the same Gram
    K2, _ = gram_matrix(apply, v, x, y, microbatch=7, memory_budget=1000)
    np.testing.assert_allclose(K2, K, rtol=1e-6, atol=1e-10)


def test_full_logdet_distance_matches_dense_eq1():
    (ab, vb), (at, vt) = _net(0), _net(1)
    x, y = _data(20)
    Kb, n = gram_matrix(ab, vb, x, y)
    Kt, _ = gram_matrix(at, vt, x, y)
    Gb, Gt = _dense_G(ab, vb, x, y), _dense_G(at, vt, x, y)
    Fb, Ft = Gb.T @ Gb / 20, Gt.T @ Gt / 20
    Fb, Ft = Fb / np.trace(Fb), Ft / np.trace(Ft)
    for s2 in (1e-4, 1e-10):
        ref = abs(np.linalg.slogdet(Fb + s2 * np.eye(n))[1] / n - np.linalg.slogdet(Ft + s2 * np.eye(n))[1] / n)
        got = logdet_distance_full(gram_eigenvalues(Kb), n, gram_eigenvalues(Kt), n, sigma2=s2)
        # a difference of two per-parameter log-dets (~-9, ~-15): compare in absolute terms
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
        assert got > 1e-4


def _sqrtm_psd(a):
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_full_frechet_via_cross_gram_equals_sqrtm_formula():
    (ab, vb), (at, vt) = _net(0), _net(1)
    x, y = _data(50)
    Gb, Gt = _dense_G(ab, vb, x, y), _dense_G(at, vt, x, y)
    Fb, Ft = Gb.T @ Gb / 50, Gt.T @ Gt / 50
    # slides eq. (7) literally, with scipy's sqrtm
    rb = scipy.linalg.sqrtm(Fb).real
    cross = np.trace(scipy.linalg.sqrtm(rb @ Ft @ rb).real)
    ref_raw = np.sqrt(max(np.trace(Fb) + np.trace(Ft) - 2 * cross, 0)) / np.sqrt(2)
    C = cross_gram(ab, vb, at, vt, x, y, microbatch=16)
    nuc = nuclear_norm(C)
    np.testing.assert_allclose(nuc, cross, rtol=1e-5)
    got_raw = frechet_distance_full(np.trace(Fb), np.trace(Ft), nuc, normalization="none")
    np.testing.assert_allclose(got_raw, ref_raw, rtol=1e-4)
    # unit-trace normalised: in [0, 1] and equal to the dense formula on F/trF
    Fbn, Ftn = Fb / np.trace(Fb), Ft / np.trace(Ft)
    rbn = _sqrtm_psd(Fbn)
    refn = np.sqrt(max(2 - 2 * np.trace(_sqrtm_psd(rbn @ Ftn @ rbn)), 0)) / np.sqrt(2)
    got = frechet_distance_full(np.trace(Fb), np.trace(Ft), nuc)
    np.testing.assert_allclose(got, refn, rtol=1e-4)
    assert 0 <= got <= 1
    # identical networks: distance 0
    Cs = cross_gram(ab, vb, ab, vb, x, y)
    assert frechet_distance_full(np.trace(Fb), np.trace(Fb), nuclear_norm(Cs)) < 1e-3


def test_cross_gram_pads_heads_of_different_class_counts():
    (ab, vb), (at, vt) = _net(0, classes=2, module=TinyBB), _net(1, classes=3, module=TinyBB)
    x, _ = _data(10)
    y = np.zeros(10, np.int32)
    C = cross_gram(ab, vb, at, vt, x, y, head="pad")
    gb = per_example_grads(ab, vb, x, y)
    gt = per_example_grads(at, vt, x, y)
    flat = lambda g, crop: np.concatenate([  # noqa: E731
        np.asarray(g["backbone"]["bias"]).reshape(10, -1), np.asarray(g["backbone"]["kernel"]).reshape(10, -1),
        np.asarray(g["head"]["bias"][:, :crop]).reshape(10, -1),
        np.asarray(g["head"]["kernel"][:, :, :crop]).reshape(10, -1)], 1)
    ref = flat(gb, 2) @ flat(gt, 2).T / 10
    np.testing.assert_allclose(C, ref, rtol=1e-5, atol=1e-9)
    Cbb = cross_gram(ab, vb, at, vt, x, y, head="backbone")
    np.testing.assert_allclose(Cbb, flat(gb, 0)[:, :24] @ flat(gt, 0)[:, :24].T / 10, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------- diagonal

def _tree(rng, shapes, zero_frac=0.0):
    out = {}
    for k, s in shapes.items():
        a = rng.rand(*s).astype(np.float32)
        a[rng.rand(*s) < zero_frac] = 0
        out[k] = {"kernel": jnp.asarray(a)}
    return out


SHAPES = {"a": (3, 4), "b": (5,), "head": (4, 2)}


def test_logdet_diag_matches_explicit_formula_and_authors_variant():
    r = np.random.RandomState(0)
    fb, ft = _tree(r, SHAPES), _tree(r, SHAPES)
    s2 = 1e-10
    lb = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(fb)]
    lt = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(ft)]
    tb, tt = sum(a.sum() for a in lb), sum(a.sum() for a in lt)
    per = [np.sum(np.log(b / tb + s2) - np.log(t / tt + s2)) for b, t in zip(lb, lt)]
    n = sum(a.size for a in lb)
    np.testing.assert_allclose(logdet_distance_diag(fb, ft, sigma2=s2), abs(sum(per)) / n, rtol=1e-5)
    np.testing.assert_allclose(logdet_distance_diag(fb, ft, sigma2=s2, reduction="per_layer"),
                               sum(abs(p) for p in per) / n, rtol=1e-5)
    assert logdet_distance_diag(fb, fb) == 0.0
    # eq. (2) is eq. (1) when n == m
    np.testing.assert_allclose(logdet_distance_eq1_diag(fb, ft, sigma2=s2), abs(sum(per)) / n, rtol=1e-4)


def test_head_pad_and_backbone_modes():
    r = np.random.RandomState(1)
    fb = {"backbone": {"k": jnp.asarray(r.rand(3, 4))}, "head": {"kernel": jnp.asarray(r.rand(4, 2)),
                                                                 "bias": jnp.asarray(r.rand(2))}}
    ft = {"backbone": {"k": jnp.asarray(r.rand(3, 4))}, "head": {"kernel": jnp.asarray(r.rand(4, 10)),
                                                                 "bias": jnp.asarray(r.rand(10))}}
    b, t, names = align(fb, ft, "pad")
    assert [x.shape for x in b] == [x.shape for x in t]
    assert float(b[names.index("head/kernel")][:, 2:].sum()) == 0
    _, _, names_bb = align(fb, ft, "backbone")
    assert names_bb == ["backbone/k"]
    for metric in (logdet_distance_diag, frechet_distance_diag):
        assert metric(fb, ft, head="pad") > 0
        assert metric(fb, ft, head="backbone") > 0


def test_bad_inputs_are_user_errors():
    r = np.random.RandomState(2)
    fb = _tree(r, SHAPES)
    other = _tree(r, {"a": (3, 5), "b": (5,), "head": (4, 2)})
    with pytest.raises(UserError, match="incompatible"):
        logdet_distance_diag(fb, other)
    with pytest.raises(UserError, match="sigma2"):
        logdet_distance_diag(fb, fb, sigma2=0.0)
    with pytest.raises(UserError, match="sigma2"):
        logdet_distance_diag(fb, fb, sigma2=-1)
    zero = jax.tree_util.tree_map(jnp.zeros_like, fb)
    with pytest.raises(UserError, match="zero everywhere"):
        frechet_distance_diag(zero, fb)


finite = st.floats(min_value=0.0, max_value=1e3, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=30),
       st.sampled_from(["global", "per_layer"]), st.sampled_from(["network", "layer"]))
def test_diag_frechet_properties(pairs, reduction, normalization):
    a = np.array([p[0] for p in pairs], np.float32) + 1e-3
    b = np.array([p[1] for p in pairs], np.float32) + 1e-3
    k = len(a) // 2
    fa = {"l1": jnp.asarray(a[:k]), "l2": jnp.asarray(a[k:])}
    fb = {"l1": jnp.asarray(b[:k]), "l2": jnp.asarray(b[k:])}
    kw = dict(reduction=reduction, normalization=normalization)
    d = frechet_distance_diag(fa, fb, **kw)
    assert 0.0 <= d <= 1.0 + 1e-6
    assert abs(d - frechet_distance_diag(fb, fa, **kw)) < 1e-6
    assert frechet_distance_diag(fa, fa, **kw) < 1e-3
    if reduction == "global" and normalization == "network":  # slides eq. (8) explicitly
        an, bn = a / a.sum(), b / b.sum()
        ref = np.sqrt(np.sum((np.sqrt(an.astype(np.float64)) - np.sqrt(bn)) ** 2)) / np.sqrt(2)
        assert abs(d - ref) < 1e-5


def test_logdet_distance_is_asymmetric_on_a_pair_of_tasks():
    """d[b,t] uses F(net_b on X_t) vs F(net_t on X_t); d[t,b] the other data."""
    (ab, vb), (at, vt) = _net(0), _net(1)
    xb, yb = _data(40, seed=1)
    xt, yt = _data(40, seed=2)
    xt = 3.0 * xt + 1.0  # a different input distribution
    f = lambda a, v, x, y: fisher_diag(a, v, x, y, microbatch=40)  # noqa: E731
    d_bt = logdet_distance_diag(f(ab, vb, xt, yt), f(at, vt, xt, yt), sigma2=1e-6)
    d_tb = logdet_distance_diag(f(at, vt, xb, yb), f(ab, vb, xb, yb), sigma2=1e-6)
    assert d_bt > 0 and d_tb > 0
    assert abs(d_bt - d_tb) > 1e-3 * max(d_bt, d_tb)


def test_gram_and_cross_from_stored_gradients_equal_direct():
    from tanas_jax.fisher import cross_from_gradients, gram_from_gradients, per_example_gradients

    (ab, vb), (at, vt) = _net(0, classes=2, module=TinyBB), _net(1, classes=3, module=TinyBB)
    x, y = _data(13)
    y = y % 2
    gb, gt = per_example_gradients(ab, vb, x, y, microbatch=5), per_example_gradients(at, vt, x, y, microbatch=5)
    for head in ("all", "backbone"):
        K, n = gram_matrix(ab, vb, x, y, microbatch=4, head=head)
        K2, n2 = gram_from_gradients(gb, head=head)
        assert n == n2
        np.testing.assert_allclose(K2, K, rtol=1e-6, atol=1e-12)
    for head in ("pad", "backbone"):
        C = cross_gram(ab, vb, at, vt, x, y, head=head, microbatch=6)
        np.testing.assert_allclose(cross_from_gradients(gb, gt, head=head), C, rtol=1e-6, atol=1e-12)
    other = per_example_gradients(*_net(2, module=Tiny), x, y)
    with pytest.raises(UserError, match="incompatible"):
        cross_from_gradients(gb, other)


def test_seed_std_is_the_sample_std_and_zero_for_one_seed():
    from tanas_jax.distance import seed_mean_std

    rng = np.random.default_rng(0)
    per_seed = rng.random((3, 2, 2))
    per_seed[:, 0, 1] = np.nan                                   # a pair that was not computed
    mean, std = seed_mean_std(per_seed)
    np.testing.assert_array_equal(mean[1], per_seed.mean(0)[1])
    np.testing.assert_array_equal(std[1], per_seed.std(0, ddof=1)[1])
    assert std[1, 0] == pytest.approx(np.sqrt(np.sum((per_seed[:, 1, 0] - mean[1, 0]) ** 2) / 2))
    assert np.isnan(mean[0, 1]) and np.isnan(std[0, 1])
    mean1, std1 = seed_mean_std(per_seed[:1])                    # one seed: 0.0, never NaN
    np.testing.assert_array_equal(std1, np.zeros((2, 2)))
    np.testing.assert_array_equal(mean1[1], per_seed[0, 1])
    m, s = seed_mean_std([0.9, 0.8])                             # a plain list over seeds
    assert m == pytest.approx(0.85) and s == pytest.approx(np.sqrt(0.005))


def test_valid_values_have_one_home():
    import tanas_jax.config as C
    import tanas_jax.distance as D
    from tanas_jax.distance import prepare

    assert D.HEAD_MODES is C.HEAD_MODES and prepare.NORMALIZATIONS is C.NORMALIZATIONS
    assert D.REDUCTIONS is C.REDUCTIONS and D.METRICS is C.METRICS and D.SPECTRA is C.SPECTRA
