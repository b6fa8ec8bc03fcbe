"""The search runtime: what FUSE, random search, DARTS and TETLO share.

Public API::

    rng(*parts) -> np.random.Generator          # the seeding streams: PCG64(SeedSequence(parts))
    seed_sequence(int | jax key | uint32 array) -> np.random.SeedSequence
    cross_entropy(logits, labels[, mask])       # the one CE (defined in tanas_jax.train)
    fingerprint(data, space, settings, seed, **extra) -> sha256 hex of a run's inputs
    enable_compilation_cache(path) -> folder | None   # called explicitly by entry points
    max_one_trace(fn, name, counter)            # a second trace (recompilation) raises
    phase_gated(inner, phase)                   # optax transform active in one phase, frozen otherwise
    CompiledSteps                               # named AOT-compiled steps, timed, one trace each
    StepCache(maxsize); STEP_CACHE              # the one bounded cache of step objects
    BatchStream(x, y, batch_size, gen)          # stateful shuffled batches (FUSE rounds)
    batch_at(x, y, bs, seed, stream, step)      # stateless batch of (seed, stream, step) (DARTS)
    predict(fn, x, batch_size) / accuracy(fn, x, y, batch_size)   # the one padded eval loop
    SingleSteps(genotype, skeleton, num_classes, recipe, input_shape, ops=None)   # one cell net, Adam
    single_steps(genotype, num_classes, recipe, input_shape, ops=None) -> SingleSteps (cached)
    train_single(genotype, data, recipe, seed_parts, steps, ops=None) -> (SingleSteps, state, info)
    train_final(genotype, data, final: FinalConfig, seed, ops=None) -> dict

**Seeding.**  Every random draw of a search comes from a numpy stream
``rng(seed, k, ...)`` = ``PCG64(SeedSequence([seed, k, ...]))``; the stream
numbers each module uses are stated in its docstring (``FINAL_STREAM`` below).

**Compiled steps.**  A step object (:class:`CompiledSteps`) compiles each of
its named steps ahead of time (``jit(fn).lower(*args).compile()``, timed into
``compile_s``) at the first call, and counts traces per instance
(``chex.assert_max_traces`` counts per code object, which every instance
shares): a second trace is a silent-recompilation bug and raises.  Step
objects are kept in :data:`STEP_CACHE`, an LRU bounded at
``STEP_CACHE_SIZE`` = 64 entries (a FUSE round, a final training or a
supernet each take one), so seeds run in one process compile once.  On disk,
JAX's persistent compilation cache is turned on by the entry points with
:func:`enable_compilation_cache` -- never behind the caller's back.

**Final training** (one protocol for every method; section ``final``): the
chosen genotype in skeleton ``final.skeleton``, initialised from
``SeedSequence([seed, FINAL_STREAM, 0])``, trained alone for ``final.steps``
Adam steps (``final.learning_rate``) on batches of ``final.batch_size`` of the
train split drawn from ``rng(seed, FINAL_STREAM, 2)``, then evaluated once on
the validation and the test split.  It is FUSE's historical final training (a
FUSE step with C = 1: the mixture of one candidate is the candidate itself),
written as a plain single-network step.  A search passes its space's op set
(``ops``): then the network is the space's switch network (one compiled step
for every genotype of the space, shared with random search's candidates) and
the numbers equal the plain network's to float rounding.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tanas_jax.config import FinalConfig, to_dict
from tanas_jax.search.genotype import Genotype
from tanas_jax.search.network import (
    SwitchNetwork,
    build_network,
    cell_structures,
    from_switch_variables,
    get_skeleton,
    init_network,
    network_shapes,
    op_choice,
    op_set,
    param_count,
    seed_sequence,
    switch_shapes,
    to_switch_variables,
)
from tanas_jax.train import cross_entropy, padded_batches

__all__ = ["FINAL_STREAM", "DEFAULT_FINAL", "CACHE_ENV", "rng", "seed_sequence", "cross_entropy", "fingerprint",
           "enable_compilation_cache", "max_one_trace", "CompiledSteps", "StepCache", "STEP_CACHE",
           "BatchStream", "batch_at", "phase_gated", "predict", "accuracy", "input_shape_of", "SingleSteps",
           "single_steps", "train_single", "train_final", "padded_batches"]

FINAL_STREAM = 1_000_000
CACHE_ENV = "TANAS_XLA_CACHE"
STEP_CACHE_SIZE = 64
NOT_IN_FINGERPRINT = ("compilation_cache",)
DEFAULT_FINAL = FinalConfig()   # section ``final``'s defaults (quick preset)


# --- seeding ---------------------------------------------------------------------------------
def rng(*parts: int) -> np.random.Generator:
    """The numpy stream ``PCG64(SeedSequence([*parts]))``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(p) for p in parts])))


