"""One compiled FUSE step per cell structure (issue 14 item 4): the candidates' ops are data (an op-index
array, ``lax.switch`` per edge, candidates in a ``lax.scan``).  Checked against an independent reference:
each candidate built alone as its own :class:`CellNetwork` (today's per-genotype network), its loss,
Adam step and BatchNorm statistics computed with plain ``jax.grad`` + optax; and a trace count across
rounds with other candidates."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tanas_jax.config import FuseConfig
from tanas_jax.search import runtime
from tanas_jax.search.fuse import MIXTURES, FuseSteps, compiled_steps, run_round
from tanas_jax.search.genotype import CellStructure, Genotype, authors_cell_structure
from tanas_jax.search.network import build_network, init_network

SHAPE = (8, 8, 3)
CFG = FuseConfig(batch_size=16, eval_batch_size=40, learning_rate=1e-3)
OPS4 = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3")
A = Genotype(authors_cell_structure().with_ops(
    ["sep_conv_3x3", "skip_connect", "max_pool_3x3", "skip_connect", "skip_connect", "none"]))
B = Genotype(CellStructure(3, ((0, 1), (0, 2), (1, 2)), "edges").with_ops(["max_pool_3x3", "none", "sep_conv_3x3"]))
C = Genotype(authors_cell_structure().with_ops(
    ["none", "sep_conv_3x3", "skip_connect", "sep_conv_3x3", "max_pool_3x3", "none"]))
POOLS = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")


def _data(n=16, k=3, seed=0):
    r = np.random.RandomState(seed)
    return r.rand(n, *SHAPE).astype(np.float32), r.randint(0, k, n).astype(np.int32)


def _reference_weight_step(cands, seed_parts, x, y, cfg, k):
    """Today's per-genotype FUSE weight step: every candidate its own CellNetwork, the mixture loss, one
    Adam step on the weights; returns (loss, [(params, batch_stats)] per candidate)."""
    nets = [build_network(g, "tiny", k) for g in cands]
    vs = [init_network(g, "tiny", k, np.random.SeedSequence([*seed_parts, c]).generate_state(2), SHAPE)
          for c, g in enumerate(cands)]
    alpha = jnp.zeros(len(cands))

    def loss_fn(ws):
        outs, stats = [], []
        for net, w, v in zip(nets, ws, vs):
            y_, upd = net.apply({"params": w, "batch_stats": v["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"])
            outs.append(y_)
            stats.append(upd["batch_stats"])
        return runtime.cross_entropy(MIXTURES[cfg.mixture](alpha, jnp.stack(outs)), y), stats

    ws = [v["params"] for v in vs]
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(ws)
    tx = optax.adam(cfg.learning_rate)
    upd, _ = tx.update(g, tx.init(ws), ws)
    return float(loss), list(zip(optax.apply_updates(ws, upd), stats)), vs


def _close(a, b):
    jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6), a, b)


def test_switch_step_equals_each_candidate_built_alone():
    """Two structures (groups scanned separately, logits put back in candidate order): the initial
    weights are exactly the per-genotype ones, the loss and one Adam step agree to float rounding, and the
    ops a candidate does not use stay untouched."""
    cands = [A, B, C]
    x, y = _data()
    fs = FuseSteps(cands, "tiny", 3, CFG, SHAPE)
    assert fs.groups == ((0, 2), (1,)) and not fs.in_order
    s0 = fs.init_state([7, 1], cands)
    loss, ref, init = _reference_weight_step(cands, [7, 1], x, y, CFG, 3)
    for c, g in enumerate(cands):   # same initialisation, bit for bit
        jax.tree_util.tree_map(np.testing.assert_array_equal, fs.candidate(s0, c, g), init[c])
    s1, got = fs.weight_step(s0, x, y)
    assert float(got) == pytest.approx(loss, rel=1e-6)
    for c, g in enumerate(cands):
        mine = fs.candidate(s1, c, g)
        _close(mine["params"], ref[c][0])
        _close(mine["batch_stats"], ref[c][1])
    # candidate 2 (none on edge 0) never ran sep_conv_3x3 on edge 0: its slot is still zero (candidate 0's moved)
    assert fs.ops == OPS4
    slot = s1["params"]["weights"][0]["cell0"]["edge0_0_1"][f"branches_{OPS4.index('sep_conv_3x3')}"]
    kern = np.asarray(slot["block1"]["pw"]["kernel"])
    assert np.all(kern[1] == 0) and np.any(kern[0] != 0)
    assert fs.traces["weights"] == 1


def test_one_compile_across_rounds_with_other_candidates():
    """Rounds with new candidates of the same structure reuse one step object and its executables."""
    from types import SimpleNamespace

    runtime.STEP_CACHE.clear()
    x, y = _data(60, 2, 1)
    data = SimpleNamespace(x_train=x[:40], y_train=y[:40], x_val=x[40:], y_val=y[40:], num_classes=2)
    cfg = FuseConfig(candidates=2, max_stages=1, weight_steps=2, alpha_steps=1, batch_size=16,
                     eval_batch_size=40)
    cell = [Genotype(authors_cell_structure().with_ops(ops)) for ops in (
        ["none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "none", "skip_connect"],
        ["avg_pool_3x3"] * 6, ["max_pool_3x3"] * 6)]
    r0, _ = run_round(cell[:2], data, cfg, seed=0, r=0, ops=POOLS)
    r1, _ = run_round(cell[1:], data, cfg, seed=0, r=1, ops=POOLS)
    steps = compiled_steps(cell[:2], "tiny", 2, cfg, SHAPE, POOLS)
    assert steps.traces == {"weights": 1, "alpha": 1, "eval": 1}
    assert r0["compile_s"] > 0 and r1["compile_s"] == 0.0
    assert len(runtime.STEP_CACHE) == 1
    assert r1["params"][1] == 8 * 8 * 9 * 2 + 2   # all-pool cell: the head only (flatten of 3 edges x 3 ch)


def test_random_search_candidates_share_one_switch_step():
    """Random search trains each candidate alone in the space's switch network: one compiled step for all
    candidates and the final training; a candidate's trained weights equal its own CellNetwork trained by
    the same protocol to float rounding."""
    from types import SimpleNamespace

    from tanas_jax.config import FinalConfig
    from tanas_jax.search.random_search import candidate_recipe, random_search
    from tanas_jax.search.spaces import SearchSpace

    x, y = _data(60, 2, 2)
    data = SimpleNamespace(x_train=x[:40], y_train=y[:40], x_val=x[40:], y_val=y[40:], x_test=x[40:],
                           y_test=y[40:], num_classes=2)
    recipe = FinalConfig(steps=3, batch_size=16, eval_batch_size=40)
    plain, s_plain, _ = runtime.train_single(A, data, recipe, [4, 5], 3)
    switch, s_switch, _ = runtime.train_single(A, data, recipe, [4, 5], 3, OPS4)
    assert switch.ops == OPS4 and plain.ops is None
    mine = switch.variables(s_switch, A)
    _close(mine["params"], s_plain["params"])
    _close(mine["batch_stats"], s_plain["batch_stats"])
    space = SearchSpace("ops4", OPS4, (authors_cell_structure(),))
    cfg = FuseConfig(candidates=2, rounds=2, max_stages=1, weight_steps=2, batch_size=16, eval_batch_size=40)
    res = random_search(data, space, cfg, seed=0, final=recipe, log=lambda m: None)
    assert len(res["evaluations"]) == 4 and len({str(e["genotype"]) for e in res["evaluations"]}) == 4
    steps = runtime.single_steps(A, 2, candidate_recipe(cfg, 2), SHAPE, OPS4)   # the final's recipe: same key
    assert steps.traces == {"weights": 1, "eval": 1}
    assert sum(e["compile_s"] > 0 for e in res["evaluations"]) <= 1 and res["final"]["compile_s"] == 0.0
