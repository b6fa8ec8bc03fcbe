"""K x K Fisher task-distance tables over banked networks, CSV, heatmaps, rankings.

``d[b, t]`` (row b = base, column t = target, as LD-NAS Figure 1) compares
the Fisher of base network b on target data t with the Fisher of target
network t on the same data.  A base with C outputs on target data with K > C
classes is evaluated with K - C zero logits appended (the label rule,
``docs/labels.md``; :meth:`FisherStore.apply_fn`), on every Fisher path.  Every Fisher (and full-spectrum quantity) is
cached in the bank (:meth:`~tanas_jax.bank.Bank.cached`) under a key hashing
all its inputs (task, net, seed, network checksum, data task, examples,
estimator, data settings...), so it is recomputed only when an input changes.
The settings are read from the config's ``fisher`` and ``distance`` sections
(:mod:`tanas_jax.config`), the one place that holds their defaults.
"""
from __future__ import annotations

import csv
import io
import os
import time

import numpy as np

from tanas_jax.config import section, to_dict, updated
from tanas_jax.distance.stats import (
    bootstrap_indices,
    finite_lists,
    p_closest,
    replicate_label,
    resample_mean,
    seed_mean_std,
)
from tanas_jax.errors import UserError

FISHER_KIND = "fisher_diag"
GRAM_KIND = "fisher_gram_eigs"
CROSS_KIND = "fisher_cross_gram"
BLOCKS_KIND = "fisher_diag_blocks"
FISHER_METRICS = ("logdet", "frechet")
SETTINGS_FIELDS = ("metric", "spectrum", "sigma2", "normalization", "reduction", "head")
DATA_RECORD_FIELDS = ("task", "dataset", "source", "split_seed", "val_fraction", "max_train", "max_eval",
                      "normalization")


