"""TA-NAS transform-network distance (Le et al., "Task-Aware Neural
Architecture Search", §3.1 and §4, Fig. 2).

The dissimilarity of task A to task B is the complexity of the least complex
transform network ``N_t`` that maps A's penultimate features onto B's while
B's head still solves B on the result::

    d(A, B) = min { O(N_t) : l_B(head_B o N_t o N_A) >= 1 - eps }      (§3.1)

As in the paper's experiment (§4): the features are ``N_A(X_B)`` and
``N_B(X_B)`` (penultimate layers of the banked nets, evaluated on B's data);
``N_t`` is an MLP ``dense(2F) -> dense(F/2) -> dense(F)`` (paper: F = 1024,
so 2048 -> 512 -> 1024; hidden widths scale with the feature width), trained
with MSE to map the first onto the second, then pruned iteratively by weight
magnitude, fine-tuning between steps, "as much as possible while maintaining
similar performance".  The distance is the fraction of the transform's
non-zero weights (kernel entries) that remain, in [0, 1].

Pruning.  A mask pytree (1 = kept) multiplies the kernels in the forward pass
and the gradients and the optimizer updates, so a pruned weight stays exactly
zero through fine-tuning (checked in tests).  Each step removes ``prune_rate``
of the remaining kernel entries of every layer (``scope='layer'``) or of all
layers pooled (``scope='global'``), fine-tunes with a fresh Adam state, and
checks the quality bar on held-out features:

* ``criterion='accuracy'`` (default, the paper's): accuracy of B's head on the
  transformed features >= reference accuracy - ``tolerance``, where the
  reference is B's head on B's own features (``reference='own'``, default:
  the transform must really solve B, as the definition's l_B >= 1 - eps) or
  on the unpruned trained transform (``reference='unpruned'``, the wording
  of §4: "maintaining similar performance to N_t").  Beware: with
  'unpruned' a transform that never solved B (chance accuracy) stays at
  chance while pruned and gets a tiny distance -- measured on tanas_small,
  fashion_trouser -> mnist_digit3 at 50 % accuracy: d = 0.004 -- so 'own'
  is the default;
* ``criterion='mse'``: MSE of the transform <= ``mse_factor`` x the MSE of the
  unpruned, trained transform.

A failed step is undone; with ``refine > 0`` the rate is halved and tried
again (at most ``refine`` times), else the search stops.  It also stops at
``min_fraction`` or after ``max_steps``.  If the unpruned transform already
misses the bar, the distance is 1.0 and ``reached_quality`` is False.

Everything is a pure function of the inputs and ``seed`` (init, shuffling,
train/check split, tie-breaking in the magnitude sort is stable), so the same
seed gives the same pruning schedule on the same machine.

This module owns the distance (:func:`transform_distance`) and its table over
banked networks (:func:`transform_distance_table`, pairs cached in the bank).
The settings and their validation are :class:`tanas_jax.config.TransformConfig`
(config section ``transform``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tanas_jax.bank import inputs_digest
from tanas_jax.config import (  # noqa: F401 - the valid values, re-exported
    ACTIVATIONS,
    CRITERIA,
    REFERENCES,
    SCOPES,
    TransformConfig,
    from_section,
    section,
    to_dict,
    updated,
)
from tanas_jax.distance.stats import finite_lists, seed_mean_std
from tanas_jax.errors import UserError

ARTIFACT_KIND = "transform_distance"


# --------------------------------------------------------------------------
# configuration (the dataclass and its validation live in tanas_jax.config)
# --------------------------------------------------------------------------
def settings_digest(tc: TransformConfig) -> str:
    """Short hash (12 hex digits) of every transform setting (a bank cache-key component)."""
    return inputs_digest(to_dict(tc), 12)


def default_config() -> TransformConfig:
    """Paper setting: 2F -> F/2 -> F transform (2048 -> 512 -> 1024 for F = 1024)."""
    return TransformConfig()


# --------------------------------------------------------------------------
# the transform MLP and masks (pure functions over pytrees)
# --------------------------------------------------------------------------
def init_transform(key: jax.Array, widths: Sequence[int]) -> list[dict]:
    """Params ``[{'kernel': (w_i, w_{i+1}), 'bias': (w_{i+1},)}, ...]``.

    Kernels are LeCun-normal (flax ``Dense`` default), biases zero.
    """
    init = jax.nn.initializers.lecun_normal()
    keys = jax.random.split(key, len(widths) - 1)
    return [{"kernel": init(k, (a, b), jnp.float32), "bias": jnp.zeros((b,), jnp.float32)}
            for k, a, b in zip(keys, widths[:-1], widths[1:])]


def full_mask(params) -> list[dict]:
    """All-ones mask on kernels; biases are not pruned (mask None-free: ones)."""
    return [{"kernel": jnp.ones_like(p["kernel"]), "bias": jnp.ones_like(p["bias"])} for p in params]


def apply_mask(params, mask):
    return jax.tree_util.tree_map(lambda p, m: p * m, params, mask)


def transform_apply(params, mask, x, output_relu: bool = True):
    """``N_t(x)``: dense -> ReLU -> ... -> dense (-> ReLU), kernels masked."""
    h = x
    n = len(params)
    for i, (p, m) in enumerate(zip(params, mask)):
        h = h @ (p["kernel"] * m["kernel"]) + p["bias"]
        if i < n - 1 or output_relu:
            h = jax.nn.relu(h)
    return h


def mask_fraction(mask) -> float:
    """Fraction of kernel entries kept (the distance)."""
    kept = sum(float(np.asarray(m["kernel"]).sum()) for m in mask)
    total = sum(int(np.asarray(m["kernel"]).size) for m in mask)
    return kept / total


def nonzero_fraction(params) -> float:
    """Fraction of non-zero kernel entries (equals ``mask_fraction`` after pruning)."""
    nz = sum(int(np.count_nonzero(np.asarray(p["kernel"]))) for p in params)
    total = sum(int(np.asarray(p["kernel"]).size) for p in params)
    return nz / total


def magnitude_prune(params, mask, rate: float, scope: str = "layer") -> list[dict]:
    """New mask keeping the largest ``(1 - rate)`` share of the kept kernel
    entries by |w| (per layer, or pooled over layers for ``scope='global'``).

    Ties are broken by position (stable sort), so the result is deterministic.
    Pruned entries never come back: only currently kept entries compete.
    """
    kernels = [np.abs(np.asarray(p["kernel"] * m["kernel"], np.float32)) for p, m in zip(params, mask)]
    kept = [np.asarray(m["kernel"]) > 0 for m in mask]
    new = [np.zeros(k.shape, np.float32) for k in kernels]

    def keep_top(scores: np.ndarray, alive: np.ndarray, n_keep: int) -> np.ndarray:
        flat = np.where(alive.ravel(), scores.ravel(), -1.0)   # dead entries sort last
        order = np.argsort(-flat, kind="stable")
        out = np.zeros(flat.size, np.float32)
        out[order[:n_keep]] = 1.0
        return out

    if scope == "layer":
        for i, (s, a) in enumerate(zip(kernels, kept)):
            n_keep = int(np.floor(a.sum() * (1.0 - rate)))
            new[i] = keep_top(s, a, n_keep).reshape(s.shape)
    else:
        scores = np.concatenate([s.ravel() for s in kernels])
        alive = np.concatenate([a.ravel() for a in kept])
        n_keep = int(np.floor(alive.sum() * (1.0 - rate)))
        flat = keep_top(scores, alive, n_keep)
        offset = 0
        for i, s in enumerate(kernels):
            new[i] = flat[offset:offset + s.size].reshape(s.shape)
            offset += s.size
    return [{"kernel": jnp.asarray(k), "bias": m["bias"]} for k, m in zip(new, mask)]


# --------------------------------------------------------------------------
# jitted training / evaluation
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _make_fns(cfg: TransformConfig):
    """Jitted steps for one config (cached: pairs of a table reuse the compiled code)."""
    output_relu = cfg.output_activation == "relu"
    opt = optax.adam(cfg.learning_rate)
    bs = int(cfg.batch_size)

    def loss_fn(params, mask, x, y):
        return jnp.mean((transform_apply(params, mask, x, output_relu) - y) ** 2)

    @jax.jit
    def train_epoch(params, opt_state, mask, x, y, key):
        """One shuffled pass (remainder batch dropped); gradients and updates
        are multiplied by the mask so that pruned weights stay exactly zero."""
        n = x.shape[0]
        nb = max(1, n // bs)
        b = min(bs, n)
        perm = jax.random.permutation(key, n)[: nb * b].reshape(nb, b)

        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, mask, x[idx], y[idx])
            grads = apply_mask(grads, mask)
            updates, opt_state = opt.update(grads, opt_state, params)
            updates = apply_mask(updates, mask)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), perm)
        return params, opt_state, jnp.mean(losses)

    @jax.jit
    def evaluate(params, mask, head, x, y, labels):
        """(accuracy of B's head on N_t(x), MSE of N_t(x) vs y)."""
        z = transform_apply(params, mask, x, output_relu)
        logits = z @ head["kernel"] + head["bias"]
        acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return acc, jnp.mean((z - y) ** 2)

    @jax.jit
    def head_accuracy(head, y, labels):
        logits = y @ head["kernel"] + head["bias"]
        return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))

    return opt, train_epoch, evaluate, head_accuracy


