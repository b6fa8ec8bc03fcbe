"""The Python API: one entry module for notebooks and scripts (``docs/python_api.md``).

    from tanas_jax import api

    task = api.task_from_arrays("shoes", x_train, y_train)    # or api.task_from_spec("shoes.toml")
    bank = api.open_bank("bank")
    ranking = api.rank(bank, task, bases="offline8", seeds=[0, 1])
    ranking.rows[0]            # RankRow(base=..., mean=..., std=..., p_closest=...)
    fig = ranking.figure()     # a matplotlib Figure, not saved
    found = api.search(task, space=f"from:{ranking.closest}", bank=bank)
    result = api.run(task, bases="offline8", bank=bank, out="runs/shoes")

Every function takes ``config`` (``"quick"``, ``"paper"``, a config file path, or an
``ml_collections.ConfigDict``) and ``overrides`` (``{"fuse.rounds": 1}``: the ``--set`` of the command
line, validated the same way); returns plain dataclasses whose ``to_dict()`` is JSON-serialisable; draws
no progress bar unless ``progress=True`` and logs through the ``tanas_jax`` logger (or ``log=``); and
turns bad input into one :class:`~tanas_jax.errors.UserError` line.  The command line is a thin user of
the same functions (``bin/tanas`` runs :func:`run_tanas`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tanas_jax import tasks
from tanas_jax.config import load_config, section, updated
from tanas_jax.errors import UserError
from tanas_jax.io import json_default

logger = logging.getLogger("tanas_jax.api")


def _plain(obj) -> Any:
    """``obj`` as JSON types (numpy scalars and arrays, tuples and paths become numbers, lists, strings)."""
    return json.loads(json.dumps(obj, default=json_default))


# --- settings ---------------------------------------------------------------------------------
def make_config(config="quick", overrides: Mapping[str, Any] | None = None):
    """A new validated config: a preset name (``quick``, ``paper``), a config file path or a ConfigDict
    (copied, never changed), then ``overrides`` ``{"section.field": value}`` (like ``--set``)."""
    if config is None or isinstance(config, (str, os.PathLike)):
        cfg = load_config(None if config is None else os.fspath(config))
    elif hasattr(config, "copy_and_resolve_references"):
        cfg = config
    else:
        raise UserError(f"config must be 'quick', 'paper', a config file path or an ml_collections.ConfigDict, "
                        f"got {type(config).__name__}")
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
        raise UserError("overrides must be a dict {'section.field': value}, e.g. {'fuse.rounds': 1}")
    return updated(cfg, dict(overrides))


def _log(log: Callable[[str], None] | None) -> Callable[[str], None]:
    return log if log is not None else logger.info


# --- tasks ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Task:
    """A registered task: its name, classes, examples per class and split, and what results record
    about its data (source, sizes, and for a user task its spec and data sha256)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    counts: dict            # {"train" | "val" | "test": {class name: examples}}
    record: dict

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def __str__(self) -> str:
        per = ", ".join(f"{c} {'/'.join(str(self.counts[s][c]) for s in ('train', 'val', 'test'))}"
                        for c in self.class_names)
        return f"task {self.name}: {self.num_classes} classes from {self.record.get('source')}; " \
               f"per class (train/val/test): {per}"


def describe_task(name: str, config="quick", overrides=None) -> Task:
    """The :class:`Task` of a registered task (a name, alias, spec path or inline form), its data split as
    the config's ε-net sees it."""
    from tanas_jax import models

    cfg = make_config(config, overrides)
    data = tasks.task_data(tasks.canonical(name), models.get_net(cfg.train.net).input_shape, cfg.data)
    counts = data.settings.get("class_counts") or {
        s: {c: int(n) for c, n in zip(data.class_names, np.bincount(y, minlength=data.num_classes))}
        for s, y in (("train", data.y_train), ("val", data.y_val), ("test", data.y_test))}
    return Task(data.task, data.num_classes, tuple(data.class_names), _plain(counts), _plain(data.record()))


def task_from_arrays(name: str, x_train, y_train, x_test=None, y_test=None, *, class_names=None,
                     description: str = "", config="quick", overrides=None) -> Task:
    """Register in-memory arrays as task ``name`` (images NHWC / NHW / NCHW, uint8 or floats; integer labels
    0..K-1; without a test split 20% of each class is carved) and describe it."""
    tasks.register_arrays(name, x_train, y_train, x_test, y_test, class_names=class_names,
                          description=description)
    return describe_task(name, config, overrides)


