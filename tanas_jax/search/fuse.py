"""FUSE (TA-NAS Algorithm 2; LD-NAS appendix B, eqs. (7)-(10)), resumable.

Public API::

    FuseConfig (tanas_jax.config, section ``fuse``)
    mixture_logits(alpha, logits) -> (B, K)      # eq. (7): sum_c softmax(alpha)_c logits_c
    mixture_probs(alpha, logits) -> (B, K)       # log sum_c softmax(alpha)_c softmax(logits_c)
    mixture_log_softmax(alpha, logits) -> (B, K) # sum_c softmax(alpha)_c log_softmax(logits_c)
    MIXTURES = {'probs', 'logits', 'log_softmax'}   # fuse.mixture picks one
    softmax_margin(probs) -> float                # leader minus runner-up
    pick_winner(alpha, val_accuracy, rule) -> int # rule: 'alpha' (eq. (10)) | 'val'
    make_fuse_optimizer(cfg) -> optax.GradientTransformationExtraArgs
    FuseSteps(genotypes, skeleton, num_classes, cfg, input_shape, ops=None)
        .init_state(seed_parts, genotypes=None) -> state;  .candidate(state, c, genotype) -> variables
    compiled_steps(genotypes, skeleton, num_classes, cfg, input_shape, ops=None) -> FuseSteps (cached)
    run_round(candidates, data, cfg, seed, r, *, ops=None) -> (record, state)
    fuse_candidates(candidates, data, cfg, seed=0, *, round_index=0, ops=None) -> record   # fixed list
    fuse_search(data, space, cfg, seed, *, final=FinalConfig(), final_data=None,
                checkpoint_dir=None, log=print) -> dict

**The mixture** (``fuse.mixture``).  The papers' eq. (7) mixes the candidates'
*logits* (``logits``; the authors' code does the same).  Then a candidate with a
constant output (an all-``none`` cell) acts as a temperature knob: weighting it
shrinks the other candidates' logits, and α, fitted on validation
cross-entropy, buys calibration instead of accuracy (on real Fashion-MNIST
with a conv / all-``none`` / all-``skip_connect`` cell, α drifts to the
``none`` cell as stages go on; ``docs/results_selector.md``).  The default
``probs`` mixes the candidates' class *probabilities*: the loss is
``-log Σ_c softmax(α)_c p_c(y|x)``, a mixture of experts in which a constant
candidate can only contribute its uniform 1/K; ``log_softmax`` normalises each
candidate's logits before mixing (a geometric mixture) -- which changes nothing:
Σ_c w_c log_softmax(z_c) differs from Σ_c w_c z_c by a per-example constant that
the cross-entropy removes, so it is eq. (7) up to float rounding (kept so the
measurement can be rerun).  All three return
(B, K) scores whose cross-entropy is the loss, so the steps are the same code.

**One compiled step per space.**  The candidates' *ops are data*: every edge
of a :class:`~tanas_jax.search.network.SwitchNetwork` holds every op of the
space's op set and runs the one its candidate chose (``lax.switch`` on an
op-index array, ``state['choice']``); the candidates that share a cell
structure run one after the other in a ``lax.scan`` (never ``vmap``, which
turns a switch into a select that runs every op); each branch is wrapped in
``jax.checkpoint`` (the backward of a switch otherwise carries zero-filled
residuals of every branch: 2.3x the separate steps' time, 1.15x with it).  So the steps are compiled
once per (cell structures, op set, skeleton, classes, shapes, settings) and
every later round -- new candidates of the same space -- reuses them (a
search passes its space's op set; :func:`fuse_candidates` defaults to the
candidates' own ops).  A candidate is the same network as its own
:class:`~tanas_jax.search.network.CellNetwork`: its initial weights are
exactly that network's (``SeedSequence([*seed_parts, c])``), scattered into
the switch tree (op ``o`` of edge ``e`` under ``edge.../branches_{j}``,
``j`` = o's index in the op set); the ops it does not use are never run,
get zero gradients, so zero Adam updates, and keep their constants.  Its
loss and updates equal the per-network ones to float rounding (XLA fuses a
branch inside a scan differently; ``tests/test_fuse_switch.py``).

**Parameters and optimiser.**  The C candidates' parameters and α form one
tree ``{'weights': [group_0, ...], 'alpha': α (C,)}`` (a group: the switch
trees of the candidates of one cell structure stacked on a leading axis, in
candidate order; one group unless the space has several structures)
optimised by ONE ``optax.multi_transform`` with labels ``weights``/``alpha``
(Adam each).
Each partition's transform is wrapped in :func:`phase_gated`: the phase is an
extra argument of ``update`` (``phase='weights'`` or ``'alpha'``); the other
partition gets a zero update *and keeps its optimiser state untouched* (Adam's
moments and step count do not decay while frozen, unlike a zero gradient).

**Phases.**  ``weight_step`` (train split): loss = CE(Σ softmax(α)_c·logits_c)
— eq. (8) — differentiated w.r.t. the weights only, BatchNorm in train mode
(statistics updated).  ``alpha_step`` (validation split): the same loss
w.r.t. α only — eq. (9) — candidates in train-mode BN (batch statistics, as
DARTS' architecture step) with their running statistics left unchanged; no
backward pass through the candidates.  Each step computes all C candidates in
one jitted function, compiled ahead of time (``jit(...).lower().compile()``,
timed with the switch network's shape tracing and reported as ``compile_s``) and cached by (cell
structures, op set, skeleton, classes, shapes, settings) in the runtime's bounded step cache and, when the
entry point turned on the persistent compilation cache (``fuse.compilation_cache``,
quick preset: ``~/.cache/tanas_jax/xla``; see
:func:`tanas_jax.search.runtime.enable_compilation_cache`), on disk, so a rerun
or resume loads them; a per-instance trace counter guards them
(:class:`tanas_jax.search.runtime.CompiledSteps`).

**Rounds.**  α starts uniform (zeros: every constant gives the same softmax;
the authors' 1 or 1/C are the same point).  A *stage* is ``weight_steps``
weight steps then ``alpha_steps`` α steps; stages repeat until the round is
decided: softmax(α)'s leader beats the runner-up by more than ``margin``
(``stop_reason`` 'margin'), or max_c |Δ softmax(α)_c| over a stage < ``tol``
('converged'), or ``max_stages`` ('max_stages').  The record keeps the final
margin and each candidate's own validation accuracy (evaluated alone with the
weights it has inside the mixture) next to α.  Winner = argmax α (eq. (10);
``winner='val'``: the best own validation accuracy) and becomes the next round's seed; the other C−1
candidates are fresh uniform samples from the space, distinct from the seed
when the space allows.  Every round starts from freshly initialised weights.

**Determinism and resume.**  All randomness of round r comes from numpy
``SeedSequence([seed, r, stream])`` (candidate sampling, each candidate's
initialisation, batch order); a round is therefore a pure function of
(seed, r, seed genotype, data, settings).  After every round the state is
checkpointed atomically (:mod:`tanas_jax.search.checkpoint`); a rerun
with the same settings resumes after the last finished round and gives
exactly the result of an uninterrupted run.

**Final.**  The last seed is trained from scratch by the one final protocol
(:func:`tanas_jax.search.runtime.train_final`, section ``final``) and
evaluated once on the test split (the authors' code selected on the test
loader; here α sees the validation split only).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tanas_jax.config import FinalConfig, FuseConfig, to_dict
from tanas_jax.errors import UserError
from tanas_jax.search import checkpoint as ckpt
from tanas_jax.search.genotype import Genotype
from tanas_jax.search.network import (
    SwitchNetwork,
    cell_structures,
    from_switch_variables,
    get_skeleton,
    init_network,
    network_shapes,
    op_choice,
    op_set,
    param_count,
    switch_shapes,
    to_switch_variables,
)
from tanas_jax.search.runtime import (
    DEFAULT_FINAL,
    STEP_CACHE,
    BatchStream,
    CompiledSteps,
    cross_entropy,
    fingerprint,
    input_shape_of,
    phase_gated,
    predict,
    rng,
    train_final,
)

INIT_STREAM = 999_999


# --- maths --------------------------------------------------------------------------------
def mixture_logits(alpha: jax.Array, logits: jax.Array) -> jax.Array:
    """Eq. (7): ``Σ_c softmax(α)_c · logits[c]``; alpha (C,), logits (C, B, K) -> (B, K)."""
    return jnp.tensordot(jax.nn.softmax(alpha), logits, axes=1)


def mixture_probs(alpha: jax.Array, logits: jax.Array) -> jax.Array:
    """``log Σ_c softmax(α)_c · softmax(logits[c])``: the log of the α-weighted mixture of the candidates'
    class probabilities, (B, K) (already normalised, so the cross-entropy of it is ``-log`` of the mixed
    probability of the label), computed with a log-sum-exp."""
    return jax.nn.logsumexp(jax.nn.log_softmax(alpha)[:, None, None] + jax.nn.log_softmax(logits, axis=-1),
                            axis=0)


def mixture_log_softmax(alpha: jax.Array, logits: jax.Array) -> jax.Array:
    """``Σ_c softmax(α)_c · log_softmax(logits[c])``: each candidate's logits normalised before mixing
    (a geometric mixture of the candidates' distributions once the cross-entropy normalises it)."""
    return jnp.tensordot(jax.nn.softmax(alpha), jax.nn.log_softmax(logits, axis=-1), axes=1)


MIXTURES: dict[str, Callable] = {"probs": mixture_probs, "logits": mixture_logits,
                                 "log_softmax": mixture_log_softmax}


def softmax_margin(probs) -> float:
    """Leader minus runner-up of a probability vector (softmax(α)); 1.0 for a single entry."""
    top = np.sort(np.asarray(probs, np.float64))[::-1]
    return float(top[0] - top[1]) if len(top) > 1 else 1.0


def pick_winner(alpha, val_accuracy, rule: str) -> int:
    """``alpha``: argmax α (eq. (10)); ``val``: the best own validation accuracy, ties to the larger α."""
    alpha = np.asarray(alpha, np.float64)
    if rule == "val":
        return int(np.lexsort((-np.arange(len(alpha)), alpha, np.asarray(val_accuracy, np.float64)))[-1])
    return int(np.argmax(alpha))


def _labels(params):
    return {"weights": jax.tree_util.tree_map(lambda _: "weights", params["weights"]), "alpha": "alpha"}


def make_fuse_optimizer(cfg: FuseConfig) -> optax.GradientTransformationExtraArgs:
    """ONE multi_transform over {'weights', 'alpha'}; update(..., phase_name=...) picks the phase."""
    return optax.multi_transform(
        {"weights": phase_gated(optax.adam(cfg.learning_rate), "weights"),
         "alpha": phase_gated(optax.adam(cfg.alpha_learning_rate), "alpha")},
        _labels)


# --- compiled steps -----------------------------------------------------------------------
def _stack(trees: Sequence) -> Any:
    return jax.tree_util.tree_map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *trees)


