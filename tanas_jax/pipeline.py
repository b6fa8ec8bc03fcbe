"""The whole TA-NAS pipeline (TA-NAS Algorithm 1) for one target task, as a library function.

:func:`run_pipeline` does, with the settings of a config (section ``tanas``
chooses the target, the bases, the metric and k):

1. every base task and the target get trained ε-approximation networks
   (``cfg.bank.seeds``), reusing the bank;
2. the distance table over bases + target (Fisher log-det / Fréchet, or the
   transform-network distance), cached in the bank; the closest base to the
   target (column = target, as in the papers) with its P(closest) over the seeds and
   bootstrap resamples (a warning below ``tanas.min_confidence``); with k > 1 the
   bases whose P(closest) is material (:func:`choose_bases`);
3. those k bases get a genotype if they lack one (the bank's, a bundled genotype
   file in ``configs/genotypes``, or a standard-space FUSE run on the base, which
   is banked);
4. FUSE in the task-aware space (union of the k closest bases' ops and cells),
   the winner trained from scratch and tested once, its genotype banked as the
   target's (the target becomes a base task);
5. baselines with the same settings (``tanas.baselines``, default ``standard,random``):
   FUSE in the standard space, random search with the same budget, and optionally
   DARTS (``darts1``/``darts2``) and TETLO over the standard space's supernet (at
   ``search.darts.input_shape``); and the target's ε-approximation net.

Every search's winner is finished by the SAME final training (section ``final``,
:func:`tanas_jax.search.runtime.train_final`) on the same data; its test split is
capped by ``data.max_test`` (default: ``data.max_eval``), so the final networks can be
tested on a whole test split (e.g. all 10,000 Fashion-MNIST test images) while the
search's validation split keeps its ``data.max_eval`` cap.  Each run carries its
anytime trace (:func:`tanas_jax.compare.anytime_trace`).

Every expensive step is cached in the bank (networks, Fishers, genotypes, and
each search result keyed by a fingerprint of its inputs), so a rerun reuses what
exists and says so in ``reused``.  Searches are checkpointed per round in
``OUT/checkpoints`` and resume after an interruption.  The report is written by
:mod:`tanas_jax.report`; the command line is ``bin/tanas`` (:mod:`tanas_jax.cli.tanas`).
The config passed in is never changed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from tanas_jax.config import section, updated
from tanas_jax.errors import UserError
from tanas_jax.io import json_default

logger = logging.getLogger(__name__)

RUN_LABELS = {"task-aware": "FUSE, task-aware space ({space})", "standard": "FUSE, standard space",
              "random": "random search, standard space (same budget)",
              "darts1": "DARTS (1st order), standard space", "darts2": "DARTS (2nd order), standard space",
              "tetlo": "TETLO, standard space"}
SEARCH_OF_RUN = {"task-aware": "fuse", "standard": "fuse", "random": "random", "darts1": "darts1",
                 "darts2": "darts2", "tetlo": "tetlo"}


@dataclasses.dataclass(frozen=True)
class _Run:
    """The fixed inputs of one pipeline run."""

    cfg: Any                  # the effective config (distance.metric set from tanas.metric)
    bank: Any
    out: str | None
    seed: int
    progress: bool
    log: Callable[[str], None]
    target: str
    bases: list
    metric: str
    k: int
    seeds: list


@dataclasses.dataclass
class _Ledger:
    """What a run reused from the bank, what it computed, and how long each step took."""

    reused: list = dataclasses.field(default_factory=list)
    computed: list = dataclasses.field(default_factory=list)
    timings: dict = dataclasses.field(default_factory=dict)

    def note(self, had: bool, what: str) -> None:
        (self.reused if had else self.computed).append(what)


def run_pipeline(cfg, *, bank, out: str | None = None, seed: int = 0, baselines: bool = True,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run TA-NAS for ``cfg.tanas.target`` against ``cfg.tanas.bases`` with ``bank``; returns the result dict
    (networks, distance table and ranking, base genotypes, search runs, summary table, banked genotype,
    reused/computed items, timings).  ``out`` holds search checkpoints; ``baselines=False`` runs only the
    task-aware search; ``log`` (default: the ``tanas_jax.pipeline`` logger) receives progress messages."""
    from tanas_jax.compare import anytime_trace
    from tanas_jax.config import section
    from tanas_jax.search.spaces import resolve_space

    run = _plan(cfg, bank, out, seed, progress, log or logger.info)
    led = _Ledger()
    t_all = time.perf_counter()
    fcfg = section(run.cfg, "fuse")
    run.log(f"target {run.target}; {len(run.bases)} bases: {', '.join(run.bases)}; metric {run.metric}; "
            f"top-{run.k}; net {run.cfg.train.net}; seeds {run.seeds}")
    nets = _timed(led, "networks_s", _networks, run, led)
    dist = _timed(led, "distances_s", _distances, run, led)
    run.log(f"closest bases to {run.target}: " + ", ".join(f"{b} ({dist['column'][b]:.4g})" for b in dist["ranking"]))
    _announce_confidence(run, dist["confidence"])
    genos = _timed(led, "base_genotypes_s", _base_genotypes, run, led, dist["closest"], fcfg)
    data = search_data(run.cfg, run.target)
    run.log(data.summary())
    fdata = final_data(run.cfg, data)
    if fdata is not data:
        run.log(f"final networks tested on {fdata.sizes['test']} test images (data.max_test)")
    space = resolve_space(f"from:closest:{len(dist['closest'])}", bank=bank, target=run.target,
                          closest_fn=lambda _t: dist["closest"], log=run.log)
    runs = _timed(led, "searches_s", _searches, run, led, (data, fdata), space, fcfg, baselines)
    geno = _bank_target_genotype(run, data, space, dist["closest"], runs["task-aware"])
    led.timings["total_s"] = time.perf_counter() - t_all
    return {"command": "tanas", "target": run.target, "bases": run.bases, "metric": run.metric,
            "top_k": run.k, "seed": seed, "config": run.cfg.to_dict(), "data": data.record(),
            "final_data": fdata.record(), "traces": {name: anytime_trace(r) for name, r in runs.items()},
            "networks": nets, "distance": dist, "closest": dist["closest"], "confidence": dist["confidence"],
            "base_genotypes": genos,
            "space": space.to_dict(), "runs": runs, "table": summary_rows(runs, nets, space.name),
            "genotype": geno, "reused": led.reused, "computed": led.computed, "timings": led.timings}


