"""FUSE (TA-NAS Algorithm 2; LD-NAS appendix B, eqs. (7)-(10)), resumable.

Public API::

    FuseConfig(...)                       # frozen dataclass; FuseConfig.from_config(cfg.fuse)
    mixture_logits(alpha, logits) -> (B, K)      # eq. (7): sum_c softmax(alpha)_c logits_c
    make_fuse_optimizer(cfg) -> optax.GradientTransformationExtraArgs
    compiled_steps(genotypes, skeleton, num_classes, cfg, input_shape) -> FuseSteps (cached)
    train_candidates(genotypes, data, cfg, skeleton, seed_parts, steps) -> (state, info)
    fuse_search(data, space, cfg, seed, checkpoint_dir=None, log=print) -> dict
    train_final(genotype, data, cfg, seed) -> dict   # from scratch, test split once

**Parameters and optimiser.**  The C candidates' parameters and α form one
tree ``{'weights': [cand_0, ..., cand_{C-1}], 'alpha': α (C,)}`` optimised by
ONE ``optax.multi_transform`` with labels ``weights``/``alpha`` (Adam each).
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
timed and reported as ``compile_s``) and cached by (genotypes, skeleton,
classes, shapes, settings) in memory and, with ``compilation_cache`` set (quick
preset: ``~/.cache/tanas_jax/xla``), on disk by JAX's persistent compilation
cache, so a rerun or resume loads them; a per-instance trace counter (as
``chex.assert_max_traces(n=1)``, which counts per code object) guards them.

**Rounds.**  α starts uniform (zeros: every constant gives the same softmax;
the authors' 1 or 1/C are the same point).  A *stage* is ``weight_steps``
weight steps then ``alpha_steps`` α steps; stages repeat until
max_c |Δ softmax(α)_c| over a stage < ``tol`` or ``max_stages``.  Winner =
argmax α (eq. (10)) and becomes the next round's seed; the other C−1
candidates are fresh uniform samples from the space, distinct from the seed
when the space allows.  Every round starts from freshly initialised weights.

**Determinism and resume.**  All randomness of round r comes from numpy
``SeedSequence([seed, r, stream])`` (candidate sampling, each candidate's
initialisation, batch order); a round is therefore a pure function of
(seed, r, seed genotype, data, settings).  After every round the state is
checkpointed atomically (:mod:`tanas_jax.search.checkpoint`); a rerun
with the same settings resumes after the last finished round and gives
exactly the result of an uninterrupted run.

**Final.**  The last seed is re-initialised, trained from scratch for
``final_steps`` and evaluated once on the test split (the authors' code
selected on the test loader; here α sees the validation split only).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tanas_jax.errors import UserError
from tanas_jax.search import checkpoint as ckpt
from tanas_jax.search.genotype import Genotype
from tanas_jax.search.network import build_network, get_skeleton, init_network, param_count

FINAL_STREAM = 1_000_000
INIT_STREAM = 999_999


@dataclasses.dataclass(frozen=True)
class FuseConfig:
    candidates: int = 3           # C: the seed + C-1 samples
    rounds: int = 3               # I
    max_stages: int = 5           # stage cap per round
    weight_steps: int = 20        # weight steps per stage (train split)
    alpha_steps: int = 10         # α steps per stage (validation split)
    batch_size: int = 64
    learning_rate: float = 1e-3   # Adam on weights (authors: Adam, default lr)
    alpha_learning_rate: float = 0.05
    tol: float = 1e-3             # α converged: max |Δ softmax(α)| over a stage < tol
    final_steps: int = 300        # training the winner from scratch
    eval_batch_size: int = 500
    skeleton: Any = "tiny"        # preset name or dict of Skeleton fields
    # persistent XLA compilation cache folder (None/'' = off); env TANAS_XLA_CACHE overrides
    # ('0' or '' disables); not part of the checkpoint fingerprint
    compilation_cache: Any = None

    def __post_init__(self):
        if self.candidates < 2:
            raise UserError(f"fuse.candidates must be >= 2 (FUSE compares candidates), got {self.candidates}")
        for f in ("rounds", "max_stages", "weight_steps", "alpha_steps", "batch_size", "eval_batch_size"):
            if getattr(self, f) < 1:
                raise UserError(f"fuse.{f} must be >= 1, got {getattr(self, f)}")
        if isinstance(self.skeleton, dict):
            object.__setattr__(self, "skeleton", tuple(sorted(self.skeleton.items())))

    @property
    def skeleton_obj(self):
        return get_skeleton(self.skeleton)

    @classmethod
    def from_config(cls, section, **overrides) -> "FuseConfig":
        d = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
        d.update({k: v for k, v in overrides.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - names
        if bad:
            raise UserError(f"fuse config: unknown field(s) {sorted(bad)}; valid: {', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["skeleton"] = self.skeleton_obj.to_dict()
        return d


# --- maths --------------------------------------------------------------------------------
def mixture_logits(alpha: jax.Array, logits: jax.Array) -> jax.Array:
    """Eq. (7): ``Σ_c softmax(α)_c · logits[c]``; alpha (C,), logits (C, B, K) -> (B, K)."""
    return jnp.tensordot(jax.nn.softmax(alpha), logits, axes=1)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def phase_gated(inner: optax.GradientTransformation, phase: str) -> optax.GradientTransformationExtraArgs:
    """``inner`` when ``update(..., phase=phase)``; otherwise zero updates, state unchanged."""

    def init_fn(params):
        return inner.init(params)

    def update_fn(updates, state, params=None, *, phase_name=None, **extra):
        del extra
        if phase_name == phase:
            return inner.update(updates, state, params)
        return jax.tree_util.tree_map(jnp.zeros_like, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _labels(params):
    return {"weights": jax.tree_util.tree_map(lambda _: "weights", params["weights"]), "alpha": "alpha"}


def make_fuse_optimizer(cfg: FuseConfig) -> optax.GradientTransformationExtraArgs:
    """ONE multi_transform over {'weights', 'alpha'}; update(..., phase_name=...) picks the phase."""
    return optax.multi_transform(
        {"weights": phase_gated(optax.adam(cfg.learning_rate), "weights"),
         "alpha": phase_gated(optax.adam(cfg.alpha_learning_rate), "alpha")},
        _labels)


# --- compiled steps -----------------------------------------------------------------------
CACHE_ENV = "TANAS_XLA_CACHE"
_cache_dir_set: list = [None]


def enable_compilation_cache(path=None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (``~`` expanded).

    ``$TANAS_XLA_CACHE`` overrides ``path`` (``0`` or empty: off).  Works on
    CPU with jax 0.10.2: a rerun of the same FUSE round loads its executables
    instead of compiling them (C=3 'tiny' weight+α steps: 17.6 s -> 3.9 s,
    the rest being tracing and lowering).  Returns the folder in use or None.
    """
    import os

    env = os.environ.get(CACHE_ENV)
    if env is not None:
        path = None if env.strip() in ("", "0") else env
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(str(path)))
    if _cache_dir_set[0] == path:
        return path
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    # cache every FUSE step (they take seconds); skip trivial helpers
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    try:  # the cache is initialised once, at the first compile: re-read the folder
        from jax._src import compilation_cache as _cc

        if _cc.is_initialized():
            _cc.reset_cache()
    except Exception:  # private API moved: the setting still applies to a fresh process
        pass
    _cache_dir_set[0] = path
    return path


