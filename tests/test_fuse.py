"""FUSE: mixture maths (logits / probs / log_softmax against numpy), margins and winners, stop reasons,
phase freezing, selection on real data, convergence, SIGKILL resume, settings in the checkpoint
fingerprint, the α plot, random-search budget."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tanas_jax.config import FinalConfig, FuseConfig
from tanas_jax.errors import CorruptEntryError, UserError
from tanas_jax.search import checkpoint as ckpt
from tanas_jax.search import runtime
from tanas_jax.search.fuse import (
    MIXTURES,
    FuseSteps,
    fuse_candidates,
    mixture_log_softmax,
    mixture_logits,
    mixture_probs,
    pick_winner,
    run_round,
    softmax_margin,
)
from tanas_jax.search.genotype import Genotype, authors_cell_structure
from tanas_jax.search.random_search import random_search
from tanas_jax.search.spaces import resolve_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (12, 12, 3)


@pytest.fixture(scope="module")
def digit0():
    from tanas_jax.tasks import load_task_data

    return load_task_data("mnist_digit0", SHAPE, "bundled", max_train=600, max_eval=200)


def _cell(*ops):
    return Genotype(authors_cell_structure().with_ops(list(ops)))


NONE = _cell(*["none"] * 6)
CONV = _cell("conv_7x1_1x7", "skip_connect", "max_pool_3x3", "conv_7x1_1x7", "skip_connect", "avg_pool_3x3")


def test_mixture_is_softmax_weighted_sum():
    rng = np.random.RandomState(0)
    alpha = np.array([0.3, -1.0, 2.0], np.float32)
    logits = rng.randn(3, 5, 4).astype(np.float32)
    w = np.exp(alpha) / np.exp(alpha).sum()
    expect = w[0] * logits[0] + w[1] * logits[1] + w[2] * logits[2]
    np.testing.assert_allclose(mixture_logits(jnp.asarray(alpha), jnp.asarray(logits)), expect, rtol=1e-6)


def _np_softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_probs_and_log_softmax_mixtures_match_numpy():
    rng = np.random.RandomState(1)
    alpha = np.array([0.7, -0.4, 1.5], np.float32)
    logits = (3 * rng.randn(3, 6, 5)).astype(np.float32)
    w = _np_softmax(alpha.astype(np.float64))
    z = logits.astype(np.float64)
    mixed = sum(w[c] * _np_softmax(z[c]) for c in range(3))                      # (B, K) probabilities
    got = np.asarray(mixture_probs(jnp.asarray(alpha), jnp.asarray(logits)))
    np.testing.assert_allclose(np.exp(got), mixed, rtol=1e-5)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)
    geo = sum(w[c] * (z[c] - np.log(np.exp(z[c]).sum(-1, keepdims=True))) for c in range(3))
    np.testing.assert_allclose(mixture_log_softmax(jnp.asarray(alpha), jnp.asarray(logits)), geo, rtol=1e-5)
    # ... which, once the cross-entropy normalises it, is the logit mixture of eq. (7): the same loss
    lin = sum(w[c] * z[c] for c in range(3))
    np.testing.assert_allclose(geo - np.log(np.exp(geo).sum(-1, keepdims=True)),
                               lin - np.log(np.exp(lin).sum(-1, keepdims=True)), rtol=1e-10)
    # the loss of the probs mixture is -log of the mixed probability of the label
    y = rng.randint(0, 5, 6)
    ce = runtime.cross_entropy(jnp.asarray(got), jnp.asarray(y))
    np.testing.assert_allclose(float(ce), -np.log(mixed[np.arange(6), y]).mean(), rtol=1e-5)
    assert set(MIXTURES) == {"probs", "logits", "log_softmax"}


def test_a_constant_candidate_is_a_temperature_only_under_the_logit_mixture():
    """The flaw the probs default removes: under eq. (7), weight w on an all-zero candidate scales the other
    candidate's logits by (1 - w) (a temperature); under probs it only mixes in the uniform 1/K."""
    z = np.random.RandomState(2).randn(1, 4, 10).astype(np.float32) * 4
    logits = jnp.asarray(np.concatenate([z, np.zeros_like(z)]))          # candidate 1: constant output
    alpha = jnp.asarray([0.0, np.log(3.0)], jnp.float32)                 # weights 0.25 / 0.75
    np.testing.assert_allclose(mixture_logits(alpha, logits), 0.25 * z[0], rtol=1e-5)
    np.testing.assert_allclose(np.exp(mixture_probs(alpha, logits)), 0.25 * _np_softmax(z[0]) + 0.75 / 10,
                               rtol=1e-5)


