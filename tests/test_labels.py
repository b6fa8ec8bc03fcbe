"""The label rule (docs/labels.md): a network with C outputs evaluated on data with K > C classes has its
logits padded with K - C zeros (log-softmax over K); every Fisher path gives the same numbers, and a label
outside the network's outputs is refused.

Independent reference: a Python loop over examples of ``jax.grad`` of the padded log-softmax written
here by hand (``jnp.pad``, not ``pad_logits``), squared and averaged.  Real MNIST digits (the bundled
subset) with 10-way labels; tiny nets with 2, 4 and 10 outputs.
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tanas_jax.errors import UserError
from tanas_jax.fisher import FisherEngine, cross_gram, fisher_diag, gram_matrix, pad_logits, per_example_gradients
from tanas_jax.layers import Conv

K = 10          # the data's classes
M = 24          # Fisher examples
CLASSES = (2, 4, 10)


class ConvDense(nn.Module):
    """conv 3x3 (stride 2) -> dense 8 -> head: a conv and two dense layers."""

    classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(Conv(4, (3, 3), strides=2, name="conv")(x))
        x = nn.tanh(nn.Dense(8, name="fc")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.classes, name="head")(x)


@pytest.fixture(scope="module")
def digits():
    """``(x, y)``: M real MNIST digits at 14 x 14 with their 10-way labels (every class present)."""
    from tanas_jax.tasks import load_task_data

    d = load_task_data("mnist_10way", (14, 14, 1), "bundled", max_train=200, max_eval=50)
    x, y = np.asarray(d.x_train[:M], np.float32), np.asarray(d.y_train[:M], np.int32)
    assert d.num_classes == K and y.max() >= 4    # labels beyond a 2- and a 4-class head
    return x, y


@pytest.fixture(scope="module")
def nets(digits):
    """``{C: (apply, padded apply, variables)}``: a ConvDense with C outputs (weights scaled so softmaxes are
    not flat); one padded apply per net, so the module's engine reuses its compiled steps."""
    out = {}
    for c in CLASSES:
        module = ConvDense(c)
        v = module.init(jax.random.PRNGKey(c), jnp.asarray(digits[0][:2]))
        v = {"params": jax.tree_util.tree_map(lambda a: 2.0 * a, v["params"])}
        out[c] = (module.apply, pad_logits(module.apply, K), v)
    return out


@pytest.fixture(scope="module")
def engine():
    return FisherEngine()


# ---------------------------------------------------------------- the naive reference

def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(tree)])


@pytest.fixture(scope="module")
def loop(digits, nets):
    """``{C: (g, logits)}``: g[i, k] = the flattened gradient of log p(k | x_i) for EVERY label k < K, one
    ``jax.grad`` call per (example, label), of the log-softmax over K of the logits padded with K - C zeros
    (written here with ``jnp.pad``); logits (M, K) padded the same way."""
    x, _ = digits
    out = {}
    for c, (apply, _, v) in nets.items():
        def logp(p, xi, k, apply=apply):
            logits = apply({"params": p}, xi[None])[0]
            return jax.nn.log_softmax(jnp.pad(logits, (0, K - logits.shape[0])))[k]

        g1 = jax.jit(jax.grad(logp))
        g = np.stack([np.stack([flat(g1(v["params"], x[i], k)) for k in range(K)]) for i in range(M)])
        logits = np.asarray(apply(v, x), np.float64)
        out[c] = (g, np.concatenate([logits, np.zeros((M, K - c))], axis=1))
    return out


def softmax(logits):
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def mc_labels(logits, rng, samples):
    """The labels the engine draws for 'mc': ``categorical(fold_in(rng, i), padded logits_i)``."""
    return np.stack([np.asarray(jax.random.categorical(jax.random.fold_in(rng, i), jnp.asarray(lg, jnp.float32),
                                                       shape=(samples,))) for i, lg in enumerate(logits)])