class FuseSteps:
    """Compiled weight/α/eval steps for one candidate list (see module docstring)."""

    def __init__(self, genotypes: Sequence[Genotype], skeleton, num_classes: int, cfg: FuseConfig,
                 input_shape):
        self.genotypes = tuple(genotypes)
        self.skeleton = get_skeleton(skeleton)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(input_shape)
        self.cfg = cfg
        enable_compilation_cache(cfg.compilation_cache)
        self.tx = make_fuse_optimizer(cfg)
        self.nets = [build_network(g, self.skeleton, num_classes) for g in self.genotypes]
        self.compile_s = 0.0
        self._compiled: dict[str, Any] = {}
        nets, tx = self.nets, self.tx

        def forward(weights, bstats, x, train):
            outs, new_bs = [], []
            for net, w, bs in zip(nets, weights, bstats):
                if train:
                    y, upd = net.apply({"params": w, "batch_stats": bs}, x, train=True,
                                       mutable=["batch_stats"])
                    new_bs.append(upd["batch_stats"])
                else:
                    y = net.apply({"params": w, "batch_stats": bs}, x, train=False)
                    new_bs.append(bs)
                outs.append(y)
            return jnp.stack(outs), new_bs

        def weight_step(state, x, y):
            params = state["params"]

            def loss_fn(w):
                logits, nbs = forward(w, state["batch_stats"], x, True)
                return cross_entropy(mixture_logits(params["alpha"], logits), y), nbs

            (loss, nbs), gw = jax.value_and_grad(loss_fn, has_aux=True)(params["weights"])
            grads = {"weights": gw, "alpha": jnp.zeros_like(params["alpha"])}
            upd, opt = tx.update(grads, state["opt"], params, phase_name="weights")
            return {"params": optax.apply_updates(params, upd), "batch_stats": nbs, "opt": opt}, loss

        def alpha_step(state, x, y):
            params = state["params"]
            logits, _ = forward(params["weights"], state["batch_stats"], x, True)
            logits = jax.lax.stop_gradient(logits)
            loss, ga = jax.value_and_grad(lambda a: cross_entropy(mixture_logits(a, logits), y))(params["alpha"])
            grads = {"weights": jax.tree_util.tree_map(jnp.zeros_like, params["weights"]), "alpha": ga}
            upd, opt = tx.update(grads, state["opt"], params, phase_name="alpha")
            return {"params": optax.apply_updates(params, upd), "batch_stats": state["batch_stats"],
                    "opt": opt}, loss

        def eval_step(state, x):
            logits, _ = forward(state["params"]["weights"], state["batch_stats"], x, False)
            mix = mixture_logits(state["params"]["alpha"], logits)
            return jnp.argmax(logits, -1), jnp.argmax(mix, -1)

        self.traces = {"weights": 0, "alpha": 0, "eval": 0}
        self._fns = {"weights": self._guard(weight_step, "weights"),
                     "alpha": self._guard(alpha_step, "alpha"),
                     "eval": self._guard(eval_step, "eval")}

    def _guard(self, fn, name):
        """Count traces per instance (chex.assert_max_traces counts per code object,
        which every FuseSteps shares); a second trace is a recompilation bug."""

        def wrapped(*args):
            self.traces[name] += 1
            if self.traces[name] > 1:
                raise AssertionError(f"FUSE {name} step traced {self.traces[name]} times (recompilation)")
            return fn(*args)

        return wrapped

    def init_state(self, seed_parts: Sequence[int]) -> dict:
        """Fresh weights (candidate c from SeedSequence([*seed_parts, c])), α = 0, optimiser state."""
        variables = [init_network(g, self.skeleton, self.num_classes,
                                  np.random.SeedSequence([*seed_parts, c]).generate_state(2),
                                  self.input_shape)
                     for c, g in enumerate(self.genotypes)]
        params = {"weights": [v["params"] for v in variables],
                  "alpha": jnp.zeros((len(self.genotypes),), jnp.float32)}
        bstats = [v.get("batch_stats", {}) for v in variables]
        return {"params": params, "batch_stats": bstats, "opt": self.tx.init(params)}

    def _get(self, name, *args):
        fn = self._compiled.get(name)
        if fn is None:
            t = time.perf_counter()
            fn = jax.jit(self._fns[name]).lower(*args).compile()
            self.compile_s += time.perf_counter() - t
            self._compiled[name] = fn
        return fn

    def weight_step(self, state, x, y):
        return self._get("weights", state, x, y)(state, x, y)

    def alpha_step(self, state, x, y):
        return self._get("alpha", state, x, y)(state, x, y)

    def accuracy(self, state, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Eval-mode accuracy of each candidate (C,) and of the mixture on (x, y)."""
        bs = self.cfg.eval_batch_size  # fixed: one compiled eval step for every split
        correct = np.zeros(len(self.genotypes))
        correct_mix = 0.0
        for i in range(0, len(y), bs):
            xb = x[i:i + bs]
            n = len(xb)
            if n < bs:  # pad to a fixed shape: one compiled eval step
                xb = np.concatenate([xb, np.zeros((bs - n, *xb.shape[1:]), xb.dtype)])
            pred, pmix = self._get("eval", state, xb)(state, xb)
            pred, pmix = np.asarray(pred)[:, :n], np.asarray(pmix)[:n]
            correct += (pred == y[i:i + n]).sum(axis=1)
            correct_mix += float((pmix == y[i:i + n]).sum())
        return correct / len(y), correct_mix / len(y)


_CACHE: "OrderedDict[tuple, FuseSteps]" = OrderedDict()
_CACHE_SIZE = 64


def compiled_steps(genotypes: Sequence[Genotype], skeleton, num_classes: int, cfg: FuseConfig,
                   input_shape) -> FuseSteps:
    """Cached :class:`FuseSteps` (compiled once per candidate list and settings)."""
    sk = get_skeleton(skeleton)
    key = (tuple(g.key() for g in genotypes), sk, int(num_classes), tuple(input_shape),
           cfg.batch_size, cfg.eval_batch_size, cfg.learning_rate, cfg.alpha_learning_rate)
    steps = _CACHE.get(key)
    if steps is None:
        steps = FuseSteps(genotypes, sk, num_classes, cfg, input_shape)
        _CACHE[key] = steps
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return steps


# --- data -----------------------------------------------------------------------------------
class BatchStream:
    """Shuffled mini-batches (epoch permutations, incomplete tail dropped), numpy RNG."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, gen: np.random.Generator):
        self.x, self.y, self.gen = x, y, gen
        self.bs = min(batch_size, len(y))
        self._perm = np.empty(0, np.int64)

    def next(self):
        if len(self._perm) < self.bs:
            self._perm = self.gen.permutation(len(self.y))
        idx, self._perm = self._perm[: self.bs], self._perm[self.bs:]
        return self.x[idx], self.y[idx]


def _gen(*parts: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(p) for p in parts])))


