"""TETLO: QRS loss, β gradient through both unrolled stages (finite differences), a tiny search."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tanas_jax.config import DartsConfig, FinalConfig
from tanas_jax.errors import UserError
from tanas_jax.search import darts, tetlo
from tanas_jax.search.genotype import CellStructure
from tanas_jax.search.methods import SEARCH_METHODS, SearchSettings
from tanas_jax.search.spaces import SearchSpace
from test_darts import TINY, Data, _to64, _x


def test_qrs_loss_zero_when_orders_agree_positive_when_reversed():
    # 2-D embeddings: e(x) ~ e(y) (close), e(w) ⟂ e(z) (far) for the main model
    main = jnp.asarray([[1.0, 0.0], [0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])
    quads = jnp.asarray([[0, 1, 2, 3]])
    assert float(tetlo.quadruple_deltas(main, quads)[0]) > 0.5
    # same order (any positive rescaling / rotation keeps cosines): zero
    rot = jnp.asarray([[0.0, -1.0], [1.0, 0.0]])
    for aux in (main, 3.0 * main, main @ rot):
        assert float(tetlo.qrs_loss(main, aux, quads)) == 0.0
    # reversed: V finds (x, y) far and (w, z) close -> positive
    rev = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.95, 0.05]])
    assert float(tetlo.quadruple_deltas(rev, quads)[0]) < -0.5
    assert float(tetlo.qrs_loss(main, rev, quads)) > 0.1
    # several quadruples, one violated: positive but less than all violated
    q2 = jnp.asarray([[0, 1, 2, 3], [2, 3, 0, 1]])
    mixed = float(tetlo.qrs_loss(main, rev, q2))
    assert 0 < mixed < float(tetlo.qrs_loss(main, rev, q2[:1])) + 1e-9
    # a margin demands more than agreement
    assert float(tetlo.qrs_loss(main, main, quads, margin=2.0)) > 0


def test_sample_quadruples_distinct_and_deterministic():
    q = tetlo.sample_quadruples(np.random.default_rng(0), 8, 50)
    assert q.shape == (50, 4) and q.dtype == np.int32 and q.max() < 8
    assert all(len(set(r)) == 4 for r in q.tolist())
    np.testing.assert_array_equal(q, tetlo.sample_quadruples(np.random.default_rng(0), 8, 50))


def _setup(main_weight=0.0, qrs_weight=10.0, unroll_lr=0.5):
    space = SearchSpace("t", ("none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3"),
                        (CellStructure(3, ((0, 1), (0, 2), (1, 2)), "edges"),))
    cfg = DartsConfig(skeleton=TINY.to_dict(), batch_size=6, unroll_lr=unroll_lr, input_shape=(6, 6, 2),
                      tetlo={"aux_channels": (3,), "quadruples": 12, "qrs_temperature": 0.5, "aux_unroll_lr": 1.0,
                             "qrs_margin": 0.5, "main_weight": main_weight, "qrs_weight": qrs_weight})
    net, st = darts.supernet_for_space(space, cfg.skeleton, 2)
    steps = tetlo.TetloSteps(net, cfg, 2)
    state = steps.init_state(0, (6, 6, 2), st)
    state["params"]["beta"] = darts.init_beta(st, net.ops, net.skeleton, np.random.default_rng(1), std=0.5)
    return steps, state


def test_tetlo_beta_gradient_flows_through_both_unrolled_stages():
    r = np.random.default_rng(2)
    with jax.enable_x64(True):
        xt, xv = _x((6, 6, 6, 2), 4, np.float64), _x((6, 6, 6, 2), 5, np.float64)
        yt, yv = jnp.asarray(r.integers(0, 2, 6)), jnp.asarray(r.integers(0, 2, 6))
        quads = jnp.asarray(tetlo.sample_quadruples(r, 6, 12))

        def grads(**kw):
            steps, state = _setup(**kw)
            p = _to64(state["params"])
            bs = _to64(state["batch_stats"])

            @jax.jit
            def f(b):
                return steps.stage3_loss(b, p["weights"], p["aux"], bs, xt, yt, xv, yv, quads)[0]

            return f, p["beta"], jax.jit(jax.grad(f))(p["beta"])

        # main_weight = 0: β reaches the loss only through V' (stage 2), itself through W' (stage 1)
        f, beta, g = grads()
        gnorm = float(jnp.sqrt(sum((v ** 2).sum() for v in g.values())))
        assert gnorm > 1e-5
        d = {k: jnp.asarray(r.standard_normal(v.shape)) for k, v in beta.items()}
        eps = 1e-5
        fd = (f({k: beta[k] + eps * d[k] for k in beta}) - f({k: beta[k] - eps * d[k] for k in beta})) / (2 * eps)
        an = sum(float((g[k] * d[k]).sum()) for k in beta)
        assert abs(fd - an) <= 1e-7 + 1e-5 * abs(fd), (fd, an)
        # without the QRS term V' does not depend on β at all
        _, _, g0 = grads(qrs_weight=0.0)
        assert float(sum(jnp.abs(v).sum() for v in g0.values())) == 0.0
        # without the unrolled stage-1 step the gradient changes: stage 1 is on the path
        _, _, g_no1 = grads(unroll_lr=0.0)
        assert float(sum(jnp.abs(g[k] - g_no1[k]).sum() for k in g)) > 1e-4 * gnorm


def test_tetlo_search_runs():
    data = Data()
    space = SearchSpace("t", ("none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3"),
                        (CellStructure(3, ((0, 1), (0, 2), (1, 2)), "edges"),))
    cfg = DartsConfig(skeleton=TINY.to_dict(), steps=3, history_every=1, batch_size=8,
                      input_shape=(6, 6, 2), eval_batch_size=16, tetlo={"aux_channels": (4,), "quadruples": 8})
    fin = FinalConfig(steps=2, eval_batch_size=16)
    res = tetlo.tetlo_search(data, space, cfg, 0, final=fin, log=lambda m: None)
    # the registry runs the same search
    again = SEARCH_METHODS["tetlo"](data, space, SearchSettings(darts=cfg, final=fin), 0, log=lambda m: None)
    def strip(final):
        return {k: v for k, v in final.items() if k not in ("wall_s", "compile_s")}

    assert again["genotype"] == res["genotype"] and strip(again["final"]) == strip(res["final"])
    h = res["beta_history"][-1]
    assert {"arch_loss", "aux_val_loss", "main_val_loss", "train_loss", "aux_loss"} <= set(h)
    # the auxiliary model's accuracy is a count over exactly the 48 validation examples (no padding counted)
    n_val = len(data.y_val)
    assert abs(res["aux_val_accuracy"] * n_val - round(res["aux_val_accuracy"] * n_val)) < 1e-9
    assert "none" not in res["genotype_short"]
    with pytest.raises(UserError, match="batch_size >= 4"):
        tetlo.TetloSteps(*darts.supernet_for_space(space, cfg.skeleton, 2)[:1],
                         DartsConfig(skeleton=TINY.to_dict(), batch_size=3), 2)
