"""Shared pieces of the Fisher engine: pytree helpers, label sampling, per-example gradients, bounded caches.

Everything here is a pure function except :class:`LRUCache` and
:class:`FisherCaches`, the only state of the engine: compiled functions keyed
by the ``apply`` closure (and the options they were traced with) and meshes,
each in an LRU of bounded size owned by whoever holds the caches object (a
:class:`tanas_jax.fisher.FisherEngine`; a short-lived one when the caller
passes none).  Nothing in ``tanas_jax.fisher`` keeps module-level state.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tanas_jax.errors import UserError

ESTIMATORS = ("empirical", "mc", "exact")
METHODS = ("auto", "fast", "vmap")

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes
DEFAULT_CACHE_SIZE = 16            # entries per cache of a FisherEngine


# ----------------------------------------------------------------------------
# pytree helpers

def split_variables(variables) -> tuple[Any, dict]:
    """``variables -> (params, rest)``; a bare params tree is accepted too."""
    if isinstance(variables, dict) and "params" in variables:
        rest = {k: v for k, v in variables.items() if k != "params"}
        return variables["params"], rest
    return variables, {}


def join_variables(params, rest):
    """Inverse of :func:`split_variables`."""
    if rest or isinstance(params, dict):
        return {"params": params, **rest}
    return params


def leaf_names(tree) -> list[str]:
    """'/'-joined key paths of a pytree's leaves, in ``tree_leaves`` order."""
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out.append("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path))
    return out


def finite_flags(tree):
    """One bool per leaf (``tree_leaves`` order): is every value finite?  Traceable: computed inside a
    jitted function, the host then reads ONE small array instead of one scalar per leaf."""
    return jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)])


def check_finite(tree, name: str | None = None, flags=None):
    """UserError naming the first layer whose Fisher is not finite (``flags``: its
    :func:`finite_flags`, when already computed)."""
    flags = np.asarray(finite_flags(tree) if flags is None else flags)
    bad = [n for n, ok in zip(leaf_names(tree), flags) if not ok]
    if bad:
        who = f" of {name}" if name else ""
        raise UserError(f"non-finite gradients in the Fisher{who} at layer {bad[0]}: "
                        "the network or its inputs contain NaN/inf; retrain the network or check the data")


# ----------------------------------------------------------------------------
# the label rule: labels must lie in [0, outputs); a C-output network is evaluated
# on K > C classes with K - C zero logits appended (see docs/labels.md)

def pad_logits(apply: Callable, width: int) -> Callable:
    """``apply`` whose logits are padded with zeros up to ``width`` classes (log-softmax over ``width``).

    A network with C outputs evaluated on data whose labels go up to K - 1 > C - 1: the K - C padded
    classes get logit 0 (the base puts no evidence on classes it never saw), so every example counts and
    no label is clamped or dropped.  The padding is a constant, so the gradient w.r.t. the network's
    parameters has the network's own tree.  ``width`` <= C returns the logits unchanged.
    """
    width = int(width)

    def padded(variables, x):
        logits = apply(variables, x)
        extra = width - logits.shape[-1]
        if extra <= 0:
            return logits
        return jnp.concatenate([logits, jnp.zeros(logits.shape[:-1] + (extra,), logits.dtype)], axis=-1)

    return padded


def output_width(apply: Callable, variables, x) -> int:
    """Number of logits ``apply`` gives per example (traced abstractly with ``jax.eval_shape``)."""
    spec = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), jnp.float32)
    return int(jax.eval_shape(lambda xx: apply(variables, xx), spec).shape[-1])


def check_labels(y, width: int, name: str | None = None) -> None:
    """UserError unless every label (numpy, on the host) lies in ``[0, width)``: nothing is clamped or dropped."""
    y = np.asarray(y)
    if y.size == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo >= 0 and hi < width:
        return
    who = f" of {name}" if name else ""
    bad = hi if hi >= width else lo
    raise UserError(f"label {bad} is outside the network's {width} outputs{who}: labels must lie in [0, {width}); "
                    "to evaluate a network on data with more classes, pad its logits to the data's class count "
                    "(tanas_jax.fisher.pad_logits(apply, num_classes)), else pass data of the network's own task")


# ----------------------------------------------------------------------------
# labels and per-example gradients