def _input_shape(data) -> tuple[int, int, int]:
    return tuple(getattr(data, "input_shape", None) or data.x_train.shape[1:])


# --- one round ------------------------------------------------------------------------------
def run_round(candidates: Sequence[Genotype], data, cfg: FuseConfig, seed: int, r: int) -> tuple[dict, dict]:
    """Train the C candidates jointly until α converges; returns (record, state)."""
    t0 = time.perf_counter()
    steps = compiled_steps(candidates, cfg.skeleton_obj, data.num_classes, cfg, _input_shape(data))
    compile_before = steps.compile_s
    state = steps.init_state([seed, r, 1])
    bgen = _gen(seed, r, 2)
    train = BatchStream(data.x_train, data.y_train, cfg.batch_size, bgen)
    val = BatchStream(data.x_val, data.y_val, cfg.batch_size, bgen)
    probs = [np.full(len(candidates), 1.0 / len(candidates)).tolist()]
    converged = False
    losses = []
    for stage in range(cfg.max_stages):
        for _ in range(cfg.weight_steps):
            state, loss = steps.weight_step(state, *train.next())
        wl = float(loss)
        for _ in range(cfg.alpha_steps):
            state, loss = steps.alpha_step(state, *val.next())
        losses.append([wl, float(loss)])
        p = np.asarray(jax.nn.softmax(state["params"]["alpha"]), np.float64)
        delta = float(np.max(np.abs(p - np.asarray(probs[-1]))))
        probs.append(p.tolist())
        if delta < cfg.tol:
            converged = True
            break
    alpha = np.asarray(state["params"]["alpha"])
    winner = int(np.argmax(alpha))
    cand_acc, mix_acc = steps.accuracy(state, data.x_val, data.y_val)
    rec = {
        "round": r,
        "candidates": [g.to_dict() for g in candidates],
        "alpha": alpha.tolist(),
        "softmax_alpha_per_stage": probs,
        "stages": len(probs) - 1,
        "converged": converged,
        "losses_per_stage": losses,
        "winner": winner,
        "val_accuracy": cand_acc.tolist(),
        "mixture_val_accuracy": mix_acc,
        "params": [param_count(w) for w in state["params"]["weights"]],
        "compile_s": steps.compile_s - compile_before,
        "wall_s": time.perf_counter() - t0,
    }
    return rec, state


