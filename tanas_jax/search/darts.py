"""DARTS (Liu et al. 2019) over the task-aware search spaces: supernet, 1st/2nd order, derivation.

Public API::

    DartsConfig, TetloConfig (tanas_jax.config, section ``search.darts``)
    MixedOp(ops, C, stride)                # __call__(x, weights (K,), train) -> Σ_k w_k op_k(x)
    SuperNetwork(structure, ops, skeleton, num_classes)
                                           # __call__(x, weights, train) -> (logits, features)
    supernet_op(op, C, stride, impl) -> flax module   # make_op with the supernet's depthwise impl
    supernet_for_space(space, skeleton, num_classes, impl) -> (SuperNetwork, structure)   # C >= 2
    init_beta(structure, ops, skeleton, gen) -> {'normal': (E, K)[, 'reduce': (E, K)]}
    arch_weights(beta) -> softmax over the op axis, same tree
    derive_genotype(beta, structure, ops) -> Genotype     # top op per edge, `none` excluded
    skip_count(genotype) -> int
    DartsSteps(net, cfg, order)            # compiled weight / architecture steps
    unrolled_val_loss(...)                 # the 2nd-order objective L_val(w - ξ∇_w L_train(w, β), β)
    differentiable_search(method, data, space, cfg, seed, *, final=FinalConfig(), final_data=None,
                          checkpoint_dir=None, log=print, steps_factory=None) -> dict

**Supernet.**  The space's first cell structure (nodes, edge pairs, concat;
spaces built ``from:`` several tasks may hold several, the first -- the
closest task's -- is searched and the result says so) is instantiated with a
:class:`MixedOp` on every edge: ``Σ_k softmax(β_e)_k · op_k(x)`` over the
space's op set, ops built by :func:`tanas_jax.search.ops.make_op`.  ``none``
contributes ``w·0`` and is not computed (it still takes part in the softmax,
as in DARTS).  β is shared by all normal cells (``β['normal']``) and by all
reduction cells (``β['reduce']``, present only when the skeleton has
reductions), as in DARTS; the cells are :class:`~tanas_jax.search.network.CellModule`
with a mixed-op ``edge_factory``, the stem/head are those of
:class:`~tanas_jax.search.network.CellNetwork`.

**Optimiser.**  ONE ``optax.multi_transform`` over
``{'weights': W, 'beta': β}`` (TETLO adds ``'aux': V``), each partition
wrapped in :func:`phase_gated`: ``update(..., phase_name='weights'|'beta'|'aux')``
updates that partition only and leaves the others' optimiser state
untouched.  Weights: Adam (default, ``search.w_optimizer='adam'``) or SGD with
momentum 0.9 (DARTS); weight decay ``search.weight_decay``.  β: DARTS' Adam
(lr 3e-4 in DARTS, β1 0.5, β2 0.999, weight decay 1e-3 added to the gradient).

**Phases** (one jitted, AOT-compiled step each, guarded by a per-instance
max-one-trace guard, see :class:`tanas_jax.search.runtime.CompiledSteps`): the
*weight step* on a train batch,
``∇_W CE(net(W, softmax β))``, BatchNorm in train mode with running statistics
updated; the *architecture step* on a validation batch (train-mode BN, batch
statistics, running statistics unchanged -- as DARTS):

* first order (``darts1``): ``∇_β L_val(W, β)``;
* second order (``darts2``): ``∇_β L_val(W', β)`` with the unrolled weights
  ``W' = W − ξ ∇_W L_train(W, β)``, **differentiated exactly** with
  ``jax.grad`` through the unrolled step (DARTS approximates the resulting
  Hessian-vector product by finite differences; we do not need to).  The
  unrolled step is a plain gradient step of size ``ξ = search.unroll_lr``
  whatever the weight optimiser (DARTS unrolls its SGD-momentum step; with
  Adam as weight optimiser a plain step is the sound, documented choice).

Each iteration is one architecture step then one weight step (DARTS order),
the architecture step skipped during ``search.warmup_steps``.

**Derivation.**  Every edge of the structure is kept (the cell structures of
our spaces are fixed DAGs, not DARTS' "top-2 inputs per node"); its op is the
argmax of β over the space's ops *excluding* ``none`` (DARTS).  A space whose
only op is ``none`` is refused up front.

**Determinism and resume.**  Batches are a stateless function of
``(seed, step)`` (epoch permutations from ``SeedSequence([seed, stream,
epoch])``), TETLO's quadruples of ``SeedSequence([seed, 3, step])``, the
initialisation of ``SeedSequence([seed, k])``.  The whole state (W, β, V,
BatchNorm statistics, optimiser state, history) is checkpointed atomically
every ``search.darts.checkpoint_every`` steps by :mod:`tanas_jax.search.checkpoint`
together with a fingerprint of data, space, settings, method and seed; a
rerun with the same settings resumes and gives exactly the result of an
uninterrupted run.  A checkpoint that cannot be read or whose fingerprint
differs is refused (the error names it and says how to start over).

**Final.**  The derived genotype is trained from scratch by the one final
protocol of every search method (:func:`tanas_jax.search.runtime.train_final`,
section ``final``) on ``final_data`` -- the target at ``search.input_shape``,
the input FUSE searches and trains on, not the supernet's cropped
``search.darts.input_shape`` -- then evaluated once on validation and once on
test (the test split is never seen by the search).

**TETLO** plugs in through ``steps_factory`` (:func:`tanas_jax.search.tetlo.tetlo_search`;
every method: :data:`tanas_jax.search.methods.SEARCH_METHODS`): this module
does not import TETLO.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tanas_jax.config import DartsConfig, FinalConfig, to_dict
from tanas_jax.errors import UserError, did_you_mean
from tanas_jax.io import atomic_write_bytes
from tanas_jax.search import checkpoint as ckpt
from tanas_jax.search.genotype import Cell, CellStructure, Genotype
from tanas_jax.search.network import CellModule, Skeleton, get_skeleton, init_from_shapes, stem
from tanas_jax.search.ops import make_op
from tanas_jax.search.runtime import (
    DEFAULT_FINAL,
    STEP_CACHE,
    CompiledSteps,
    accuracy,
    batch_at,
    cross_entropy,
    fingerprint,
    phase_gated,
    rng,
    seed_sequence,
    train_final,
)

METHODS = ("darts1", "darts2")   # TETLO: tanas_jax.search.tetlo (steps_factory)
CKPT = "search_checkpoint"


# --- supernet -------------------------------------------------------------------------------
def supernet_op(op: str, C: int, stride: int, impl: str = "dense", name: str | None = None) -> nn.Module:
    """An edge op of the supernet: :func:`make_op` whose sep/dil convs use the depthwise ``impl``
    (``'dense'``/``'grouped'``: one lax conv; ``'ops'``: the cell networks' slices); the parameter
    tree is the same whatever the impl."""
    return make_op(op, C, stride, name=name, depthwise="slices" if impl == "ops" else impl)


class MixedOp(nn.Module):
    """DARTS mixed op: ``Σ_k weights[k] · op_k(x)`` (``none`` is the zero map, skipped)."""

    ops: tuple[str, ...]
    C: int
    stride: int = 1
    impl: str = "dense"

    @nn.compact
    def __call__(self, x, weights, train: bool = False):
        out = None
        for k, name in enumerate(self.ops):
            if name == "none":
                continue
            t = weights[k] * supernet_op(name, self.C, self.stride, self.impl, name=name)(x, train)
            out = t if out is None else out + t
        if out is None:  # only `none`: refused by the search, kept total for direct use
            xs = x[:, :: self.stride, :: self.stride, :] if self.stride > 1 else x
            out = jnp.zeros(xs.shape[:-1] + (self.C,), x.dtype)
        return out


class SuperNetwork(nn.Module):
    """stem -> cells of mixed edges -> head; returns ``(logits, features)``.

    ``weights`` is ``{'normal': (E, K)[, 'reduce': (E, K)]}`` (rows: edges in
    ``structure.pairs`` order; columns: ``ops``), usually ``softmax(β)``.
    ``features`` are the head's inputs (post-ReLU, flattened or pooled): the
    main model's embedding for TETLO.
    """

    structure: CellStructure
    ops: tuple[str, ...]
    skeleton: Skeleton
    num_classes: int
    impl: str = "dense"

    @nn.compact
    def __call__(self, x, weights, train: bool = False):
        sk = self.skeleton
        x = stem(sk, x, train)
        for k, ck in enumerate(sk.cell_channels()):
            red = k in sk.reductions
            w = weights["reduce" if red else "normal"]

            def factory(i, src, dst, C, stride, name, w=w):
                mixed = MixedOp(self.ops, C, stride, self.impl, name=name)
                return lambda h, train_: mixed(h, w[i], train_)

            x = CellModule(self.structure, ck, red, edge_factory=factory, name=f"cell{k}")(x, train)
        x = nn.relu(x)
        feats = x.reshape(x.shape[0], -1) if sk.head == "flatten" else x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(feats), feats


def _searchable_ops(space) -> tuple[str, ...]:
    ops = tuple(space.ops)
    if not [o for o in ops if o != "none"]:
        raise UserError(f"space {space.name}: its only op is 'none'; a derived cell needs at least one other "
                        "op (give e.g. --space standard)")
    return ops


def supernet_for_space(space, skeleton, num_classes: int, impl: str = "dense") -> tuple[SuperNetwork, CellStructure]:
    """The supernet over ``space``'s first cell structure; the skeleton needs C >= 2."""
    ops = _searchable_ops(space)
    sk = get_skeleton(skeleton)
    if sk.C < 2:
        raise UserError(f"search.darts.skeleton.C must be >= 2 (reduction edges split C channels in two), "
                        f"got {sk.C}")
    structure = space.structures[0]
    return SuperNetwork(structure, ops, sk, int(num_classes), impl), structure


def init_beta(structure: CellStructure, ops: Sequence[str], skeleton, gen: np.random.Generator,
              std: float = 1e-3) -> dict:
    """β ~ N(0, std²) per (edge, op); a 'reduce' entry only when the skeleton has reductions."""
    sk = get_skeleton(skeleton)
    shape = (len(structure.pairs), len(ops))
    beta = {"normal": jnp.asarray(std * gen.standard_normal(shape), jnp.float32)}
    if sk.reductions:
        beta["reduce"] = jnp.asarray(std * gen.standard_normal(shape), jnp.float32)
    return beta


def arch_weights(beta: dict) -> dict:
    """softmax over the op axis of every β entry."""
    return {k: jax.nn.softmax(v, axis=-1) for k, v in beta.items()}


def derive_cell(beta_cell, structure: CellStructure, ops: Sequence[str]) -> Cell:
    """Top op per edge, ``none`` excluded (DARTS derivation on a fixed DAG)."""
    b = np.asarray(beta_cell, np.float64).copy()
    ops = list(ops)
    if b.shape != (len(structure.pairs), len(ops)):
        raise ValueError(f"β of shape {b.shape} does not fit {len(structure.pairs)} edges x {len(ops)} ops")
    if all(o == "none" for o in ops):
        raise UserError("cannot derive a cell: the only op is 'none'")
    for k, o in enumerate(ops):
        if o == "none":
            b[:, k] = -np.inf
    return structure.with_ops([ops[int(i)] for i in np.argmax(b, axis=1)])


def derive_genotype(beta: dict, structure: CellStructure, ops: Sequence[str]) -> Genotype:
    normal = derive_cell(beta["normal"], structure, ops)
    reduce = derive_cell(beta["reduce"], structure, ops) if "reduce" in beta else None
    return Genotype(normal, reduce)


def skip_count(genotype: Genotype) -> int:
    """Number of ``skip_connect`` edges (normal cell + reduction cell when present)."""
    cells = [genotype.normal] + ([genotype.reduce] if genotype.reduce is not None else [])
    return int(sum(o == "skip_connect" for c in cells for o in c.ops))


# --- optimiser ------------------------------------------------------------------------------
def make_optimizer(cfg: DartsConfig, with_aux: bool = False) -> optax.GradientTransformationExtraArgs:
    """ONE multi_transform over {'weights', 'beta'[, 'aux']} (see module docstring)."""
    if cfg.w_optimizer == "sgd":
        w = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.sgd(cfg.learning_rate, momentum=0.9))
    else:
        w = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(cfg.learning_rate))
    b = optax.chain(optax.add_decayed_weights(cfg.arch_weight_decay),
                    optax.adam(cfg.arch_learning_rate, b1=0.5, b2=0.999))
    transforms = {"weights": phase_gated(w, "weights"), "beta": phase_gated(b, "beta")}
    if with_aux:
        transforms["aux"] = phase_gated(optax.adam(cfg.tetlo.aux_learning_rate), "aux")

    def labels(params):
        return {k: jax.tree_util.tree_map(lambda _, k=k: k, v) for k, v in params.items()}

    return optax.multi_transform(transforms, labels)