def reference(estimator, g, logits, y, rng, rows=slice(None)):
    """The naive padded diagonal Fisher ``(1/M) sum_i sum_k w_ik g_ik**2`` of ``estimator``: empirical (w = 1
    at the data label), exact (w = p(k | x_i) over all K), mc (two draws, w = 1/2 each)."""
    g, logits, y = g[rows], logits[rows], y[rows]
    m = g.shape[0]
    w = np.zeros((m, K))
    if estimator == "empirical":
        w[np.arange(m), y] = 1.0
    elif estimator == "exact":
        w = softmax(logits)
    else:
        for s in mc_labels(logits, rng, 2).T:
            w[np.arange(m), s] += 0.5
    return np.einsum("ik,ikn->n", w, g * g) / m


def assert_close(got, ref, rtol=1e-5):
    """Equal to float rounding: every entry within ``rtol`` of the largest (float32 sums in another order)."""
    got, ref = flat(got), np.ravel(ref)
    assert got.shape == ref.shape
    assert ref.max() > 0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


# ---------------------------------------------------------------- every engine path == the loop

@pytest.mark.parametrize("c", CLASSES)
@pytest.mark.parametrize("estimator", ["empirical", "exact", "mc"])
def test_every_diag_path_equals_the_padded_loop(digits, nets, loop, engine, c, estimator):
    x, y = digits
    _, padded, v = nets[c]
    g, logits = loop[c]
    rng = jax.random.PRNGKey(5)
    ref = reference(estimator, g, logits, y, rng)
    kw = dict(estimator=estimator, mc_samples=2, rng=rng, microbatch=10, engine=engine)  # 24 = 10 + 10 + 4 (padded)
    fast, info = fisher_diag(padded, v, x, y, method="fast", return_info=True, **kw)
    assert info["method"] == "fast"
    assert_close(fast, ref)
    assert_close(fisher_diag(padded, v, x, y, method="vmap", **kw), ref)
    if c < K and estimator == "empirical":  # examples with a label >= C count: not dropped, not clamped
        big = np.nonzero(y >= c)[0]
        assert len(big) > 0
        sub = fisher_diag(padded, v, x[big], y[big], method="fast", **kw)
        assert_close(sub, reference("empirical", g, logits, y, rng, rows=big))
        assert flat(sub).max() > 0