def test_margin_and_winner_rules():
    assert softmax_margin([0.2, 0.5, 0.3]) == pytest.approx(0.2)
    assert softmax_margin([1 / 3] * 3) == pytest.approx(0.0)
    assert softmax_margin([1.0]) == 1.0
    assert pick_winner([0.1, 0.9, 0.3], [0.8, 0.1, 0.5], "alpha") == 1
    assert pick_winner([0.1, 0.9, 0.3], [0.8, 0.1, 0.5], "val") == 0
    assert pick_winner([0.1, 0.9, 0.3], [0.5, 0.5, 0.5], "val") == 1     # a tie goes to the larger α
    assert pick_winner([0.4, 0.4, 0.3], [0.5, 0.5, 0.2], "val") == 0     # then to the first


def test_config_refuses_unknown_mixture_winner_and_margin():
    with pytest.raises(UserError, match="fuse.mixture: 'logit' is not valid.*logits"):
        FuseConfig(mixture="logit")
    with pytest.raises(UserError, match="fuse.winner: 'best' is not valid"):
        FuseConfig(winner="best")
    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match=r"fuse.margin: must be in \(0, 1\]"):
            FuseConfig(margin=bad)


def test_bin_fuse_refuses_a_bad_winner_in_one_line(capsys):
    from tanas_jax.cli.fuse import main

    assert main(["--task", "mnist_digit0", "--winner", "best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: fuse.winner: 'best' is not valid"), err


def test_config_rejects_one_candidate():
    with pytest.raises(UserError, match="candidates: must be >= 2"):
        FuseConfig(candidates=1)


def test_each_phase_freezes_the_other_partition():
    cfg = FuseConfig(batch_size=8)
    fs = FuseSteps([NONE, CONV], "tiny", 2, cfg, (6, 6, 3))
    s0 = fs.init_state([0])
    x = np.random.RandomState(0).rand(8, 6, 6, 3).astype(np.float32)
    y = (np.arange(8) % 2).astype(np.int32)
    s1, _ = fs.weight_step(s0, x, y)
    np.testing.assert_array_equal(s1["params"]["alpha"], s0["params"]["alpha"])
    a0 = s0["opt"].inner_states["alpha"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, s1["opt"].inner_states["alpha"], a0)
    head = [s["params"]["weights"][0]["head"]["kernel"][1] for s in (s0, s1)]   # candidate 1 (one structure group)
    assert not np.allclose(head[1], head[0])
    s2, _ = fs.alpha_step(s1, x, y)
    jax.tree_util.tree_map(np.testing.assert_array_equal, s2["params"]["weights"], s1["params"]["weights"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, s2["opt"].inner_states["weights"],
                           s1["opt"].inner_states["weights"])
    assert not np.allclose(s2["params"]["alpha"], s1["params"]["alpha"])
    # one trace per phase, reused
    fs.weight_step(s2, x, y)
    fs.alpha_step(s2, x, y)
    assert fs.traces["weights"] == 1 and fs.traces["alpha"] == 1


def test_fuse_picks_the_conv_cell_and_alpha_converges(digit0):
    cfg = FuseConfig(candidates=2, max_stages=12, weight_steps=10, alpha_steps=10, batch_size=32,
                     alpha_learning_rate=0.3, tol=0.01, margin=1.0)
    for order in ([NONE, CONV], [CONV, NONE]):
        rec, _ = run_round(order, digit0, cfg, seed=0, r=0)
        conv = order.index(CONV)
        assert rec["winner"] == conv, rec
        assert rec["softmax_alpha_per_stage"][-1][conv] > 0.9
        assert rec["converged"] and rec["stop_reason"] == "converged", rec["softmax_alpha_per_stage"]
        assert rec["val_accuracy"][conv] > 0.9 and rec["val_accuracy"][1 - conv] < 0.7
        assert rec["margin"] == pytest.approx(softmax_margin(rec["softmax_alpha_per_stage"][-1]))


TINY = dict(candidates=2, weight_steps=4, alpha_steps=4, batch_size=32, alpha_learning_rate=0.3)


def test_a_round_stops_at_the_margin_at_convergence_or_at_the_cap(digit0):
    cands = [NONE, CONV]
    by_margin = fuse_candidates(cands, digit0, FuseConfig(**TINY, max_stages=8, margin=0.05), seed=1)
    assert by_margin["stop_reason"] == "margin" and by_margin["margin"] > 0.05
    assert all(softmax_margin(p) <= 0.05 for p in by_margin["softmax_alpha_per_stage"][:-1])
    capped = fuse_candidates(cands, digit0, FuseConfig(**TINY, max_stages=3, margin=1.0, tol=1e-12), seed=1)
    assert capped["stop_reason"] == "max_stages" and capped["stages"] == 3 and not capped["converged"]
    loose = fuse_candidates(cands, digit0, FuseConfig(**TINY, max_stages=8, margin=1.0, tol=0.99), seed=1)
    assert loose["stop_reason"] == "converged" and loose["stages"] == 1
    # the winner rules, on the same round
    val = fuse_candidates(cands, digit0, FuseConfig(**TINY, max_stages=3, margin=1.0, tol=1e-12, winner="val"),
                          seed=1)
    assert val["winner"] == val["val_winner"] == int(np.argmax(val["val_accuracy"]))
    assert val["alpha_winner"] == int(np.argmax(val["alpha"])) == capped["winner"]
    with pytest.raises(UserError, match="at least 2 candidates"):
        fuse_candidates([CONV], digit0, FuseConfig(**TINY))


@pytest.mark.parametrize("mixture", ["logits", "probs"])
def test_a_shorter_round_is_the_prefix_of_a_longer_one(digit0, mixture):
    """A round is a pure function of its seed: the α of an S-stage round is the longer round's α after S
    stages (so the selector experiment may read the 3-stage pick from a 9-stage run)."""
    cfg = dict(TINY, margin=1.0, tol=1e-12, mixture=mixture)
    short = fuse_candidates([CONV, NONE], digit0, FuseConfig(**cfg, max_stages=2), seed=4)
    long = fuse_candidates([CONV, NONE], digit0, FuseConfig(**cfg, max_stages=4), seed=4)
    assert short["softmax_alpha_per_stage"] == long["softmax_alpha_per_stage"][:3]
    assert short["mixture"] == mixture


SPACE = "ops:none,skip_connect,max_pool_3x3,avg_pool_3x3"
SMALL = dict(candidates=2, rounds=3, max_stages=2, weight_steps=5, alpha_steps=3, batch_size=16,
             eval_batch_size=200)
FINAL = dict(steps=10, eval_batch_size=200)

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from tanas_jax.tasks import load_task_data
    from tanas_jax.config import FinalConfig, FuseConfig
    from tanas_jax.search.fuse import fuse_search
    from tanas_jax.search.spaces import resolve_space
    d = load_task_data("mnist_digit0", {shape!r}, "bundled", max_train=200, max_eval=100)
    res = fuse_search(d, resolve_space({space!r}), FuseConfig(**{cfg!r}), seed=3, final=FinalConfig(**{final!r}),
                      checkpoint_dir={ck!r}, log=lambda m: print(m, flush=True))
    json.dump(res, open({out!r}, "w"))
""")


def _script(tmp_path, name):
    ck = str(tmp_path / f"ck_{name}")
    out = str(tmp_path / f"{name}.json")
    code = SCRIPT.format(root=ROOT, shape=SHAPE, space=SPACE, cfg=SMALL, final=FINAL, ck=ck, out=out)
    return [sys.executable, "-c", code], ck, out


def _comparable(res):
    return {"winner": res["winner"], "alpha": [h["alpha"] for h in res["history"]],
            "probs": [h["softmax_alpha_per_stage"] for h in res["history"]],
            "cands": [h["candidates"] for h in res["history"]], "final": {
                k: res["final"][k] for k in ("val_accuracy", "test_accuracy", "params", "train_loss")}}


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    cmd, ck, out = _script(tmp_path, "killed")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not os.path.exists(ckpt.path(ck)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    meta, _ = ckpt.load(ck, None)
    assert meta["round"] < SMALL["rounds"] - 1  # killed mid-search
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming" in rerun.stdout
    resumed = json.load(open(out))
    assert resumed["resumed_from_round"] == meta["round"] + 1

    cmd2, _, out2 = _script(tmp_path, "clean")
    clean = subprocess.run(cmd2, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert _comparable(resumed) == _comparable(json.load(open(out2)))


def test_checkpoint_refuses_other_settings_and_corruption(tmp_path):
    ckpt.save(str(tmp_path), "abc", {"round": 0, "history": []})
    with pytest.raises(UserError, match="other settings"):
        ckpt.load(str(tmp_path), "xyz")
    p = ckpt.path(str(tmp_path))
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    with pytest.raises(CorruptEntryError, match=f"checkpoint {p} is unreadable.*delete it, or pass --restart"):
        ckpt.load(str(tmp_path), "abc")
    ckpt.save(str(tmp_path), "abc", {"round": 0, "history": []})
    data = bytearray(open(p, "rb").read())
    i = data.index(b'round\\": 0') + len(b'round\\": ')
    data[i:i + 1] = b"7"   # one flipped byte (the zip CRC or the body's sha256 catches it)
    open(p, "wb").write(bytes(data))
    with pytest.raises(CorruptEntryError, match="(unreadable|failed its checksum).*--restart"):
        ckpt.load(str(tmp_path), "abc")


def test_checkpoint_fingerprint_holds_mixture_margin_and_winner(tmp_path, digit0):
    """A resume with another mixture, margin or winner rule is refused, not mixed."""
    space = resolve_space(SPACE)
    base = FuseConfig(**SMALL)
    fp = runtime.fingerprint(digit0, space, base, 3)
    ckpt.save(str(tmp_path), fp, {"round": 0, "history": []})
    assert ckpt.load(str(tmp_path), runtime.fingerprint(digit0, space, FuseConfig(**SMALL), 3))[0]["round"] == 0
    for change in ({"mixture": "logits"}, {"margin": 0.3}, {"winner": "val"}):
        other = runtime.fingerprint(digit0, space, FuseConfig(**{**SMALL, **change}), 3)
        assert other != fp, change
        with pytest.raises(UserError, match="other settings"):
            ckpt.load(str(tmp_path), other)


def test_alpha_plot_shows_margins_and_own_accuracies(tmp_path):
    from tanas_jax.search.plots import alpha_figure, plot_alpha

    hist = [{"softmax_alpha_per_stage": [[1 / 3] * 3, [0.5, 0.2, 0.3], [0.7, 0.1, 0.2]], "winner": 0,
             "margin": 0.5, "val_accuracy": [0.8, 0.1, 0.6]},
            {"softmax_alpha_per_stage": [[0.5, 0.5], [0.4, 0.6]], "winner": 1, "margin": 0.2,
             "val_accuracy": [0.7, 0.75]}]
    path = plot_alpha(hist, str(tmp_path / "alpha.png"), "t")
    assert os.path.getsize(path) > 1000 and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    top, bottom = alpha_figure(hist, "t").axes[:2]     # the figure plot_alpha saves
    notes = [t.get_text() for t in top.texts]
    assert notes == ["w0 m=0.50", "w1 m=0.20"]
    accs = sorted(float(y) for coll in bottom.collections for _, y in coll.get_offsets())
    assert accs == pytest.approx(sorted([0.8, 0.1, 0.6, 0.7, 0.75]))


def test_checkpoint_restores_a_state_exactly(tmp_path):
    state = {"w": [jnp.arange(6.0).reshape(2, 3) / 7, jnp.ones(2, jnp.int32)], "b": {"x": jnp.float32(0.1)}}
    ckpt.save(str(tmp_path), "fp", {"step": 3}, state, "s")
    meta, got = ckpt.load(str(tmp_path), "fp", "s", like=jax.tree_util.tree_map(jnp.zeros_like, state))
    assert meta["step"] == 3
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CorruptEntryError, match="does not match the search state"):
        ckpt.load(str(tmp_path), "fp", "s", like={"w": [jnp.zeros((3, 3)), jnp.zeros(2)], "b": {"x": 0.0}})


def test_single_network_steps_equal_a_one_candidate_fuse_step(digit0):
    """runtime.train_single (the final protocol) is FUSE's C = 1 step (under eq. (7); the other mixtures of
    one candidate are its log-softmax: the same distribution, other float rounding).  It was bit for bit
    while FUSE compiled each candidate's own network; FUSE now runs the candidate as switch branches in a
    scan (one compiled step per space), which XLA fuses and rounds differently: equal to float rounding,
    against the same switch network (ulps) and against the genotype's own plain network."""
    cfg = FuseConfig(batch_size=16, eval_batch_size=200, mixture="logits")
    recipe = FinalConfig(steps=6, batch_size=16, eval_batch_size=200)
    fs = FuseSteps([CONV], "tiny", digit0.num_classes, cfg, SHAPE)
    state = fs.init_state([5, 1])
    stream = runtime.BatchStream(digit0.x_train, digit0.y_train, 16, runtime.rng(5, 1, 2))
    for _ in range(recipe.steps):
        state, loss = fs.weight_step(state, *stream.next())
    alone = fs.candidate(state, 0, CONV)
    acc, _ = fs.accuracy(state, digit0.x_test, digit0.y_test)
    single, s_state, info = runtime.train_single(CONV, digit0, recipe, [5, 1], recipe.steps, fs.ops)
    mine = single.variables(s_state, CONV)
    ulps = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)   # noqa: E731
    jax.tree_util.tree_map(ulps, mine["params"], alone["params"])
    jax.tree_util.tree_map(ulps, mine["batch_stats"], alone["batch_stats"])
    assert info["final_loss"] == pytest.approx(float(loss), rel=1e-6)
    assert single.accuracy(s_state, digit0.x_test, digit0.y_test) == acc[0]
    plain, p_state, p_info = runtime.train_single(CONV, digit0, recipe, [5, 1], recipe.steps)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)   # noqa: E731
    jax.tree_util.tree_map(close, p_state["params"], alone["params"])
    jax.tree_util.tree_map(close, p_state["batch_stats"], alone["batch_stats"])
    assert p_info["final_loss"] == pytest.approx(float(loss), rel=1e-5)
    # another batch size is another compiled step, not a cache hit of the wrong shape
    other = runtime.train_single(CONV, digit0, FinalConfig(steps=1, batch_size=8, eval_batch_size=200), [5, 1], 1)
    assert other[0] is not plain and other[0].traces["weights"] == 1


def test_random_search_respects_budget(digit0):
    cfg = FuseConfig(**{**SMALL, "rounds": 2})
    res = random_search(digit0, resolve_space(SPACE), cfg, seed=1, final=None, log=lambda m: None)
    assert res["budget"] == {"evaluations": 4, "steps_per_evaluation": 10}
    assert len(res["evaluations"]) == 4 and all(e["steps"] == 10 for e in res["evaluations"])
    accs = [e["val_accuracy"] for e in res["evaluations"]]
    assert res["best"] == int(np.argmax(accs))
    small = random_search(digit0, resolve_space(SPACE), cfg, seed=1, budget=2, steps=3, final=None,
                          log=lambda m: None)
    assert len(small["evaluations"]) == 2 and all(e["steps"] == 3 for e in small["evaluations"])