def task_from_spec(spec, config="quick", overrides=None) -> Task:
    """Register a task from a spec file (``*.toml`` / ``*.json``), an inline form (``folder:PATH``,
    ``npz:PATH``, ``tfds:NAME``) or a dict of spec fields (relative paths from the current folder), and
    describe it.  A registered name (built-in, or a user task of an opened bank) is described as well."""
    if isinstance(spec, Mapping):
        from tanas_jax.data.spec import from_dict

        name = tasks.register_spec(from_dict(dict(spec), "spec dict", os.getcwd()))
    elif isinstance(spec, (str, os.PathLike)):
        name = tasks.canonical(os.fspath(spec))
    else:
        raise UserError(f"task_from_spec takes a spec path, an inline form or a dict, got {type(spec).__name__}")
    return describe_task(name, config, overrides)


def _name(task) -> str:
    if isinstance(task, Task):
        return task.name
    if not isinstance(task, (str, os.PathLike)):
        raise UserError(f"a task is a name, a spec path or an api.Task, got {type(task).__name__}")
    return tasks.canonical(os.fspath(task))


def _names(task_list) -> str | list[str]:
    """A task set / comma list, or a sequence of names, specs and Tasks."""
    if isinstance(task_list, str):
        return task_list
    if isinstance(task_list, Task):
        return [task_list.name]
    if not isinstance(task_list, Sequence):
        raise UserError(f"bases must be a task set, a comma list or a list of tasks, got {type(task_list).__name__}")
    return [_name(t) for t in task_list]


# --- bank and networks ------------------------------------------------------------------------
def open_bank(path: str | None = None, create: bool = True):
    """The bank folder ``path`` (default ``$TANAS_BANK`` or ``./bank``); the user tasks it holds networks of
    then resolve by their bare names."""
    from tanas_jax.bank import Bank

    bank = Bank(None if path is None else os.fspath(path), create=create)
    tasks.attach_bank(bank)
    return bank


def _bank(bank):
    if bank is None or isinstance(bank, (str, os.PathLike)):
        return open_bank(bank)
    tasks.attach_bank(bank)
    return bank


@dataclasses.dataclass(frozen=True)
class Net:
    """A banked ε-approximation network: ``variables`` (the flax variables) and its bank metadata."""

    task: str
    net: str
    seed: int
    trained: bool           # trained by this call (else loaded from the bank)
    metrics: dict
    meta: dict
    variables: Any = dataclasses.field(repr=False, compare=False)

    def to_dict(self) -> dict:
        """Everything but the weights."""
        return _plain({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "variables"})


def ensure_net(bank, task, seed: int = 0, *, config="quick", overrides=None, retrain: bool = False,
               progress: bool = False, log=None) -> Net:
    """The banked ε-net of ``task`` for ``seed`` (``config``'s ``train.net``), trained and banked when the
    bank lacks it (or ``retrain``)."""
    from tanas_jax.train import bank_key, ensure_network

    cfg, bank, name = make_config(config, overrides), _bank(bank), _name(task)
    had = bank.has_network(name, bank_key(cfg.train), int(seed)) and not retrain
    variables, meta = ensure_network(bank, name, int(seed), cfg, progress=progress, log=_log(log), retrain=retrain)
    return Net(name, cfg.train.net, int(seed), not had, _plain(meta["metrics"]), _plain(meta), variables)


# --- ranking with P(closest) -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RankRow:
    base: str
    mean: float             # distance to the target, mean over seeds
    std: float              # sample std over seeds (0.0 with one seed)
    p_closest: float        # share of seeds in which this base is the closest


@dataclasses.dataclass(frozen=True)
class Ranking:
    """The bases ranked by distance to ``target`` (closest first) with P(closest)."""

    target: str
    metric: str
    seeds: list
    rows: list              # RankRow, closest first
    per_seed: dict          # {base: [distance for each seed]}
    p_closest_from: str     # "table" (the distance table's own) or "seeds" (over the network seeds only)
    table: dict             # the distance table it came from

    @property
    def closest(self) -> str:
        return self.rows[0].base

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def figure(self):
        """Distances (mean ± std over seeds) per base, closest on top, P(closest) written beside each bar;
        a ``matplotlib.figure.Figure`` (not saved, no pyplot state)."""
        from matplotlib.figure import Figure

        rows = self.rows[::-1]
        fig = Figure(figsize=(6.5, 1.2 + 0.45 * len(rows)), dpi=100)
        ax = fig.add_subplot()
        colors = ["tab:red" if r.base == self.closest else "tab:blue" for r in rows]
        ax.barh(range(len(rows)), [r.mean for r in rows], xerr=[r.std for r in rows], color=colors, capsize=3)
        ax.set_yticks(range(len(rows)), [f"{r.base}  P={r.p_closest:.2f}" for r in rows], fontsize=8)
        ax.set_xlabel(f"{self.metric} distance to {self.target} (mean ± std over {len(self.seeds)} seeds)")
        ax.set_title(f"bases closest to {self.target}: {self.closest} (red)")
        fig.tight_layout()
        return fig


