"""DARTS (Liu et al. 2019) over the task-aware search spaces: supernet, 1st/2nd order, derivation.

Public API::

    SearchConfig(...), TetloConfig(...)    # frozen dataclasses; SearchConfig.from_config(cfg.search)
    MixedOp(ops, C, stride)                # __call__(x, weights (K,), train) -> Σ_k w_k op_k(x)
    SuperNetwork(structure, ops, skeleton, num_classes)
                                           # __call__(x, weights, train) -> (logits, features)
    supernet_for_space(space, skeleton, num_classes) -> (SuperNetwork, structure)
    init_beta(structure, ops, skeleton, gen) -> {'normal': (E, K)[, 'reduce': (E, K)]}
    arch_weights(beta) -> softmax over the op axis, same tree
    derive_genotype(beta, structure, ops) -> Genotype     # top op per edge, `none` excluded
    skip_count(genotype) -> int
    DartsSteps(net, cfg, order)            # compiled weight / architecture steps
    unrolled_val_loss(...)                 # the 2nd-order objective L_val(w - ξ∇_w L_train(w, β), β)
    train_genotype(genotype, data, cfg, seed) -> dict   # derived cell from scratch, val + test once
    differentiable_search(method, data, space, cfg, seed, checkpoint_dir=None, log=print) -> dict

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

**Phases** (one jitted, AOT-compiled step each, guarded by
a per-instance max-one-trace guard, see :func:`max_one_trace`): the *weight step* on a train batch,
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
every ``search.checkpoint_every`` steps (one ``.npz`` written to a temporary
file, fsynced, renamed) together with a fingerprint of data, space, settings,
method and seed; a rerun with the same settings resumes and gives exactly the
result of an uninterrupted run.  A checkpoint that cannot be read or whose
fingerprint differs is reported and not used.

**Final.**  The derived genotype is re-initialised and trained from scratch
(``search.final_steps`` Adam steps on the train split, the same skeleton),
then evaluated once on validation and once on test (the test split is never
seen by the search).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tanas_jax.errors import UserError
from tanas_jax.search.fuse import phase_gated  # noqa: F401  (shared with FUSE; re-exported)
from tanas_jax.search.genotype import Cell, CellStructure, Genotype
from tanas_jax.search.network import (CellModule, Skeleton, build_network, get_skeleton, init_from_shapes,
                                      init_network, param_count, stem)
from tanas_jax.search.ops import make_op

METHODS = ("darts1", "darts2", "tetlo")


# --- settings -------------------------------------------------------------------------------
def _from_section(cls, section, prefix: str, nested: dict | None = None):
    d = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    bad = set(d) - names
    if bad:
        raise UserError(f"{prefix} config: unknown field(s) {sorted(bad)}; valid: {', '.join(sorted(names))}")
    for k, sub in (nested or {}).items():
        if k in d and not isinstance(d[k], sub):
            d[k] = _from_section(sub, d[k], f"{prefix}.{k}")
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class TetloConfig:
    """TETLO-only settings (``search.tetlo``); see :mod:`tanas_jax.search.tetlo`."""

    aux_channels: tuple = (16, 32)   # auxiliary CNN: conv3x3+ReLU+maxpool per width, GAP, linear
    aux_learning_rate: float = 1e-3  # Adam on V
    aux_unroll_lr: float = 0.01      # ξ_V of the unrolled stage-2 step
    qrs_weight: float = 1.0          # γ: V's loss = CE + γ·QRS
    quadruples: int = 64             # quadruples sampled per batch
    qrs_margin: float = 0.0          # hinge margin m (0: zero loss iff every order agrees)
    qrs_temperature: float = 0.05    # τ of the main model's soft order tanh(Δ_main / τ)
    main_weight: float = 1.0         # λ: stage-3 loss = L_val(V') + λ·L_val(W')

    def __post_init__(self):
        object.__setattr__(self, "aux_channels", tuple(int(c) for c in self.aux_channels))
        if not self.aux_channels or min(self.aux_channels) < 1:
            raise UserError(f"search.tetlo.aux_channels must be a non-empty list of widths >= 1, "
                            f"got {list(self.aux_channels)}")
        if self.quadruples < 1:
            raise UserError(f"search.tetlo.quadruples must be >= 1, got {self.quadruples}")
        if self.qrs_temperature <= 0:
            raise UserError(f"search.tetlo.qrs_temperature must be > 0, got {self.qrs_temperature}")
        for f in ("qrs_weight", "main_weight", "qrs_margin", "aux_unroll_lr"):
            if getattr(self, f) < 0:
                raise UserError(f"search.tetlo.{f} must be >= 0, got {getattr(self, f)}")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Settings of the differentiable searches (config section ``search``)."""

    skeleton: Any = "tiny"           # preset name or dict of Skeleton fields (C >= 2)
    steps: int = 200                 # search iterations (one β step + one weight step each)
    warmup_steps: int = 0            # weight-only iterations before β steps start
    batch_size: int = 64
    w_optimizer: str = "adam"        # adam | sgd (momentum 0.9, DARTS)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    arch_learning_rate: float = 3e-3  # Adam on β (DARTS: 3e-4 over 50 epochs)
    arch_weight_decay: float = 1e-3
    unroll_lr: float = 0.01          # ξ of the unrolled weight step (darts2, tetlo)
    beta_init_std: float = 1e-3      # β ~ N(0, std²) (DARTS)
    history_every: int = 10          # record softmax(β) every N steps
    checkpoint_every: int = 50       # atomic checkpoint every N steps
    final_steps: int = 300           # training the derived genotype from scratch
    final_learning_rate: float = 1e-3
    eval_batch_size: int = 500
    input_shape: tuple = (28, 28, 1)
    mixed_impl: str = "dense"          # lax: grouped-conv depthwise in the supernet (fast compile) | ops
    tetlo: Any = dataclasses.field(default_factory=TetloConfig)

    def __post_init__(self):
        for f in ("steps", "batch_size", "history_every", "checkpoint_every", "eval_batch_size"):
            if getattr(self, f) < 1:
                raise UserError(f"search.{f} must be >= 1, got {getattr(self, f)}")
        for f in ("warmup_steps", "final_steps"):
            if getattr(self, f) < 0:
                raise UserError(f"search.{f} must be >= 0, got {getattr(self, f)}")
        if self.mixed_impl not in MIXED_IMPLS:
            raise UserError(f"search.mixed_impl: {self.mixed_impl!r}; valid: {', '.join(MIXED_IMPLS)}")
        if self.w_optimizer not in ("adam", "sgd"):
            raise UserError(f"search.w_optimizer: {self.w_optimizer!r}; valid: adam, sgd")
        for f in ("learning_rate", "arch_learning_rate", "final_learning_rate"):
            if not getattr(self, f) > 0:
                raise UserError(f"search.{f} must be > 0, got {getattr(self, f)}")
        if hasattr(self.skeleton, "to_dict"):
            object.__setattr__(self, "skeleton", self.skeleton.to_dict())
        if isinstance(self.skeleton, dict):  # hashable form (steps are cached by settings)
            object.__setattr__(self, "skeleton", tuple(sorted(
                (k, tuple(v) if isinstance(v, list) else v) for k, v in self.skeleton.items())))
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise UserError(f"search.input_shape must be (H, W, C), got {list(self.input_shape)}")
        if not isinstance(self.tetlo, TetloConfig):
            object.__setattr__(self, "tetlo", _from_section(TetloConfig, self.tetlo or {}, "search.tetlo"))
        sk = self.skeleton_obj
        if sk.C < 2:
            raise UserError(f"search.skeleton.C must be >= 2 (reduction edges split C channels in two), "
                            f"got {sk.C}")

    @property
    def skeleton_obj(self) -> Skeleton:
        return get_skeleton(self.skeleton)

    @classmethod
    def from_config(cls, section, **overrides) -> "SearchConfig":
        d = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
        d.update({k: v for k, v in overrides.items() if v is not None})
        return _from_section(cls, d, "search", {"tetlo": TetloConfig})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["skeleton"] = self.skeleton_obj.to_dict()
        d["input_shape"] = list(self.input_shape)
        d["tetlo"]["aux_channels"] = list(self.tetlo.aux_channels)
        return d