def _split(n: int, cfg: TransformConfig, key: jax.Array):
    perm = np.asarray(jax.random.permutation(key, n))
    n_val = max(1, int(round(n * cfg.val_fraction)))
    return perm[n_val:], perm[:n_val]


def _check_inputs(src, tgt, head, labels, cfg: TransformConfig, what: str = "features"):
    if src.ndim != 2 or tgt.ndim != 2:
        raise UserError(f"transform distance needs 2-D {what} (examples x width); got shapes "
                        f"{tuple(src.shape)} and {tuple(tgt.shape)}")
    if src.shape[0] != tgt.shape[0] or labels.shape[0] != src.shape[0]:
        raise UserError(f"source {what}, target {what} and labels must cover the same examples; "
                        f"got {src.shape[0]}, {tgt.shape[0]} and {labels.shape[0]} rows")
    if src.shape[1] != tgt.shape[1] and not cfg.adapter:
        raise UserError(
            f"feature widths differ (source {src.shape[1]}, target {tgt.shape[1]}): the transform "
            "distance compares networks of one architecture; use nets with equal feature widths "
            "or set transform.adapter=True to let the transform map between widths")
    if head["kernel"].shape[0] != tgt.shape[1]:
        raise UserError(f"target head expects {head['kernel'].shape[0]} features but the target "
                        f"features have width {tgt.shape[1]}")


