"""One source of configuration: the settings schema, presets and ``--set`` overrides.

This module owns every configurable default and its validation.  Each config
section is a frozen dataclass below (``SECTIONS`` maps the dotted section name
to it); the presets (``configs/quick.py``, ``configs/paper.py``) are *derived*
from these dataclasses by :func:`preset` with a few overrides, so a default
lives in exactly one place.  Code reads a section as a validated dataclass::

    cfg = load_config("quick", ["fuse.rounds=2"])      # ml_collections.ConfigDict
    fuse = section(cfg, "fuse")                         # FuseConfig, validated
    cfg2 = updated(cfg, {"data.source": "files"})       # a copy; cfg is unchanged

Every mistake (unknown section or field, wrong type, out-of-range value, a
config file that fails to load) is a :class:`~tanas_jax.errors.UserError`
naming the field and what is valid.  This module imports nothing else from the
package but :mod:`tanas_jax.errors`.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from tanas_jax.errors import UserError, did_you_mean

PRESETS = ("quick", "paper")
DATA_SOURCES = ("auto", "tfds", "files", "bundled")
SPLITS = ("train", "val", "test")
ESTIMATORS = ("empirical", "mc", "exact")
FISHER_METHODS = ("auto", "fast", "vmap")
METRICS = ("logdet", "frechet", "transform")
TANAS_BASELINES = ("standard", "random", "darts1", "darts2", "tetlo")   # tanas.baselines
SPECTRA = ("diag", "diag_sorted", "full")
NORMALIZATIONS = ("network", "layer")
REDUCTIONS = ("global", "per_layer")
HEAD_MODES = ("pad", "backbone")
CRITERIA = ("accuracy", "mse")
SCOPES = ("layer", "global")
ACTIVATIONS = ("relu", "linear")
REFERENCES = ("own", "unpruned")
MIXED_IMPLS = ("dense", "grouped", "ops")
W_OPTIMIZERS = ("adam", "sgd")
SEED_LIMIT = 2**32                # seeds are integers in [0, 2**32): a JAX PRNG key holds 32 bits per word


def _fail(name: str, msg: str):
    raise UserError(f"{name}: {msg}")


def _choice(name: str, value, valid) -> None:
    if value not in valid:
        _fail(name, f"{value!r} is not valid; {did_you_mean(str(value), valid)}")


def _at_least(obj, section: str, lo, *fields) -> None:
    for f in fields:
        v = getattr(obj, f)
        if v is not None and v < lo:
            _fail(f"{section}.{f}", f"must be >= {lo}, got {v}")


def _open_unit(obj, section: str, *fields, closed_low: bool = False) -> None:
    for f in fields:
        v = getattr(obj, f)
        if not ((0.0 <= v if closed_low else 0.0 < v) and v < 1.0):
            _fail(f"{section}.{f}", f"must be in {'[' if closed_low else '('}0, 1), got {v}")


def _positive(obj, section: str, *fields) -> None:
    for f in fields:
        v = getattr(obj, f)
        if not v > 0:
            _fail(f"{section}.{f}", f"must be > 0, got {v}")


def _is_number(v, kind: type) -> bool:
    """A finite int/float that is not a bool (for ``kind`` int: an int, as for a single int field)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return kind is not int or isinstance(v, int)


def _numbers(name: str, values, kind: type) -> tuple:
    """``values`` as a tuple of ``kind`` (int or float); a non-number entry is a UserError naming ``name``."""
    if isinstance(values, (str, bytes)) or not all(_is_number(v, kind) for v in values):
        what = "integers" if kind is int else "finite numbers"
        _fail(name, f"must be a list of {what}, got {values!r}")
    return tuple(kind(v) for v in values)


def _hashable_skeleton(spec):
    """A skeleton given as a dict becomes a sorted tuple of pairs (frozen configs are hash keys)."""
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if isinstance(spec, Mapping):
        return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.items()))
    return spec


DEFAULT_INIT_SEED = 0    # train.init_seed's default: every ε-net of a bank starts from init(0)