# --- supernet -------------------------------------------------------------------------------
class LaxDepthwiseConv(nn.Module):
    """Depthwise kxk conv as ONE ``lax.conv_general_dilated``.

    Same parameter (``kernel`` (k, k, 1, C)), padding and output size as
    :class:`tanas_jax.search.ops.DepthwiseConv`, which sums k*k shifted slices:
    fast for one op, but a supernet holding every op of the standard space
    then has thousands of slice ops and XLA took minutes (3.5 min for one
    weight step, 2 shared cores) to compile it.  ``mode='dense'`` (default)
    runs a full conv with the block-diagonal kernel ``kern ⊗ I_C`` (C times
    the flops, but Eigen's dense conv: 2-6 ms vs 6-35 ms for the grouped conv
    for C = 3..8, 20x20, batch 32, fwd+bwd, compile ~0.1 s); ``mode='grouped'``
    uses ``feature_group_count=C``.  Tests check both equal the slice version.
    """

    kernel_size: int
    strides: int = 1
    dilation: int = 1
    mode: str = "dense"

    @nn.compact
    def __call__(self, x):
        k, s, d = self.kernel_size, self.strides, self.dilation
        c = x.shape[-1]
        kern = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32).astype(x.dtype)
        pad = (k - 1) * d // 2
        if self.mode == "dense":
            kern, groups = kern[:, :, 0, :, None] * jnp.eye(c, dtype=x.dtype), 1
        else:
            groups = c
        return jax.lax.conv_general_dilated(x, kern, (s, s), [(pad, pad), (pad, pad)],
                                            rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=groups)