def _fit_and_check_sets(src_features, tgt_features, labels, head, cfg: TransformConfig, key: jax.Array,
                        val_data):
    """``(fit, check)``: each a tuple ``(source features, target features, labels)`` as float32 / int32
    numpy, capped at ``max_train`` / ``max_val``.  Without ``val_data`` a ``val_fraction`` share of
    the examples (split under ``key``) is the check set."""
    src = np.asarray(src_features, np.float32)
    tgt = np.asarray(tgt_features, np.float32)
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    _check_inputs(src, tgt, head, labels, cfg)
    if val_data is None:
        tr, va = _split(src.shape[0], cfg, key)
        fit, check = (src[tr], tgt[tr], labels[tr]), (src[va], tgt[va], labels[va])
    else:
        src_val, tgt_val, lab_val = (np.asarray(a) for a in val_data)
        check = (src_val.astype(np.float32), tgt_val.astype(np.float32), lab_val.astype(np.int32).reshape(-1))
        _check_inputs(check[0], check[1], head, check[2], cfg, what="check features")
        fit = (src, tgt, labels)
    if cfg.max_train:
        fit = tuple(a[: cfg.max_train] for a in fit)
    if cfg.max_val:
        check = tuple(a[: cfg.max_val] for a in check)
    if fit[0].shape[0] < 2 or check[0].shape[0] < 1:
        raise UserError(f"transform distance needs at least 2 fit and 1 check examples; got "
                        f"{fit[0].shape[0]} and {check[0].shape[0]}")
    return fit, check