def _scan_group(net, w, bs, ch, x, train: bool):
    """One structure group's candidates, one after the other (``lax.scan``; the op switch stays a real
    branch, never a select of every op as under ``vmap``): logits (n, B, K) and (train) new statistics."""

    def one(_, wbc):
        w1, b1, c1 = wbc
        if train:
            y, upd = net.apply({"params": w1, "batch_stats": b1}, x, c1, train=True, mutable=["batch_stats"])
            return None, (y, upd.get("batch_stats", {}))
        return None, (net.apply({"params": w1, "batch_stats": b1}, x, c1, train=False), b1)

    _, (y, nbs) = jax.lax.scan(one, None, (w, bs, ch))
    return y, nbs


def _forward(steps, weights, bstats, choice, x, train):
    """All C candidates on ``x``: logits (C, B, K) in candidate order and their (train mode: updated) BN
    statistics, per structure group."""
    outs, new_bs = [], []
    for net, w, bs, ch in zip(steps.nets, weights, bstats, choice):
        y, nbs = _scan_group(net, w, bs, ch, x, train)
        outs.append(y)
        new_bs.append(nbs if train else bs)
    logits = outs[0] if len(outs) == 1 else jnp.concatenate(outs)
    return (logits if steps.in_order else logits[steps.order]), new_bs


