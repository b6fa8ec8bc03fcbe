"""epsilon-approximation training (optax Adam, as the authors) and evaluation.

``train_step``/``eval_step`` are pure jitted functions; one compiled shape per
phase (training drops the last partial batch of each shuffled epoch; eval pads
the last batch and masks it).  Same seed -> same parameters on the same machine.

This module also owns the two pieces every trainer of the package shares (the
searches reach them through :mod:`tanas_jax.search.runtime`): the one
:func:`cross_entropy` and the one padded evaluation loop :func:`padded_batches`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import jax
import numpy as np
import optax

from tanas_jax import models
from tanas_jax.config import DEFAULT_INIT_SEED
from tanas_jax.errors import UserError


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Softmax cross-entropy with integer labels: the batch mean, or with a 0/1 ``mask`` (padded
    evaluation batches) the masked sum."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return ce.mean() if mask is None else (ce * mask).sum()


def padded_batches(arrays: Sequence[np.ndarray], batch_size: int) -> Iterator[tuple[list, int]]:
    """The one padded evaluation loop: ``(batch, m)`` over consecutive slices of ``arrays`` (same
    length), every batch exactly ``batch_size`` rows (the last zero-padded, so one compiled shape
    serves the whole split); ``m`` is the number of real rows.  Callers choose ``batch_size``
    (e.g. ``min(bs, n)`` or a fixed size shared by several splits)."""
    n = len(arrays[0])
    for start in range(0, n, batch_size):
        batch = [a[start:start + batch_size] for a in arrays]
        m = len(batch[0])
        if m < batch_size:
            batch = [np.concatenate([b, np.zeros((batch_size - m,) + b.shape[1:], b.dtype)]) for b in batch]
        yield batch, m


def make_steps(model, optimizer: optax.GradientTransformation):
    """(train_step, eval_step) for a flax ``model`` with optional BatchNorm."""

    def loss_fn(params, batch_stats, x, y):
        variables = {"params": params}
        if batch_stats is not None:
            variables["batch_stats"] = batch_stats
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            new_stats = updates["batch_stats"]
        else:
            logits = model.apply(variables, x, train=True)
            new_stats = None
        loss = cross_entropy(logits, y)
        return loss, (logits, new_stats)

    @jax.jit
    def train_step(params, batch_stats, opt_state, x, y):
        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        acc = (logits.argmax(-1) == y).mean()
        return params, new_stats, opt_state, loss, acc

    @jax.jit
    def eval_step(variables, x, y, mask):
        logits = model.apply(variables, x, train=False)
        correct = (logits.argmax(-1) == y)
        return cross_entropy(logits, y, mask), (correct * mask).sum()

    return train_step, eval_step


def evaluate(eval_step: Callable, variables: Any, x: np.ndarray, y: np.ndarray,
             batch_size: int = 500) -> dict:
    """Mean loss and accuracy over (x, y), padded batches of one shape."""
    n = len(y)
    if n == 0:
        raise UserError("cannot evaluate on an empty split")
    bs = min(batch_size, n)
    tot_loss, tot_correct = 0.0, 0.0
    for (xb, yb), m in padded_batches((x, y), bs):
        mask = (np.arange(bs) < m).astype(np.float32)
        loss, correct = eval_step(variables, xb, yb, mask)
        tot_loss += float(loss)
        tot_correct += float(correct)
    return {"loss": tot_loss / n, "accuracy": tot_correct / n}


def train_network(data, net: str, cfg, seed: int, progress: bool = True,
                  desc: str | None = None) -> tuple[dict, dict]:
    """Train ``net`` on ``data`` (a :class:`tanas_jax.tasks.TaskData`).

    ``cfg`` is the ``train`` config section (epochs, batch_size, learning_rate,
    epsilon, eval_batch_size, init_seed: see :func:`init_seed_for`).  Returns (variables, metrics) where metrics has
    train/val/test accuracy, whether test accuracy reached 1 - epsilon, the
    wall time and the compile time of the first step.
    """
    from tqdm.auto import tqdm

    check_epochs(cfg)
    spec = models.get_net(net)
    if tuple(data.input_shape) != spec.input_shape:
        raise UserError(f"data prepared for input {data.input_shape} but net {net} wants {spec.input_shape}")
    model = models.build(net, data.num_classes)
    variables = models.init(net, data.num_classes, jax.random.PRNGKey(init_seed_for(cfg, seed)))
    params = variables["params"]
    batch_stats = variables.get("batch_stats")
    optimizer = optax.adam(float(cfg.learning_rate))
    opt_state = optimizer.init(params)
    train_step, eval_step = make_steps(model, optimizer)

    n = len(data.y_train)
    bs = min(int(cfg.batch_size), n)
    steps_per_epoch = n // bs
    epochs = int(cfg.epochs)
    t0 = time.perf_counter()
    compile_s = None
    history = []
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc or f"train {data.task} [{net} seed {seed}]",
               disable=not progress, leave=False, unit="step", dynamic_ncols=True)
    for epoch in range(epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        run_loss, run_acc = 0.0, 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * bs:(s + 1) * bs]
            ts = time.perf_counter()
            params, batch_stats, opt_state, loss, acc = train_step(
                params, batch_stats, opt_state, data.x_train[idx], data.y_train[idx])
            if compile_s is None:
                jax.block_until_ready(params)
                compile_s = time.perf_counter() - ts
            run_loss += float(loss) if s % 10 == 0 or s == steps_per_epoch - 1 else 0.0
            run_acc = 0.9 * run_acc + 0.1 * float(acc) if s % 10 == 0 else run_acc
            bar.update(1)
            if s % 10 == 0:
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.3f}", acc=f"{float(acc):.3f}")
        if not np.isfinite(float(loss)):
            bar.close()
            raise UserError(f"training {net} on {data.task} diverged (loss {float(loss)}) at epoch "
                            f"{epoch + 1}; lower train.learning_rate")
        variables = _pack(params, batch_stats)
        val = evaluate(eval_step, variables, data.x_val, data.y_val, int(cfg.eval_batch_size))
        history.append({"epoch": epoch + 1, "last_loss": float(loss), "val_accuracy": val["accuracy"]})
        bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.3f}", val_acc=f"{val['accuracy']:.3f}")
    bar.close()
    variables = jax.device_get(_pack(params, batch_stats))
    wall = time.perf_counter() - t0
    ev = partial(evaluate, eval_step, variables, batch_size=int(cfg.eval_batch_size))
    train_m = ev(data.x_train[: min(n, 5000)], data.y_train[: min(n, 5000)])
    val_m = ev(data.x_val, data.y_val)
    test_m = ev(data.x_test, data.y_test)
    eps = float(cfg.epsilon)
    metrics = {
        "train_accuracy": train_m["accuracy"], "val_accuracy": val_m["accuracy"],
        "test_accuracy": test_m["accuracy"], "test_loss": test_m["loss"],
        "epsilon": eps, "reached_epsilon": bool(test_m["accuracy"] >= 1.0 - eps),
        "epochs": epochs, "steps": epochs * steps_per_epoch, "batch_size": bs,
        "wall_s": wall, "compile_s": compile_s or 0.0, "history": history,
        "n_params": models.param_count(params),
    }
    check_contract(variables, metrics, f"{net} on {data.task} seed {seed}")
    return variables, metrics


def init_seed_for(train_cfg, seed: int) -> int:
    """The seed of the initial parameters: ``train.init_seed`` when set (a shared initialisation: every
    ε-net starts from the same backbone, and the training ``seed`` drives only the data order), else the
    training seed (each net its own start).  The head is initialised from the same key: its shape
    depends on the class count only, so nets of tasks with equal class counts share it too."""
    return effective_init(getattr(train_cfg, "init_seed", None), seed)


def effective_init(init_seed: int | None, seed: int) -> int:
    """The seed of the initial parameters of the net trained with ``seed`` under ``init_seed``."""
    return int(seed) if init_seed is None else int(init_seed)


def network_key(net: str, init_seed: int | None) -> str:
    """The name a network is banked under: the architecture ``net`` under the default shared
    initialisation (``init_seed`` = :data:`DEFAULT_INIT_SEED`), ``<net>-init<I>`` for another shared
    init I, ``<net>-perseed`` when each ε-net starts from its own training seed (``init_seed`` None), so
    nets of different conventions never alias.  Banks written before the default became the shared
    init hold per-seed nets under the plain name (metadata ``init_seed``: null): their seed-0 nets ARE
    init(0) nets (bit-identical) and are used; their other seeds are refused by
    :func:`check_init` with the fix."""
    if init_seed is None:
        return f"{net}-perseed"
    return net if int(init_seed) == DEFAULT_INIT_SEED else f"{net}-init{int(init_seed)}"


def bank_key(train_cfg) -> str:
    """The bank's name for the networks of config section ``train``: :func:`network_key` of its ``net``
    and ``init_seed``."""
    return network_key(train_cfg.net, train_cfg.get("init_seed"))


def check_init(task: str, seed: int, meta: dict, init_seed: int | None) -> None:
    """A banked network must start from the initialisation the config prescribes for its seed
    (``effective_init``; a JSON without ``init_seed`` is a per-seed net).  A diagonal Fisher lives in
    parameter coordinates, so nets from different initialisations are not comparable: one line naming
    the net, both initialisations and the fix."""
    got = meta.get("init_seed")
    if effective_init(got, seed) == effective_init(init_seed, seed):
        return
    raise UserError(f"the bank mixes initialisation conventions: network {task} (seed {seed}) was trained from "
                    f"init({effective_init(got, seed)}) (init_seed {got}), the config (train.init_seed {init_seed}) "
                    f"starts seed {seed} from init({effective_init(init_seed, seed)}); Fishers of nets with different "
                    f"initialisations are not comparable: retrain it with `bin/train --task {task} --seed {seed} "
                    f"--set train.init_seed={init_seed} --retrain` or set train.init_seed={got}")


def check_epochs(train_cfg) -> None:
    """The training contract starts with at least one epoch: an untrained network is never banked."""
    epochs = train_cfg.epochs
    try:
        whole = int(epochs) == epochs and not isinstance(epochs, bool)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or epochs < 1:
        raise UserError(f"train.epochs must be an integer >= 1, got {epochs!r}; an untrained network is "
                        "never banked")


def check_contract(variables: Any, metrics: dict, what: str) -> None:
    """A trained network meets its contract: >= 1 epoch, finite weights, finite final losses
    (last training loss and test loss); a :class:`UserError` otherwise (nothing is banked)."""
    if int(metrics.get("epochs", 0)) < 1:
        raise UserError(f"{what} was trained for {metrics.get('epochs')} epochs; an untrained network is "
                        "never banked (train.epochs must be >= 1)")
    history = metrics.get("history") or [{}]
    losses = {"final training loss": history[-1].get("last_loss"), "test loss": metrics.get("test_loss")}
    for name, v in losses.items():
        if v is None or not np.isfinite(float(v)):
            raise UserError(f"{what}: the {name} is {v}, not finite; the network is not banked (training "
                            "diverged: lower train.learning_rate)")
    bad = [jax.tree_util.keystr(k) for k, leaf in jax.tree_util.tree_leaves_with_path(variables)
           if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(np.asarray(leaf)).all()]
    if bad:
        raise UserError(f"{what}: non-finite weights in {', '.join(bad[:3])}; the network is not banked "
                        "(training diverged: lower train.learning_rate)")


def _pack(params, batch_stats) -> dict:
    v = {"params": params}
    if batch_stats is not None:
        v["batch_stats"] = batch_stats
    return v


def ensure_network(bank, task: str, seed: int, cfg, progress: bool = True, log=print,
                   retrain: bool = False) -> tuple[dict, dict]:
    """The banked network for (task, cfg.train.net, seed), training and banking it if the bank has none.

    ``cfg`` is the whole config (data + train sections).  An incomplete or damaged entry is refused
    (:class:`tanas_jax.errors.CorruptEntryError` naming its path and how to remove or retrain it), never
    retrained silently; ``retrain=True`` trains and replaces whatever is there.  Before any training
    the bank is checked writable and the entry's lock taken: a second process training the same entry
    waits, then reuses the first one's network.  A network that misses its training contract
    (:func:`check_contract`) is not banked.
    """
    from tanas_jax.tasks import canonical

    task = canonical(task)
    net = bank_key(cfg.train)   # a shared init is part of the identity
    check_epochs(cfg.train)
    if not retrain and (found := bank.find_network(task, net, seed)) is not None:
        check_init(task, seed, found[1], cfg.train.get("init_seed"))
        return found
    path = bank.network_path(task, net, seed)
    bank.check_writable(path)
    with bank.lock(path, log=log):
        if not retrain and (found := bank.find_network(task, net, seed)) is not None:
            check_init(task, seed, found[1], cfg.train.get("init_seed"))
            return found    # another process banked it while we waited
        return _train_and_bank(bank, task, net, seed, cfg, progress, log)


def _train_and_bank(bank, task: str, net: str, seed: int, cfg, progress: bool, log) -> tuple[dict, dict]:
    from tanas_jax import provenance
    from tanas_jax.tasks import task_data

    arch = cfg.train.net            # ``net`` is the bank key (see bank.network_key)
    spec = models.get_net(arch)
    data = task_data(task, spec.input_shape, cfg.data)
    log(data.summary())
    variables, metrics = train_network(data, arch, cfg.train, seed, progress=progress)
    check_contract(variables, metrics, f"{net} on {task} seed {seed}")
    meta = {"num_classes": data.num_classes, "class_names": list(data.class_names),
            "metrics": metrics, "data": data.record(), "train_config": cfg.train.to_dict(),
            "architecture": arch, "init_seed": cfg.train.get("init_seed"), **provenance.stamp()}
    meta = bank.save_network(task, net, seed, variables, meta)   # as stored, with its checksums
    status = "reached" if metrics["reached_epsilon"] else "did NOT reach"
    log(f"{task} [{net} seed {seed}]: test accuracy {metrics['test_accuracy']:.4f} "
        f"({status} 1-eps = {1 - metrics['epsilon']:.2f}) in {metrics['wall_s']:.1f} s")
    return variables, meta