class _Trainer:
    """Fits the masked transform on the fit set and measures it on the check set.

    Epochs are numbered across every ``fit`` call of one distance (the shuffle of epoch ``e`` uses
    ``fold_in(key, e)``), so the whole schedule is a function of the seed.
    """

    def __init__(self, cfg: TransformConfig, fit, check, head, key: jax.Array):
        self.opt, self._train_epoch, self._evaluate, self._head_accuracy = _make_fns(cfg)
        self.x, self.y = jnp.asarray(fit[0]), jnp.asarray(fit[1])
        self.xv, self.yv, self.lv = (jnp.asarray(a) for a in check)
        self.head, self.key, self.epoch = head, key, 0

    def fit(self, params, mask, epochs: int):
        """``(params, last epoch's mean loss)`` after ``epochs`` epochs from a fresh Adam state."""
        opt_state = self.opt.init(params)      # fresh Adam state after every pruning step
        loss = jnp.nan
        for _ in range(int(epochs)):
            params, opt_state, loss = self._train_epoch(params, opt_state, mask, self.x, self.y,
                                                        jax.random.fold_in(self.key, self.epoch))
            self.epoch += 1
        return params, float(loss)

    def quality(self, params, mask) -> tuple[float, float]:
        """(accuracy of B's head on the transformed check features, MSE to B's features)."""
        acc, mse = self._evaluate(params, mask, self.head, self.xv, self.yv, self.lv)
        return float(acc), float(mse)

    def own_accuracy(self) -> float:
        """Accuracy of B's head on B's own check features (the ``reference='own'`` bar)."""
        return float(self._head_accuracy(self.head, self.yv, self.lv))


def _quality_bar(cfg: TransformConfig, acc_own: float, acc0: float, mse0: float):
    """``(threshold, ok)``: the bar of ``cfg.criterion`` and the test ``ok(accuracy, mse)``."""
    if cfg.criterion == "accuracy":
        threshold = (acc_own if cfg.reference == "own" else acc0) - cfg.tolerance
        return threshold, lambda acc, mse: acc >= threshold - 1e-7
    threshold = cfg.mse_factor * mse0
    return threshold, lambda acc, mse: mse <= threshold * (1 + 1e-6)


def _prune(trainer: _Trainer, params, mask, ok, cfg: TransformConfig, progress, history: list):
    """Iterative magnitude pruning of the trained transform (see the module docstring).

    Appends one record per attempt to ``history``; returns ``(params, mask, accuracy, mse,
    fraction, steps)`` of the last accepted (quality-keeping) transform.
    """
    good = (params, mask, history[0]["accuracy"], history[0]["mse"])
    fraction, rate, refines_left, step = 1.0, float(cfg.prune_rate), int(cfg.refine), 0
    while step < cfg.max_steps and fraction > cfg.min_fraction:
        step += 1
        new_mask = magnitude_prune(good[0], good[1], rate, cfg.scope)
        new_fraction = mask_fraction(new_mask)
        if new_fraction >= fraction:          # nothing left to remove at this rate
            break
        # pruned weights exactly zero from here on
        params, loss = trainer.fit(apply_mask(good[0], new_mask), new_mask, cfg.finetune_epochs)
        acc, mse = trainer.quality(params, new_mask)
        accepted = ok(acc, mse)
        history.append({"step": step, "rate": rate, "fraction": new_fraction, "accuracy": acc,
                        "mse": mse, "train_loss": loss, "accepted": bool(accepted)})
        if progress is not None:
            progress(history[-1])
        if accepted:
            good, fraction = (params, new_mask, acc, mse), new_fraction
        elif refines_left > 0:
            refines_left, rate = refines_left - 1, rate / 2.0
        else:
            break
    return (*good, fraction, step)