class FisherStore:
    """Loads networks and task data once; computes/caches Fishers in the bank.

    Each Fisher quantity is computed in one place: the diagonal in :meth:`_fisher_diag`, the
    per-example gradients (shared by the Gram and the cross-Gram, the last few kept by
    :meth:`_grads`) in :meth:`_per_example_gradients`, the Gram spectrum and the cross-Gram terms
    in the ``compute`` closures of :meth:`gram_eigs` and :meth:`cross`.  ``stats`` counts bank
    hits (``cached``) and misses (``computed``).
    """

    def __init__(self, bank, cfg, progress: bool = True, log=print, recompute: bool = False, engine=None):
        from tanas_jax import models
        from tanas_jax.fisher import FisherEngine

        self.bank, self.cfg, self.progress, self.log, self.recompute = bank, cfg, progress, log, recompute
        self.net = section(cfg, "train").net
        self.spec = models.get_net(self.net)
        self.fisher_cfg = section(cfg, "fisher")        # validated: fails before any network is trained
        self.authors_fisher = section(cfg, "distance").authors_fisher
        self.data_cfg = section(cfg, "data")
        self._nets: dict = {}
        self._data: dict = {}
        self._apply: dict = {}
        self.stats = {"computed": 0, "cached": 0, "fisher_seconds": 0.0, "blocks_computed": 0, "blocks_cached": 0,
                      "degenerate_resamples": 0}
        self._grad_cache: dict = {}
        self._grad_keep = 12   # per-example gradient matrices kept (a target and its bases)
        # compiled Fisher steps and Gram blocks live here (bounded), not in module globals
        self.engine = engine if engine is not None else FisherEngine()

    def fisher_record(self) -> dict:
        """The Fisher settings as plain data (the ``fisher`` section + ``distance.authors_fisher``)."""
        return {**to_dict(self.fisher_cfg), "authors_fisher": self.authors_fisher}

    # -- inputs
    def network(self, task: str, seed: int):
        key = (task, seed)
        if key not in self._nets:
            from tanas_jax.train import ensure_network

            variables, meta = ensure_network(self.bank, task, seed, self.cfg, progress=self.progress, log=self.log)
            self._check_shapes(task, seed, variables, meta)
            self._nets[key] = (variables, meta)
        return self._nets[key]

    def _check_shapes(self, task, seed, variables, meta):
        """A banked network whose parameters do not fit ``self.net`` is a user error, not a flax traceback."""
        import jax

        from tanas_jax import models
        from tanas_jax.fisher import leaf_names

        nc = int(meta.get("num_classes", 0) or 0)
        if nc < 2:
            raise UserError(f"the bank's {self.net} network for task {task} (seed {seed}) records no class count; "
                            "retrain it with bin/train --retrain")
        want = jax.eval_shape(lambda: models.init(self.net, nc, jax.random.PRNGKey(0)))
        got_p, want_p = variables.get("params", {}), want.get("params", {})
        got = dict(zip(leaf_names(got_p), (a.shape for a in jax.tree_util.tree_leaves(got_p))))
        exp = dict(zip(leaf_names(want_p), (a.shape for a in jax.tree_util.tree_leaves(want_p))))
        for name in sorted(set(got) | set(exp)):
            if got.get(name) != exp.get(name):
                raise UserError(f"Fishers of incompatible networks: the bank's network for task {task} (seed {seed}) "
                                f"does not fit net {self.net}: layer {name} has shape {got.get(name)}, expected "
                                f"{exp.get(name)}; retrain it (bin/train --task {task} --retrain) or use its --net")

    def apply_fn(self, num_classes: int, target_classes: int | None = None):
        """Eval-mode ``apply`` of a ``num_classes``-output net, evaluated on data with ``target_classes`` classes.

        The label rule (docs/labels.md): when ``target_classes`` > ``num_classes`` the logits are padded
        with ``target_classes - num_classes`` zeros (:func:`tanas_jax.fisher.pad_logits`), so every example
        counts; otherwise the net's own logits.  One function per pair of widths, so the engine's compiled
        steps are reused.
        """
        width = max(int(num_classes), int(target_classes or 0))
        key = (int(num_classes), width)
        if key not in self._apply:
            from tanas_jax import models
            from tanas_jax.fisher import pad_logits

            apply = models.make_apply(self.net, int(num_classes))
            self._apply[key] = apply if width == int(num_classes) else pad_logits(apply, width)
        return self._apply[key]

    def data_apply(self, net_task: str, data_task: str, seed: int):
        """``(variables, apply, padded)``: ``net_task``'s network (``seed``) set up for ``data_task``'s labels."""
        variables, meta = self.network(net_task, seed)
        nc, k = int(meta["num_classes"]), int(self.data(data_task)[2].num_classes)
        return variables, self.apply_fn(nc, k), k > nc

    def key_version(self, net_task: str, data_task: str, seed: int) -> int:
        """The ``version`` in a cache key: 2 where the zero-padding label rule applies (K > C; those numbers
        changed with it, so older artifacts are recomputed), 1 where it does not (the same numbers as before)."""
        return 2 if self.data_apply(net_task, data_task, seed)[2] else 1

    def data(self, task: str, full: bool = False):
        """``(x, y, task_data)``: the first ``examples`` (``full_examples`` when ``full``) of the split."""
        if task not in self._data:
            from tanas_jax.tasks import task_data

            self._data[task] = task_data(task, self.spec.input_shape, self.data_cfg)
        d = self._data[task]
        split = self.fisher_cfg.split
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        m = self.fisher_cfg.full_examples if full else self.fisher_cfg.examples
        return x[:m], y[:m], d

    def net_record(self, task, seed) -> dict:
        """What identifies a banked network in a cache key (its checksum included)."""
        variables, meta = self.network(task, seed)
        return {"task": task, "net": self.net, "seed": seed, "sha256": meta.get("sha256"),
                "num_classes": int(meta.get("num_classes", 0))}

    def data_record(self, data_task) -> dict:
        """What identifies a task's data in a cache key and in a table's ``data`` entry."""
        _, _, d = self.data(data_task)
        r = d.record()
        return {k: r.get(k) for k in DATA_RECORD_FIELDS}

    def _count(self, hit: bool) -> None:
        self.stats["cached" if hit else "computed"] += 1

    # -- Fisher diagonal
    def fisher(self, net_task: str, data_task: str, seed: int):
        """Diagonal Fisher of ``net_task``'s network (``seed``) on ``data_task``'s data; cached."""
        fc = self.fisher_cfg
        inputs = {"network": self.net_record(net_task, seed), "data": self.data_record(data_task),
                  "split": fc.split, "examples": fc.examples, "estimator": fc.estimator,
                  "mc_samples": fc.mc_samples if fc.estimator == "mc" else None,
                  "authors_fisher": self.authors_fisher, "version": self.key_version(net_task, data_task, seed)}
        tree, meta, hit = self.bank.cached(net_task, FISHER_KIND, inputs,
                                           lambda: self._fisher_diag(net_task, data_task, seed, inputs),
                                           key_prefix=f"{data_task}-s{seed}-", recompute=self.recompute)
        self._count(hit)
        return tree, meta

    def _fisher_diag(self, net_task: str, data_task: str, seed: int, inputs: dict):
        """``(tree, meta)``: the diagonal Fisher computed now (the one ``fisher_diag`` call)."""
        import jax

        from tanas_jax.fisher import fisher_diag

        fc = self.fisher_cfg
        variables, apply, _ = self.data_apply(net_task, data_task, seed)
        x, y, _ = self.data(data_task)
        t0 = time.perf_counter()
        tree, info = fisher_diag(apply, variables, x, y, estimator=fc.estimator, mc_samples=fc.mc_samples,
                                 rng=jax.random.PRNGKey(seed), method=fc.method,
                                 microbatch=fc.microbatch, memory_budget=fc.memory_budget_mb * 2**20,
                                 authors=self.authors_fisher, progress=False,
                                 name=f"network {net_task} (seed {seed}) on {data_task} data", return_info=True,
                                 engine=self.engine)
        tree = jax.tree_util.tree_map(np.asarray, tree)
        dt = time.perf_counter() - t0
        self.stats["fisher_seconds"] += dt
        return tree, {"inputs": inputs, "info": info, "examples": int(x.shape[0]), "seconds": dt}

    # -- bootstrap blocks (P(closest))
    def fisher_blocks(self, net_task: str, data_task: str, seed: int, blocks: int):
        """``(stack, sizes)``: the diagonal Fisher of each of ``blocks`` near-equal blocks of the ``examples``
        (every leaf with a leading block axis) and the block sizes; cached in the bank as one artifact.

        The size-weighted mean of the blocks is the Fisher over all the examples (the same examples as
        :meth:`fisher`); a bootstrap resample draws blocks with replacement (:func:`_bootstrap_column`).
        """
        fc = self.fisher_cfg
        inputs = {"network": self.net_record(net_task, seed), "data": self.data_record(data_task),
                  "split": fc.split, "examples": fc.examples, "estimator": fc.estimator,
                  "mc_samples": fc.mc_samples if fc.estimator == "mc" else None, "blocks": int(blocks),
                  "version": self.key_version(net_task, data_task, seed)}
        tree, meta, hit = self.bank.cached(net_task, BLOCKS_KIND, inputs,
                                           lambda: self._fisher_blocks(net_task, data_task, seed, int(blocks), inputs),
                                           key_prefix=f"{data_task}-s{seed}-", recompute=self.recompute)
        self.stats["blocks_cached" if hit else "blocks_computed"] += 1
        return tree, np.asarray(meta["sizes"], dtype=np.int64)

    def _fisher_blocks(self, net_task: str, data_task: str, seed: int, blocks: int, inputs: dict):
        """One ``fisher_diag`` call per block of examples (MC labels: key ``fold_in(PRNGKey(seed), block)``)."""
        import jax

        from tanas_jax.distance.stats import block_slices
        from tanas_jax.fisher import fisher_diag

        fc = self.fisher_cfg
        variables, apply_fn, _ = self.data_apply(net_task, data_task, seed)   # the label rule, as _fisher_diag
        x, y, _ = self.data(data_task)
        t0 = time.perf_counter()
        parts, sizes = [], []
        for j, sl in enumerate(block_slices(int(x.shape[0]), blocks)):
            tree = fisher_diag(apply_fn, variables, x[sl], None if y is None else y[sl], estimator=fc.estimator,
                               mc_samples=fc.mc_samples, rng=jax.random.fold_in(jax.random.PRNGKey(seed), j),
                               method=fc.method, microbatch=fc.microbatch,
                               memory_budget=fc.memory_budget_mb * 2**20, progress=False,
                               name=f"network {net_task} (seed {seed}) on {data_task} data, block {j}",
                               engine=self.engine)
            parts.append(jax.tree_util.tree_map(np.asarray, tree))
            sizes.append(sl.stop - sl.start)
        stack = jax.tree_util.tree_map(lambda *a: np.stack(a), *parts)
        dt = time.perf_counter() - t0
        self.stats["fisher_seconds"] += dt
        return stack, {"inputs": inputs, "sizes": sizes, "seconds": dt}

    # -- full spectra
    def _grads(self, net_task: str, data_task: str, seed: int):
        """Per-example gradients (M x n, float32) of one network on full_examples of data_task; kept for reuse.

        A table visits (seed, target, every base): the last few matrices are
        kept so that the Gram (log-det) and the cross-Gram (Fréchet) of a pair
        share one gradient pass per network instead of three.
        """
        key = (net_task, data_task, seed)
        if key not in self._grad_cache:
            g = self._per_example_gradients(net_task, data_task, seed)
            while len(self._grad_cache) >= self._grad_keep:
                self._grad_cache.pop(next(iter(self._grad_cache)))
            self._grad_cache[key] = g
        return self._grad_cache[key]

    def _per_example_gradients(self, net_task: str, data_task: str, seed: int):
        """The one ``per_example_gradients`` call (timed into ``stats['fisher_seconds']``)."""
        import jax

        from tanas_jax.fisher import per_example_gradients

        fc = self.fisher_cfg
        variables, apply, _ = self.data_apply(net_task, data_task, seed)
        x, y, _ = self.data(data_task, full=True)
        t0 = time.perf_counter()
        g = per_example_gradients(apply, variables, x, y, estimator=fc.estimator,
                                  rng=jax.random.PRNGKey(seed), microbatch=fc.microbatch,
                                  memory_budget=fc.memory_budget_mb * 2**20, engine=self.engine,
                                  name=f"network {net_task} (seed {seed}) on {data_task} data")
        self.stats["fisher_seconds"] += time.perf_counter() - t0
        return g

    def gram_eigs(self, net_task: str, data_task: str, seed: int, head: str):
        """``(eigenvalues, n)`` of the Gram of ``net_task``'s network on ``data_task``'s data; cached."""
        from tanas_jax.fisher import gram_eigenvalues, gram_from_gradients

        fc = self.fisher_cfg
        inputs = {"network": self.net_record(net_task, seed), "data": self.data_record(data_task),
                  "split": fc.split, "examples": fc.full_examples, "estimator": fc.estimator,
                  "head": head, "version": self.key_version(net_task, data_task, seed)}

        def compute():
            K, n = gram_from_gradients(self._grads(net_task, data_task, seed), head=head)
            return {"eigs": gram_eigenvalues(K)}, {"inputs": inputs, "n": n}

        tree, meta, hit = self.bank.cached(net_task, GRAM_KIND, inputs, compute,
                                           key_prefix=f"{data_task}-s{seed}-", recompute=self.recompute)
        self._count(hit)
        return np.asarray(tree["eigs"]), int(meta["n"])

    def cross(self, base: str, target: str, seed: int, head: str):
        """(tr F_bt, tr F_tt, ||A^T B||_*) for the full Fréchet distance; cached on the target."""
        from tanas_jax.distance.frechet import nuclear_norm
        from tanas_jax.fisher import cross_from_gradients

        fc = self.fisher_cfg
        inputs = {"base": self.net_record(base, seed), "target": self.net_record(target, seed),
                  "data": self.data_record(target), "split": fc.split, "examples": fc.full_examples,
                  "estimator": fc.estimator, "head": head, "version": self.key_version(base, target, seed)}

        def compute():
            C = cross_from_gradients(self._grads(base, target, seed), self._grads(target, target, seed), head=head)
            # tr F = sum of the Gram's eigenvalues (the whole net: zero padding adds nothing), shared with logdet
            gram_head = "backbone" if head == "backbone" else "pad"
            tr_b = float(np.sum(self.gram_eigs(base, target, seed, gram_head)[0]))
            tr_t = float(np.sum(self.gram_eigs(target, target, seed, gram_head)[0]))
            return ({"tr_b": np.float64(tr_b), "tr_t": np.float64(tr_t), "nuclear": np.float64(nuclear_norm(C))},
                    {"inputs": inputs})

        v, _, hit = self.bank.cached(target, CROSS_KIND, inputs, compute, key_prefix=f"{base}-s{seed}-",
                                     recompute=self.recompute)
        self._count(hit)
        # banks written before 0-d tensors were kept 0-d hold these scalars with shape (1,)
        return tuple(float(np.asarray(v[k]).reshape(())) for k in ("tr_b", "tr_t", "nuclear"))