# --- run identity ----------------------------------------------------------------------------
def fingerprint(data, space, settings, seed: int, **extra) -> str:
    """SHA-256 of what determines a search run: the data record, the space, the settings (a
    section dataclass, less ``compilation_cache``), the seed and ``extra`` (e.g. the method)."""
    rec = data.record() if hasattr(data, "record") else {"shapes": [list(data.x_train.shape)]}
    cfg = {k: v for k, v in to_dict(settings).items() if k not in NOT_IN_FINGERPRINT}
    body = json.dumps({"data": rec, "space": space.to_dict(), "cfg": cfg, "seed": seed, **extra},
                      sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


# --- persistent compilation cache --------------------------------------------------------------
def enable_compilation_cache(path: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (``~`` expanded); entry points call it.

    ``$TANAS_XLA_CACHE`` overrides ``path`` (``0`` or empty: off).  A rerun of
    the same FUSE round then loads its executables instead of compiling them
    (C=3 'tiny' weight+α steps on CPU: 17.6 s -> 3.9 s, the rest being tracing
    and lowering).  Uses only public JAX: ``jax.config.update`` and
    ``jax.experimental.compilation_cache.compilation_cache.reset_cache`` (the
    cache reads its folder once, at the first compile).  Returns the folder in
    use, or None.
    """
    from jax.experimental.compilation_cache import compilation_cache

    env = os.environ.get(CACHE_ENV)
    if env is not None:
        path = None if env.strip() in ("", "0") else env
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(str(path)))
    if jax.config.jax_compilation_cache_dir == path:
        return path
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    # cache every search step (they take seconds); skip trivial helpers
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    compilation_cache.reset_cache()
    return path


# --- compiled steps ----------------------------------------------------------------------------
def max_one_trace(fn: Callable, name: str, counter: dict | None = None) -> Callable:
    """``fn`` that raises when traced a second time (silent recompilation guard).

    ``counter[name]`` counts the traces (a private counter when None);
    ``chex.assert_max_traces`` keys its counter on the source location, so two
    step objects in one process would trip it although each traces once.
    """
    counter = {} if counter is None else counter
    counter.setdefault(name, 0)

    def wrapped(*args):
        counter[name] += 1
        if counter[name] > 1:
            raise AssertionError(f"search step {name!r} traced {counter[name]} times (argument shapes changed?)")
        return fn(*args)

    wrapped.__name__ = getattr(fn, "__name__", name)
    return wrapped


class CompiledSteps:
    """Named steps compiled ahead of time at their first call (timed in ``compile_s``), each
    guarded by :func:`max_one_trace` (``traces[name]`` counts)."""

    def __init__(self):
        self.compile_s = 0.0
        self.traces: dict[str, int] = {}
        self._compiled: dict[str, Any] = {}
        self._fns: dict[str, Callable] = {}

    def register(self, name: str, fn: Callable) -> None:
        self._fns[name] = max_one_trace(fn, name, self.traces)

    def compiled(self, name: str, *args):
        """The executable of step ``name`` for arguments shaped like ``args``."""
        fn = self._compiled.get(name)
        if fn is None:
            t = time.perf_counter()
            fn = jax.jit(self._fns[name]).lower(*args).compile()
            self.compile_s += time.perf_counter() - t
            self._compiled[name] = fn
        return fn

    def call(self, name: str, *args):
        return self.compiled(name, *args)(*args)


class StepCache:
    """An LRU of step objects keyed by (kind, settings...), at most ``maxsize`` entries."""

    def __init__(self, maxsize: int):
        self.maxsize = int(maxsize)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Any]):
        item = self._items.get(key)
        if item is None:
            item = build()
            self._items[key] = item
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return item

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


STEP_CACHE = StepCache(STEP_CACHE_SIZE)


# --- optimiser phases ---------------------------------------------------------------------------
def phase_gated(inner: optax.GradientTransformation, phase: str) -> optax.GradientTransformationExtraArgs:
    """``inner`` when ``update(..., phase_name=phase)``; otherwise zero updates, state unchanged."""

    def init_fn(params):
        return inner.init(params)

    def update_fn(updates, state, params=None, *, phase_name=None, **extra):
        del extra
        if phase_name == phase:
            return inner.update(updates, state, params)
        return jax.tree_util.tree_map(jnp.zeros_like, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --- batches -----------------------------------------------------------------------------------
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


def batch_at(x: np.ndarray, y: np.ndarray, bs: int, seed: int, stream: int, step: int):
    """The ``step``-th batch of shuffled epochs; a pure function of (seed, stream, step)."""
    bs = min(bs, len(y))
    per_epoch = len(y) // bs
    epoch, k = divmod(step, per_epoch)
    perm = rng(seed, stream, epoch).permutation(len(y))
    idx = np.sort(perm[k * bs:(k + 1) * bs])
    return x[idx], y[idx]


def input_shape_of(data) -> tuple[int, int, int]:
    return tuple(getattr(data, "input_shape", None) or data.x_train.shape[1:])


# --- evaluation --------------------------------------------------------------------------------
def predict(fn: Callable, x: np.ndarray, batch_size: int):
    """``fn(xb)`` over ``x`` in padded batches of exactly ``batch_size`` (one compiled shape);
    the outputs (a pytree of arrays with a leading batch axis) cut to the real rows, concatenated."""
    parts = [jax.tree_util.tree_map(lambda a, m=m: np.asarray(a)[:m], fn(xb))
             for (xb,), m in padded_batches((x,), batch_size)]
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)


def accuracy(fn: Callable, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Fraction of ``argmax`` predictions ``fn(xb)`` (B,) equal to ``y``."""
    return float((predict(fn, x, batch_size) == y).sum()) / len(y)


# --- one network, trained alone ------------------------------------------------------------------
class SingleSteps(CompiledSteps):
    """Weight step (Adam, train-mode BatchNorm) and eval step of one cell network.

    With ``ops`` (an op set), the network is the :class:`~tanas_jax.search.network.SwitchNetwork` of the
    genotype's cell structures: the ops are data (``state['choice']``), so every genotype of those
    structures over ``ops`` shares the executables (random search, final trainings of a search); its
    numbers are the plain network's to float rounding.  Without, the genotype's own
    :class:`~tanas_jax.search.network.CellNetwork`.
    """

    def __init__(self, genotype: Genotype, skeleton, num_classes: int, recipe: FinalConfig, input_shape,
                 ops: Sequence[str] | None = None):
        super().__init__()
        t = time.perf_counter()
        self.genotype, self.skeleton = genotype, get_skeleton(skeleton)
        self.num_classes, self.input_shape = int(num_classes), tuple(input_shape)
        self.recipe = recipe
        self.ops = None if ops is None else op_set([genotype], ops)
        if self.ops is None:
            net = build_network(genotype, self.skeleton, num_classes)
            self.shapes = None
        else:
            net = SwitchNetwork(*cell_structures(genotype), self.ops, self.skeleton, self.num_classes)
            self.shapes = switch_shapes(genotype, self.ops, self.skeleton, num_classes, self.input_shape)
        self.net, self.tx = net, optax.adam(recipe.learning_rate)
        self._register(net, self.tx, self.ops is not None)
        self.compile_s += time.perf_counter() - t if self.ops is not None else 0.0

    def _register(self, net, tx, switch: bool) -> None:
        def run(state, w, x, **kw):
            args = (x, state["choice"]) if switch else (x,)
            return net.apply({"params": w, "batch_stats": state["batch_stats"]}, *args, **kw)

        def weight_step(state, x, y):
            def loss_fn(w):
                logits, upd = run(state, w, x, train=True, mutable=["batch_stats"])
                return cross_entropy(logits, y), upd.get("batch_stats", {})

            (loss, nbs), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
            upd, opt = tx.update(g, state["opt"], state["params"])
            return {**state, "params": optax.apply_updates(state["params"], upd), "batch_stats": nbs,
                    "opt": opt}, loss

        def eval_step(state, x):
            return run(state, state["params"], x, train=False).argmax(-1)

        self.register("weights", weight_step)
        self.register("eval", eval_step)

    def init_state(self, seed_parts: Sequence[int], genotype: Genotype | None = None) -> dict:
        """Fresh weights of ``genotype`` (default: the constructor's) from ``SeedSequence([*seed_parts, 0])``,
        exactly as its own network's, and Adam's state (and, switch network: the op choice)."""
        g = self.genotype if genotype is None else genotype
        v = init_network(g, self.skeleton, self.num_classes,
                         np.random.SeedSequence([*seed_parts, 0]).generate_state(2), self.input_shape)
        extra = {}
        if self.ops is not None:
            if cell_structures(g) != cell_structures(self.genotype):
                raise ValueError("SingleSteps.init_state: a genotype of other cell structures than the steps")
            v = to_switch_variables(v, g, self.ops, self.skeleton, self.shapes)
            extra = {"choice": jnp.asarray(op_choice(g, self.ops, self.skeleton))}
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {}), **extra,
                "opt": self.tx.init(v["params"])}

    def variables(self, state, genotype: Genotype | None = None) -> dict:
        """``{'params', 'batch_stats'}`` of ``genotype`` as its own :class:`CellNetwork` holds them."""
        v = {"params": state["params"], "batch_stats": state["batch_stats"]}
        if self.ops is None:
            return v
        g = self.genotype if genotype is None else genotype
        return from_switch_variables(v, g, self.ops, self.skeleton,
                                     network_shapes(g, self.skeleton, self.num_classes, self.input_shape))

    def weight_step(self, state, x, y):
        return self.call("weights", state, x, y)

    def accuracy(self, state, x: np.ndarray, y: np.ndarray) -> float:
        """Eval-mode accuracy; batches of the fixed ``eval_batch_size`` (one compiled eval step)."""
        return accuracy(lambda xb: self.call("eval", state, xb), x, y, self.recipe.eval_batch_size)