# --- training one genotype (final, random search) ---------------------------------------------
def train_single(genotype: Genotype, data, cfg: FuseConfig, seed_parts: Sequence[int], steps: int):
    """Train one candidate alone (C = 1: the mixture is the network itself) for ``steps`` steps."""
    fs = compiled_steps([genotype], cfg.skeleton_obj, data.num_classes, cfg, _input_shape(data))
    c0 = fs.compile_s
    state = fs.init_state(list(seed_parts))
    stream = BatchStream(data.x_train, data.y_train, cfg.batch_size, _gen(*seed_parts, 2))
    loss = None
    for _ in range(steps):
        state, loss = fs.weight_step(state, *stream.next())
    return fs, state, {"compile_s": fs.compile_s - c0, "final_loss": None if loss is None else float(loss)}


def train_final(genotype: Genotype, data, cfg: FuseConfig, seed: int) -> dict:
    """The winner trained from scratch for ``final_steps``; val, then test once."""
    t0 = time.perf_counter()
    fs, state, info = train_single(genotype, data, cfg, [seed, FINAL_STREAM], cfg.final_steps)
    val_acc, _ = fs.accuracy(state, data.x_val, data.y_val)
    test_acc, _ = fs.accuracy(state, data.x_test, data.y_test)
    return {"genotype": genotype.to_dict(), "params": param_count(state["params"]["weights"][0]),
            "val_accuracy": float(val_acc[0]), "test_accuracy": float(test_acc[0]),
            "steps": cfg.final_steps, "train_loss": info["final_loss"],
            "compile_s": info["compile_s"], "wall_s": time.perf_counter() - t0}