def pair_distance(store: FisherStore, base: str, target: str, seed: int, dc) -> float:
    """d[base, target] for one seed; ``dc`` is the :class:`~tanas_jax.config.DistanceConfig`."""
    if base == target:
        return 0.0
    if dc.spectrum in ("diag", "diag_sorted"):
        return _diag_distance(store, base, target, seed, dc)
    if dc.normalization != "network" or dc.reduction != "global":
        raise UserError("full spectra support --normalization network and --reduction global only; "
                        "use --spectrum diag for layer-wise options")
    return _full_distance(store, base, target, seed, dc)


def _diag_distance(store: FisherStore, base: str, target: str, seed: int, dc) -> float:
    names = (f"{base} net on {target} data", f"{target} net on {target} data")
    fb, _ = store.fisher(base, target, seed)
    ft, _ = store.fisher(target, target, seed)
    return _tree_distance(fb, ft, dc, names)


def _full_distance(store: FisherStore, base: str, target: str, seed: int, dc) -> float:
    from tanas_jax.distance import frechet, logdet

    if dc.metric == "logdet":
        eb, nb = store.gram_eigs(base, target, seed, dc.head)
        et, nt = store.gram_eigs(target, target, seed, dc.head)
        if dc.head == "pad":  # zero-padded heads: both Fishers live in the larger space
            nb = nt = max(nb, nt)
        return logdet.logdet_distance_full(eb, nb, et, nt, sigma2=dc.sigma2)
    tr_b, tr_t, nuc = store.cross(base, target, seed, dc.head)
    return frechet.frechet_distance_full(tr_b, tr_t, nuc)