def transform_distance(src_features, tgt_features, tgt_head_params, labels, cfg=None, seed: int = 0,
                       val_data=None, progress=None) -> dict:
    """TA-NAS distance d(A, B) from features ``N_A(X_B)`` (``src_features``,
    (n, F_A)) and ``N_B(X_B)`` (``tgt_features``, (n, F_B)), B's head params
    (``{'kernel': (F_B, C), 'bias': (C,)}``) and B's labels (n,).

    ``cfg``: a :class:`~tanas_jax.config.TransformConfig`, a mapping of its
    fields or None (the defaults).  ``val_data=(src_val, tgt_val,
    labels_val)`` gives the quality-check set; without it a
    ``cfg.val_fraction`` share of the examples is held out (split under
    ``seed``).  ``progress`` is an optional callable ``progress(dict)``
    called after every pruning step.

    Returns a dict: ``distance`` (= ``remaining_fraction``, the kept share of
    kernel entries, in [0, 1]), ``reached_quality`` (the unpruned transform
    met the bar), ``accuracy_own`` (B's head on B's features),
    ``accuracy_before`` / ``accuracy_after`` (on transformed features, before
    and after pruning), ``mse_before`` / ``mse_after``, ``threshold``,
    ``history`` (one entry per pruning attempt), ``widths``, ``n_params``,
    ``n_train``, ``n_val``, ``seed``, ``config``, ``timing``.
    """
    cfg = from_section(TransformConfig, cfg)
    t0 = time.perf_counter()
    head = {"kernel": jnp.asarray(tgt_head_params["kernel"], jnp.float32),
            "bias": jnp.asarray(tgt_head_params["bias"], jnp.float32)}
    k_split, k_init, k_train = jax.random.split(jax.random.PRNGKey(int(seed)), 3)
    fit, check = _fit_and_check_sets(src_features, tgt_features, labels, head, cfg, k_split, val_data)
    widths = cfg.widths(fit[0].shape[1], fit[1].shape[1])
    out = _fit_and_prune(_Trainer(cfg, fit, check, head, k_train), init_transform(k_init, widths), cfg, progress)
    out.update(widths=list(widths), n_params=int(sum(a * b for a, b in zip(widths[:-1], widths[1:]))),
               n_train=int(fit[0].shape[0]), n_val=int(check[0].shape[0]), seed=int(seed), config=to_dict(cfg))
    out["timing"]["total_s"] = time.perf_counter() - t0
    return out


def _fit_and_prune(trainer: _Trainer, params, cfg: TransformConfig, progress) -> dict:
    """Train the unpruned transform, check the bar, prune while it holds: the distance's outcome."""
    mask = full_mask(params)
    acc_own = trainer.own_accuracy()
    t_fit = time.perf_counter()
    params, train_loss = trainer.fit(params, mask, cfg.train_epochs)
    acc0, mse0 = trainer.quality(params, mask)
    t_fit = time.perf_counter() - t_fit
    threshold, ok = _quality_bar(cfg, acc_own, acc0, mse0)
    reached = ok(acc0, mse0)
    history = [{"step": 0, "rate": 0.0, "fraction": 1.0, "accuracy": acc0, "mse": mse0,
                "train_loss": train_loss, "accepted": bool(reached)}]
    t_prune = time.perf_counter()
    if reached:
        params, mask, acc, mse, fraction, steps = _prune(trainer, params, mask, ok, cfg, progress, history)
    else:
        acc, mse, fraction, steps = acc0, mse0, 1.0, 0
    return {
        "distance": float(fraction if reached else 1.0),
        "remaining_fraction": float(fraction),
        "nonzero_fraction": float(nonzero_fraction(params)),
        "reached_quality": bool(reached),
        "criterion": cfg.criterion,
        "threshold": float(threshold),
        "accuracy_own": acc_own,
        "accuracy_before": acc0,
        "accuracy_after": float(acc),
        "mse_before": mse0,
        "mse_after": float(mse),
        "history": history,
        "steps": steps,
        "timing": {"fit_s": t_fit, "prune_s": time.perf_counter() - t_prune},
        "params": params,
        "mask": mask,
    }