@pytest.mark.parametrize("c", CLASSES)
def test_gram_path_gradients_equal_the_padded_loop(digits, nets, loop, engine, c):
    """Per-example gradients of the Gram / cross-Gram path are the loop's (so the mean of their squares is
    the diagonal Fisher, their Gram the loop's Gram); mc draws the same labels as the diagonal path."""
    x, y = digits
    _, padded, v = nets[c]
    g, logits = loop[c]
    G, names, _ = per_example_gradients(padded, v, x, y, microbatch=10, engine=engine)
    ref = g[np.arange(M), y]
    assert names == ["conv/bias", "conv/kernel", "fc/bias", "fc/kernel", "head/bias", "head/kernel"]
    np.testing.assert_allclose(G, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    Kg, n = gram_matrix(padded, v, x, y, microbatch=10, engine=engine)
    assert n == ref.shape[1]
    np.testing.assert_allclose(Kg, ref @ ref.T / M, rtol=1e-5, atol=1e-5 * np.abs(Kg).max())
    rng = jax.random.PRNGKey(11)
    Gmc, _, _ = per_example_gradients(padded, v, x, y, estimator="mc", rng=rng, microbatch=10, engine=engine)
    ref_mc = g[np.arange(M), mc_labels(logits, rng, 1)[:, 0]]
    np.testing.assert_allclose(Gmc, ref_mc, rtol=1e-5, atol=1e-5 * np.abs(ref_mc).max())
    assert_close(fisher_diag(padded, v, x, y, estimator="mc", mc_samples=1, rng=rng, method="vmap", engine=engine),
                 (ref_mc ** 2).mean(0))


def test_cross_gram_pads_each_network_to_the_data(digits, nets, loop, engine):
    """A 2-class base against the 10-class target on 10-way data: the cross-Gram of the loop's gradients,
    heads cropped to their 2 common columns."""
    x, y = digits
    (_, pb, vb), (at, _, vt) = nets[2], nets[10]
    C = cross_gram(pb, vb, at, vt, x, y, microbatch=10, engine=engine)
    gb = loop[2][0][np.arange(M), y]
    gt = loop[10][0][np.arange(M), y]
    # flattened leaf order: conv (4 + 36), fc (8 + 196 * 8), head bias (C), head kernel (8 x C)
    body = 4 + 36 + 8 + 196 * 8
    gt = np.concatenate([gt[:, :body], gt[:, body: body + 2],
                         gt[:, body + 10:].reshape(M, 8, 10)[:, :, :2].reshape(M, 16)], axis=1)
    assert gb.shape == gt.shape
    np.testing.assert_allclose(C, gb @ gt.T / M, rtol=1e-5, atol=1e-5 * np.abs(C).max())


# ---------------------------------------------------------------- the engine refuses, never clamps

@pytest.mark.parametrize("call", ["fast", "vmap", "exact", "gradients", "gram", "cross"])
def test_labels_outside_the_outputs_are_refused(digits, nets, call):
    x, y = digits
    apply, _, v = nets[2]
    at, _, vt = nets[10]
    name = "network mnist_digit0 (seed 0) on mnist_10way data"
    calls = {
        "fast": lambda: fisher_diag(apply, v, x, y, method="fast", name=name),
        "vmap": lambda: fisher_diag(apply, v, x, y, method="vmap", name=name),
        "exact": lambda: fisher_diag(apply, v, x, y, estimator="exact", name=name),
        "gradients": lambda: per_example_gradients(apply, v, x, y, name=name),
        "gram": lambda: gram_matrix(apply, v, x, y, name=name),
        "cross": lambda: cross_gram(at, vt, apply, v, x, y, name=name),  # the second network does not fit
    }
    with pytest.raises(UserError, match=rf"label {y.max()} is outside the network's 2 outputs of {re.escape(name)}: "
                                        r"labels must lie in \[0, 2\); .*pad_logits"):
        calls[call]()


def test_negative_and_padded_labels(digits, nets):
    x, y = digits
    apply, _, v = nets[4]
    with pytest.raises(UserError, match=r"label -1 is outside the network's 10 outputs"):
        fisher_diag(pad_logits(apply, K), v, x, np.where(y == 3, -1, y))
    # padding to a width <= C changes nothing; past K the labels of the wider head are refused again
    assert pad_logits(apply, 3)(v, x[:2]).shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(pad_logits(apply, K)(v, x[:2]))[:, 4:], 0)
    with pytest.raises(UserError, match=r"label 10 is outside the network's 10 outputs"):
        gram_matrix(pad_logits(apply, K), v, x, np.full_like(y, 10))
    # labels within the outputs pass; without labels (mc) nothing is checked
    fisher_diag(apply, v, x, y % 4, method="fast")
    fisher_diag(apply, v, x, estimator="mc", method="fast")


# ---------------------------------------------------------------- a 2/4/10-class distance table

TABLE = {"mnist_digit0": 2, "mnist_4class": 4, "mnist_10way": 10}
EXAMPLES, FULL = 12, 8


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A bank of small_cnn networks (initial weights, scaled; no training) for a 2-, a 4- and a 10-class task,
    the config of a table over them, and the naive padded gradients ``{(base, target): (M, n)}`` of every
    base on every target's Fisher examples."""
    from tanas_jax import models
    from tanas_jax.bank import Bank
    from tanas_jax.config import load_config
    from tanas_jax.tasks import task_data

    bank = Bank(str(tmp_path_factory.mktemp("labels") / "bank"))
    cfg = load_config("quick", ["data.source='bundled'", "data.max_train=120", "data.max_eval=40",
                                f"fisher.examples={EXAMPLES}", f"fisher.full_examples={FULL}", "train.net='small_cnn'",
                                "distance.bootstrap=0"])    # the distances, not P(closest)
    nets, grads = {}, {}
    for i, (task, c) in enumerate(TABLE.items()):
        v = models.init("small_cnn", c, jax.random.PRNGKey(i))
        v = {"params": jax.tree_util.tree_map(lambda a: 1.5 * a, v["params"])}
        bank.save_network(task, "small_cnn", 0, v, {"num_classes": c})
        nets[task] = (models.make_apply("small_cnn", c), v)
    g1s = {}         # one compiled per-example gradient per (base, padded width)
    for target, k in TABLE.items():
        d = task_data(target, models.get_net("small_cnn").input_shape, cfg.data)
        x, y = np.asarray(d.x_train[:EXAMPLES], np.float32), np.asarray(d.y_train[:EXAMPLES])
        for base, (apply, v) in nets.items():
            width = max(k, TABLE[base])

            def logp(p, xi, yi, apply=apply, width=width):
                logits = apply({"params": p}, xi[None])[0]
                return jax.nn.log_softmax(jnp.pad(logits, (0, width - logits.shape[0])))[yi]

            g1 = g1s.setdefault((base, width), jax.jit(jax.grad(logp)))
            grads[base, target] = np.stack([flat(g1(v["params"], x[i], int(y[i]))) for i in range(EXAMPLES)])
    return bank, cfg, nets, grads