def single_steps(genotype: Genotype, num_classes: int, recipe: FinalConfig, input_shape,
                 ops: Sequence[str] | None = None) -> SingleSteps:
    """The cached :class:`SingleSteps` of (genotype -- with ``ops``: its cell structures and the op set --,
    skeleton, classes, shape, lr, batch, eval batch): everything that fixes its compiled shapes and constants."""
    sk = get_skeleton(recipe.skeleton)
    which = ("single", genotype.key()) if ops is None else ("single-switch", cell_structures(genotype),
                                                            op_set([genotype], ops))
    key = (*which, sk, int(num_classes), tuple(input_shape), recipe.learning_rate, recipe.batch_size,
           recipe.eval_batch_size)
    return STEP_CACHE.get(key, lambda: SingleSteps(genotype, sk, num_classes, recipe, input_shape, ops))


def train_single(genotype: Genotype, data, recipe: FinalConfig, seed_parts: Sequence[int], steps: int,
                 ops: Sequence[str] | None = None):
    """Train ``genotype`` alone for ``steps`` steps (init ``[*seed_parts, 0]``, batches of
    ``recipe.batch_size`` from ``rng(*seed_parts, 2)``; ``ops``: see :class:`SingleSteps`); returns
    (steps object, state, info)."""
    fs = single_steps(genotype, data.num_classes, recipe, input_shape_of(data), ops)
    c0 = fs.compile_s
    state = fs.init_state(list(seed_parts), genotype)
    stream = BatchStream(data.x_train, data.y_train, recipe.batch_size, rng(*seed_parts, 2))
    loss = None
    for _ in range(steps):
        state, loss = fs.weight_step(state, *stream.next())
    return fs, state, {"compile_s": fs.compile_s - c0, "final_loss": None if loss is None else float(loss)}


def train_final(genotype: Genotype, data, final: FinalConfig, seed: int, ops: Sequence[str] | None = None) -> dict:
    """The chosen genotype trained from scratch by the ``final`` protocol (module docstring);
    validation, then test, once.  ``ops``: a search's op set, so the final training shares the compiled
    steps of every genotype of the space (:class:`SingleSteps`)."""
    t0 = time.perf_counter()
    fs, state, info = train_single(genotype, data, final, [seed, FINAL_STREAM], final.steps, ops)
    return {"genotype": genotype.to_dict(), "params": param_count(fs.variables(state, genotype)["params"]),
            "val_accuracy": fs.accuracy(state, data.x_val, data.y_val),
            "test_accuracy": fs.accuracy(state, data.x_test, data.y_test),
            "steps": final.steps, "input_shape": list(fs.input_shape), "train_loss": info["final_loss"],
            "compile_s": info["compile_s"], "wall_s": time.perf_counter() - t0}