def reachable_fractions(cfg=None) -> list[float]:
    """Fractions the schedule visits without refinement: ``(1-rate)^k`` down
    to ``min_fraction`` (approximately: counts are floored per layer)."""
    cfg = from_section(TransformConfig, cfg)
    out, f = [1.0], 1.0
    for _ in range(cfg.max_steps):
        if f <= cfg.min_fraction:
            break
        f *= 1.0 - cfg.prune_rate
        out.append(f)
    return out


# --------------------------------------------------------------------------
# distance table over banked networks
# --------------------------------------------------------------------------
def _features_fn(net: str, num_classes: int, batch: int):
    from tanas_jax import models

    feats = jax.jit(models.make_features(net, num_classes))

    def run(variables, x):
        out = []
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            m = len(xb)
            if m < batch and len(x) > batch:      # one shape per net: pad the last batch
                xb = np.concatenate([xb, np.zeros((batch - m,) + xb.shape[1:], xb.dtype)])
            out.append(np.asarray(feats(variables, xb))[:m])
        return np.concatenate(out).reshape(len(x), -1)

    return run


def _network_checksum(bank, task: str, net: str, seed: int, meta: dict) -> str | None:
    """sha256 of a banked network's tensors, from its committed metadata file."""
    if meta.get("sha256"):
        return meta["sha256"]
    path = bank.network_path(task, net, seed)
    try:
        with open(path[: -len(".safetensors")] + ".json") as f:
            return json.load(f).get("sha256")
    except (OSError, ValueError):
        return None


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("params", "mask")}