def fisher_distance_table(bank, tasks, cfg, seeds=(0,), *, targets=None, progress: bool = True, log=print,
                          recompute: bool = False, bootstrap_seed: int = 0, p_targets=None) -> dict:
    """Mean/std over ``seeds`` of d[b, t] for b, t in ``tasks`` (only columns ``targets`` if given).

    Returns ``{'tasks', 'targets', 'seeds', 'mean', 'std', 'per_seed', 'settings', 'fisher', 'data',
    'timing', 'cache', 'closest', 'p_closest', 'bootstrap'}``; matrices are nested lists (None where not
    computed).  ``std`` is the sample std over seeds (``ddof=1``), 0.0 with one seed
    (:func:`~tanas_jax.distance.stats.seed_mean_std`).  ``p_closest[t][b]`` is the fraction of
    (seed, bootstrap resample) pairs in which base ``b`` is the closest to target ``t``
    (:func:`_bootstrap_replicates`; ``distance.bootstrap`` resamples seeded by ``bootstrap_seed``), for
    the columns ``p_targets`` (default: every computed column).  The mean, std and ranking do not depend
    on the bootstrap.
    """
    from tanas_jax.distance.prepare import check_sigma2

    dc = section(cfg, "distance")
    if dc.metric not in FISHER_METRICS:
        raise UserError(f"unknown metric '{dc.metric}': valid: {', '.join(FISHER_METRICS)}")
    check_sigma2(dc.sigma2)
    tasks = list(tasks)
    targets = list(tasks if targets is None else targets)
    if not tasks:
        raise UserError("no tasks given; pass --tasks SET or --bases SET")
    store = FisherStore(bank, cfg, progress=progress, log=log, recompute=recompute)
    t0 = time.perf_counter()
    per_seed = _per_seed_distances(store, tasks, targets, [int(s) for s in seeds], dc, progress)
    wall = time.perf_counter() - t0
    p_targets = targets if p_targets is None else [t for t in targets if t in set(p_targets)]
    boot = _bootstrap_replicates(store, tasks, p_targets, [int(s) for s in seeds], dc, int(bootstrap_seed), progress)
    result = _table_result(store, tasks, targets, seeds, per_seed, dc, wall)
    result["p_closest"] = _p_closest_table(tasks, p_targets, per_seed, boot["replicates"])
    result["bootstrap"] = {k: v for k, v in boot.items() if k != "replicates"}
    result["timing"]["bootstrap_s"] = boot["seconds"]
    return result


