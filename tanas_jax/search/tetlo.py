"""TETLO: transferability-encouraging tri-level optimisation (Xie et al., "Improving differentiable
neural architecture search by encouraging transferability").

Public API::

    AuxCNN(channels, num_classes)                 # __call__(x) -> (logits, features)
    cosine_sim(a, b) -> (...,)                   # row-wise cosine similarity
    quadruple_deltas(emb, quads) -> (Q,)          # sim(x, y) − sim(w, z) for each quadruple row
    qrs_loss(main_emb, aux_emb, quads, margin, temperature) -> scalar
    sample_quadruples(gen, batch, q) -> int32 (Q, 4)
    TetloSteps(net, cfg, num_classes)             # compiled stage-1 / stage-2 / stage-3 steps
    tetlo_search(data, space, cfg, seed, **kw) -> dict   # darts.differentiable_search with TetloSteps

The paper's text stops after its introduction; what it states is implemented
as stated, the rest is our choice (configurable in ``search.darts.tetlo``):

* **Stage 1** (paper): the main supernet's weights W are trained on the train
  split with the architecture β fixed -- the DARTS weight step
  (:class:`tanas_jax.search.darts.DartsSteps`).
* **Stage 2** (paper: knowledge transfer by matching quadruple relative
  similarities).  The auxiliary model V is a small *fixed* CNN
  (:class:`AuxCNN`: per width in ``aux_channels`` a 3x3 conv + ReLU + 2x2
  max-pool, then global average pooling -- its embedding -- and a linear
  head).  Its loss on a train batch is ``CE(V) + γ·QRS``.  For each of the
  ``quadruples`` sampled index rows (x, y, w, z) of the batch (four distinct
  examples; a pure function of (seed, step)):

  - ``Δ_main = cos(e_M(x), e_M(y)) − cos(e_M(w), e_M(z))`` with e_M the main
    supernet's features (the head's input) under the current β;
  - ``Δ_V`` the same with V's embedding;
  - ``t = tanh(Δ_main / τ)``: the main model's relation "sim(x,y) > sim(w,z)"
    as a *soft* sign (τ → 0 gives the hard sign).  A hard sign would be
    piecewise constant in (W, β), so V's update would carry no gradient back to
    the architecture and stage 3 would only see the main model's own loss;
  - ``QRS = mean( relu(m − t·Δ_V)² )``: a squared hinge -- smooth (C¹), zero
    exactly when V orders every quadruple as the main model does (with margin
    ``m = qrs_margin``, by at least m·|t|), positive when an order is reversed.

  In the real stage-2 step the main model is a fixed teacher
  (``stop_gradient``); V is updated by Adam (``aux_learning_rate``).
* **Stage 3** (paper: "update the architecture of the main model by maximizing
  its transferability", measured by the auxiliary model's validation
  performance).  β minimises ``L_val(V'(β)) + λ·L_val(W'(β), β)`` on a
  validation batch (λ = ``main_weight``; λ = 0 is the pure transferability
  objective, λ > 0 keeps the DARTS objective too) where

  ``W' = W − ξ_W ∇_W L_train(W, β)``  (one unrolled stage-1 step, ξ_W = ``search.darts.unroll_lr``),
  ``V' = V − ξ_V ∇_V [CE(V) + γ·QRS(V; e_M(W', β))]``  (one unrolled stage-2 step, ξ_V = ``aux_unroll_lr``),

  and the β gradient is exact: ``jax.grad`` through both unrolled updates
  (through V' it flows via the QRS targets t(W'(β), β)).

Per iteration: stage 3 (β), then stage 1 (W), then stage 2 (V, teacher = the
updated W) -- the DARTS order extended by one level.  All three partitions
live in ONE ``optax.multi_transform`` (``{'weights', 'aux', 'beta'}``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tanas_jax.config import DartsConfig
from tanas_jax.errors import UserError
from tanas_jax.layers import Conv, max_pool_2x2
from tanas_jax.search.darts import (
    SuperNetwork,
    differentiable_search,
    init_beta,
    init_supernet,
    make_optimizer,
    supernet_loss,
    unrolled_weights,
)
from tanas_jax.search.runtime import CompiledSteps, accuracy, cross_entropy, rng


class AuxCNN(nn.Module):
    """The auxiliary model V: [conv3x3 -> ReLU -> maxpool2x2] per width, GAP, linear."""

    channels: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x):
        for i, c in enumerate(self.channels):
            x = nn.relu(Conv(c, (3, 3), name=f"conv{i}")(x))
            if x.shape[1] >= 2 and x.shape[2] >= 2:
                x = max_pool_2x2(x)
        feats = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(feats), feats


def cosine_sim(a, b, eps: float = 1e-8):
    """Row-wise cosine similarity of (..., D) arrays."""
    num = (a * b).sum(-1)
    return num / (jnp.sqrt((a * a).sum(-1) + eps) * jnp.sqrt((b * b).sum(-1) + eps))


def quadruple_deltas(emb, quads):
    """``cos(e[x], e[y]) − cos(e[w], e[z])`` for each row (x, y, w, z) of ``quads`` (Q, 4)."""
    e = [emb[quads[:, i]] for i in range(4)]
    return cosine_sim(e[0], e[1]) - cosine_sim(e[2], e[3])


def qrs_loss(main_emb, aux_emb, quads, margin: float = 0.0, temperature: float = 0.05):
    """QRS loss ``mean(relu(m − tanh(Δ_main/τ)·Δ_aux)²)`` (see module docstring)."""
    t = jnp.tanh(quadruple_deltas(main_emb, quads) / temperature)
    return jnp.mean(jax.nn.relu(margin - t * quadruple_deltas(aux_emb, quads)) ** 2)


def sample_quadruples(gen: np.random.Generator, batch: int, q: int) -> np.ndarray:
    """(q, 4) int32 rows of four distinct indices in [0, batch) (needs batch >= 4)."""
    if batch < 4:
        raise ValueError(f"quadruples need a batch of >= 4 examples, got {batch}")
    return np.argsort(gen.random((q, batch)), axis=1)[:, :4].astype(np.int32)


class TetloSteps(CompiledSteps):
    """Compiled stage steps; ``state['params'] = {'weights': W, 'aux': V, 'beta': β}``."""

    def __init__(self, net: SuperNetwork, cfg: DartsConfig, num_classes: int):
        super().__init__()
        if cfg.batch_size < 4:
            raise UserError(f"tetlo needs search.darts.batch_size >= 4 (quadruples of distinct examples), "
                            f"got {cfg.batch_size}")
        self.net, self.cfg = net, cfg
        tc = cfg.tetlo
        self.aux = aux = AuxCNN(tc.aux_channels, int(num_classes))
        self.tx = tx = make_optimizer(cfg, with_aux=True)
        xi_w, xi_v = cfg.unroll_lr, tc.aux_unroll_lr
        gamma, lam, m, tau = tc.qrs_weight, tc.main_weight, tc.qrs_margin, tc.qrs_temperature

        def zeros(t):
            return jax.tree_util.tree_map(jnp.zeros_like, t)

        def aux_loss(v, main_emb, x, y, quads):
            logits, emb = aux.apply({"params": v}, x)
            return cross_entropy(logits, y) + gamma * qrs_loss(main_emb, emb, quads, m, tau)

        def main_emb(w, bs, beta, x, y):
            return supernet_loss(net, w, bs, beta, x, y)[1][1]

        def weight_step(state, x, y):  # stage 1
            p = state["params"]
            (loss, (nbs, _)), gw = jax.value_and_grad(
                lambda w: supernet_loss(net, w, state["batch_stats"], p["beta"], x, y), has_aux=True)(p["weights"])
            grads = {"weights": gw, "aux": zeros(p["aux"]), "beta": zeros(p["beta"])}
            upd, opt = tx.update(grads, state["opt"], p, phase_name="weights")
            return {**state, "params": optax.apply_updates(p, upd), "batch_stats": nbs, "opt": opt}, loss

        def aux_step(state, x, y, quads):  # stage 2, main model as a fixed teacher
            p = state["params"]
            e = jax.lax.stop_gradient(main_emb(p["weights"], state["batch_stats"], p["beta"], x, y))
            loss, gv = jax.value_and_grad(aux_loss)(p["aux"], e, x, y, quads)
            grads = {"weights": zeros(p["weights"]), "aux": gv, "beta": zeros(p["beta"])}
            upd, opt = tx.update(grads, state["opt"], p, phase_name="aux")
            return {**state, "params": optax.apply_updates(p, upd), "opt": opt}, loss

        def stage3_loss(beta, w, v, bs, xt, yt, xv, yv, quads):
            w1 = unrolled_weights(net, w, bs, beta, xt, yt, xi_w)
            e1 = main_emb(w1, bs, beta, xt, yt)
            gv = jax.grad(aux_loss)(v, e1, xt, yt, quads)
            v1 = jax.tree_util.tree_map(lambda a, b: a - xi_v * b, v, gv)
            aux_val = cross_entropy(aux.apply({"params": v1}, xv)[0], yv)
            main_val = supernet_loss(net, w1, bs, beta, xv, yv)[0]
            return aux_val + lam * main_val, (aux_val, main_val)

        def arch_step(state, xt, yt, xv, yv, quads):  # stage 3
            p = state["params"]
            (loss, (av, mv)), gb = jax.value_and_grad(stage3_loss, has_aux=True)(
                p["beta"], p["weights"], p["aux"], state["batch_stats"], xt, yt, xv, yv, quads)
            grads = {"weights": zeros(p["weights"]), "aux": zeros(p["aux"]), "beta": gb}
            upd, opt = tx.update(grads, state["opt"], p, phase_name="beta")
            return {**state, "params": optax.apply_updates(p, upd), "opt": opt}, (loss, av, mv)

        self.stage3_loss = stage3_loss
        self.register("weights", weight_step)
        self.register("aux", aux_step)
        self.register("arch", arch_step)

    def init_state(self, seed: int, input_shape, structure) -> dict:
        w, bs = init_supernet(self.net, seed, input_shape)
        beta = init_beta(structure, self.net.ops, self.net.skeleton, rng(seed, 0), self.cfg.beta_init_std)
        v = self.aux.init(jax.random.PRNGKey(int(np.random.SeedSequence([seed, 5]).generate_state(1)[0])),
                          jnp.zeros((1, *input_shape), jnp.float32))["params"]
        params = {"weights": w, "aux": v, "beta": beta}
        return {"params": params, "batch_stats": bs, "opt": self.tx.init(params)}

    def quads(self, seed: int, s: int, batch: int) -> np.ndarray:
        return sample_quadruples(rng(seed, 3, s), batch, self.cfg.tetlo.quadruples)

    def step(self, state, s: int, batches, seed: int = 0):
        (xt, yt), (xv, yv) = batches
        q = self.quads(seed, s, len(yt))
        losses = {}
        if s >= self.cfg.warmup_steps:
            state, (losses["arch"], losses["aux_val"], losses["main_val"]) = self.call(
                "arch", state, xt, yt, xv, yv, q)
        state, losses["train"] = self.call("weights", state, xt, yt)
        state, losses["aux"] = self.call("aux", state, xt, yt, q)
        return state, losses

    def aux_accuracy(self, state, x, y, bs: int) -> float:
        """Accuracy of the auxiliary model V (padded batches of ``min(bs, n)``)."""
        aux = self.aux

        @jax.jit
        def pred(v, xb):
            return aux.apply({"params": v}, xb)[0].argmax(-1)

        return accuracy(lambda xb: pred(state["params"]["aux"], xb), x, y, min(bs, len(y)))

    def extra_results(self, state, data) -> dict:
        return {"aux_val_accuracy": self.aux_accuracy(state, data.x_val, data.y_val, self.cfg.eval_batch_size)}


def tetlo_search(data, space, cfg: DartsConfig, seed: int = 0, **kwargs) -> dict:
    """TETLO over ``space`` on ``data``: :func:`tanas_jax.search.darts.differentiable_search` with
    :class:`TetloSteps` (same keyword arguments: final, final_data, checkpoint_dir, log)."""
    return differentiable_search("tetlo", data, space, cfg, seed, steps_factory=TetloSteps, **kwargs)