def transform_distance_table(bank, tasks, cfg, seeds=(0,), progress: bool = True, source=None,
                             log=print, recompute: bool = False, *, targets=None) -> dict:
    """TA-NAS distance matrix over banked networks (paper Fig. 2).

    ``mean[i][j]`` = d(tasks[i] -> tasks[j]): the transform maps the
    penultimate features of task i's net onto those of task j's net, both
    evaluated on task j's data (fit on j's train split, quality bar on j's
    validation split).  ``cfg`` is the whole config (``data``, ``train``,
    ``transform`` sections; never changed); networks missing from the bank are
    trained and banked (``ensure_network``).  Each (i, j, seed) result is cached
    in the bank (:meth:`~tanas_jax.bank.Bank.cached`) as artifact
    ``transform_distance`` of task j, keyed by the source task, seed and a
    digest of the settings and of both networks' checksums, so a changed
    setting or a retrained network is recomputed, never reused.

    ``targets``: only these columns are computed (default: every task); the
    other entries are None.

    Returns ``{'tasks', 'targets', 'seeds', 'mean', 'std', 'per_seed', 'pairs',
    'net', 'config', 'data', 'networks', 'timing'}`` (matrices as nested lists,
    rows = source task, columns = target task).  ``std`` is the sample std over
    seeds (``ddof=1``), 0.0 with one seed (:func:`~tanas_jax.distance.stats.seed_mean_std`).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    run, tasks, seeds = _start_table(bank, tasks, cfg, seeds, source, progress, log, recompute)
    targets = _check_targets(tasks, targets)
    t_nets = time.perf_counter() - t_start
    n = len(tasks)
    per_seed = np.full((len(seeds), n, n), np.nan)
    pairs = []
    bar = tqdm(total=len(seeds) * n * len(targets), desc="transform distance", unit="pair",
               disable=not progress, dynamic_ncols=True)
    for j, b in enumerate(tasks):
        if b not in targets:
            continue
        target = _TargetData(run, b)
        for si, s in enumerate(seeds):
            for i, a in enumerate(tasks):
                result, hit = _pair_result(run, target, a, s)
                per_seed[si, i, j] = result["distance"]
                pairs.append(_pair_row(a, b, s, result, hit))
                bar.update(1)
                bar.set_postfix(last=f"{a}->{b}", d=f"{result['distance']:.4f}")
    bar.close()
    return _table_result(run, tasks, targets, seeds, per_seed, pairs, t_nets, t_start)


def _check_targets(tasks: list, targets) -> list:
    """The target columns (canonical names, each one of ``tasks``); every task when None."""
    from tanas_jax.tasks import canonical

    if targets is None:
        return list(tasks)
    targets = [canonical(t) for t in targets]
    missing = [t for t in targets if t not in tasks]
    if missing:
        raise UserError(f"target {', '.join(missing)} is not in the table's tasks: {', '.join(tasks)}")
    return targets


@dataclasses.dataclass
class _TableRun:
    """What every pair of one transform table shares: settings, networks, checksums, extractors."""

    bank: Any
    tcfg: TransformConfig
    net: str
    data_cfg: Any                  # tanas_jax.config.DataConfig
    source: str
    nets: dict                     # (task, seed) -> (variables, meta)
    checksums: dict                # (task, seed) -> sha256 of the network's tensors
    progress: bool
    recompute: bool
    feature_fns: dict = dataclasses.field(default_factory=dict)

    def features(self, num_classes: int):
        """The (compiled once) penultimate-feature extractor of ``net`` with ``num_classes`` outputs."""
        if num_classes not in self.feature_fns:
            self.feature_fns[num_classes] = _features_fn(self.net, num_classes, int(self.tcfg.feature_batch))
        return self.feature_fns[num_classes]


def _start_table(bank, tasks, cfg, seeds, source, progress, log, recompute):
    """``(run, tasks, seeds)``: settings resolved, every network trained or loaded."""
    from tanas_jax.tasks import canonical
    from tanas_jax.train import ensure_network, network_key

    tcfg = section(cfg, "transform")
    tasks = [canonical(t) for t in tasks]
    if len(set(tasks)) != len(tasks):
        raise UserError(f"task list has duplicates: {', '.join(tasks)}")
    seeds = [int(s) for s in seeds]
    net = tcfg.net or section(cfg, "train").net
    if net != section(cfg, "train").net:     # bank/train the transform's net, not the Fisher metrics' net
        cfg = updated(cfg, {"train.net": net})
    data_cfg = section(cfg, "data")
    nets = {(t, s): ensure_network(bank, t, s, cfg, progress=progress, log=log) for s in seeds for t in tasks}
    key = network_key(net, section(cfg, "train").init_seed)      # the bank's name for the nets
    checksums = {k: _network_checksum(bank, k[0], key, k[1], m) for k, (_, m) in nets.items()}
    run = _TableRun(bank=bank, tcfg=tcfg, net=net, data_cfg=data_cfg, source=source or data_cfg.source,
                    nets=nets, checksums=checksums, progress=progress, recompute=recompute)
    return run, tasks, seeds


class _TargetData:
    """Target task B's data and B's own features (per seed), made on the first pair that needs them."""

    def __init__(self, run: _TableRun, task: str):
        self.run, self.task = run, task
        self._sets = None
        self._own = (None, None)

    def sets(self):
        """``(task_data, x_fit, y_fit, x_check, y_check)``: B's train split to fit, val split to check."""
        if self._sets is None:
            from tanas_jax import models
            from tanas_jax.tasks import task_data

            tc = self.run.tcfg
            data = task_data(self.task, models.get_net(self.run.net).input_shape,
                             dataclasses.replace(self.run.data_cfg, source=self.run.source))
            x_fit = data.x_train[: tc.max_train] if tc.max_train else data.x_train
            x_chk = data.x_val[: tc.max_val] if tc.max_val else data.x_val
            self._sets = (data, x_fit, data.y_train[: len(x_fit)], x_chk, data.y_val[: len(x_chk)])
        return self._sets

    def own_features(self, seed: int):
        """``N_B(X_B)`` on the fit and check inputs, for B's network of ``seed`` (last seed kept)."""
        if self._own[0] != seed:
            variables, meta = self.run.nets[self.task, seed]
            _, x_fit, _, x_chk, _ = self.sets()
            f = self.run.features(int(meta["num_classes"]))
            self._own = (seed, (f(variables, x_fit), f(variables, x_chk)))
        return self._own[1]


def _pair_inputs(run: _TableRun, a: str, b: str, seed: int) -> dict:
    """Everything d(a -> b) under ``seed`` depends on (hashed into its bank key)."""
    return {"transform": to_dict(run.tcfg), "net": run.net, "source": run.source,
            "data": {k: getattr(run.data_cfg, k) for k in ("split_seed", "val_fraction", "max_train",
                                                          "max_eval", "normalization")},
            "net_a": run.checksums[a, seed], "net_b": run.checksums[b, seed]}