# --- losses and steps -----------------------------------------------------------------------
def supernet_loss(net: SuperNetwork, w, bstats, beta, x, y):
    """CE of the supernet in train mode; returns (loss, (new batch_stats, features))."""
    variables = {"params": w, "batch_stats": bstats}
    (logits, feats), upd = net.apply(variables, x, arch_weights(beta), train=True, mutable=["batch_stats"])
    return cross_entropy(logits, y), (upd["batch_stats"], feats)


def unrolled_weights(net: SuperNetwork, w, bstats, beta, x, y, xi: float):
    """``W' = W − ξ ∇_W L_train(W, β)`` (differentiable in β and W)."""
    g = jax.grad(lambda w_: supernet_loss(net, w_, bstats, beta, x, y)[0])(w)
    return jax.tree_util.tree_map(lambda a, b: a - xi * b, w, g)


def unrolled_val_loss(net: SuperNetwork, w, bstats, beta, xt, yt, xv, yv, xi: float):
    """DARTS 2nd-order objective ``L_val(W − ξ∇_W L_train(W, β), β)`` (exact in β by jax.grad)."""
    w1 = unrolled_weights(net, w, bstats, beta, xt, yt, xi)
    return supernet_loss(net, w1, bstats, beta, xv, yv)[0]


class DartsSteps(CompiledSteps):
    """Weight step and 1st/2nd-order architecture step of DARTS for one supernet."""

    def __init__(self, net: SuperNetwork, cfg: DartsConfig, order: int):
        super().__init__()
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        self.net, self.cfg, self.order = net, cfg, order
        self.tx = tx = make_optimizer(cfg)
        xi = cfg.unroll_lr

        def weight_step(state, x, y):
            p = state["params"]
            (loss, (nbs, _)), gw = jax.value_and_grad(
                lambda w: supernet_loss(net, w, state["batch_stats"], p["beta"], x, y), has_aux=True)(p["weights"])
            grads = {"weights": gw, "beta": jax.tree_util.tree_map(jnp.zeros_like, p["beta"])}
            upd, opt = tx.update(grads, state["opt"], p, phase_name="weights")
            return {**state, "params": optax.apply_updates(p, upd), "batch_stats": nbs, "opt": opt}, loss

        def arch_step(state, xt, yt, xv, yv):
            p, bs = state["params"], state["batch_stats"]
            if order == 1:
                f = lambda b: supernet_loss(net, p["weights"], bs, b, xv, yv)[0]  # noqa: E731
            else:
                f = lambda b: unrolled_val_loss(net, p["weights"], bs, b, xt, yt, xv, yv, xi)  # noqa: E731
            loss, gb = jax.value_and_grad(f)(p["beta"])
            grads = {"weights": jax.tree_util.tree_map(jnp.zeros_like, p["weights"]), "beta": gb}
            upd, opt = tx.update(grads, state["opt"], p, phase_name="beta")
            return {**state, "params": optax.apply_updates(p, upd), "opt": opt}, loss

        self.register("weights", weight_step)
        self.register("arch", arch_step)

    def init_state(self, seed: int, input_shape, structure: CellStructure) -> dict:
        w, bs = init_supernet(self.net, seed, input_shape)
        beta = init_beta(structure, self.net.ops, self.net.skeleton, rng(seed, 0), self.cfg.beta_init_std)
        params = {"weights": w, "beta": beta}
        return {"params": params, "batch_stats": bs, "opt": self.tx.init(params)}

    def extra_results(self, state, data) -> dict:
        """Method-specific entries of the search result (none for DARTS)."""
        return {}

    def step(self, state, s: int, batches, seed: int = 0):
        """One iteration (architecture step unless warming up, then weight step)."""
        (xt, yt), (xv, yv) = batches
        losses = {}
        if s >= self.cfg.warmup_steps:
            state, losses["arch"] = self.call("arch", state, xt, yt, xv, yv)
        state, losses["train"] = self.call("weights", state, xt, yt)
        return state, losses