def _plan(cfg, bank, out, seed, progress, log) -> _Run:
    """Target, bases (the target held out), metric and k from ``cfg.tanas``; every bad value fails here."""
    from tanas_jax import tasks

    t = cfg.tanas
    target = tasks.canonical(t.target)
    bases = [b for b in tasks.resolve_tasks(t.bases) if b != target]
    if not bases:
        raise UserError(f"no base tasks left after holding out the target {target}; give --bases "
                        "(tanas.bases) with other tasks")
    k = int(t.top_k)
    if not 1 <= k <= len(bases):
        raise UserError(f"--top-k (tanas.top_k) must be in 1..{len(bases)} (number of bases), got {k}")
    metric = t.metric
    eff = updated(cfg, {"distance.metric": metric}) if metric != "transform" else cfg
    return _Run(cfg=eff, bank=bank, out=out, seed=int(seed), progress=progress, log=log, target=target,
                bases=bases, metric=metric, k=k, seeds=[int(s) for s in cfg.bank.seeds])


def _timed(led: _Ledger, key: str, fn, *args):
    t0 = time.perf_counter()
    value = fn(*args)
    led.timings[key] = time.perf_counter() - t0
    return value


# 1 ---------------------------------------------------------------------------------------
def _networks(run: _Run, led: _Ledger) -> list[dict]:
    """The ε-approximation networks of every base and the target, trained when the bank lacks them."""
    from tanas_jax.train import bank_key, ensure_network

    rows = []
    net = run.cfg.train.net
    key = bank_key(run.cfg.train)     # the bank's name for it
    for task in run.bases + [run.target]:
        for seed in run.seeds:
            had = run.bank.has_network(task, key, seed)
            _, meta = ensure_network(run.bank, task, seed, run.cfg, progress=run.progress, log=run.log)
            led.note(had, f"network {task} [{net} seed {seed}]")
            m = meta["metrics"]
            rows.append({"task": task, "seed": seed, "net": net, "test_accuracy": m["test_accuracy"],
                         "reached_epsilon": m["reached_epsilon"], "params": m["n_params"],
                         "source": meta["data"]["source"], "role": "target" if task == run.target else "base"})
    return rows


