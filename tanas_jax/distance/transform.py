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
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tanas_jax.errors import UserError

ARTIFACT_KIND = "transform_distance"
CRITERIA = ("accuracy", "mse")
SCOPES = ("layer", "global")
ACTIVATIONS = ("relu", "linear")
REFERENCES = ("own", "unpruned")


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """Settings of the transform distance (the ``transform`` config section)."""

    hidden_scale: tuple = (2.0, 0.5)   # hidden widths as multiples of the target feature width
    hidden: tuple = ()                 # explicit hidden widths (override hidden_scale when set)
    output_activation: str = "relu"    # target features are post-ReLU
    learning_rate: float = 1e-3
    batch_size: int = 128
    train_epochs: int = 20             # before pruning
    finetune_epochs: int = 2           # after each pruning step
    prune_rate: float = 0.2            # fraction of the remaining weights removed per step
    scope: str = "layer"
    refine: int = 2                    # halve the rate after a failed step, this many times
    min_fraction: float = 1e-3
    max_steps: int = 60
    criterion: str = "accuracy"
    tolerance: float = 0.02            # accuracy drop allowed vs the reference accuracy
    reference: str = "own"             # 'own': B's head on B's own features (issue 6);
                                       # 'unpruned': the trained, unpruned transform (paper §4 text)
    mse_factor: float = 2.0
    val_fraction: float = 0.2          # held-out share when no separate check set is given
    max_train: int | None = None       # cap on examples used to fit the transform
    max_val: int | None = None         # cap on examples used for the quality check
    adapter: bool = False              # allow source/target feature widths to differ
    net: str | None = None             # table only: banked net whose features are used
                                       # (None: the train section's net)
    feature_batch: int = 500           # table only: batch size of feature extraction

    @classmethod
    def from_any(cls, cfg) -> "TransformConfig":
        """Accept None, a mapping, an ``ml_collections.ConfigDict`` (the
        ``transform`` section or a full config holding one) or an instance."""
        if cfg is None:
            return cls().validated()
        if isinstance(cfg, cls):
            return cfg.validated()
        if hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        cfg = dict(cfg)
        if "transform" in cfg and isinstance(cfg["transform"], Mapping):
            cfg = dict(cfg["transform"])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise UserError(f"unknown transform setting(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(sorted(names))}")
        for key in ("hidden_scale", "hidden"):
            if key in cfg and cfg[key] is not None:
                cfg[key] = tuple(cfg[key])
        return cls(**cfg).validated()

    def validated(self) -> "TransformConfig":
        def bad(msg):
            raise UserError(f"transform config: {msg}")

        if not 0.0 <= float(self.tolerance) < 1.0:
            bad(f"tolerance={self.tolerance} is out of range; use an accuracy drop in [0, 1), "
                "e.g. transform.tolerance=0.02")
        if not float(self.mse_factor) >= 1.0:
            bad(f"mse_factor={self.mse_factor} must be >= 1 (allowed MSE growth over the unpruned transform)")
        if self.criterion not in CRITERIA:
            bad(f"criterion='{self.criterion}'; valid: {', '.join(CRITERIA)}")
        if self.reference not in REFERENCES:
            bad(f"reference='{self.reference}'; valid: {', '.join(REFERENCES)}")
        if self.scope not in SCOPES:
            bad(f"scope='{self.scope}'; valid: {', '.join(SCOPES)}")
        if self.output_activation not in ACTIVATIONS:
            bad(f"output_activation='{self.output_activation}'; valid: {', '.join(ACTIVATIONS)}")
        if not 0.0 < float(self.prune_rate) < 1.0:
            bad(f"prune_rate={self.prune_rate} must be in (0, 1)")
        if not 0.0 <= float(self.min_fraction) < 1.0:
            bad(f"min_fraction={self.min_fraction} must be in [0, 1)")
        if not 0.0 < float(self.val_fraction) < 1.0:
            bad(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if int(self.batch_size) < 1 or int(self.train_epochs) < 0 or int(self.finetune_epochs) < 0:
            bad("batch_size must be >= 1 and epochs >= 0")
        if int(self.refine) < 0 or int(self.max_steps) < 0:
            bad("refine and max_steps must be >= 0")
        if any(float(s) <= 0 for s in self.hidden_scale) or any(int(h) < 1 for h in self.hidden):
            bad("hidden widths and hidden_scale entries must be positive")
        return self

    def widths(self, in_dim: int, out_dim: int) -> tuple[int, ...]:
        """Layer widths ``(in, h_1, ..., out)``; hidden scale with the output width."""
        hidden = tuple(int(h) for h in self.hidden) or tuple(
            max(1, int(round(s * out_dim))) for s in self.hidden_scale)
        return (int(in_dim),) + hidden + (int(out_dim),)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of the settings (part of the bank cache key)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


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


def transform_distance(src_features, tgt_features, tgt_head_params, labels, cfg=None, seed: int = 0,
                       val_data=None, progress=None) -> dict:
    """TA-NAS distance d(A, B) from features ``N_A(X_B)`` (``src_features``,
    (n, F_A)) and ``N_B(X_B)`` (``tgt_features``, (n, F_B)), B's head params
    (``{'kernel': (F_B, C), 'bias': (C,)}``) and B's labels (n,).

    ``val_data=(src_val, tgt_val, labels_val)`` gives the quality-check set;
    without it a ``cfg.val_fraction`` share of the examples is held out
    (split under ``seed``).  ``progress`` is an optional callable
    ``progress(dict)`` called after every pruning step.

    Returns a dict: ``distance`` (= ``remaining_fraction``, the kept share of
    kernel entries, in [0, 1]), ``reached_quality`` (the unpruned transform
    met the bar), ``accuracy_own`` (B's head on B's features),
    ``accuracy_before`` / ``accuracy_after`` (on transformed features, before
    and after pruning), ``mse_before`` / ``mse_after``, ``threshold``,
    ``history`` (one entry per pruning attempt), ``widths``, ``n_params``,
    ``n_train``, ``n_val``, ``seed``, ``config``, ``timing``.
    """
    cfg = TransformConfig.from_any(cfg)
    t0 = time.perf_counter()
    src = np.asarray(src_features, np.float32)
    tgt = np.asarray(tgt_features, np.float32)
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    head = {"kernel": jnp.asarray(tgt_head_params["kernel"], jnp.float32),
            "bias": jnp.asarray(tgt_head_params["bias"], jnp.float32)}
    _check_inputs(src, tgt, head, labels, cfg)

    key = jax.random.PRNGKey(int(seed))
    k_split, k_init, k_train = jax.random.split(key, 3)
    if val_data is None:
        tr, va = _split(src.shape[0], cfg, k_split)
        src_val, tgt_val, lab_val = src[va], tgt[va], labels[va]
        src, tgt, labels = src[tr], tgt[tr], labels[tr]
    else:
        src_val, tgt_val, lab_val = (np.asarray(a) for a in val_data)
        src_val = src_val.astype(np.float32)
        tgt_val = tgt_val.astype(np.float32)
        lab_val = lab_val.astype(np.int32).reshape(-1)
        _check_inputs(src_val, tgt_val, head, lab_val, cfg, what="check features")
    if cfg.max_train:
        src, tgt, labels = src[: cfg.max_train], tgt[: cfg.max_train], labels[: cfg.max_train]
    if cfg.max_val:
        src_val, tgt_val, lab_val = src_val[: cfg.max_val], tgt_val[: cfg.max_val], lab_val[: cfg.max_val]
    if src.shape[0] < 2 or src_val.shape[0] < 1:
        raise UserError(f"transform distance needs at least 2 fit and 1 check examples; got "
                        f"{src.shape[0]} and {src_val.shape[0]}")

    widths = cfg.widths(src.shape[1], tgt.shape[1])
    opt, train_epoch, evaluate, head_accuracy = _make_fns(cfg)
    x, y = jnp.asarray(src), jnp.asarray(tgt)
    xv, yv, lv = jnp.asarray(src_val), jnp.asarray(tgt_val), jnp.asarray(lab_val)

    params = init_transform(k_init, widths)
    mask = full_mask(params)
    epoch = 0

    def fit(params, mask, epochs):
        nonlocal epoch
        opt_state = opt.init(params)      # fresh Adam state after every pruning step
        loss = jnp.nan
        for _ in range(int(epochs)):
            params, opt_state, loss = train_epoch(params, opt_state, mask, x, y,
                                                  jax.random.fold_in(k_train, epoch))
            epoch += 1
        return params, float(loss)

    def quality(params, mask):
        acc, mse = evaluate(params, mask, head, xv, yv, lv)
        return float(acc), float(mse)

    acc_own = float(head_accuracy(head, yv, lv))
    t_fit = time.perf_counter()
    params, train_loss = fit(params, mask, cfg.train_epochs)
    acc0, mse0 = quality(params, mask)
    t_fit = time.perf_counter() - t_fit

    if cfg.criterion == "accuracy":
        threshold = (acc_own if cfg.reference == "own" else acc0) - cfg.tolerance
        ok = lambda acc, mse: acc >= threshold - 1e-7          # noqa: E731
    else:
        threshold = cfg.mse_factor * mse0
        ok = lambda acc, mse: mse <= threshold * (1 + 1e-6)    # noqa: E731

    reached = ok(acc0, mse0)
    history = [{"step": 0, "rate": 0.0, "fraction": 1.0, "accuracy": acc0, "mse": mse0,
                "train_loss": train_loss, "accepted": bool(reached)}]
    good_params, good_mask, good_acc, good_mse = params, mask, acc0, mse0
    fraction = 1.0
    rate, refines_left = float(cfg.prune_rate), int(cfg.refine)
    t_prune = time.perf_counter()
    step = 0
    while reached and step < cfg.max_steps and fraction > cfg.min_fraction:
        step += 1
        new_mask = magnitude_prune(good_params, good_mask, rate, cfg.scope)
        new_fraction = mask_fraction(new_mask)
        if new_fraction >= fraction:          # nothing left to remove at this rate
            break
        params = apply_mask(good_params, new_mask)   # pruned weights exactly zero from here on
        params, loss = fit(params, new_mask, cfg.finetune_epochs)
        acc, mse = quality(params, new_mask)
        accepted = ok(acc, mse)
        history.append({"step": step, "rate": rate, "fraction": new_fraction, "accuracy": acc,
                        "mse": mse, "train_loss": loss, "accepted": bool(accepted)})
        if progress is not None:
            progress(history[-1])
        if accepted:
            good_params, good_mask, good_acc, good_mse = params, new_mask, acc, mse
            fraction = new_fraction
        elif refines_left > 0:
            refines_left -= 1
            rate /= 2.0
        else:
            break
    t_prune = time.perf_counter() - t_prune

    distance = fraction if reached else 1.0
    return {
        "distance": float(distance),
        "remaining_fraction": float(fraction),
        "nonzero_fraction": float(nonzero_fraction(good_params)),
        "reached_quality": bool(reached),
        "criterion": cfg.criterion,
        "threshold": float(threshold),
        "accuracy_own": acc_own,
        "accuracy_before": acc0,
        "accuracy_after": float(good_acc),
        "mse_before": mse0,
        "mse_after": float(good_mse),
        "history": history,
        "steps": step,
        "widths": list(widths),
        "n_params": int(sum(a * b for a, b in zip(widths[:-1], widths[1:]))),
        "n_train": int(src.shape[0]),
        "n_val": int(src_val.shape[0]),
        "seed": int(seed),
        "config": cfg.to_dict(),
        "timing": {"fit_s": t_fit, "prune_s": t_prune, "total_s": time.perf_counter() - t0},
        "params": good_params,
        "mask": good_mask,
    }


def reachable_fractions(cfg=None) -> list[float]:
    """Fractions the schedule visits without refinement: ``(1-rate)^k`` down
    to ``min_fraction`` (approximately: counts are floored per layer)."""
    cfg = TransformConfig.from_any(cfg)
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


def _cfg_section(cfg, name):
    if cfg is None:
        return None
    if isinstance(cfg, Mapping):
        return cfg.get(name)
    return getattr(cfg, name, None) if hasattr(cfg, name) else None


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
                             log=print, recompute: bool = False) -> dict:
    """TA-NAS distance matrix over banked networks (paper Fig. 2).

    ``mean[i][j]`` = d(tasks[i] -> tasks[j]): the transform maps the
    penultimate features of task i's net onto those of task j's net, both
    evaluated on task j's data (fit on j's train split, quality bar on j's
    validation split).  ``cfg`` is the whole config (``data``, ``train``,
    ``transform`` sections); networks missing from the bank are trained and
    banked (``ensure_network``).  Each (i, j, seed) result is cached in the
    bank as artifact ``transform_distance`` of task j, keyed by the source
    task, seed and a digest of the settings and of both networks' checksums,
    so a changed setting or a retrained network is recomputed, never reused.

    Returns ``{'tasks', 'seeds', 'mean', 'std', 'per_seed', 'pairs', 'net',
    'config', 'data', 'networks', 'timing'}`` (matrices as nested lists, rows =
    source task, columns = target task).
    """
    from tqdm.auto import tqdm

    from tanas_jax import models
    from tanas_jax.tasks import canonical, load_task_data
    from tanas_jax.train import ensure_network

    tcfg = TransformConfig.from_any(_cfg_section(cfg, "transform"))
    tasks = [canonical(t) for t in tasks]
    if len(set(tasks)) != len(tasks):
        raise UserError(f"task list has duplicates: {', '.join(tasks)}")
    seeds = [int(s) for s in seeds]
    train_cfg = cfg.train
    net = tcfg.net or train_cfg.net
    if net != train_cfg.net:        # bank/train the transform's net, not the Fisher metrics' net
        cfg = cfg.copy_and_resolve_references() if hasattr(cfg, "copy_and_resolve_references") else cfg
        cfg.train.net = net
    spec = models.get_net(net)
    dcfg = cfg.data
    source = source or dcfg.source
    t_start = time.perf_counter()

    # 1. networks (trained and banked when missing)
    nets: dict[tuple[str, int], tuple[Any, dict]] = {}
    for s in seeds:
        for t in tasks:
            nets[t, s] = ensure_network(bank, t, s, cfg, progress=progress, log=log)
    t_nets = time.perf_counter() - t_start
    checksums = {k: _network_checksum(bank, k[0], net, k[1], m) for k, (_, m) in nets.items()}

    n = len(tasks)
    per_seed = np.full((len(seeds), n, n), np.nan)
    pairs = []
    n_cached = 0
    bar = tqdm(total=len(seeds) * n * n, desc="transform distance", unit="pair", disable=not progress,
               dynamic_ncols=True)
    feature_fns: dict[int, Any] = {}
    for j, b in enumerate(tasks):
        data = None
        for si, s in enumerate(seeds):
            var_b, meta_b = nets[b, s]
            feats_b = None
            for i, a in enumerate(tasks):
                var_a, meta_a = nets[a, s]
                digest = hashlib.sha256(json.dumps({
                    "transform": tcfg.to_dict(), "net": net, "source": source,
                    "data": {k: dcfg.get(k) for k in ("split_seed", "val_fraction", "max_train",
                                                      "max_eval", "normalization")},
                    "net_a": checksums[a, s], "net_b": checksums[b, s],
                }, sort_keys=True, default=str).encode()).hexdigest()[:16]
                key = f"from={a}+net={net}+seed={s}+{digest}"
                cached = None if recompute else bank.load_artifact(b, ARTIFACT_KIND, key)
                if cached is not None:
                    result = cached[1]["result"]
                    n_cached += 1
                else:
                    if data is None:
                        data = load_task_data(b, spec.input_shape, source,
                                              split_seed=dcfg.split_seed, val_fraction=dcfg.val_fraction,
                                              max_train=dcfg.max_train, max_eval=dcfg.max_eval,
                                              normalization=dcfg.normalization, data_dir=dcfg.data_dir)
                        x_fit = data.x_train[: tcfg.max_train] if tcfg.max_train else data.x_train
                        y_fit = data.y_train[: len(x_fit)]
                        x_chk = data.x_val[: tcfg.max_val] if tcfg.max_val else data.x_val
                        y_chk = data.y_val[: len(x_chk)]
                    nc_a, nc_b = int(meta_a["num_classes"]), int(meta_b["num_classes"])
                    for nc in (nc_a, nc_b):
                        if nc not in feature_fns:
                            feature_fns[nc] = _features_fn(net, nc, int(tcfg.feature_batch))
                    if feats_b is None:
                        feats_b = (feature_fns[nc_b](var_b, x_fit), feature_fns[nc_b](var_b, x_chk))
                    fa_fit, fa_chk = feature_fns[nc_a](var_a, x_fit), feature_fns[nc_a](var_a, x_chk)
                    inner = tqdm(total=len(reachable_fractions(tcfg)) - 1, desc=f"  {a} -> {b} seed {s}",
                                 unit="prune", leave=False, disable=not progress, dynamic_ncols=True)

                    def on_step(h, inner=inner):
                        inner.update(1)
                        inner.set_postfix(frac=f"{h['fraction']:.4f}", acc=f"{h['accuracy']:.3f}",
                                          ok=h["accepted"])

                    res = transform_distance(fa_fit, feats_b[0], var_b["params"]["head"], y_fit, tcfg,
                                             seed=s, val_data=(fa_chk, feats_b[1], y_chk), progress=on_step)
                    inner.close()
                    result = _strip(res)
                    result.update(source_task=a, target_task=b, net=net, data=data.record())
                    tree = {"distance": np.asarray(result["distance"], np.float32),
                            "fraction": np.asarray([h["fraction"] for h in result["history"]], np.float32),
                            "accuracy": np.asarray([h["accuracy"] for h in result["history"]], np.float32)}
                    bank.save_artifact(b, ARTIFACT_KIND, key, tree, {"result": result})
                per_seed[si, i, j] = result["distance"]
                pairs.append({"source": a, "target": b, "seed": s, "cached": cached is not None,
                              **{k: result.get(k) for k in (
                                  "distance", "reached_quality", "accuracy_own", "accuracy_before",
                                  "accuracy_after", "threshold", "steps", "n_train", "n_val", "widths")},
                              "time_s": result["timing"]["total_s"]})
                bar.update(1)
                bar.set_postfix(last=f"{a}->{b}", d=f"{result['distance']:.4f}")
    bar.close()
    mean = per_seed.mean(0)
    std = per_seed.std(0, ddof=1) if len(seeds) > 1 else np.zeros_like(mean)
    networks = {f"{t}/seed{s}": {"test_accuracy": (m.get("metrics") or {}).get("test_accuracy"),
                                  "reached_epsilon": (m.get("metrics") or {}).get("reached_epsilon"),
                                  "sha256": checksums[t, s]}
                for (t, s), (_, m) in nets.items()}
    return {
        "metric": "transform", "tasks": tasks, "seeds": seeds, "net": net,
        "mean": mean.tolist(), "std": std.tolist(), "per_seed": per_seed.tolist(),
        "orientation": "rows = source task A (features transformed), columns = target task B",
        "pairs": pairs, "config": tcfg.to_dict(), "source": source, "networks": networks,
        "timing": {"networks_s": t_nets, "total_s": time.perf_counter() - t_start,
                   "pairs_cached": n_cached, "pairs_total": len(pairs)},
    }