class LaxDilConv(nn.Module):
    """:class:`tanas_jax.search.ops.DilConv` with :class:`LaxDepthwiseConv` (same parameter tree)."""

    C: int
    kernel_size: int
    stride: int = 1
    dilation: int = 2
    mode: str = "dense"

    @nn.compact
    def __call__(self, x, train: bool = False):
        from tanas_jax.search.ops import BatchNormNoAffine

        y = LaxDepthwiseConv(self.kernel_size, self.stride, self.dilation, self.mode, name="dw")(nn.relu(x))
        y = nn.Dense(self.C, use_bias=False, name="pw")(y)
        return BatchNormNoAffine(use_running_average=not train, name="bn")(y)


class LaxSepConv(nn.Module):
    """:class:`tanas_jax.search.ops.SepConv` with :class:`LaxDepthwiseConv` (same parameter tree)."""

    C: int
    kernel_size: int
    stride: int = 1
    mode: str = "dense"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LaxDilConv(self.C, self.kernel_size, self.stride, 1, self.mode, name="block1")(x, train)
        return LaxDilConv(self.C, self.kernel_size, 1, 1, self.mode, name="block2")(x, train)


MIXED_IMPLS = ("dense", "grouped", "ops")


def supernet_op(op: str, C: int, stride: int, impl: str = "dense", name: str | None = None) -> nn.Module:
    """An edge op of the supernet: :func:`make_op` (``impl='ops'``), or the same op with
    :class:`LaxDepthwiseConv` depthwise layers (``'dense'``/``'grouped'``; same parameter tree)."""
    if impl != "ops" and (op.startswith("sep_conv_") or op.startswith("dil_conv_")):
        k = int(op[-1])
        return (LaxSepConv(C, k, stride, impl, name=name) if op.startswith("sep_conv_")
                else LaxDilConv(C, k, stride, 2, impl, name=name))
    return make_op(op, C, stride, name=name)


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
    ops = _searchable_ops(space)
    structure = space.structures[0]
    return SuperNetwork(structure, ops, get_skeleton(skeleton), int(num_classes), impl), structure


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
def make_optimizer(cfg: SearchConfig, with_aux: bool = False) -> optax.GradientTransformationExtraArgs:
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
def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


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