def _pair_result(run: _TableRun, target: _TargetData, a: str, seed: int) -> tuple[dict, bool]:
    """``(result, hit)``: d(a -> target) under ``seed``, from the bank or computed now and banked."""
    b = target.task
    _, meta, hit = run.bank.cached(b, ARTIFACT_KIND, _pair_inputs(run, a, b, seed),
                                   lambda: _compute_pair(run, target, a, seed),
                                   key_prefix=f"from={a}+net={run.net}+seed={seed}+", digest_chars=16,
                                   recompute=run.recompute)
    return meta["result"], hit


def _compute_pair(run: _TableRun, target: _TargetData, a: str, seed: int) -> tuple[dict, dict]:
    """``(tree, meta)`` of the bank artifact of d(a -> target): the result is in ``meta['result']``."""
    from tqdm.auto import tqdm

    b = target.task
    data, x_fit, y_fit, x_chk, y_chk = target.sets()
    var_a, meta_a = run.nets[a, seed]
    var_b, _ = run.nets[b, seed]
    fb_fit, fb_chk = target.own_features(seed)
    fa = run.features(int(meta_a["num_classes"]))
    fa_fit, fa_chk = fa(var_a, x_fit), fa(var_a, x_chk)
    inner = tqdm(total=len(reachable_fractions(run.tcfg)) - 1, desc=f"  {a} -> {b} seed {seed}",
                 unit="prune", leave=False, disable=not run.progress, dynamic_ncols=True)

    def on_step(h):
        inner.update(1)
        inner.set_postfix(frac=f"{h['fraction']:.4f}", acc=f"{h['accuracy']:.3f}", ok=h["accepted"])

    res = transform_distance(fa_fit, fb_fit, var_b["params"]["head"], y_fit, run.tcfg, seed=seed,
                             val_data=(fa_chk, fb_chk, y_chk), progress=on_step)
    inner.close()
    result = _strip(res)
    result.update(source_task=a, target_task=b, net=run.net, data=data.record())
    tree = {"distance": np.asarray(result["distance"], np.float32),
            "fraction": np.asarray([h["fraction"] for h in result["history"]], np.float32),
            "accuracy": np.asarray([h["accuracy"] for h in result["history"]], np.float32)}
    return tree, {"result": result}


def _pair_row(a: str, b: str, seed: int, result: dict, hit: bool) -> dict:
    """One entry of the table's ``pairs`` list."""
    return {"source": a, "target": b, "seed": seed, "cached": hit,
            **{k: result.get(k) for k in ("distance", "reached_quality", "accuracy_own", "accuracy_before",
                                          "accuracy_after", "threshold", "steps", "n_train", "n_val", "widths")},
            "time_s": result["timing"]["total_s"]}


def _table_result(run: _TableRun, tasks, targets, seeds, per_seed, pairs, t_nets: float, t_start: float) -> dict:
    mean, std = seed_mean_std(per_seed)
    networks = {f"{t}/seed{s}": {"test_accuracy": (m.get("metrics") or {}).get("test_accuracy"),
                                  "reached_epsilon": (m.get("metrics") or {}).get("reached_epsilon"),
                                  "sha256": run.checksums[t, s]}
                for (t, s), (_, m) in run.nets.items()}
    return {
        "metric": "transform", "tasks": tasks, "targets": targets, "seeds": seeds, "net": run.net,
        "mean": finite_lists(mean), "std": finite_lists(std), "per_seed": [finite_lists(m) for m in per_seed],
        "orientation": "rows = source task A (features transformed), columns = target task B",
        "pairs": pairs, "config": to_dict(run.tcfg), "source": run.source, "networks": networks,
        "timing": {"networks_s": t_nets, "total_s": time.perf_counter() - t_start,
                   "pairs_cached": sum(p["cached"] for p in pairs), "pairs_total": len(pairs)},
    }