def example_keys(rng, idx):
    """One PRNG key per example: ``fold_in(rng, i)`` (independent of the microbatch)."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(idx)


def labels_and_weights(logits, y, w, idx, rng, estimator, mc_samples):
    """Labels (B, S) and weights (B, S) for the chosen estimator."""
    logits = jax.lax.stop_gradient(logits)
    b, c = logits.shape
    if estimator == "empirical":
        return y[:, None].astype(jnp.int32), w[:, None]
    if estimator == "mc":
        keys = example_keys(rng, idx)
        labels = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, shape=(mc_samples,)))(keys, logits)
        return labels.astype(jnp.int32), jnp.broadcast_to(w[:, None] / mc_samples, (b, mc_samples))
    if estimator == "exact":
        labels = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (b, c))
        return labels, w[:, None] * jax.nn.softmax(logits, axis=-1)
    raise ValueError(estimator)


def per_example_grads(apply: Callable, variables, x, y):
    """Per-example gradients of ``log p(y_i | x_i)`` w.r.t. ``variables['params']``.

    Returns a pytree like the params with a leading example axis (B, ...).
    ``apply(variables, x) -> logits``; other collections (``batch_stats``) are
    held fixed (eval mode).  Memory: B x n_params floats.
    """
    params, rest = split_variables(variables)

    def logp_one(p, xi, yi):
        logits = apply(join_variables(p, rest), xi[None])[0]
        return jax.nn.log_softmax(logits)[yi]

    return jax.vmap(jax.grad(logp_one), in_axes=(None, 0, 0))(params, x, y)


def choose_microbatch(per_example_bytes: int, memory_budget: int, n_devices: int = 1,
                      max_mb: int = 256) -> int:
    """Largest microbatch (a multiple of ``n_devices``) whose working set fits."""
    mb = max(1, int(memory_budget // max(per_example_bytes, 1)))
    mb = min(mb, max_mb)
    if mb >= 8:
        mb = 1 << int(math.floor(math.log2(mb)))
    mb = max(n_devices, (mb // n_devices) * n_devices)
    return mb


def make_mesh(devices: Sequence | None = None) -> Mesh:
    """1-D mesh ``('data',)`` over ``devices`` (default all)."""
    devs = tuple(jax.devices() if devices is None else devices)
    return Mesh(np.array(devs), ("data",))


# ----------------------------------------------------------------------------
# bounded state

class LRUCache:
    """A dict of at most ``maxsize`` entries; the least recently used one is dropped first."""

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE):
        if int(maxsize) < 1:
            raise ValueError(f"cache size must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._data: OrderedDict = OrderedDict()

    def get_or_build(self, key: Hashable, build: Callable[[], Any]):
        """The value for ``key``, built by ``build()`` (and stored) on a miss."""
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = build()
        self._data[key] = value
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        return key in self._data

    def values(self):
        return list(self._data.values())

    def clear(self) -> None:
        self._data.clear()


def shape_signature(variables, x) -> tuple:
    """Hashable ``(tree structure, leaf shapes and dtypes, example shape)``: what an abstract trace of
    ``apply(variables, x)`` depends on (values do not matter)."""
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    return (treedef, tuple((tuple(a.shape), str(a.dtype)) for a in leaves), tuple(x.shape[1:]))


class FisherCaches:
    """The engine's state: jitted microbatch steps, Gram block functions, meshes and the results of
    abstract traces (layer plans, output widths, the jitted finishing step), each an LRU.

    Keys hold the ``apply`` closure, so a cache keeps its networks' apply
    functions alive until evicted; ``cache_size`` bounds each cache.  Caching
    the traces matters for small networks, where tracing ``apply`` twice per
    call (plan and output width) cost as much as computing the Fisher.
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE):
        self.cache_size = int(cache_size)
        self.steps = LRUCache(cache_size)
        self.block_fns = LRUCache(cache_size)
        self.meshes = LRUCache(cache_size)
        self.traces = LRUCache(cache_size)

    def mesh(self, devices: Sequence | None = None) -> Mesh:
        """:func:`make_mesh` over ``devices``, cached."""
        devs = tuple(jax.devices() if devices is None else devices)
        return self.meshes.get_or_build(devs, lambda: make_mesh(devs))

    def cache_sizes(self) -> dict[str, int]:
        """Current number of entries of each cache."""
        return {"steps": len(self.steps), "block_fns": len(self.block_fns), "meshes": len(self.meshes),
                "traces": len(self.traces)}

    def output_width(self, apply: Callable, variables, x) -> int:
        """:func:`output_width`, cached per ``apply`` and :func:`shape_signature`."""
        key = ("width", apply, shape_signature(variables, x))
        return self.traces.get_or_build(key, lambda: output_width(apply, variables, x))

    def clear(self) -> None:
        """Drop every cached function, mesh and trace."""
        for c in (self.steps, self.block_fns, self.meshes, self.traces):
            c.clear()