def max_one_trace(fn: Callable, name: str) -> Callable:
    """Raise if ``fn`` is traced twice (silent recompilation guard).

    ``chex.assert_max_traces`` keys its counter on the source location, so two
    searches in one process (tests, seeds in a loop) would trip it although
    each instance traces once; this guard counts per wrapped instance.
    """
    count = [0]

    def wrapped(*args):
        count[0] += 1
        if count[0] > 1:
            raise AssertionError(f"search step {name!r} traced {count[0]} times (argument shapes changed?)")
        return fn(*args)

    wrapped.__name__ = getattr(fn, "__name__", name)
    return wrapped


class CompiledSteps:
    """Shared machinery: AOT compile per step name (timed), max-traces guards."""

    def __init__(self):
        self.compile_s = 0.0
        self._compiled: dict[str, Any] = {}
        self._fns: dict[str, Callable] = {}

    def _register(self, name: str, fn: Callable) -> None:
        self._fns[name] = max_one_trace(fn, name)

    def call(self, name: str, *args):
        fn = self._compiled.get(name)
        if fn is None:
            t = time.perf_counter()
            fn = jax.jit(self._fns[name]).lower(*args).compile()
            self.compile_s += time.perf_counter() - t
            self._compiled[name] = fn
        return fn(*args)


class DartsSteps(CompiledSteps):
    """Weight step and 1st/2nd-order architecture step of DARTS for one supernet."""

    def __init__(self, net: SuperNetwork, cfg: SearchConfig, order: int):
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

        self._register("weights", weight_step)
        self._register("arch", arch_step)

    def init_state(self, seed: int, input_shape, structure: CellStructure) -> dict:
        w, bs = init_supernet(self.net, seed, input_shape)
        beta = init_beta(structure, self.net.ops, self.net.skeleton, _gen(seed, 0), self.cfg.beta_init_std)
        params = {"weights": w, "beta": beta}
        return {"params": params, "batch_stats": bs, "opt": self.tx.init(params)}

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
    from tanas_jax.search.network import _seed_sequence  # same initialisation law as the cell nets

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    E, K = len(net.structure.pairs), len(net.ops)
    wts = {"normal": jnp.full((E, K), 1.0 / K)}
    if net.skeleton.reductions:
        wts["reduce"] = wts["normal"]
    shapes = jax.eval_shape(lambda x: net.init(jax.random.PRNGKey(0), x, wts, train=False), x)
    gen = np.random.Generator(np.random.PCG64(_seed_sequence(np.random.SeedSequence([seed, 1]).generate_state(2))))
    v = init_from_shapes(shapes, gen)
    return v["params"], v.get("batch_stats", {})


# --- data streams ---------------------------------------------------------------------------
def _gen(*parts: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(p) for p in parts])))


def batch_at(x: np.ndarray, y: np.ndarray, bs: int, seed: int, stream: int, step: int):
    """The ``step``-th batch of shuffled epochs; a pure function of (seed, stream, step)."""
    bs = min(bs, len(y))
    per_epoch = len(y) // bs
    epoch, k = divmod(step, per_epoch)
    perm = _gen(seed, stream, epoch).permutation(len(y))
    idx = np.sort(perm[k * bs:(k + 1) * bs])
    return x[idx], y[idx]


# --- checkpoint -----------------------------------------------------------------------------
CKPT_NAME = "search_checkpoint.npz"