def init_supernet(net: SuperNetwork, seed: int, input_shape) -> tuple[dict, dict]:
    """Supernet params / batch stats drawn with numpy (as network.init_network: no compile)."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    E, K = len(net.structure.pairs), len(net.ops)
    wts = {"normal": jnp.full((E, K), 1.0 / K)}
    if net.skeleton.reductions:
        wts["reduce"] = wts["normal"]
    shapes = jax.eval_shape(lambda x: net.init(jax.random.PRNGKey(0), x, wts, train=False), x)
    gen = np.random.Generator(np.random.PCG64(seed_sequence(np.random.SeedSequence([seed, 1]).generate_state(2))))
    v = init_from_shapes(shapes, gen)
    return v["params"], v.get("batch_stats", {})


def supernet_accuracy(net: SuperNetwork, state, x, y, bs: int) -> float:
    """Eval-mode accuracy of the mixed supernet (running BN statistics)."""

    @jax.jit
    def pred(w, bstats, beta, xb):
        return net.apply({"params": w, "batch_stats": bstats}, xb, arch_weights(beta), train=False)[0].argmax(-1)

    p = state["params"]
    return accuracy(lambda xb: pred(p["weights"], state["batch_stats"], p["beta"], xb), x, y, min(bs, len(y)))


# --- the search -----------------------------------------------------------------------------
StepsFactory = Callable[[SuperNetwork, DartsConfig, int], CompiledSteps]


def darts_steps_factory(method: str) -> StepsFactory:
    """The step builder of ``darts1`` (first order) or ``darts2`` (second order)."""
    if method not in METHODS:
        raise UserError(f"unknown search method {method!r} for DARTS; "
                        f"{did_you_mean(method, [*METHODS, 'tetlo', 'fuse', 'random'])}")
    order = 1 if method == "darts1" else 2
    return lambda net, cfg, num_classes: DartsSteps(net, cfg, order)


def compiled_steps(method: str, net: SuperNetwork, cfg: DartsConfig, num_classes: int, input_shape,
                   factory: StepsFactory):
    """Step objects cached (the runtime's bounded step cache) per (method, supernet, settings, input
    shape): seeds in one process compile once (later searches report compile_s = 0)."""
    key = ("darts", method, net.structure, net.ops, net.skeleton, net.num_classes, net.impl, cfg,
           tuple(input_shape))
    return STEP_CACHE.get(key, lambda: factory(net, cfg, num_classes))


def _probs(beta) -> dict:
    return {k: np.asarray(v, np.float64).round(6).tolist() for k, v in arch_weights(beta).items()}


def _resume(checkpoint_dir, fp: str, state, method: str, total: int, log) -> tuple:
    """(state, first step, history, search s, compile s) from a checkpoint, or a fresh start."""
    got = ckpt.load(checkpoint_dir, fp, CKPT, like=state) if checkpoint_dir else None
    if got is None:
        return state, 0, [{"step": 0, "softmax_beta": _probs(state["params"]["beta"])}], 0.0, 0.0
    meta, state = got
    log(f"{method}: resuming from {ckpt.path(checkpoint_dir, CKPT)} at step {meta['step']}/{total}")
    return state, meta["step"], meta["history"], meta["search_s"], meta["compile_s"]


def _search_loop(method, steps, state, data, cfg: DartsConfig, seed: int, fp: str, checkpoint_dir, log):
    """Iterations from the last checkpoint on; returns (state, history, first step, search s, compile s)."""
    compile_before = steps.compile_s
    state, start, history, search_s, compile_prev = _resume(checkpoint_dir, fp, state, method, cfg.steps, log)
    t_seg = time.perf_counter()
    for s in range(start, cfg.steps):
        batches = (batch_at(data.x_train, data.y_train, cfg.batch_size, seed, 1, s),
                   batch_at(data.x_val, data.y_val, cfg.batch_size, seed, 2, s))
        state, losses = steps.step(state, s, batches, seed=seed)
        done = s + 1
        if done % cfg.history_every == 0 or done == cfg.steps:
            history.append({"step": done, "softmax_beta": _probs(state["params"]["beta"]),
                            **{f"{k}_loss": float(v) for k, v in losses.items()}})
            log(f"{method} step {done}/{cfg.steps}: " + " ".join(f"{k} {float(v):.4f}" for k, v in losses.items()))
        if checkpoint_dir and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            now = time.perf_counter()
            search_s, t_seg = search_s + now - t_seg, now
            ckpt.save(checkpoint_dir, fp, {"step": done, "history": history, "search_s": search_s,
                                           "compile_s": compile_prev + steps.compile_s - compile_before},
                      state, CKPT)
    search_s += time.perf_counter() - t_seg
    return state, history, start, search_s, compile_prev + steps.compile_s - compile_before


def differentiable_search(method: str, data, space, cfg: DartsConfig, seed: int = 0, *,
                          final: FinalConfig | None = DEFAULT_FINAL, final_data=None,
                          checkpoint_dir: str | None = None, log: Callable[[str], None] = print,
                          steps_factory: StepsFactory | None = None) -> dict:
    """DARTS (``darts1``/``darts2``; TETLO with its ``steps_factory``) over ``space`` on ``data``.

    Returns the result dict: derived genotype, skip_connect count, β history,
    wall and compile time, settings, and the final from-scratch numbers
    (``final`` protocol on ``final_data``, default ``data``; ``final=None`` skips it).
    """
    factory = steps_factory or darts_steps_factory(method)
    input_shape = tuple(data.x_train.shape[1:])
    net, structure = supernet_for_space(space, cfg.skeleton, data.num_classes, cfg.mixed_impl)
    steps = compiled_steps(method, net, cfg, data.num_classes, input_shape, factory)
    state = steps.init_state(seed, input_shape, structure)
    fp = fingerprint(data, space, cfg, seed, method=method)
    try:
        state, history, start, search_s, compile_s = _search_loop(method, steps, state, data, cfg, seed, fp,
                                                                  checkpoint_dir, log)
    except KeyboardInterrupt:
        raise ckpt.interrupted(checkpoint_dir, CKPT) from None
    geno = derive_genotype(state["params"]["beta"], structure, net.ops)
    result = {
        "method": method,
        "space": space.to_dict(),
        "searched_structure": structure.to_dict(),
        "structures_in_space": len(space.structures),
        "ops": list(net.ops),
        "settings": to_dict(cfg),
        "seed": seed,
        "genotype": geno.to_dict(),
        "genotype_short": geno.short(),
        "skip_connect": skip_count(geno),
        "edges": len(structure.pairs) * (2 if geno.reduce is not None else 1),
        "beta": {k: np.asarray(v).tolist() for k, v in state["params"]["beta"].items()},
        "beta_history": history,
        "supernet_val_accuracy": supernet_accuracy(net, state, data.x_val, data.y_val, cfg.eval_batch_size),
        "search_wall_s": search_s,
        "search_compile_s": compile_s,
        "unrolled": "exact jax.grad through one unrolled plain-gradient step" if method != "darts1" else None,
        "resumed_from_step": start or None,
        **steps.extra_results(state, data),
    }
    if final is not None:
        result["final"] = train_final(geno, final_data if final_data is not None else data, final, seed)
    return result


def plot_beta_history(result: dict, path: str) -> str:
    """softmax(β) per op over search steps, one panel per edge (normal, then reduce cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = result["beta_history"]
    ops = result["ops"]
    steps = [h["step"] for h in hist]
    cells = [c for c in ("normal", "reduce") if c in hist[0]["softmax_beta"]]
    pairs = result["searched_structure"]["edges"]
    ncols = len(pairs)
    fig, axes = plt.subplots(len(cells), ncols, figsize=(2.6 * ncols, 2.4 * len(cells)), squeeze=False,
                             sharey=True)
    for r, cell in enumerate(cells):
        arr = np.asarray([h["softmax_beta"][cell] for h in hist])  # (T, E, K)
        for e in range(ncols):
            ax = axes[r][e]
            for k, op in enumerate(ops):
                ax.plot(steps, arr[:, e, k], label=op, lw=1.6 if op == "skip_connect" else 1.0,
                        ls="--" if op == "skip_connect" else "-")
            ax.set_title(f"{cell} {pairs[e][0]}->{pairs[e][1]}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("softmax(β)")
    axes[-1][0].set_xlabel("step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(ops), 5), fontsize=7)
    fig.suptitle(f"{result['method']}: architecture weights (seed {result['seed']}, "
                 f"skip_connect {result['skip_connect']}/{result['edges']})", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    buf = io.BytesIO()   # written atomically: a kill never leaves a half-written PNG
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