def _per_seed_distances(store: FisherStore, tasks: list, targets: list, seeds: list, dc, progress: bool):
    """``(S, K, K)`` array of d[b, t] per seed (NaN outside the ``targets`` columns)."""
    from tqdm.auto import tqdm

    k = len(tasks)
    per_seed = np.full((len(seeds), k, k), np.nan)
    # train / load every network first (training logs would break the bar)
    for s in seeds:
        for t in sorted(set(tasks) | set(targets)):
            store.network(t, s)
    pairs = [(si, b, t) for si in range(len(seeds)) for t in targets for b in tasks]
    bar = tqdm(pairs, desc=f"{dc.metric} {dc.spectrum} distances", disable=not progress, unit="pair")
    for si, b, t in bar:
        per_seed[si, tasks.index(b), tasks.index(t)] = pair_distance(store, b, t, seeds[si], dc)
    return per_seed


def _bootstrap_plan(store: FisherStore, dc) -> tuple[int, int, str | None]:
    """``(resamples, blocks, note)``: resamples per seed (0, with the reason, when P(closest) is over seeds
    only) and blocks of examples (at most one block per example)."""
    if dc.bootstrap == 0:
        return 0, 0, "distance.bootstrap = 0"
    if dc.spectrum == "full":
        return 0, 0, "full spectra: P(closest) is over the network seeds only"
    if store.authors_fisher:
        return 0, 0, "authors' Fisher variant: its blocks do not average to the full Fisher"
    blocks = min(int(dc.bootstrap_blocks), int(store.fisher_cfg.examples))
    note = None if blocks == dc.bootstrap_blocks else f"{blocks} blocks: one per Fisher example"
    return int(dc.bootstrap), blocks, note