def save_checkpoint(directory: str, fingerprint: str, meta: dict, state) -> str:
    from tanas_jax.io import atomic_write_bytes, json_default

    leaves = jax.tree_util.tree_leaves(state)
    buf = io.BytesIO()
    body = json.dumps({"fingerprint": fingerprint, "meta": meta, "leaves": len(leaves)}, default=json_default)
    np.savez(buf, __meta__=np.frombuffer(body.encode(), np.uint8), **{f"l{i}": np.asarray(a) for i, a in
                                                                        enumerate(leaves)})
    path = os.path.join(directory, CKPT_NAME)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(directory: str, fingerprint: str, like_state, log=print):
    """(meta, state) or None; unreadable / foreign checkpoints are reported and ignored."""
    path = os.path.join(directory, CKPT_NAME)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as z:
            head = json.loads(bytes(z["__meta__"]).decode())
            leaves = [z[f"l{i}"] for i in range(head["leaves"])]
    except Exception as e:  # noqa: BLE001 - any damage means "do not use"
        log(f"search: checkpoint {path} is unreadable ({type(e).__name__}); starting from scratch")
        return None
    if head.get("fingerprint") != fingerprint:
        log(f"search: checkpoint {path} belongs to other settings/data/seed; starting from scratch "
            "(it will be overwritten)")
        return None
    like, treedef = jax.tree_util.tree_flatten(like_state)
    if len(like) != len(leaves) or any(np.shape(a) != np.shape(b) for a, b in zip(like, leaves)):
        log(f"search: checkpoint {path} does not match the network; starting from scratch")
        return None
    state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a, dtype=jnp.asarray(b).dtype)
                                                   for a, b in zip(leaves, like)])
    return head["meta"], state


# --- training the derived genotype ----------------------------------------------------------
def train_genotype(genotype: Genotype, data, cfg: SearchConfig, seed: int, steps: int | None = None) -> dict:
    """Train ``genotype`` from scratch (Adam, train split), evaluate once on val and test."""
    from tanas_jax.train import evaluate, make_steps

    t0 = time.perf_counter()
    steps = cfg.final_steps if steps is None else steps
    sk = cfg.skeleton_obj
    net = build_network(genotype, sk, data.num_classes)
    v = init_network(genotype, sk, data.num_classes, np.random.SeedSequence([seed, 7]).generate_state(2),
                     tuple(data.x_train.shape[1:]))
    tx = optax.adam(cfg.final_learning_rate)
    train_step, eval_step = make_steps(net, tx)
    params, bstats = v["params"], v.get("batch_stats", {})
    opt = tx.init(params)
    loss = None
    for s in range(steps):
        xb, yb = batch_at(data.x_train, data.y_train, cfg.batch_size, seed, 8, s)
        params, bstats, opt, loss, _ = train_step(params, bstats, opt, xb, yb)
    variables = {"params": params, "batch_stats": bstats}
    val = evaluate(eval_step, variables, data.x_val, data.y_val, cfg.eval_batch_size)
    test = evaluate(eval_step, variables, data.x_test, data.y_test, cfg.eval_batch_size)
    return {"genotype": genotype.to_dict(), "params": param_count(params), "steps": steps,
            "train_loss": None if loss is None else float(loss),
            "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
            "wall_s": time.perf_counter() - t0}


def supernet_accuracy(net: SuperNetwork, state, x, y, bs: int) -> float:
    """Eval-mode accuracy of the mixed supernet (running BN statistics)."""

    @jax.jit
    def pred(w, bstats, beta, xb):
        return net.apply({"params": w, "batch_stats": bstats}, xb, arch_weights(beta), train=False)[0].argmax(-1)

    p = state["params"]
    correct, n = 0, len(y)
    bs = min(bs, n)
    for i in range(0, n, bs):
        xb = x[i:i + bs]
        m = len(xb)
        if m < bs:
            xb = np.concatenate([xb, np.zeros((bs - m, *xb.shape[1:]), xb.dtype)])
        correct += int((np.asarray(pred(p["weights"], state["batch_stats"], p["beta"], xb))[:m] == y[i:i + m]).sum())
    return correct / n


# --- the search -----------------------------------------------------------------------------
_STEPS_CACHE: dict = {}


def compiled_steps(method: str, net: SuperNetwork, cfg: SearchConfig, num_classes: int, input_shape):
    """Step objects cached per (method, supernet, settings, input shape): seeds in one process
    compile once (later searches report compile_s = 0)."""
    key = (method, net.structure, net.ops, net.skeleton, net.num_classes, net.impl, cfg, tuple(input_shape))
    steps = _STEPS_CACHE.get(key)
    if steps is None:
        if method == "tetlo":
            from tanas_jax.search.tetlo import TetloSteps

            steps = TetloSteps(net, cfg, num_classes)
        else:
            steps = DartsSteps(net, cfg, order=1 if method == "darts1" else 2)
        if len(_STEPS_CACHE) >= 8:
            _STEPS_CACHE.pop(next(iter(_STEPS_CACHE)))
        _STEPS_CACHE[key] = steps
    return steps