def _step_fns(steps, tx, mix: Callable):
    """The pure weight (eq. 8), α (eq. 9) and eval steps of a :class:`FuseSteps`; ``mix`` is one of
    :data:`MIXTURES` (eq. (7) for ``logits``).  The candidates' ops are data: ``state['choice']``."""

    def weight_step(state, x, y):
        params = state["params"]

        def loss_fn(w):
            logits, nbs = _forward(steps, w, state["batch_stats"], state["choice"], x, True)
            return cross_entropy(mix(params["alpha"], logits), y), nbs

        (loss, nbs), gw = jax.value_and_grad(loss_fn, has_aux=True)(params["weights"])
        grads = {"weights": gw, "alpha": jnp.zeros_like(params["alpha"])}
        upd, opt = tx.update(grads, state["opt"], params, phase_name="weights")
        return {**state, "params": optax.apply_updates(params, upd), "batch_stats": nbs, "opt": opt}, loss

    def alpha_step(state, x, y):
        params = state["params"]
        logits, _ = _forward(steps, params["weights"], state["batch_stats"], state["choice"], x, True)
        logits = jax.lax.stop_gradient(logits)
        loss, ga = jax.value_and_grad(lambda a: cross_entropy(mix(a, logits), y))(params["alpha"])
        grads = {"weights": jax.tree_util.tree_map(jnp.zeros_like, params["weights"]), "alpha": ga}
        upd, opt = tx.update(grads, state["opt"], params, phase_name="alpha")
        return {**state, "params": optax.apply_updates(params, upd), "opt": opt}, loss

    def eval_step(state, x):
        logits, _ = _forward(steps, state["params"]["weights"], state["batch_stats"], state["choice"], x, False)
        mixed = mix(state["params"]["alpha"], logits)
        return jnp.argmax(logits, -1).T, jnp.argmax(mixed, -1)   # (B, C), (B,)

    return {"weights": weight_step, "alpha": alpha_step, "eval": eval_step}