def _bootstrap_replicates(store: FisherStore, tasks, targets, seeds, dc, seed: int, progress: bool) -> dict:
    """Distances d[b, t] per (ε-net seed, bootstrap resample): ``replicates[t]`` is ``(S*B, K)`` (NaN at the
    target itself), or None when the bootstrap is off (P(closest) is then over seeds only).

    A resample draws ``distance.bootstrap_blocks`` blocks of examples with replacement
    (:func:`~tanas_jax.distance.stats.bootstrap_indices`, stream = the network seed) and averages
    their cached block Fishers; the base's and the target's Fisher of one pair use the same draw,
    because both are taken on the same examples of the target's data.  A resample whose Fisher is
    zero everywhere (every drawn example gives a zero gradient) has no distance: NaN, so that base is
    not the closest in that replicate; ``degenerate`` counts them.
    """
    t0 = time.perf_counter()
    resamples, blocks, note = _bootstrap_plan(store, dc)
    info = {"resamples": resamples, "blocks": blocks or None, "seed": seed, "replicates": None, "over": "",
            "note": note}
    if resamples and len(tasks) > 1:
        from tqdm.auto import tqdm

        reps = {t: [] for t in targets}
        for s in seeds:
            idx = bootstrap_indices(seed, s, resamples, blocks)
            for t in tqdm(targets, desc=f"P(closest), seed {s}", disable=not progress, unit="target"):
                reps[t].append(_bootstrap_column(store, tasks, t, s, dc, idx))
        info["replicates"] = {t: np.concatenate(v) for t, v in reps.items()}
    info.update({"computed": store.stats["blocks_computed"], "reused": store.stats["blocks_cached"],
                 "degenerate": store.stats["degenerate_resamples"], "seconds": time.perf_counter() - t0})
    info["over"] = replicate_label(len(seeds), resamples)
    return info


def _bootstrap_column(store: FisherStore, tasks, target: str, seed: int, dc, idx) -> np.ndarray:
    """``(B, K)``: d[b, target] of every base b for each resample (row of ``idx``); NaN at the target."""
    import jax

    def resample(stack, sizes, ix):
        return jax.tree_util.tree_map(lambda a: resample_mean(a, sizes, ix).astype(a.dtype), stack)

    blocks = idx.shape[1]
    ft, sizes = store.fisher_blocks(target, target, seed, blocks)
    out = np.full((len(idx), len(tasks)), np.nan)
    for i, b in enumerate(tasks):
        if b == target:
            continue
        fb, _ = store.fisher_blocks(b, target, seed, blocks)
        names = (f"{b} net on {target} data (resample)", f"{target} net on {target} data (resample)")
        for r, ix in enumerate(idx):
            try:
                out[r, i] = _tree_distance(resample(fb, sizes, ix), resample(ft, sizes, ix), dc, names)
            except UserError:   # a resample whose drawn blocks give a zero Fisher: no distance (NaN)
                store.stats["degenerate_resamples"] += 1
    return out


def _tree_distance(fb, ft, dc, names) -> float:
    """The diagonal metric of ``dc`` between two Fisher trees: the one dispatch for point estimates and
    bootstrap resamples (``diag_sorted`` sorts each layer first: invariant to permuting hidden units)."""
    from tanas_jax.distance import frechet, logdet
    from tanas_jax.distance.prepare import sort_diag

    if dc.spectrum == "diag_sorted":
        fb, ft = sort_diag(fb, ft, dc.head, names)
    if dc.metric == "logdet":
        return logdet.logdet_distance_diag(fb, ft, sigma2=dc.sigma2, normalization=dc.normalization,
                                           reduction=dc.reduction, head=dc.head, names=names)
    return frechet.frechet_distance_diag(fb, ft, normalization=dc.normalization,
                                         reduction=dc.reduction, head=dc.head, names=names)


def _p_closest_table(tasks, targets, per_seed, replicates) -> dict:
    """``{target: {base: P(closest)}}`` from the bootstrap replicates, else from the per-seed distances."""
    out = {}
    if len(tasks) < 2:
        return out
    for t in targets:
        j = tasks.index(t)
        reps = replicates[t] if replicates else np.array(per_seed)[:, :, j].copy()
        reps[:, j] = np.nan
        p = p_closest(reps)
        done = np.isfinite(np.asarray(per_seed)[:, :, j]).any(axis=0)
        out[t] = {b: float(p[i]) for i, b in enumerate(tasks) if b != t and done[i]}
    return out


def _table_result(store: FisherStore, tasks, targets, seeds, per_seed, dc, wall: float) -> dict:
    from tanas_jax.tasks import get_task

    mean, std = seed_mean_std(per_seed)
    result = {
        "tasks": tasks, "targets": targets, "seeds": [int(s) for s in seeds], "net": store.net,
        "mean": finite_lists(mean), "std": finite_lists(std), "per_seed": [finite_lists(m) for m in per_seed],
        "layout": "d[row=base][column=target]",
        "settings": {k: getattr(dc, k) for k in SETTINGS_FIELDS}, "fisher": store.fisher_record(),
        "datasets": {t: get_task(t).dataset for t in set(tasks) | set(targets)},
        "data": {t: store.data_record(t) for t in sorted(set(targets))},
        "timing": {"wall_s": wall, "fisher_s": store.stats["fisher_seconds"]},
        "cache": {"computed": store.stats["computed"], "reused": store.stats["cached"]},
    }
    result["closest"] = {t: rank_bases(result, t)[0][0] for t in targets if len(tasks) > 1}
    same = [t for t, b in result["closest"].items() if result["datasets"][b] == result["datasets"][t]]
    result["same_dataset_closest"] = {"count": len(same), "of": len(result["closest"]), "targets": same}
    return result