def ranking_from_table(table: dict, target: str, ranked=None) -> Ranking:
    """A :class:`Ranking` from a distance table result (Fisher or transform) and its ranked rows
    (default :func:`~tanas_jax.distance.table.rank_bases`).  P(closest) is the table's own
    (``table["p_closest"][target]``); a table without one gets it over its network seeds from
    :func:`~tanas_jax.distance.table.add_seed_p_closest` (on a copy: ``table`` is not changed)."""
    from tanas_jax.distance.table import add_seed_p_closest, rank_bases

    ranked = rank_bases(table, target) if ranked is None else ranked
    source = "table" if "p_closest" in table else "seeds"
    table = add_seed_p_closest(dict(table))
    t, idx = table["tasks"].index(target), {b: i for i, b in enumerate(table["tasks"])}
    per_seed = {r[0]: [m[idx[r[0]]][t] for m in table["per_seed"]] for r in ranked}
    p = (table.get("p_closest") or {}).get(target) or {}
    rows = [RankRow(r[0], float(r[1]), float(r[2]), float(p.get(r[0], 0.0))) for r in ranked]
    metric = table.get("settings", {}).get("metric") or table.get("metric") or "transform"
    return Ranking(target, metric, list(table.get("seeds", [])), rows, per_seed, source, _plain(table))


def rank(bank, target, bases="offline8", *, seeds=None, metric: str | None = None, config="quick",
         overrides=None, progress: bool = False, log=None, recompute: bool = False) -> Ranking:
    """The bases (a task set, comma list or list; the target left out) ranked by their distance to
    ``target`` with P(closest) over ``seeds`` (default ``bank.seeds``); ``metric`` ``logdet`` | ``frechet``
    | ``transform`` (default ``distance.metric``).  Only the target's data is loaded: a base needs only its
    banked network (missing networks are trained and banked)."""
    from tanas_jax.distance.table import rank_target

    cfg, bank, name = make_config(config, overrides), _bank(bank), _name(target)
    ranked, table = rank_target(bank, name, cfg, bases=_names(bases), metric=metric, seeds=seeds,
                                progress=progress, log=_log(log), recompute=recompute)
    return ranking_from_table(table, name, ranked)


# --- search -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SearchResult:
    """One FUSE search: the winner cell, its final training (test accuracy), the per-round history."""

    target: str
    space: dict
    seed: int
    winner: dict
    winner_short: str
    final: dict
    search_s: float
    evaluations: int
    data: dict
    result: dict            # everything fuse_search returned

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def figure(self):
        """softmax(α) over the FUSE rounds (a ``matplotlib.figure.Figure``, not saved)."""
        from tanas_jax.search.plots import alpha_figure

        return alpha_figure(self.result.get("history") or [], f"FUSE on {self.target}, space {self.space['name']}")


def _closest_fn(bank, cfg, log):
    from tanas_jax.distance.table import closest_bases

    metric = cfg.tanas.metric
    dcfg = updated(cfg, {"distance.metric": metric}) if metric != "transform" else cfg
    return lambda target: list(closest_bases(bank, target, dcfg, metric=metric, log=log))


def search(target, space: str = "standard", *, bank=None, seed: int = 0, config="quick", overrides=None,
           out: str | None = None, save: bool = False, progress: bool = False, log=None) -> SearchResult:
    """FUSE (TA-NAS Algorithm 2) for ``target`` in ``space`` (``standard``, ``from:TASK``,
    ``from:closest[:k]`` (ranked over ``tanas.bases``), ``ops:a,b,c`` or a JSON file), the winner trained from
    scratch and tested once (section ``final``).  ``out`` checkpoints each round; ``save`` banks the winner as
    the target's genotype.  ``progress`` is accepted for symmetry: FUSE logs per round, it draws no bar."""
    from tanas_jax.pipeline import search_data
    from tanas_jax.search.fuse import fuse_search
    from tanas_jax.search.runtime import enable_compilation_cache
    from tanas_jax.search.spaces import resolve_space

    del progress
    cfg, name, log = make_config(config, overrides), _name(target), _log(log)
    bank = _bank(bank) if bank is not None or save or str(space).startswith("from:") else None
    enable_compilation_cache(cfg.fuse.compilation_cache)
    closest = _closest_fn(bank, cfg, log) if bank is not None else None
    sp = resolve_space(str(space), bank=bank, target=name, closest_fn=closest, log=log)
    data = search_data(cfg, name)
    log(data.summary())
    ck = os.path.join(out, "checkpoints", f"{name}-fuse") if out else None
    res = _plain(fuse_search(data, sp, section(cfg, "fuse"), int(seed), final=section(cfg, "final"),
                             checkpoint_dir=ck, log=log))
    if save:
        bank.save_genotype(name, res["winner"], {"source": "tanas_jax.api.search", "space": sp.name, "seed": int(seed),
                                                 "val_accuracy": res["final"]["val_accuracy"],
                                                 "test_accuracy": res["final"]["test_accuracy"],
                                                 "params": res["final"]["params"], "data": data.record()})
    return SearchResult(name, sp.to_dict(), int(seed), res["winner"], res["winner_short"], res["final"],
                        res["search_wall_s"], res["candidate_evaluations"], _plain(data.record()), res)