def fingerprint(method: str, data, space, cfg: SearchConfig, seed: int) -> str:
    rec = data.record() if hasattr(data, "record") else {"shapes": [list(data.x_train.shape)]}
    body = json.dumps({"method": method, "data": rec, "space": space.to_dict(), "cfg": cfg.to_dict(),
                       "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _probs(beta) -> dict:
    return {k: np.asarray(v, np.float64).round(6).tolist() for k, v in arch_weights(beta).items()}


def differentiable_search(method: str, data, space, cfg: SearchConfig, seed: int = 0, *,
                          checkpoint_dir: str | None = None, log: Callable[[str], None] = print,
                          final: bool = True) -> dict:
    """DARTS (``darts1``/``darts2``) or TETLO (``tetlo``) over ``space`` on ``data`` (TaskData-like).

    Returns the result dict: derived genotype, skip_connect count, β history,
    wall and compile time, settings, the final from-scratch numbers.
    """
    if method not in METHODS:
        from tanas_jax.errors import did_you_mean

        raise UserError(f"unknown search method {method!r}; {did_you_mean(method, list(METHODS) + ['fuse'])}")
    input_shape = tuple(data.x_train.shape[1:])
    net, structure = supernet_for_space(space, cfg.skeleton_obj, data.num_classes, cfg.mixed_impl)
    steps = compiled_steps(method, net, cfg, data.num_classes, input_shape)
    compile_before = steps.compile_s
    state = steps.init_state(seed, input_shape, structure)
    fp = fingerprint(method, data, space, cfg, seed)
    history: list[dict] = [{"step": 0, "softmax_beta": _probs(state["params"]["beta"])}]
    start, search_s, compile_prev = 0, 0.0, 0.0
    if checkpoint_dir:
        got = load_checkpoint(checkpoint_dir, fp, state, log)
        if got is not None:
            meta, state = got
            start, history, search_s, compile_prev = meta["step"], meta["history"], meta["search_s"], meta["compile_s"]
            log(f"{method}: resuming from {os.path.join(checkpoint_dir, CKPT_NAME)} at step {start}/{cfg.steps}")
    bs = cfg.batch_size
    t_seg = time.perf_counter()
    losses: dict = {}
    for s in range(start, cfg.steps):
        batches = (batch_at(data.x_train, data.y_train, bs, seed, 1, s),
                   batch_at(data.x_val, data.y_val, bs, seed, 2, s))
        state, losses = steps.step(state, s, batches, seed=seed)
        done = s + 1
        if done % cfg.history_every == 0 or done == cfg.steps:
            rec = {"step": done, "softmax_beta": _probs(state["params"]["beta"]),
                   **{f"{k}_loss": float(v) for k, v in losses.items()}}
            history.append(rec)
            log(f"{method} step {done}/{cfg.steps}: " + " ".join(f"{k} {float(v):.4f}" for k, v in losses.items()))
        if checkpoint_dir and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            now = time.perf_counter()
            search_s += now - t_seg
            t_seg = now
            save_checkpoint(checkpoint_dir, fp, {"step": done, "history": history, "search_s": search_s,
                                                 "compile_s": compile_prev + steps.compile_s - compile_before},
                            state)
    search_s += time.perf_counter() - t_seg
    compile_s = compile_prev + steps.compile_s - compile_before
    geno = derive_genotype(state["params"]["beta"], structure, net.ops)
    result = {
        "method": method,
        "space": space.to_dict(),
        "searched_structure": structure.to_dict(),
        "structures_in_space": len(space.structures),
        "ops": list(net.ops),
        "settings": cfg.to_dict(),
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
    }
    if method == "tetlo":
        result["aux_val_accuracy"] = steps.aux_accuracy(state, data.x_val, data.y_val, cfg.eval_batch_size)
    if final:
        result["final"] = train_genotype(geno, data, cfg, seed)
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
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