# 2 ---------------------------------------------------------------------------------------
def _distances(run: _Run, led: _Ledger) -> dict:
    """The distance table over bases + target (all columns when small, else the target's column) and the
    bases ranked by their distance to the target."""
    tasks_all = run.bases + [run.target]
    if run.metric == "transform":
        from tanas_jax.distance.transform import transform_distance_table

        table = transform_distance_table(run.bank, tasks_all, run.cfg, seeds=run.seeds,
                                         progress=run.progress, log=run.log)
    else:
        from tanas_jax.distance.table import fisher_distance_table

        full = len(tasks_all) <= int(run.cfg.tanas.full_table_max) and _bases_have_data(run)
        table = fisher_distance_table(run.bank, tasks_all, run.cfg, run.seeds,
                                      targets=None if full else [run.target], progress=run.progress,
                                      log=run.log, bootstrap_seed=run.seed, p_targets=[run.target])
        c = table.get("cache", {})
        if c.get("reused"):
            led.reused.append(f"{c['reused']} Fisher spectra")
        if c.get("computed"):
            led.computed.append(f"{c['computed']} Fisher spectra")
    t = tasks_all.index(run.target)
    col = [(table["mean"][i][t], b) for i, b in enumerate(tasks_all) if b != run.target]
    ranking = [b for _, b in sorted(col)]
    from tanas_jax.distance.table import add_seed_p_closest

    add_seed_p_closest(table)
    p = table["p_closest"][run.target]
    tc = section(run.cfg, "tanas")
    closest = choose_bases(ranking, p, run.k, tc.material)
    conf = confidence_note(run.target, closest, p, table["bootstrap"]["over"], tc.min_confidence)
    return {"table": table, "tasks": tasks_all, "ranking": ranking, "column": {b: float(d) for d, b in col},
            "closest": closest, "p_closest": p, "confidence": conf}


def choose_bases(ranking: list[str], p: dict, k: int, material: float) -> list[str]:
    """The bases whose cells form the search space.

    ``k == 1``: the closest base by mean distance (TA-NAS Algorithm 1).  ``k > 1``: the bases whose
    P(closest) is material (``p[b] >= material``), closest first by mean distance, at most ``k``;
    when none is, the closest base alone (always at least one).
    """
    if k == 1:
        return ranking[:1]
    chosen = [b for b in ranking if p.get(b, 0.0) >= material][:k]
    return chosen or ranking[:1]


def confidence_note(target: str, chosen: list[str], p: dict, over: str, min_confidence: float) -> dict:
    """How sure the choice is: ``{'p', 'over', 'message', 'warning'}``.

    ``p`` is P(closest) of the chosen base, or with several chosen bases the probability that the
    closest base is one of them (their sum).  ``warning`` is a sentence when ``p < min_confidence``
    (else None).
    """
    conf = float(sum(p.get(b, 0.0) for b in chosen))
    what = "closest base" if len(chosen) == 1 else "closest base among"
    message = f"{what}: {', '.join(chosen)} (P(closest) = {conf:.2f} over {over})"
    warning = None
    if conf < min_confidence:
        others = sorted(((v, b) for b, v in p.items() if b not in chosen), reverse=True)[:2]
        alt = ", ".join(f"{b} {v:.2f}" for v, b in others)
        warning = (f"low confidence in the choice of base for {target}: P(closest) = {conf:.2f} < "
                   f"tanas.min_confidence = {min_confidence:g} (next: {alt}); more seeds (bank.seeds) or "
                   "Fisher examples would make it surer")
    return {"p": conf, "over": over, "chosen": list(chosen), "message": message, "warning": warning}


def _announce_confidence(run: _Run, conf: dict) -> None:
    """Log the confidence of the choice; a logger warning when it is below ``tanas.min_confidence``."""
    run.log(conf["message"])
    if conf["warning"]:
        logger.warning(conf["warning"])