# --- sections -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where task data comes from and how it is split (section ``data``)."""

    source: str = "auto"              # auto | tfds | files | bundled
    data_dir: str | None = None
    split_seed: int = 0               # fixed split, independent of the training seed
    val_fraction: float = 0.1
    max_train: int | None = 6000      # cap per task (after balancing); None = all
    max_eval: int | None = 2000       # cap for val and test
    normalization: str | None = None  # None: per dataset (CIFAR 'half')
    # cap for the test split of a search's final evaluation only (bin/tanas); None: max_eval.  A cap >= the split
    # keeps it whole (10000: all Fashion-MNIST test images of a 10-way / grouped task) without growing val
    max_test: int | None = None

    def __post_init__(self):
        _choice("data.source", self.source, DATA_SOURCES)
        _open_unit(self, "data", "val_fraction")
        _at_least(self, "data", 1, "max_train", "max_eval", "max_test")
        _at_least(self, "data", 0, "split_seed")
        if self.split_seed >= SEED_LIMIT:
            _fail("data.split_seed", f"must be < 2**32, got {self.split_seed}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """ε-approximation networks of the bank (section ``train``)."""

    net: str = "small_cnn"
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3       # Adam, as the authors
    epsilon: float = 0.1              # ε-approximation: test accuracy >= 1 - ε
    eval_batch_size: int = 500
    # An int (default 0, chosen by the metric study, docs/results_metrics.md): every ε-net starts
    # from init(init_seed) and the training seed drives only the data order, so Fishers of nets with
    # different seeds live in the same parameter coordinates.  None: each ε-net starts from init(its
    # training seed) (the papers' independent nets).  A shared init is part of a network's bank key
    # ("<net>-init<I>-seed<S>"); seed 0 with init_seed 0 is bit-identical to init_seed None.
    init_seed: int | None = DEFAULT_INIT_SEED

    def __post_init__(self):
        _at_least(self, "train", 1, "epochs", "batch_size", "eval_batch_size")
        s = self.init_seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT):
            _fail("train.init_seed", f"must be None or an integer in [0, 2**32), got {s!r}")
        _positive(self, "train", "learning_rate")
        _open_unit(self, "train", "epsilon")


@dataclasses.dataclass(frozen=True)
class BankConfig:
    """The task bank (section ``bank``)."""

    seeds: tuple = (0,)               # networks per task (distance repeats use these)

    def __post_init__(self):
        seeds = tuple(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT for s in seeds):
            _fail("bank.seeds", f"must be a non-empty list of integers in [0, 2**32), got {list(seeds)}")
        object.__setattr__(self, "seeds", seeds)


@dataclasses.dataclass(frozen=True)
class FisherConfig:
    """The Fisher engine: per-example diagonal / Gram spectra (section ``fisher``)."""

    examples: int = 500               # examples of the data task's split per Fisher (diag)
    full_examples: int = 200          # examples for full spectra (M x M Gram matrices)
    split: str = "train"              # train | val | test
    estimator: str = "empirical"      # empirical (LD-NAS eq. 6) | mc | exact
    mc_samples: int = 1               # labels per example for mc
    method: str = "auto"              # auto | fast | vmap
    microbatch: int | None = None     # None: from the memory budget
    memory_budget_mb: int = 2048

    def __post_init__(self):
        _at_least(self, "fisher", 1, "examples", "full_examples", "mc_samples", "microbatch", "memory_budget_mb")
        _choice("fisher.split", self.split, SPLITS)
        _choice("fisher.estimator", self.estimator, ESTIMATORS)
        _choice("fisher.method", self.method, FISHER_METHODS)


@dataclasses.dataclass(frozen=True)
class DistanceConfig:
    """Fisher task distances (section ``distance``)."""

    # default by measurement (docs/results_metrics.md): Fréchet on per-layer sorted diagonals is consistent
    # (same task -> small distance) and rank-stable; the papers' choice: metric logdet, spectrum diag
    metric: str = "frechet"           # logdet | frechet | transform
    spectrum: str = "diag_sorted"     # diag | diag_sorted (per layer, sorted: unit-permutation invariant) | full
    sigma2: float = 1e-10             # authors' value (after unit-total normalisation)
    normalization: str = "network"    # network (authors) | layer
    reduction: str = "global"         # global (LD-NAS eq. 2) | per_layer (authors' code)
    head: str = "pad"                 # pad (authors) | backbone
    authors_fisher: bool = False      # authors' batch-mean-squared variant (comparison only)
    bootstrap: int = 20               # P(closest): resamples of the Fisher examples per seed (0: seeds only)
    bootstrap_blocks: int = 10        # the examples in this many blocks (one Fisher each), resampled

    def __post_init__(self):
        _choice("distance.metric", self.metric, METRICS)
        _choice("distance.spectrum", self.spectrum, SPECTRA)
        _choice("distance.normalization", self.normalization, NORMALIZATIONS)
        _choice("distance.reduction", self.reduction, REDUCTIONS)
        _choice("distance.head", self.head, HEAD_MODES)
        _positive(self, "distance", "sigma2")
        _at_least(self, "distance", 0, "bootstrap")
        _at_least(self, "distance", 2, "bootstrap_blocks")


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """TA-NAS transform-network distance (section ``transform``): an MLP 2F -> F/2 -> F on the nets'
    F-wide penultimate features, pruned by iterative magnitude pruning.  Defaults are the paper's."""

    hidden_scale: tuple = (2.0, 0.5)   # hidden widths as multiples of the target feature width
    hidden: tuple = ()                 # explicit hidden widths (override hidden_scale when set)
    output_activation: str = "relu"    # target features are post-ReLU
    learning_rate: float = 1e-3
    batch_size: int = 128
    train_epochs: int = 20             # before pruning
    finetune_epochs: int = 2           # after each pruning step (fresh Adam state)
    prune_rate: float = 0.2            # fraction of the remaining weights removed per step
    scope: str = "layer"               # layer | global magnitude ranking
    refine: int = 2                    # halve the rate after a failed step, this many times
    min_fraction: float = 1e-3         # stop pruning below this kept fraction
    max_steps: int = 60
    criterion: str = "accuracy"        # accuracy (paper) | mse
    tolerance: float = 0.02            # accuracy drop allowed vs the reference accuracy
    reference: str = "own"             # own: B's head on B's own features | unpruned: the unpruned transform
    mse_factor: float = 2.0            # criterion=mse: MSE <= factor x unpruned MSE
    val_fraction: float = 0.2          # held-out share when no separate check set is given
    max_train: int | None = None       # cap on examples used to fit the transform
    max_val: int | None = None         # cap on examples used for the quality check
    adapter: bool = False              # allow source/target feature widths to differ
    net: str | None = None             # table only: banked net whose features are used (None: train.net)
    feature_batch: int = 500           # table only: batch size of feature extraction

    def __post_init__(self):
        object.__setattr__(self, "hidden_scale", _numbers("transform.hidden_scale", self.hidden_scale, float))
        object.__setattr__(self, "hidden", _numbers("transform.hidden", self.hidden, int))
        if not 0.0 <= float(self.tolerance) < 1.0:
            _fail("transform.tolerance", f"{self.tolerance} is out of range; use an accuracy drop in [0, 1), "
                  "e.g. transform.tolerance=0.02")
        if not float(self.mse_factor) >= 1.0:
            _fail("transform.mse_factor", f"{self.mse_factor} must be >= 1 (allowed MSE growth over the "
                  "unpruned transform)")
        _choice("transform.criterion", self.criterion, CRITERIA)
        _choice("transform.reference", self.reference, REFERENCES)
        _choice("transform.scope", self.scope, SCOPES)
        _choice("transform.output_activation", self.output_activation, ACTIVATIONS)
        _open_unit(self, "transform", "prune_rate", "val_fraction")
        _open_unit(self, "transform", "min_fraction", closed_low=True)
        _at_least(self, "transform", 1, "batch_size", "feature_batch", "max_train", "max_val")
        _at_least(self, "transform", 0, "train_epochs", "finetune_epochs", "refine", "max_steps")
        _positive(self, "transform", "learning_rate")
        if any(s <= 0 for s in self.hidden_scale) or any(h < 1 for h in self.hidden):
            _fail("transform.hidden", "hidden widths and hidden_scale entries must be positive")

    def widths(self, in_dim: int, out_dim: int) -> tuple[int, ...]:
        """Layer widths ``(in, h_1, ..., out)``; hidden scale with the output width."""
        hidden = self.hidden or tuple(max(1, int(round(s * out_dim))) for s in self.hidden_scale)
        return (int(in_dim),) + hidden + (int(out_dim),)


FUSE_MIXTURES = ("probs", "logits", "log_softmax")
FUSE_WINNERS = ("alpha", "val")


@dataclasses.dataclass(frozen=True)
class FuseConfig:
    """FUSE (TA-NAS Algorithm 2), section ``fuse``."""

    candidates: int = 3           # C: the seed + C-1 samples (authors: 3; LD-NAS: 5)
    rounds: int = 3               # I (authors' code: 100; LD-NAS: 200)
    max_stages: int = 5           # stage cap per round (authors: 10)
    weight_steps: int = 20        # weight steps per stage (train split)
    alpha_steps: int = 10         # α steps per stage (validation split)
    batch_size: int = 64
    learning_rate: float = 1e-3   # Adam on the candidates' weights (authors: Adam, default lr)
    alpha_learning_rate: float = 0.05   # Adam on α
    tol: float = 1e-3             # α converged: max |Δ softmax(α)| over a stage < tol
    eval_batch_size: int = 500
    skeleton: Any = "tiny"        # tiny (authors: 3 ch, 1 cell, linear head) | small | darts | dict
    # persistent XLA compilation cache folder (None/'' = off); env TANAS_XLA_CACHE overrides
    # ('0' or '' disables); not part of the checkpoint fingerprint
    compilation_cache: str | None = None
    # what α mixes: probs (α-weighted mixture of each candidate's softmax) | logits (TA-NAS / LD-NAS
    # eq. (7), the papers' and authors' choice) | log_softmax (normalised logits: the same loss as logits)
    mixture: str = "probs"
    # a round stops once softmax(α)'s leader exceeds the runner-up by more than this (1 = never);
    # 0.25 = 2x the largest margin at which a leader later lost (0.12, docs/results_selector.md)
    margin: float = 0.25
    winner: str = "alpha"         # alpha: argmax α (eq. (10), the papers) | val: best own val accuracy

    def __post_init__(self):
        if self.candidates < 2:
            _fail("fuse.candidates", f"must be >= 2 (FUSE compares candidates), got {self.candidates}")
        _at_least(self, "fuse", 1, "rounds", "max_stages", "weight_steps", "alpha_steps", "batch_size",
                  "eval_batch_size")
        _positive(self, "fuse", "learning_rate", "alpha_learning_rate", "tol")
        _choice("fuse.mixture", self.mixture, FUSE_MIXTURES)
        _choice("fuse.winner", self.winner, FUSE_WINNERS)
        if not 0.0 < self.margin <= 1.0:
            _fail("fuse.margin", f"must be in (0, 1] (a softmax margin; 1 never stops a round early), "
                  f"got {self.margin}")
        object.__setattr__(self, "skeleton", _hashable_skeleton(self.skeleton))


@dataclasses.dataclass(frozen=True)
class FinalConfig:
    """The one final-training protocol for every search method (section ``final``): the chosen cell is
    initialised afresh in ``skeleton``, trained from scratch for ``steps`` Adam steps on the train split,
    then evaluated once on the validation and test splits."""

    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 1e-3
    eval_batch_size: int = 500
    skeleton: Any = "tiny"

    def __post_init__(self):
        _at_least(self, "final", 0, "steps")
        _at_least(self, "final", 1, "batch_size", "eval_batch_size")
        _positive(self, "final", "learning_rate")
        object.__setattr__(self, "skeleton", _hashable_skeleton(self.skeleton))


@dataclasses.dataclass(frozen=True)
class TetloConfig:
    """TETLO-only settings (section ``search.darts.tetlo``)."""

    aux_channels: tuple = (16, 32)   # auxiliary CNN: conv3x3+ReLU+maxpool per width, GAP, linear
    aux_learning_rate: float = 1e-3  # Adam on V
    aux_unroll_lr: float = 0.01      # ξ_V of the unrolled stage-2 step
    qrs_weight: float = 1.0          # γ: V's loss = CE + γ·QRS
    quadruples: int = 64             # quadruples sampled per batch
    qrs_margin: float = 0.0          # hinge margin m (0: zero loss iff every order agrees)
    qrs_temperature: float = 0.05    # τ of the main model's soft order tanh(Δ_main / τ)
    main_weight: float = 1.0         # λ: stage-3 loss = L_val(V') + λ·L_val(W')

    def __post_init__(self):
        object.__setattr__(self, "aux_channels", _numbers("search.darts.tetlo.aux_channels", self.aux_channels, int))
        if not self.aux_channels or min(self.aux_channels) < 1:
            _fail("search.darts.tetlo.aux_channels", f"must be a non-empty list of widths >= 1, "
                  f"got {list(self.aux_channels)}")
        _at_least(self, "search.darts.tetlo", 1, "quadruples")
        _positive(self, "search.darts.tetlo", "qrs_temperature", "aux_learning_rate")
        _at_least(self, "search.darts.tetlo", 0, "qrs_weight", "main_weight", "qrs_margin", "aux_unroll_lr")


@dataclasses.dataclass(frozen=True)
class DartsConfig:
    """Differentiable searches DARTS (1st/2nd order) and TETLO (section ``search.darts``)."""

    skeleton: Any = "tiny"           # supernet skeleton (C >= 2): tiny | small | darts | dict
    steps: int = 200                 # iterations: one β step (val) + one weight step (train)
    warmup_steps: int = 0            # weight-only iterations before β steps start
    batch_size: int = 64
    w_optimizer: str = "adam"        # adam | sgd (momentum 0.9, DARTS)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    arch_learning_rate: float = 3e-3  # Adam(b1=0.5) on β (DARTS: 3e-4 over 50 epochs)
    arch_weight_decay: float = 1e-3
    unroll_lr: float = 0.01          # ξ of the unrolled weight step (darts2, tetlo)
    beta_init_std: float = 1e-3      # β ~ N(0, std²) (DARTS)
    history_every: int = 10          # record softmax(β) every N steps
    checkpoint_every: int = 50       # atomic checkpoint every N steps
    eval_batch_size: int = 500
    input_shape: tuple = (28, 28, 1)  # the supernet's input (MNIST digits: a 20x20 crop halves the cost)
    mixed_impl: str = "dense"        # dense | grouped | ops: depthwise convs inside the supernet
    tetlo: TetloConfig = dataclasses.field(default_factory=TetloConfig)

    def __post_init__(self):
        _at_least(self, "search.darts", 1, "steps", "batch_size", "history_every", "checkpoint_every",
                  "eval_batch_size")
        _at_least(self, "search.darts", 0, "warmup_steps", "weight_decay", "arch_weight_decay", "unroll_lr",
                  "beta_init_std")
        _choice("search.darts.mixed_impl", self.mixed_impl, MIXED_IMPLS)
        _choice("search.darts.w_optimizer", self.w_optimizer, W_OPTIMIZERS)
        _positive(self, "search.darts", "learning_rate", "arch_learning_rate")
        object.__setattr__(self, "skeleton", _hashable_skeleton(self.skeleton))
        object.__setattr__(self, "input_shape", _shape(self.input_shape, "search.darts.input_shape"))
        if not isinstance(self.tetlo, TetloConfig):
            object.__setattr__(self, "tetlo", from_section(TetloConfig, self.tetlo, "search.darts.tetlo"))


def _shape(v, name: str) -> tuple:
    shape = _numbers(name, v, int)
    if len(shape) != 3 or min(shape) < 1:
        _fail(name, f"must be (H, W, C) with positive entries, got {list(v)}")
    return shape


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Search plumbing shared by every method (section ``search``)."""

    space: str = "standard"          # standard | from:TASK | from:closest[:k] | ops:a,b | file.json
    input_shape: tuple = (28, 28, 3)  # MNIST-family 28 px, grey repeated to 3 channels
    max_train: int | None = 3000     # cap on the target's train split for the search
    write_bank: bool = True          # store the winner as the target's genotype
    darts: DartsConfig = dataclasses.field(default_factory=DartsConfig)

    def __post_init__(self):
        object.__setattr__(self, "input_shape", _shape(self.input_shape, "search.input_shape"))
        _at_least(self, "search", 1, "max_train")
        if not isinstance(self.darts, DartsConfig):
            object.__setattr__(self, "darts", from_section(DartsConfig, self.darts, "search.darts"))


@dataclasses.dataclass(frozen=True)
class TanasConfig:
    """The whole pipeline, ``bin/tanas`` (section ``tanas``)."""

    bases: str = "offline8"
    target: str = "fashion_4class"   # held out of the bases when it is one of them
    metric: str = "frechet"          # docs/results_metrics.md; the papers': logdet (with distance.spectrum=diag)
    top_k: int = 1
    full_table_max: int = 10         # full K x K table up to this many tasks, else the target column
    min_confidence: float = 0.5      # warn when P(closest) of the chosen base(s) is below this
    material: float = 0.1            # top_k > 1: use only bases with P(closest) >= this (at least one)
    # the baselines run next to task-aware FUSE (comma list of TANAS_BASELINES; darts1/darts2/tetlo in the
    # standard space, all finished by the same final training)
    baselines: str = "standard,random"

    def __post_init__(self):
        _choice("tanas.metric", self.metric, METRICS)
        if not isinstance(self.baselines, str):
            _fail("tanas.baselines", f"must be a comma list of {', '.join(TANAS_BASELINES)}, got {self.baselines!r}")
        for b in self.baselines.split(","):
            if b.strip():
                _choice("tanas.baselines", b.strip(), TANAS_BASELINES)
        _at_least(self, "tanas", 1, "top_k")
        _at_least(self, "tanas", 0, "full_table_max")
        for f in ("min_confidence", "material"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                _fail(f"tanas.{f}", f"must be a probability in [0, 1], got {getattr(self, f)}")


SECTIONS: dict[str, type] = {
    "data": DataConfig, "train": TrainConfig, "bank": BankConfig, "fisher": FisherConfig,
    "distance": DistanceConfig, "transform": TransformConfig, "fuse": FuseConfig, "final": FinalConfig,
    "search": SearchConfig, "tanas": TanasConfig,
}
NESTED: dict[str, type] = {"search.darts": DartsConfig, "search.darts.tetlo": TetloConfig}
TOP_LEVEL = ("preset", "config_file")


# --- typed construction -----------------------------------------------------------------------
def _as_dict(section) -> dict:
    if section is None:
        return {}
    if dataclasses.is_dataclass(section):
        return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    if hasattr(section, "to_dict"):
        return section.to_dict()
    if isinstance(section, Mapping):
        return dict(section)
    raise UserError(f"a config section must be a mapping of fields, got {type(section).__name__}")


def _check_type(name: str, value, hint):
    """``value`` converted to the annotated type (int for float, list for tuple), or a UserError."""
    if hint is Any or value is None and _allows_none(hint):
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in (a for a in typing.get_args(hint) if a is not type(None)):
            return _check_type(name, value, arg)
    if dataclasses.is_dataclass(hint):
        return value
    want = origin or hint
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: _is_number(v, float),
          bool: lambda v: isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          tuple: lambda v: isinstance(v, (list, tuple))}.get(want)
    if ok is None or ok(value):
        if want is float:
            return float(value)
        return tuple(value) if want is tuple else value
    kind = {int: "an integer", float: "a finite number", bool: "True or False", str: "a string",
            tuple: "a list"}[want]
    raise UserError(f"{name}: must be {kind}, got {value!r} ({type(value).__name__})")


def _allows_none(hint) -> bool:
    return type(None) in typing.get_args(hint)


def from_section(cls: type, section=None, name: str | None = None, **overrides):
    """A validated ``cls`` (a section dataclass) from a ConfigDict / mapping / instance.

    Unknown fields are refused with a "did you mean"; values are type-checked
    against the annotations; ``overrides`` whose value is not None win.
    """
    name = name or next((k for k, v in {**SECTIONS, **NESTED}.items() if v is cls), cls.__name__)
    d = _as_dict(section)
    d.update({k: v for k, v in overrides.items() if v is not None})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in fields:
            raise UserError(f"{name}: no field '{key}'; {did_you_mean(key, fields)}")
    kwargs = {k: _check_type(f"{name}.{k}", v, hints[k]) for k, v in d.items()}
    return cls(**kwargs)


def to_dict(obj) -> dict:
    """A section dataclass as plain JSON-able data (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def section(cfg, name: str):
    """The validated dataclass of section ``name`` (``'fuse'``, ``'search.darts'``, ...) of ``cfg``."""
    cls = SECTIONS.get(name) or NESTED.get(name)
    if cls is None:
        raise UserError(f"no config section '{name}'; {did_you_mean(name, [*SECTIONS, *NESTED])}")
    node = cfg
    for part in name.split("."):
        node = node[part] if node is not None and part in node else None
    return from_section(cls, node, name)


def check_config(cfg, origin: str = "config") -> None:
    """Validate every section of ``cfg`` (unknown sections included); errors name ``origin``."""
    try:
        for key in cfg.keys():
            if key not in SECTIONS and key not in TOP_LEVEL:
                raise UserError(f"no config section '{key}'; {did_you_mean(key, [*SECTIONS, *TOP_LEVEL])}")
        for name in [*SECTIONS, *NESTED]:
            if _missing(cfg, name):
                raise UserError(f"no section '{name}'; build the config with tanas_jax.config.preset(...), "
                                "which has every section")
            section(cfg, name)
    except UserError as e:
        raise UserError(f"{origin}: {e}") from None


def _missing(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return True
        node = node[part]
    return False


# --- presets ---------------------------------------------------------------------------------
def preset(name: str, overrides: Mapping[str, Mapping[str, Any]] | None = None):
    """A ConfigDict with every section's dataclass defaults, then ``overrides`` ({section: {field: v}},
    nested sections as dotted names, e.g. ``'search.darts'``); validated."""
    import ml_collections

    cfg = ml_collections.ConfigDict()
    cfg.preset = name
    for sec, cls in SECTIONS.items():
        cfg[sec] = _config_dict(cls())
    for sec, fields in (overrides or {}).items():
        node = _node(cfg, sec)
        for k, v in fields.items():
            if k not in node:
                raise UserError(f"preset {name}: {sec} has no field '{k}'; {did_you_mean(k, node.keys())}")
            node[k] = v
    check_config(cfg, f"preset {name}")
    return cfg


def _config_dict(obj):
    import ml_collections
    from ml_collections import config_dict

    out = ml_collections.ConfigDict()
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = _config_dict(v)
        elif v is None:
            base = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
            out[f.name] = config_dict.placeholder(base[0] if base and base[0] is not Any else object)
        else:
            out[f.name] = v
    return out


def _node(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if part not in node:
            raise UserError(f"no config section '{dotted}'; {did_you_mean(dotted, [*SECTIONS, *NESTED])}")
        node = node[part]
    return node


def _preset_path(name: str) -> str | None:
    """``configs/<name>.py`` of a source checkout, else the copy shipped as ``tanas_jax/configs``."""
    here = os.path.dirname(os.path.abspath(__file__))
    for p in (os.path.join(os.path.dirname(here), "configs", f"{name}.py"),
              os.path.join(here, "configs", f"{name}.py")):
        if os.path.exists(p):
            return p
    return None


def load_config(spec: str | None = "quick", overrides: list[str] | tuple = ()):
    """A preset name (``quick``, ``paper``) or a path to a Python file whose ``get_config()`` returns a
    ConfigDict; then ``overrides`` (``section.field=value``) in order; validated.  Every way the file
    can be wrong is one UserError naming the file."""
    spec = "quick" if spec is None else str(spec).strip()
    if not spec:
        raise UserError(f"--config is empty; give a preset ({', '.join(PRESETS)}) or a path to a Python file")
    path = spec if (os.sep in spec or spec.endswith(".py")) else _preset_path(spec)
    if path is None or not os.path.isfile(path):
        hint = did_you_mean(spec, PRESETS) if path is None else "it is not a file"
        raise UserError(f"config '{spec}' not found ({hint}); give a preset or a path to a Python file "
                        "defining get_config()")
    cfg = _run_config_file(path)
    cfg.config_file = os.path.abspath(path)
    for item in overrides or ():
        apply_override(cfg, item)
    check_config(cfg, f"config {path}")
    return cfg


def _run_config_file(path: str):
    import ml_collections

    mod_name = "_tanas_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"config {path} is not a Python file; give a .py file defining get_config()")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise UserError(f"config {path} defines no get_config(); add one returning an "
                            "ml_collections.ConfigDict")
        cfg = module.get_config()
    except UserError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's file: any failure is theirs, one line
        raise UserError(f"config {path} could not be loaded ({type(e).__name__}: {e}); it must define "
                        "get_config() returning an ml_collections.ConfigDict") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UserError(f"config {path}: get_config() returned {type(cfg).__name__}, not an "
                        "ml_collections.ConfigDict; build it with tanas_jax.config.preset(...)")
    return cfg


def parse_value(raw: str):
    """A ``--set`` value: a Python literal, else the bare word as a string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_override(cfg, item: str) -> None:
    """Apply one ``section.field=value`` to ``cfg`` in place (used while building a config)."""
    if "=" not in item:
        raise UserError(f"override '{item}' must look like section.field=value (e.g. train.epochs=3)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.isidentifier() for p in parts):
        raise UserError(f"override '{item}': '{key.strip()}' is not a section.field name (e.g. train.epochs=3)")
    node = cfg
    for p in parts[:-1]:
        if not hasattr(node, "keys") or p not in node:
            valid = sorted(node.keys()) if hasattr(node, "keys") else []
            raise UserError(f"override '{item}': no config section '{p}'; {did_you_mean(p, valid)}")
        node = node[p]
    leaf = parts[-1]
    if not hasattr(node, "keys") or leaf not in node:
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        raise UserError(f"override '{item}': no field '{leaf}' in '{'.'.join(parts[:-1]) or 'config'}'; "
                        f"{did_you_mean(leaf, valid)}")
    try:
        node[leaf] = parse_value(raw)
    except (TypeError, ValueError) as e:   # ConfigDict refuses a value of another type, or a dict with dotted keys
        raise UserError(f"override '{item}': {e}") from None


def updated(cfg, changes: Mapping[str, Any]):
    """A copy of ``cfg`` with ``{'section.field': value}`` applied (None values skipped); ``cfg`` itself
    is never changed.  Validated like ``--set``."""
    new = cfg.copy_and_resolve_references()
    for key, value in changes.items():
        if value is None:
            continue
        parts = key.split(".")
        node = _node(new, ".".join(parts[:-1])) if len(parts) > 1 else new
        if parts[-1] not in node:
            raise UserError(f"no config field '{key}'; {did_you_mean(parts[-1], node.keys())}")
        try:
            node[parts[-1]] = value
        except (TypeError, ValueError) as e:
            raise UserError(f"{key}: {e}") from None
    check_config(new)
    return new