class FuseSteps(CompiledSteps):
    """Compiled weight/α/eval steps for every candidate list whose cells have the structures of
    ``genotypes`` (see module docstring): the ops are data (``state['choice']``), so a new round's
    candidates reuse the executables.  ``ops`` (default: the genotypes' own ops; a search passes its
    space's) are the ops an edge can switch between, in canonical order (:func:`op_set`)."""

    def __init__(self, genotypes: Sequence[Genotype], skeleton, num_classes: int, cfg: FuseConfig,
                 input_shape, ops: Sequence[str] | None = None):
        super().__init__()
        t = time.perf_counter()
        self.genotypes = tuple(genotypes)
        self.structures = tuple(cell_structures(g) for g in self.genotypes)
        self.ops = op_set(self.genotypes, ops)
        self.skeleton = get_skeleton(skeleton)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(input_shape)
        self.cfg = cfg
        self.tx = make_fuse_optimizer(cfg)
        kinds = list(dict.fromkeys(self.structures))
        self.groups = tuple(tuple(c for c, s in enumerate(self.structures) if s == k) for k in kinds)
        first = [self.genotypes[g[0]] for g in self.groups]
        self.nets = [SwitchNetwork(*k, self.ops, self.skeleton, self.num_classes) for k in kinds]
        self.shapes = [switch_shapes(g, self.ops, self.skeleton, num_classes, self.input_shape) for g in first]
        self.order = np.argsort([c for g in self.groups for c in g])
        self.in_order = bool(np.all(self.order == np.arange(len(self.order))))
        for name, fn in _step_fns(self, self.tx, MIXTURES[cfg.mixture]).items():
            self.register(name, fn)
        self.compile_s += time.perf_counter() - t   # tracing the switch network's shapes

    def _where(self, c: int) -> tuple[int, int]:
        return next((gi, g.index(c)) for gi, g in enumerate(self.groups) if c in g)

    def init_state(self, seed_parts: Sequence[int], genotypes: Sequence[Genotype] | None = None) -> dict:
        """Fresh weights of ``genotypes`` (default: those of the constructor; same structures): candidate c
        from ``SeedSequence([*seed_parts, c])`` exactly as its own :func:`init_network`, α = 0, optimiser
        state, and each candidate's op choice."""
        genotypes = self.genotypes if genotypes is None else tuple(genotypes)
        if tuple(cell_structures(g) for g in genotypes) != self.structures:
            raise ValueError("FuseSteps.init_state: candidates with other cell structures than the steps")
        sw = [to_switch_variables(init_network(g, self.skeleton, self.num_classes,
                                               np.random.SeedSequence([*seed_parts, c]).generate_state(2),
                                               self.input_shape),
                                  g, self.ops, self.skeleton, self.shapes[self._where(c)[0]])
              for c, g in enumerate(genotypes)]
        params = {"weights": [_stack([sw[c]["params"] for c in g]) for g in self.groups],
                  "alpha": jnp.zeros((len(genotypes),), jnp.float32)}
        return {"params": params, "batch_stats": [_stack([sw[c].get("batch_stats", {}) for c in g])
                                                  for g in self.groups],
                "choice": [jnp.asarray(np.stack([op_choice(genotypes[c], self.ops, self.skeleton) for c in g]))
                           for g in self.groups],
                "opt": self.tx.init(params)}

    def candidate(self, state, c: int, genotype: Genotype) -> dict:
        """Candidate c's variables ``{'params', 'batch_stats'}`` as its own :class:`CellNetwork` holds them."""
        gi, pos = self._where(c)
        tree = {"params": state["params"]["weights"][gi], "batch_stats": state["batch_stats"][gi]}
        mine = jax.tree_util.tree_map(lambda a: a[pos], tree)
        return from_switch_variables(mine, genotype, self.ops, self.skeleton,
                                     network_shapes(genotype, self.skeleton, self.num_classes, self.input_shape))

    def weight_step(self, state, x, y):
        return self.call("weights", state, x, y)

    def alpha_step(self, state, x, y):
        return self.call("alpha", state, x, y)

    def accuracy(self, state, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Eval-mode accuracy of each candidate (C,) and of the mixture on (x, y); batches of the
        fixed ``eval_batch_size`` (one compiled eval step for every split)."""
        pred, pmix = predict(lambda xb: self.call("eval", state, xb), x, self.cfg.eval_batch_size)
        return (pred == y[:, None]).sum(axis=0) / len(y), float((pmix == y).sum()) / len(y)


def compiled_steps(genotypes: Sequence[Genotype], skeleton, num_classes: int, cfg: FuseConfig,
                   input_shape, ops: Sequence[str] | None = None) -> FuseSteps:
    """The cached :class:`FuseSteps` (the runtime's step cache) of the candidates' cell structures, the op
    set and the settings: candidate lists that differ only in their ops share it."""
    sk = get_skeleton(skeleton)
    ops = op_set(genotypes, ops)
    key = ("fuse", tuple(cell_structures(g) for g in genotypes), ops, sk, int(num_classes), tuple(input_shape),
           cfg.batch_size, cfg.eval_batch_size, cfg.learning_rate, cfg.alpha_learning_rate, cfg.mixture)
    return STEP_CACHE.get(key, lambda: FuseSteps(genotypes, sk, num_classes, cfg, input_shape, ops))


# --- one round ------------------------------------------------------------------------------
def _stop_reason(p: np.ndarray, before, cfg: FuseConfig) -> str | None:
    """Why a round stops after a stage with softmax(α) ``p`` (``before``: at the previous stage), or None."""
    if softmax_margin(p) > cfg.margin:
        return "margin"
    if float(np.max(np.abs(p - np.asarray(before)))) < cfg.tol:
        return "converged"
    return None


def _stages(steps: FuseSteps, state, train: BatchStream, val: BatchStream, cfg: FuseConfig, n: int):
    """Stages until softmax(α)'s margin exceeds ``margin``, α converges or ``max_stages``:
    (state, softmax(α) per stage, losses, stop reason)."""
    probs = [np.full(n, 1.0 / n).tolist()]
    losses = []
    for _ in range(cfg.max_stages):
        for _ in range(cfg.weight_steps):
            state, loss = steps.weight_step(state, *train.next())
        wl = float(loss)
        for _ in range(cfg.alpha_steps):
            state, loss = steps.alpha_step(state, *val.next())
        losses.append([wl, float(loss)])
        p = np.asarray(jax.nn.softmax(state["params"]["alpha"]), np.float64)
        reason = _stop_reason(p, probs[-1], cfg)
        probs.append(p.tolist())
        if reason:
            return state, probs, losses, reason
    return state, probs, losses, "max_stages"


def run_round(candidates: Sequence[Genotype], data, cfg: FuseConfig, seed: int, r: int, *,
              ops: Sequence[str] | None = None) -> tuple[dict, dict]:
    """Train the C candidates jointly until the round stops (see :func:`_stages`); returns (record, state).
    ``ops``: the op set the compiled step switches between (the search space's; default: the candidates'
    own ops).

    The record holds α, softmax(α) per stage, the final ``margin`` and ``stop_reason``, and each
    candidate's own validation accuracy (``val_accuracy``: evaluated alone, eval-mode BatchNorm, with
    the weights it has inside the mixture); ``winner`` follows ``cfg.winner``.
    """
    t0 = time.perf_counter()
    steps = compiled_steps(candidates, cfg.skeleton, data.num_classes, cfg, input_shape_of(data), ops)
    compile_before = steps.compile_s
    state = steps.init_state([seed, r, 1], candidates)
    bgen = rng(seed, r, 2)
    train = BatchStream(data.x_train, data.y_train, cfg.batch_size, bgen)
    val = BatchStream(data.x_val, data.y_val, cfg.batch_size, bgen)
    state, probs, losses, reason = _stages(steps, state, train, val, cfg, len(candidates))
    alpha = np.asarray(state["params"]["alpha"])
    cand_acc, mix_acc = steps.accuracy(state, data.x_val, data.y_val)
    rec = {
        "round": r,
        "candidates": [g.to_dict() for g in candidates],
        "mixture": cfg.mixture,
        "alpha": alpha.tolist(),
        "softmax_alpha_per_stage": probs,
        "stages": len(probs) - 1,
        "stop_reason": reason,
        "converged": reason == "converged",
        "margin": softmax_margin(probs[-1]),
        "losses_per_stage": losses,
        "winner_rule": cfg.winner,
        "winner": pick_winner(alpha, cand_acc, cfg.winner),
        "alpha_winner": pick_winner(alpha, cand_acc, "alpha"),
        "val_winner": pick_winner(alpha, cand_acc, "val"),
        "val_accuracy": cand_acc.tolist(),
        "mixture_val_accuracy": mix_acc,
        "params": [param_count(network_shapes(g, steps.skeleton, steps.num_classes, steps.input_shape))
                   for g in candidates],
        "compile_s": steps.compile_s - compile_before,
        "wall_s": time.perf_counter() - t0,
    }
    return rec, state


def fuse_candidates(candidates: Sequence[Genotype], data, cfg: FuseConfig, seed: int = 0, *,
                    round_index: int = 0, ops: Sequence[str] | None = None) -> dict:
    """One FUSE round over a FIXED candidate list (no sampling, no final training): the round's record
    (see :func:`run_round`), e.g. to test the selector on hand-picked cells.  The compiled steps are
    cached per (cell structures, op set, shapes, settings), so seeds after the first reuse them."""
    if len(candidates) < 2:
        raise UserError(f"fuse_candidates: needs at least 2 candidates to compare, got {len(candidates)}")
    rec, _ = run_round(list(candidates), data, cfg, seed, round_index, ops=ops)
    return rec


# --- the search -----------------------------------------------------------------------------
def _resume(checkpoint_dir, fp: str, cfg: FuseConfig, seed_geno: Genotype, log) -> tuple:
    """(history, first round, seed genotype, search seconds) from a checkpoint, or a fresh start."""
    got = ckpt.load(checkpoint_dir, fp) if checkpoint_dir else None
    if got is None:
        return [], 0, seed_geno, 0.0
    meta, _ = got
    log(f"fuse: resuming from {ckpt.path(checkpoint_dir)} after round {meta['round'] + 1} (of {cfg.rounds})")
    return meta["history"], meta["round"] + 1, Genotype.from_dict(meta["seed_genotype"]), meta["search_s"]


def _log_round(log, rec: dict, r: int, rounds: int) -> None:
    log(f"fuse round {r + 1}/{rounds}: softmax(α)="
        f"[{', '.join(f'{p:.3f}' for p in rec['softmax_alpha_per_stage'][-1])}] "
        f"margin {rec['margin']:.3f} stages {rec['stages']} ({rec['stop_reason']}) "
        f"val acc [{', '.join(f'{a:.3f}' for a in rec['val_accuracy'])}] -> winner {rec['winner']} "
        f"(by {rec['winner_rule']}; {rec['wall_s']:.1f}s, compile {rec['compile_s']:.1f}s)")


def _rounds(data, space, cfg: FuseConfig, seed: int, fp: str, checkpoint_dir, log) -> tuple:
    """Rounds from the last checkpoint on: (history, last winner, search seconds, first round)."""
    seed_geno = space.seeds[0] if space.seeds else space.sample(rng(seed, INIT_STREAM))
    history, start, seed_geno, search_s = _resume(checkpoint_dir, fp, cfg, seed_geno, log)
    try:
        for r in range(start, cfg.rounds):
            t = time.perf_counter()
            others = space.sample_distinct(rng(seed, r, 0), cfg.candidates - 1, exclude=[seed_geno])
            candidates = [seed_geno] + others
            rec, state = run_round(candidates, data, cfg, seed, r, ops=space.ops)
            seed_geno = candidates[rec["winner"]]
            history.append(rec)
            search_s += time.perf_counter() - t
            _log_round(log, rec, r, cfg.rounds)
            if checkpoint_dir:
                ckpt.save(checkpoint_dir, fp, {"round": r, "seed_genotype": seed_geno.to_dict(),
                                               "history": history, "search_s": search_s,
                                               "rng": {"seed": seed, "streams": "SeedSequence([seed, round, k])"}},
                          state)
    except KeyboardInterrupt:
        raise ckpt.interrupted(checkpoint_dir, "fuse_checkpoint",
                               f"round {history[-1]['round'] + 1}" if history else None) from None
    return history, seed_geno, search_s, start


def fuse_search(data, space, cfg: FuseConfig, seed: int = 0, *, final: FinalConfig | None = DEFAULT_FINAL,
                final_data=None, checkpoint_dir: str | None = None,
                log: Callable[[str], None] = print) -> dict:
    """TA-NAS Algorithm 2 over ``space`` on ``data`` (a TaskData-like object).

    Returns a dict with the winner genotype, its final train/val/test numbers
    (``final`` protocol on ``final_data``, default ``data``; ``final=None``
    skips it), the per-round history, search wall time and compile time.
    With ``checkpoint_dir``, resumes from ``checkpoint_dir/fuse_checkpoint.npz``.
    """
    fp = fingerprint(data, space, cfg, seed)
    history, winner, search_s, start = _rounds(data, space, cfg, seed, fp, checkpoint_dir, log)
    result = {
        "method": "fuse",
        "space": space.to_dict(),
        "settings": to_dict(cfg),
        "seed": seed,
        "winner": winner.to_dict(),
        "winner_short": winner.short(),
        "history": history,
        "alpha_over_rounds": [h["softmax_alpha_per_stage"][-1] for h in history],
        "margin_over_rounds": [h["margin"] for h in history],
        "search_wall_s": search_s,
        "search_compile_s": sum(h["compile_s"] for h in history),
        "candidate_evaluations": len(history) * cfg.candidates,
        "resumed_from_round": start if start else None,
    }
    if final is not None:
        result["final"] = train_final(winner, final_data if final_data is not None else data, final, seed,
                                      space.ops)
    return result