def rank_bases(result: dict, target: str) -> list[tuple[str, float, float]]:
    """Bases sorted by mean distance to ``target`` (closest first), target itself excluded."""
    tasks = result["tasks"]
    if target not in tasks:
        raise UserError(f"target {target} is not in the table; tasks: {', '.join(tasks)}")
    j = tasks.index(target)
    rows = []
    for i, b in enumerate(tasks):
        if b == target:
            continue
        m, s = result["mean"][i][j], result["std"][i][j]
        if m is None:
            continue
        rows.append((b, float(m), float(s or 0.0)))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def write_csv(path: str, result: dict, which: str = "mean") -> str:
    """Matrix as CSV: header ``base\\target,t1,...``; one row per base task."""
    from tanas_jax.io import atomic_write_bytes

    buf = io.StringIO()
    w = csv.writer(buf)
    tasks = result["tasks"]
    w.writerow(["base\\target"] + tasks)
    for b, row in zip(tasks, result[which]):
        w.writerow([b] + ["" if v is None else f"{v:.6g}" for v in row])
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def write_p_closest_csv(path: str, result: dict) -> str:
    """P(closest) as CSV in the matrix layout: header ``base\\target,t1,...``, one row per base; a cell is
    the fraction of (seed, resample) pairs in which that base is the closest to that target (blank: the
    target itself or not computed)."""
    from tanas_jax.io import atomic_write_bytes

    buf = io.StringIO()
    w = csv.writer(buf)
    tasks, pc = result["tasks"], result.get("p_closest", {})
    w.writerow(["base\\target"] + tasks)
    for b in tasks:
        w.writerow([b] + [("" if pc.get(t, {}).get(b) is None else f"{pc[t][b]:.6g}") for t in tasks])
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def plot_heatmap(path: str, result: dict, title: str | None = None) -> str:
    """Mean and std side by side (LD-NAS Figure 1); column = target task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tanas_jax.io import save_figure

    k = len(result["tasks"])
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(4.0, 0.9 * k + 2), max(3.5, 0.7 * k + 1.5)), dpi=120)
    for ax, which in zip(axes, ("mean", "std")):
        _heatmap_panel(fig, ax, result, which)
    _mark_p_closest(axes[0], result)
    s = result.get("settings", {})
    fig.suptitle(title or f"{s.get('metric')} ({s.get('spectrum')}) distance, {result.get('net')}, "
                 f"{len(result.get('seeds', []))} seeds")
    return save_figure(fig, path)


def _heatmap_panel(fig, ax, result: dict, which: str) -> None:
    """One annotated matrix (``result[which]``, None shown blank) with its colour bar."""
    tasks = result["tasks"]
    k = len(tasks)
    m = np.array([[np.nan if v is None else v for v in row] for row in result[which]], float)
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(k), tasks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), tasks, fontsize=7)
    ax.set_xlabel("target task")
    ax.set_ylabel("base task")
    ax.set_title(which)
    fin = m[np.isfinite(m)]
    thr = (fin.max() + fin.min()) / 2 if fin.size else 0
    for i, j in zip(*np.nonzero(np.isfinite(m))):
        ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=6,
                color="black" if m[i, j] > thr else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _mark_p_closest(ax, result: dict) -> None:
    """In each target column: a red box on the closest base (by mean) and its P(closest) above the column."""
    from matplotlib.patches import Rectangle

    tasks, pc = result["tasks"], result.get("p_closest") or {}
    for t, b in (result.get("closest") or {}).items():
        p = pc.get(t, {}).get(b)
        i, j = tasks.index(b), tasks.index(t)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
        if p is not None:
            ax.text(j, -0.75, f"{p:.2f}", ha="center", va="bottom", fontsize=6, color="red")
    if pc:
        over = (result.get("bootstrap") or {}).get("over", "")
        ax.set_title(f"mean; red: closest base, P(closest) over {over} above" if over else "mean",
                     fontsize=8, pad=12)


def write_outputs(out_dir: str, result: dict, stem: str) -> dict:
    """CSV (mean, std, P(closest) when the table has it) and heatmap PNG next to result.json; their paths."""
    os.makedirs(out_dir, exist_ok=True)
    files = {"csv_mean": write_csv(os.path.join(out_dir, f"{stem}_mean.csv"), result, "mean"),
             "csv_std": write_csv(os.path.join(out_dir, f"{stem}_std.csv"), result, "std")}
    if result.get("p_closest"):
        files["csv_p_closest"] = write_p_closest_csv(os.path.join(out_dir, f"{stem}_p_closest.csv"), result)
    files["heatmap"] = plot_heatmap(os.path.join(out_dir, f"{stem}_heatmap.png"), result)
    return files


def add_seed_p_closest(table: dict) -> dict:
    """Give a table without a bootstrap (the transform distance) P(closest) over its network seeds, in place."""
    if "p_closest" not in table and table.get("per_seed") is not None:
        per_seed = np.array([[[np.nan if v is None else v for v in row] for row in m] for m in table["per_seed"]])
        table["p_closest"] = _p_closest_table(table["tasks"], table.get("targets", table["tasks"]), per_seed, None)
        table["bootstrap"] = {"resamples": 0, "blocks": None, "over": replicate_label(len(table["seeds"]), 0),
                              "note": "transform distance: P(closest) is over the network seeds only"}
    return table


def _transform_column(bank, bases, target, cfg, seeds, progress, log, recompute) -> dict:
    """Transform distances d(b -> target) for every base: the target column of the table over
    ``bases + [target]`` (the other entries None)."""
    from tanas_jax.distance.transform import transform_distance_table

    return transform_distance_table(bank, list(bases) + [target], cfg, seeds=seeds, targets=[target],
                                    progress=progress, log=log, recompute=recompute)


def rank_target(bank, target: str, cfg, *, bases=None, metric: str | None = None, seeds=None,
                progress: bool = False, log=print, recompute: bool = False,
                bootstrap_seed: int = 0) -> tuple[list, dict]:
    """``(ranked, table)``: bases sorted by distance to ``target`` (closest first) and the table used.

    ``ranked`` is a list of ``(base, mean, std)`` over ``seeds``; see :func:`closest_bases`.
    ``table['p_closest'][target]`` gives each base's P(closest) (seeds x bootstrap resamples of the
    Fisher examples; seeds only for full spectra and the transform distance).
    ``cfg`` is never changed (a different ``metric`` is applied to a copy).  Only the target's data is
    loaded: every Fisher (or transform) is taken on it, so a base needs only its banked network and a
    bank carried without the bases' data (``bin/bank export`` / ``import``) still ranks.
    """
    from tanas_jax.tasks import canonical, resolve_tasks

    target = canonical(target)
    bases = [b for b in resolve_tasks(section(cfg, "tanas").bases if bases is None else bases) if b != target]
    if not bases:
        raise UserError(f"no base tasks left after removing the target {target}; give other bases")
    configured = section(cfg, "distance").metric
    metric = metric or configured
    seeds = [int(s) for s in (section(cfg, "bank").seeds if seeds is None else seeds)]
    if not seeds:
        raise UserError("no seeds given; pass at least one network seed")
    if metric == "transform":
        table = _transform_column(bank, bases, target, cfg, seeds, progress, log, recompute)
        add_seed_p_closest(table)
    elif metric in FISHER_METRICS:
        if configured != metric:
            cfg = updated(cfg, {"distance.metric": metric})
        table = fisher_distance_table(bank, bases + [target], cfg, seeds, targets=[target], progress=progress,
                                      log=log, recompute=recompute, bootstrap_seed=bootstrap_seed)
    else:
        raise UserError(f"unknown metric '{metric}': valid: logdet, frechet, transform")
    return rank_bases(table, target), table


def closest_bases(bank, target: str, cfg, *, bases=None, metric: str | None = None, seeds=None,
                  log=print) -> list[str]:
    """Base tasks ordered by distance to ``target``, closest first (TA-NAS Algorithm 1, step 2).

    ``bases``: a task-set name, a list of tasks, or None for ``cfg.tanas.bases``;
    the target is always removed.  ``metric``: ``logdet`` | ``frechet`` (Fisher
    distances with ``cfg.distance``'s spectrum, σ², normalisation, head, on
    ``cfg.fisher``'s estimator) or ``transform`` (TA-NAS transform network);
    default ``cfg.distance.metric``.  ``seeds``: network seeds averaged over
    (default ``cfg.bank.seeds``).  Networks missing from the bank are trained
    and banked; Fishers / transform pairs are cached there.  Ties are broken
    by task name, so the order is deterministic.
    """
    ranked, _ = rank_target(bank, target, cfg, bases=bases, metric=metric, seeds=seeds, log=log)
    return [b for b, _, _ in ranked]