# --- the whole pipeline -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Result:
    """A TA-NAS run (:func:`run`): the ranking, the chosen bases, the summary table, the banked genotype,
    what was reused / computed, timings, the files written (with ``out``) and the whole result dict."""

    target: str
    bases: list
    metric: str
    closest: list
    ranking: Ranking
    table: list             # one row per search run and target ε-net (the report's table)
    genotype: dict
    reused: list
    computed: list
    timings: dict
    files: dict
    result: dict

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def figures(self) -> dict:
        """``{"ranking": Figure, "alpha_<run>": Figure...}``: the ranking and softmax(α) of each FUSE run
        with a history (matplotlib Figures, not saved)."""
        from tanas_jax.search.plots import alpha_figure

        figs = {"ranking": self.ranking.figure()}
        for run_name, r in self.result["runs"].items():
            if run_name != "random" and r.get("history"):
                key = "alpha_" + run_name.replace("-", "_")
                figs[key] = alpha_figure(r["history"], f"FUSE on {self.target}, {run_name} space")
        return figs


def run_tanas(cfg, bank, *, out: str | None = None, seed: int = 0, baselines: bool = True, progress: bool = False,
              log=None) -> dict:
    """TA-NAS Algorithm 1 for ``cfg.tanas`` (:func:`~tanas_jax.pipeline.run_pipeline`), the result made plain
    JSON and stamped with provenance; with ``out``, the report, its figures and ``out/result.json`` are
    written (``result["files"]``).  ``bin/tanas`` and :func:`run` both call this."""
    from tanas_jax import provenance
    from tanas_jax.io import atomic_write_json
    from tanas_jax.pipeline import run_pipeline
    from tanas_jax.report import write_report
    from tanas_jax.search.runtime import enable_compilation_cache

    enable_compilation_cache(cfg.fuse.compilation_cache)
    result = run_pipeline(cfg, bank=bank, out=out, seed=seed, baselines=baselines, progress=progress, log=log)
    result["provenance"] = provenance.stamp()
    if out:
        result["files"] = write_report(out, result)
        result = _plain(result)
        atomic_write_json(os.path.join(out, "result.json"), result)
    return _plain(result)


def run(target, bases="offline8", *, bank=None, out: str | None = None, metric: str | None = None,
        top_k: int | None = None, seed: int = 0, baselines: bool = True, config="quick", overrides=None,
        progress: bool = False, log=None) -> Result:
    """The whole TA-NAS pipeline for ``target`` against ``bases``: ε-nets, distances and ranking, the closest
    bases' genotypes, FUSE in the task-aware space (and, with ``baselines``, FUSE in the standard space and
    random search), the winner banked as the target's genotype; ``out`` gets the report and result.json."""
    from tanas_jax.config import METRICS

    if metric is not None and metric not in METRICS:
        raise UserError(f"unknown metric '{metric}': valid: {', '.join(METRICS)}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k must be an integer >= 1, got {top_k!r}")
    name, base_list = _name(target), _names(bases)
    cfg = updated(make_config(config, overrides), {
        "tanas.target": name, "tanas.bases": base_list if isinstance(base_list, str) else ",".join(base_list),
        "tanas.metric": metric, "tanas.top_k": top_k})
    res = run_tanas(cfg, _bank(bank), out=out, seed=int(seed), baselines=baselines, progress=progress, log=log)
    dist = res["distance"]
    ranking = ranking_from_table(dist["table"], res["target"])
    return Result(res["target"], res["bases"], res["metric"], res["closest"], ranking, res["table"],
                  res["genotype"], res["reused"], res["computed"], res["timings"], res.get("files", {}), res)


__all__ = ["Net", "RankRow", "Ranking", "Result", "SearchResult", "Task", "describe_task", "ensure_net",
           "make_config", "open_bank", "rank", "ranking_from_table", "run", "run_tanas",
           "search", "task_from_arrays", "task_from_spec"]
