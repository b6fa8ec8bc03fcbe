"""distance.spectrum = diag_sorted: per layer, sorted normalised diagonal Fishers (issue 11, deliverable 3).

Permuting the hidden units of a network leaves its function unchanged and permutes its diagonal
Fisher: the sorted-diagonal distance must not see it, the plain diagonal one does.  Reference: the
formulas in numpy (normalise, sort each layer, LD-NAS eq. (2) / slides eq. (8)).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tanas_jax.distance import frechet_distance_diag, logdet_distance_diag
from tanas_jax.distance.prepare import sort_diag

SIGMA2 = 1e-10


def _init(key, d=6, h1=5, h2=4, classes=3):
    k = jax.random.split(key, 6)
    n = jax.random.normal
    return {"backbone": {"dense1": {"kernel": n(k[0], (d, h1)), "bias": 0.1 * n(k[1], (h1,))},
                         "dense2": {"kernel": n(k[2], (h1, h2)) / 2, "bias": 0.1 * n(k[3], (h2,))}},
            "head": {"kernel": n(k[4], (h2, classes)) / 2, "bias": 0.1 * n(k[5], (classes,))}}


def _apply(p, x):
    z = jnp.tanh(x @ p["backbone"]["dense1"]["kernel"] + p["backbone"]["dense1"]["bias"])
    z = jnp.tanh(z @ p["backbone"]["dense2"]["kernel"] + p["backbone"]["dense2"]["bias"])
    return z @ p["head"]["kernel"] + p["head"]["bias"]


def _fisher(p, x, y):
    """Empirical diagonal Fisher: mean over examples of the squared per-example gradient (vmap(grad))."""
    def loss(p, xi, yi):
        return -jax.nn.log_softmax(_apply(p, xi[None]))[0, yi]
    g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, x, y)
    return jax.tree_util.tree_map(lambda a: np.asarray(jnp.mean(a ** 2, 0), np.float64), g)


def _permute(p, q1, q2):
    """The same function with hidden units of both layers permuted by q1, q2."""
    b1, b2, h = p["backbone"]["dense1"], p["backbone"]["dense2"], p["head"]
    return {"backbone": {"dense1": {"kernel": b1["kernel"][:, q1], "bias": b1["bias"][q1]},
                         "dense2": {"kernel": b2["kernel"][q1][:, q2], "bias": b2["bias"][q2]}},
            "head": {"kernel": h["kernel"][q2], "bias": h["bias"]}}


def _numpy_sorted(fb, ft):
    """Reference: zero-pad the head, unit-total normalise, sort every layer; flat lists of layers."""
    lb, lt = [], []
    for a, b in zip(jax.tree_util.tree_leaves(fb), jax.tree_util.tree_leaves(ft)):
        shape = np.maximum(np.shape(a), np.shape(b))
        lb.append(np.pad(a, [(0, s - d) for s, d in zip(shape, np.shape(a))]))
        lt.append(np.pad(b, [(0, s - d) for s, d in zip(shape, np.shape(b))]))
    tb, tt = sum(a.sum() for a in lb), sum(b.sum() for b in lt)
    return ([np.sort(a.ravel() / tb)[::-1] for a in lb], [np.sort(b.ravel() / tt)[::-1] for b in lt])


@pytest.fixture(scope="module")
def nets():
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (40, 6)))
    y5 = np.arange(40) % 5
    y3 = np.arange(40) % 3
    pt = _init(jax.random.PRNGKey(1), classes=3)
    pb = _init(jax.random.PRNGKey(2), classes=5)        # base with a larger head: padding is exercised
    q1, q2 = np.array([3, 0, 4, 1, 2]), np.array([2, 3, 1, 0])
    pt_perm = _permute(pt, q1, q2)
    np.testing.assert_allclose(_apply(pt, x), _apply(pt_perm, x), atol=1e-5)   # same function
    return {"fb": _fisher(pb, x, y5), "ft": _fisher(pt, x, y3), "ft_perm": _fisher(pt_perm, x, y3)}


def _d(metric, spectrum, fb, ft):
    if spectrum == "diag_sorted":
        fb, ft = sort_diag(fb, ft, "pad")
    if metric == "logdet":
        return logdet_distance_diag(fb, ft, sigma2=SIGMA2)
    return frechet_distance_diag(fb, ft)


@pytest.mark.parametrize("metric", ["logdet", "frechet"])
def test_sorted_diag_is_invariant_to_permuting_hidden_units(nets, metric):
    fb, ft, fp = nets["fb"], nets["ft"], nets["ft_perm"]
    sorted_ = _d(metric, "diag_sorted", fb, ft), _d(metric, "diag_sorted", fb, fp)
    np.testing.assert_allclose(sorted_[0], sorted_[1], rtol=1e-5)
    assert _d(metric, "diag_sorted", ft, fp) < 1e-5 * max(sorted_[0], 1e-3)
    # the plain diagonal distance sees the permutation (the reason diag_sorted exists)
    assert _d("frechet", "diag", ft, fp) > 0.05
    if metric == "frechet":
        assert abs(_d(metric, "diag", fb, ft) - _d(metric, "diag", fb, fp)) > 1e-3


def test_sorted_diag_matches_numpy(nets):
    fb, ft = nets["fb"], nets["ft"]
    lb, lt = _numpy_sorted(fb, ft)
    n = sum(a.size for a in lb)
    ld = abs(sum(np.sum(np.log(a + SIGMA2) - np.log(b + SIGMA2)) for a, b in zip(lb, lt))) / n
    fr = np.sqrt(sum(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) for a, b in zip(lb, lt))) / np.sqrt(2)
    np.testing.assert_allclose(_d("logdet", "diag_sorted", fb, ft), ld, rtol=1e-5)
    np.testing.assert_allclose(_d("frechet", "diag_sorted", fb, ft), fr, rtol=1e-5)
    sb, st = sort_diag(fb, ft, "pad")
    assert list(sb) == ["backbone/dense1/bias", "backbone/dense1/kernel", "backbone/dense2/bias",
                        "backbone/dense2/kernel", "head/bias", "head/kernel"]
    for a, ref in zip(st.values(), lt):
        np.testing.assert_allclose(np.asarray(a) / sum(float(np.sum(v)) for v in st.values()), ref, rtol=1e-6)
    assert np.all(np.diff(np.asarray(sb["head/kernel"])) <= 0) and sb["head/kernel"].shape == (4 * 5,)


def test_sorted_diag_backbone_mode_drops_the_head(nets):
    sb, st = sort_diag(nets["fb"], nets["ft"], "backbone")
    assert set(sb) == set(st) == {"backbone/dense1/bias", "backbone/dense1/kernel", "backbone/dense2/bias",
                                  "backbone/dense2/kernel"}