# --- the search -----------------------------------------------------------------------------
_NOT_IN_FINGERPRINT = ("compilation_cache",)


def fingerprint(data, space, cfg: FuseConfig, seed: int, extra: dict | None = None) -> str:
    rec = data.record() if hasattr(data, "record") else {"shapes": [list(data.x_train.shape)]}
    cfg_d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
    body = json.dumps({"data": rec, "space": space.to_dict(), "cfg": cfg_d, "seed": seed,
                       "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def fuse_search(data, space, cfg: FuseConfig, seed: int = 0, *, checkpoint_dir: str | None = None,
                log: Callable[[str], None] = print, final: bool = True) -> dict:
    """TA-NAS Algorithm 2 over ``space`` on ``data`` (a TaskData-like object).

    Returns a dict with the winner genotype, its final train/val/test numbers,
    the per-round history, search wall time and compile time.  With
    ``checkpoint_dir``, resumes from ``checkpoint_dir/fuse_checkpoint.npz``.
    """
    fp = fingerprint(data, space, cfg, seed)
    history: list[dict] = []
    start_round = 0
    seed_geno = space.seeds[0] if space.seeds else space.sample(_gen(seed, INIT_STREAM))
    search_s = 0.0
    if checkpoint_dir:
        got = ckpt.load(checkpoint_dir, fp)
        if got is not None:
            meta, _ = got
            history = meta["history"]
            start_round = meta["round"] + 1
            seed_geno = Genotype.from_dict(meta["seed_genotype"])
            search_s = meta["search_s"]
            log(f"fuse: resuming from {ckpt.path(checkpoint_dir)} after round {meta['round']} "
                f"(of {cfg.rounds})")
    r = start_round
    try:
        for r in range(start_round, cfg.rounds):
            t = time.perf_counter()
            others = space.sample_distinct(_gen(seed, r, 0), cfg.candidates - 1, exclude=[seed_geno])
            candidates = [seed_geno] + others
            rec, state = run_round(candidates, data, cfg, seed, r)
            seed_geno = candidates[rec["winner"]]
            history.append(rec)
            search_s += time.perf_counter() - t
            log(f"fuse round {r + 1}/{cfg.rounds}: softmax(α)="
                f"[{', '.join(f'{p:.3f}' for p in rec['softmax_alpha_per_stage'][-1])}] "
                f"stages {rec['stages']}{' (converged)' if rec['converged'] else ''} "
                f"val acc [{', '.join(f'{a:.3f}' for a in rec['val_accuracy'])}] -> winner {rec['winner']} "
                f"({rec['wall_s']:.1f}s, compile {rec['compile_s']:.1f}s)")
            if checkpoint_dir:
                ckpt.save(checkpoint_dir, fp, {"round": r, "seed_genotype": seed_geno.to_dict(),
                                               "history": history, "search_s": search_s,
                                               "rng": {"seed": seed, "streams": "SeedSequence([seed, round, k])"}},
                          state)
    except KeyboardInterrupt:
        where = (f"; the state after round {history[-1]['round'] + 1} is saved in {ckpt.path(checkpoint_dir)}"
                 if checkpoint_dir and history else "; no round finished, nothing saved")
        log(f"fuse: interrupted during round {r + 1}{where}; rerun the same command to resume")
        raise
    compile_s = sum(h["compile_s"] for h in history)
    result = {
        "method": "fuse",
        "space": space.to_dict(),
        "settings": cfg.to_dict(),
        "seed": seed,
        "winner": seed_geno.to_dict(),
        "winner_short": seed_geno.short(),
        "history": history,
        "alpha_over_rounds": [h["softmax_alpha_per_stage"][-1] for h in history],
        "search_wall_s": search_s,
        "search_compile_s": compile_s,
        "candidate_evaluations": len(history) * cfg.candidates,
        "resumed_from_round": start_round if start_round else None,
    }
    if final:
        result["final"] = train_final(seed_geno, data, cfg, seed)
    return result