def _crop_head(G, params, c):
    """Columns of G (flattened like ``params``) with the head's class axis cropped to its first ``c``."""
    from tanas_jax.fisher import leaf_names

    cols, off = [], 0
    for name, a in zip(leaf_names(params), jax.tree_util.tree_leaves(params)):
        block = G[:, off: off + a.size].reshape((G.shape[0],) + a.shape)
        off += a.size
        cols.append((block[..., :c] if name.startswith("head/") else block).reshape(G.shape[0], -1))
    return np.concatenate(cols, axis=1)


def test_table_fishers_of_mixed_class_tasks_equal_the_padded_loop(table):
    """Every (base, target) Fisher a table uses -- diagonal and Gram spectrum -- equals the loop's, and the
    table's diag / full log-det and full Fréchet entries are those of the loop's Fishers."""
    from tanas_jax.distance import frechet_distance_full, logdet_distance_diag, logdet_distance_full, nuclear_norm
    from tanas_jax.distance.table import FisherStore, fisher_distance_table

    bank, cfg, nets, grads = table
    store = FisherStore(bank, cfg, progress=False)
    tasks = list(TABLE)

    def tree(vec, base):
        """A flattened Fisher back in ``base``'s parameter tree."""
        params = nets[base][1]["params"]
        leaves = jax.tree_util.tree_leaves(params)
        ends = np.cumsum([a.size for a in leaves])
        parts = [vec[e - a.size: e].reshape(a.shape) for a, e in zip(leaves, ends)]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), parts)

    naive_diag, naive_eigs = {}, {}
    for (b, t), G in grads.items():
        naive_diag[b, t] = (G ** 2).mean(0)
        got, meta = store.fisher(b, t, 0)
        assert meta["info"]["method"] == "fast" and meta["inputs"]["version"] == (2 if TABLE[t] > TABLE[b] else 1)
        assert_close(got, naive_diag[b, t])
        Gf = G[:FULL]
        naive_eigs[b, t] = np.clip(np.linalg.eigvalsh(Gf @ Gf.T / FULL)[::-1], 0, None)
        eigs, n = store.gram_eigs(b, t, 0, "all")
        assert n == G.shape[1]
        np.testing.assert_allclose(eigs, naive_eigs[b, t], rtol=1e-5, atol=1e-5 * naive_eigs[b, t][0])
    for spectrum, metric in (("diag", "logdet"), ("full", "logdet"), ("full", "frechet")):
        c = cfg.copy_and_resolve_references()
        c.distance.spectrum, c.distance.metric = spectrum, metric
        d = np.array(fisher_distance_table(bank, tasks, c, [0], progress=False)["mean"])
        for (i, b), (j, t) in ((p, q) for p in enumerate(tasks) for q in enumerate(tasks) if p[0] != q[0]):
            if spectrum == "diag":
                ref = logdet_distance_diag(tree(naive_diag[b, t], b), tree(naive_diag[t, t], t),
                                           sigma2=1e-10, head="pad")
            elif metric == "logdet":
                n = max(grads[b, t].shape[1], grads[t, t].shape[1])
                ref = logdet_distance_full(naive_eigs[b, t], n, naive_eigs[t, t], n, sigma2=1e-10)
            else:
                k = min(TABLE[b], TABLE[t])
                gb = _crop_head(grads[b, t][:FULL], nets[b][1]["params"], k)
                gt = _crop_head(grads[t, t][:FULL], nets[t][1]["params"], k)
                ref = frechet_distance_full(naive_eigs[b, t].sum(), naive_eigs[t, t].sum(),
                                            nuclear_norm(gb @ gt.T / FULL))
            assert d[i, j] == pytest.approx(ref, rel=1e-4, abs=1e-6), (spectrum, metric, b, t)