def _bases_have_data(run: _Run) -> bool:
    """Whether every base task's data is here: the full K x K table needs it; the target's column (the
    ranking) needs only the bases' banked networks and the target's data, so a bank copied without its
    data still ranks (the heatmap then shows the target column)."""
    from tanas_jax import data, tasks

    d = section(run.cfg, "data")
    missing = []
    for b in run.bases:
        if not tasks.has_data(b):   # a banked user task known by its networks only
            missing.append(b)
            continue
        try:
            srcs = data.available_sources(tasks.get_task(b).dataset, d.data_dir)
        except UserError:   # not a registry dataset: its own loader reports what is wrong
            continue
        if not (srcs if d.source == "auto" else d.source in srcs):
            missing.append(b)
    if missing:
        run.log(f"no data here for base(s) {', '.join(missing)}: computing the target's column only "
                "(the ranking needs just their banked networks)")
    return not missing


# 3 ---------------------------------------------------------------------------------------
def _base_genotypes(run: _Run, led: _Ledger, closest: list[str], fcfg) -> dict:
    """A genotype for each closest base: the bank's, a bundled one, or a standard-space FUSE run (banked)."""
    from tanas_jax.search.spaces import bundled_genotype_path

    out = {}
    for b in closest:
        g = run.bank.load_genotype(b)
        if g is not None:
            led.reused.append(f"genotype of {b} (bank)")
            out[b] = {"genotype": g[0], "from": "bank"}
            continue
        path = bundled_genotype_path(b)
        if path:
            run.log(f"{b}: using the bundled genotype {path}")
            with open(path) as f:
                out[b] = {"genotype": json.load(f), "from": path}
            continue
        out[b] = {"genotype": _search_base_genotype(run, led, b, fcfg), "from": "standard-space FUSE (banked)"}
    return out


def _search_base_genotype(run: _Run, led: _Ledger, base: str, fcfg) -> dict:
    from tanas_jax.search.genotype import Genotype
    from tanas_jax.search.spaces import standard_space

    run.log(f"{base} has no genotype: searching one with FUSE in the standard space")
    data = search_data(run.cfg, base)
    res = _search(run, led, base, data, "standard", standard_space(), fcfg, "fuse")
    geno = Genotype.from_dict(res["winner"]).to_dict()
    run.bank.save_genotype(base, geno, {"source": "bin/tanas (standard-space FUSE for a base)",
                                        "seed": run.seed, "val_accuracy": res["final"]["val_accuracy"],
                                        "test_accuracy": res["final"]["test_accuracy"], "data": data.record()})
    return geno


# 4/5 -------------------------------------------------------------------------------------
def search_data(cfg, task: str, input_shape: tuple | None = None):
    """``task``'s data for a search: ``input_shape`` (default ``search.input_shape``), the train split
    capped at ``search.max_train``, the rest from section ``data``."""
    from tanas_jax import tasks

    s = section(cfg, "search")
    return tasks.task_data(task, input_shape or s.input_shape, cfg.data, max_train=s.max_train)


def final_data(cfg, data):
    """``data`` with its test split capped by ``data.max_test`` instead of ``data.max_eval`` (the train
    and validation splits unchanged): the data every search's winner is finally trained and tested on.
    ``data`` itself when ``data.max_test`` is None or equals ``data.max_eval``.  The test split is a fixed
    prefix of one permutation, so the capped split is the first part of the longer one."""
    import dataclasses

    from tanas_jax import tasks

    d = section(cfg, "data")
    if d.max_test is None or d.max_test == d.max_eval:
        return data
    longer = tasks.task_data(data.task, data.input_shape, dataclasses.replace(d, max_eval=d.max_test),
                             max_train=1)
    return dataclasses.replace(data, x_test=longer.x_test, y_test=longer.y_test,
                               settings={**data.settings, "max_test": d.max_test})


def _search_inputs(run: _Run, method: str, space, fcfg, data, fdata) -> dict:
    """What a banked search result is keyed by (unchanged for FUSE/random when the final data is the
    search data, so existing banks still hit)."""
    from tanas_jax.config import to_dict

    inputs = {"method": method, "space": space.to_dict(), "fuse": to_dict(fcfg),
              "final": to_dict(section(run.cfg, "final")), "seed": run.seed, "data": data.record()}
    if method not in ("fuse", "random"):
        inputs["darts"] = to_dict(section(run.cfg, "search.darts"))
    if fdata is not data:
        inputs["final_data"] = fdata.record()
    return inputs


