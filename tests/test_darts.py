"""DARTS supernet, 1st/2nd-order steps, derivation, resume, bad input (tiny nets, few steps)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tanas_jax.config import DartsConfig, FinalConfig, from_section
from tanas_jax.errors import CorruptEntryError, UserError
from tanas_jax.search import checkpoint as ckpt
from tanas_jax.search import darts
from tanas_jax.search.genotype import CellStructure, authors_cell_structure
from tanas_jax.search.methods import SearchSettings, run_search
from tanas_jax.search.network import Skeleton
from tanas_jax.search.ops import make_op
from tanas_jax.search.spaces import SearchSpace, resolve_space

TINY = Skeleton(C=2, cells=1, reductions=(), stem=False, head="gap")
TINY_RED = Skeleton(C=2, cells=2, reductions=(1,), stem=False, head="gap")
SMOOTH_OPS = ("none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3")


class Data:
    """TaskData-like synthetic data (learnable: class = brighter half)."""

    def __init__(self, n=48, shape=(6, 6, 2), classes=2, seed=0):
        r = np.random.default_rng(seed)
        x = r.random((3 * n, *shape), dtype=np.float32)
        y = (x[:, : shape[0] // 2].mean((1, 2, 3)) > x[:, shape[0] // 2:].mean((1, 2, 3))).astype(np.int32)
        self.x_train, self.y_train = x[:n], y[:n]
        self.x_val, self.y_val = x[n:2 * n], y[n:2 * n]
        self.x_test, self.y_test = x[2 * n:], y[2 * n:]
        self.num_classes = classes


def _x(shape=(4, 6, 6, 2), seed=0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def test_mixed_op_is_weighted_sum_of_ops():
    ops = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_5x5")
    x = _x()
    w = jnp.asarray([0.3, 0.1, 0.25, 0.15, 0.2])
    for stride in (1, 2):
        m = darts.MixedOp(ops, 2, stride, impl="ops")
        v = m.init(jax.random.PRNGKey(0), x, w, False)
        got = m.apply(v, x, w, False)
        want = 0.0
        for k, name in enumerate(ops):
            sub = {c: v[c][name] for c in v if name in v[c]}
            want = want + w[k] * make_op(name, 2, stride).apply(sub, x, False)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert got.shape == ((4, 6, 6, 2) if stride == 1 else (4, 3, 3, 2))


@pytest.mark.parametrize("op", ["sep_conv_5x5", "dil_conv_3x3"])
@pytest.mark.parametrize("impl", ["dense", "grouped"])
def test_supernet_depthwise_variants_equal_make_op(op, impl):
    x = _x((3, 7, 7, 3), seed=1)
    for stride in (1, 2):
        ref = make_op(op, 3, stride)
        v = ref.init(jax.random.PRNGKey(1), x, False)
        mine = darts.supernet_op(op, 3, stride, impl)
        v_mine = mine.init(jax.random.PRNGKey(1), x, False)
        # the same parameter tree: structure and every leaf's shape and dtype
        assert jax.tree_util.tree_structure(v_mine) == jax.tree_util.tree_structure(v)
        assert [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(v_mine)] == \
            [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(v)]
        np.testing.assert_allclose(mine.apply(v, x, True, mutable=["batch_stats"])[0],
                                   ref.apply(v, x, True, mutable=["batch_stats"])[0], rtol=1e-4, atol=1e-5)


def test_derivation_excludes_none_and_counts_skips():
    st = authors_cell_structure()
    ops = ("none", "skip_connect", "sep_conv_3x3")
    beta = np.zeros((6, 3), np.float32)
    beta[:, 0] = 10.0          # `none` dominates every edge
    beta[:, 1] = [1, 0, 1, 0, 1, 0]
    beta[:, 2] = [0, 1, 0, 1, 0, 1]
    g = darts.derive_genotype({"normal": beta, "reduce": beta[:, [0, 2, 1]]}, st, ops)
    assert g.normal.ops == ("skip_connect", "sep_conv_3x3") * 3
    assert g.reduce.ops == ("sep_conv_3x3", "skip_connect") * 3
    assert "none" not in g.ops
    assert darts.skip_count(g) == 6
    with pytest.raises(UserError):
        darts.derive_cell(beta[:, :1], st, ("none",))


def _tiny_net(ops=SMOOTH_OPS, skeleton=TINY):
    space = SearchSpace("t", ops, (CellStructure(3, ((0, 1), (0, 2), (1, 2)), "edges"),))
    return darts.supernet_for_space(space, skeleton, 2)


def _to64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def test_second_order_gradient_matches_finite_differences():
    net, st = _tiny_net(skeleton=TINY_RED)
    w, bs = darts.init_supernet(net, 0, (6, 6, 2))
    beta = darts.init_beta(st, net.ops, net.skeleton, np.random.default_rng(0), std=0.5)
    r = np.random.default_rng(3)
    with jax.enable_x64(True):
        w, bs, beta = _to64(w), _to64(bs), _to64(beta)
        xt, xv = _x((6, 6, 6, 2), 4, np.float64), _x((6, 6, 6, 2), 5, np.float64)
        yt, yv = jnp.asarray(r.integers(0, 2, 6)), jnp.asarray(r.integers(0, 2, 6))

        @jax.jit
        def f(b):
            return darts.unrolled_val_loss(net, w, bs, b, xt, yt, xv, yv, 0.5)

        g = jax.jit(jax.grad(f))(beta)
        g1 = jax.jit(jax.grad(lambda b: darts.supernet_loss(net, w, bs, b, xv, yv)[0]))(beta)
        for _ in range(2):
            d = {k: jnp.asarray(r.standard_normal(v.shape)) for k, v in beta.items()}
            eps = 1e-5
            plus = f({k: beta[k] + eps * d[k] for k in beta})
            minus = f({k: beta[k] - eps * d[k] for k in beta})
            fd = (plus - minus) / (2 * eps)
            an = sum(float((g[k] * d[k]).sum()) for k in beta)
            first = sum(float((g1[k] * d[k]).sum()) for k in beta)
            assert abs(fd - an) <= 1e-6 + 1e-5 * abs(fd), (fd, an)
            assert abs(an - first) > 1e-4 * (1 + abs(an))  # the unrolled step matters


@pytest.mark.parametrize("method", ["darts1", "darts2"])
def test_search_runs_resumes_and_is_deterministic(tmp_path, method):
    data = Data()
    space = SearchSpace("t", SMOOTH_OPS, (authors_cell_structure(),))
    cfg = DartsConfig(skeleton=TINY.to_dict(), steps=4, history_every=1, checkpoint_every=1,
                      batch_size=8, input_shape=(6, 6, 2), eval_batch_size=16)
    fin = FinalConfig(steps=3, eval_batch_size=16)
    full = darts.differentiable_search(method, data, space, cfg, 1, final=fin, log=lambda m: None)
    assert full["skip_connect"] == darts.skip_count(darts.Genotype.from_dict(full["genotype"]))
    assert "none" not in full["genotype_short"]
    assert len(full["beta_history"]) == 5 and full["final"]["steps"] == 3
    # the final training is the runtime's one protocol, on the data it is given
    other = Data(shape=(8, 8, 2), seed=4)
    moved = darts.differentiable_search(method, data, space, cfg, 1, final=fin, final_data=other, log=lambda m: None)
    assert moved["genotype"] == full["genotype"] and moved["final"]["input_shape"] == [8, 8, 2]
    assert full["final"]["input_shape"] == [6, 6, 2]

    def interrupting(msg):
        if "step 3/" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        darts.differentiable_search(method, data, space, cfg, 1, final=fin, checkpoint_dir=str(tmp_path),
                                    log=interrupting)
    assert os.path.exists(ckpt.path(str(tmp_path), darts.CKPT))
    logs = []
    resumed = darts.differentiable_search(method, data, space, cfg, 1, final=fin, checkpoint_dir=str(tmp_path),
                                          log=logs.append)
    assert resumed["resumed_from_step"] == 2 and any("resuming" in m for m in logs)
    np.testing.assert_array_equal(np.asarray(resumed["beta"]["normal"]), np.asarray(full["beta"]["normal"]))
    assert resumed["genotype"] == full["genotype"]
    assert resumed["final"]["test_accuracy"] == full["final"]["test_accuracy"]
    assert resumed["final"]["val_accuracy"] == full["final"]["val_accuracy"]
    # a checkpoint of other settings (here: another seed) is refused, never overwritten
    before = open(ckpt.path(str(tmp_path), darts.CKPT), "rb").read()
    with pytest.raises(UserError, match="other settings.*--restart"):
        darts.differentiable_search(method, data, space, cfg, 2, final=None, checkpoint_dir=str(tmp_path),
                                    log=lambda m: None)
    assert open(ckpt.path(str(tmp_path), darts.CKPT), "rb").read() == before


def test_corrupt_checkpoint_is_refused_with_its_path(tmp_path):
    path = ckpt.path(str(tmp_path), darts.CKPT)
    open(path, "wb").write(b"half-written")
    space = SearchSpace("t", SMOOTH_OPS, (authors_cell_structure(),))
    cfg = DartsConfig(skeleton=TINY.to_dict(), steps=2, batch_size=8, input_shape=(6, 6, 2), eval_batch_size=16)
    with pytest.raises(CorruptEntryError, match=f"checkpoint {path} is unreadable.*delete it, or pass --restart"):
        darts.differentiable_search("darts1", Data(), space, cfg, 0, final=None, checkpoint_dir=str(tmp_path),
                                    log=lambda m: None)
    assert open(path, "rb").read() == b"half-written"


def test_bad_input_is_one_line_user_error():
    with pytest.raises(UserError, match="unknown search method"):
        darts.differentiable_search("darts3", Data(), resolve_space("standard"), DartsConfig(), 0)
    with pytest.raises(UserError, match="unknown search method 'darts3'"):
        run_search("darts3", Data(), resolve_space("standard"), SearchSettings(), 0)
    with pytest.raises(UserError, match="C must be >= 2"):
        darts.supernet_for_space(resolve_space("standard"), {"preset": "tiny", "C": 1}, 2)
    with pytest.raises(UserError, match="only op is 'none'"):
        darts.supernet_for_space(resolve_space("ops:none"), "tiny", 2)
    with pytest.raises(UserError, match="unknown op"):
        resolve_space("ops:skip_connect,conv_9x9")
    with pytest.raises(UserError, match="no field 'stepz'"):
        from_section(DartsConfig, {"stepz": 3})
    with pytest.raises(UserError, match="w_optimizer"):
        DartsConfig(w_optimizer="lamb")
    with pytest.raises(UserError, match="qrs_temperature"):
        from_section(DartsConfig, {"tetlo": {"qrs_temperature": 0.0}})
    for e in (UserError("x"),):
        assert "\n" not in str(e)


def test_search_settings_read_the_config_sections():
    from tanas_jax.config import FuseConfig, load_config

    cfg = load_config("quick", ["final.steps=7", "search.darts.steps=5", "fuse.rounds=2"])
    s = SearchSettings.from_config(cfg)
    assert isinstance(s.fuse, FuseConfig) and s.fuse.rounds == 2
    assert s.darts.steps == 5 and s.darts.input_shape == (20, 20, 1) and s.final.steps == 7
    assert SearchSettings.from_config(cfg, final=False).final is None