def _search(run: _Run, led: _Ledger, task: str, data, label: str, space, fcfg, method: str,
            fdata=None) -> dict:
    """One search (a :data:`tanas_jax.search.methods.SEARCH_METHODS` name), its winner trained by the
    ``final`` protocol on ``fdata`` (default ``data``), cached in the bank (``Bank.cached``) by a digest
    of its inputs.  DARTS/TETLO search on ``task`` at ``search.darts.input_shape``."""
    import numpy as np

    from tanas_jax.bank import inputs_digest
    from tanas_jax.search.methods import SearchSettings, run_search

    fdata = data if fdata is None else fdata
    if method not in ("fuse", "random"):
        data = search_data(run.cfg, task, section(run.cfg, "search.darts").input_shape)
    inputs = _search_inputs(run, method, space, fcfg, data, fdata)
    digest = inputs_digest(inputs, 16)
    ran: dict = {}

    def compute():
        ck = os.path.join(run.out, "checkpoints", f"{task}-{method}-{digest[-8:]}") if run.out else None
        run.log(f"== {method} for {task}, space {label}: {len(space.ops)} ops ({', '.join(space.ops)}), "
                f"{space.size()} cells")
        ran["result"] = run_search(method, data, space, SearchSettings.from_config(run.cfg), run.seed,
                                   checkpoint_dir=ck, log=run.log, final_data=fdata)
        return {"done": np.ones(1, np.int8)}, {"result": json.loads(json.dumps(ran["result"], default=json_default))}

    _, meta, hit = run.bank.cached(task, "searches", inputs, compute, key_prefix="search-", digest_chars=16)
    if hit:
        led.reused.append(f"{method} search for {task} in space {label} (bank)")
        return meta["result"]
    led.computed.append(f"{method} search for {task} in space {label}")
    return ran["result"]


def baseline_names(cfg) -> list[str]:
    """The baselines ``tanas.baselines`` asks for, in order, without duplicates."""
    names = [b.strip() for b in str(section(cfg, "tanas").baselines).split(",") if b.strip()]
    return list(dict.fromkeys(names))


def _searches(run: _Run, led: _Ledger, datas, space, fcfg, baselines: bool) -> dict:
    """FUSE in the task-aware space, and (``baselines``) the ``tanas.baselines`` in the standard space;
    ``datas`` = (search data, final data)."""
    from tanas_jax.search.spaces import standard_space

    data, fdata = datas
    runs = {"task-aware": _search(run, led, run.target, data, space.name, space, fcfg, "fuse", fdata)}
    if baselines:
        std = standard_space()
        for name in baseline_names(run.cfg):
            runs[name] = _search(run, led, run.target, data, "standard", std, fcfg, SEARCH_OF_RUN[name], fdata)
    return runs


def _bank_target_genotype(run: _Run, data, space, closest: list[str], best: dict) -> dict:
    """Store the task-aware winner as the target's genotype (the target becomes a base task)."""
    from tanas_jax.search.genotype import Genotype

    geno = Genotype.from_dict(best["winner"]).to_dict()
    run.bank.save_genotype(run.target, geno, {
        "source": "bin/tanas", "space": space.name, "closest": closest, "metric": run.metric,
        "seed": run.seed, "val_accuracy": best["final"]["val_accuracy"],
        "test_accuracy": best["final"]["test_accuracy"], "params": best["final"]["params"],
        "data": data.record()})
    run.log(f"bank: stored the task-aware winner as {run.target}'s genotype")
    return geno


def summary_rows(runs: dict, nets: list[dict], space_name: str) -> list[dict]:
    """One row per search run and per target ε-net: the report's and the command's table."""
    rows = []
    for name, r in runs.items():
        f = r["final"]
        rows.append({"method": RUN_LABELS[name].format(space=space_name), "test_acc": f["test_accuracy"],
                     "val_acc": f["val_accuracy"], "params": f["params"], "search_s": r["search_wall_s"],
                     "evaluations": r.get("candidate_evaluations", ""),
                     "architecture": r.get("winner_short") or r.get("genotype_short", "")})
    for n in nets:
        if n["role"] == "target":
            rows.append({"method": f"epsilon-net {n['net']} (seed {n['seed']})", "test_acc": n["test_accuracy"],
                         "val_acc": "", "params": n["params"], "search_s": "", "evaluations": "",
                         "architecture": n["net"]})
    return rows


__all__ = ["RUN_LABELS", "baseline_names", "choose_bases", "confidence_note", "final_data", "run_pipeline",
           "search_data", "summary_rows"]
