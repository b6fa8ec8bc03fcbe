"""Metric study (issue 11, deliverable 3): which Fisher task distance is well-posed on offline8?

    python experiments/metric_study.py --bank runs/bank            # quick preset, seeds 0-4

For every variant -- metric {logdet, frechet} x spectrum {diag, diag_sorted, full} x initialisation
{per-seed (each ε-net starts from init(its seed), the papers' independent nets), shared
(``train.init_seed = 0``: every ε-net starts from init(0), the seed drives only the data order)} --
it computes d(F_b,s on t's data, F_t,s' on t's data) for every base b, target t and seed pair
(s, s') and reports:

- consistency (the papers' theorem: same task -> distance ~ 0): SNR = median different-task distance
  / median same-task different-seed distance, and the fraction of different-task pairs closer than the
  median same-task pair;
- rank stability across seeds: per target, P(closest) of the modal base over single-seed tables;
- structure recovery: how many targets' closest base (mean over seeds) comes from the same dataset /
  has the same label structure (138, 389, 4class, 10way);
- cost: wall seconds of the Fishers / gradients and of the distances.

Networks come from ``train.ensure_network`` through ``FisherStore`` (trained once, banked); diagonal
Fishers and Gram spectra are cached in the bank; the cross-seed Fréchet cross-Grams of the full
spectra (not a product quantity) are kept in ``--work`` so a rerun only formats.  Writes
docs/results_metrics.md and docs/results_metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import tanas_jax  # noqa: E402,F401  (XLA flags before JAX starts)

METRICS = ("logdet", "frechet")
DIAG_SPECTRA = ("diag", "diag_sorted")
INIT_LABEL = {None: "per-seed", 0: "shared (init_seed=0)"}


def parse_inits(text: str) -> list:
    return [None if s.strip().lower() == "none" else int(s) for s in text.split(",")]


def config_for(preset: str, init, overrides=()):
    from tanas_jax.config import load_config

    return load_config(preset, list(overrides) + [f"train.init_seed={init}"])    # explicit: None or an int


# -- diagonal spectra ---------------------------------------------------------------------------
def diag_fishers(store, tasks, seeds, log) -> tuple[dict, float]:
    """{(b, t, s): Fisher of b's net (seed s) on t's data}; own-task Fishers first (label-rule free)."""
    t0 = time.perf_counter()
    F = {}
    order = [(t, t, s) for t in tasks for s in seeds] + [(b, t, s) for t in tasks for b in tasks for s in seeds
                                                          if b != t]
    for i, (b, t, s) in enumerate(order):
        F[(b, t, s)] = store.fisher(b, t, s)[0]
        if i % 40 == 39:
            log(f"   diag Fishers {i + 1}/{len(order)} ({time.perf_counter() - t0:.0f} s)")
    return F, time.perf_counter() - t0


def diag_distance(fb, ft, metric: str, spectrum: str, dc, names) -> float:
    """The table's diagonal distance (``table._diag_distance``) for two Fishers of any seeds."""
    from tanas_jax.distance import frechet, logdet
    from tanas_jax.distance.prepare import sort_diag

    if spectrum == "diag_sorted":
        fb, ft = sort_diag(fb, ft, dc.head, names)
    if metric == "logdet":
        return logdet.logdet_distance_diag(fb, ft, sigma2=dc.sigma2, normalization=dc.normalization,
                                           reduction=dc.reduction, head=dc.head, names=names)
    return frechet.frechet_distance_diag(fb, ft, normalization=dc.normalization, reduction=dc.reduction,
                                         head=dc.head, names=names)


def diag_tensor(F, tasks, seeds, metric, spectrum, dc) -> tuple[np.ndarray, float]:
    """D[t, b, s, s'] = d(F_b,s on t, F_t,s' on t) (0 where b = t and s = s')."""
    t0 = time.perf_counter()
    K, S = len(tasks), len(seeds)
    D = np.zeros((K, K, S, S))
    for j, t in enumerate(tasks):
        for i, b in enumerate(tasks):
            for a, s in enumerate(seeds):
                for c, s2 in enumerate(seeds):
                    if b == t and s == s2:
                        continue
                    names = (f"{b} net (seed {s}) on {t} data", f"{t} net (seed {s2}) on {t} data")
                    D[j, i, a, c] = diag_distance(F[(b, t, s)], F[(t, t, s2)], metric, spectrum, dc, names)
    return D, time.perf_counter() - t0


# -- full spectra -------------------------------------------------------------------------------
def gradients(store, net_task, data_task, seed):
    """Per-example gradients of one banked net on full_examples of data_task (the FisherStore inputs)."""
    import jax

    from tanas_jax.fisher import per_example_gradients

    fc = store.fisher_cfg
    if hasattr(store, "data_apply"):     # the label rule of branch labels: the same apply as the tables
        variables, apply, _ = store.data_apply(net_task, data_task, seed)
    else:
        variables, meta = store.network(net_task, seed)
        apply = store.apply_fn(int(meta["num_classes"]))
    x, y, _ = store.data(data_task, full=True)
    return per_example_gradients(apply, variables, x, y,
                                 estimator=fc.estimator, rng=jax.random.PRNGKey(seed), microbatch=fc.microbatch,
                                 memory_budget=fc.memory_budget_mb * 2**20, engine=store.engine)


def full_target(store, tasks, t, seeds, head: str, frechet: bool) -> dict:
    """Everything the full-spectrum distances to target ``t`` need, for every base and seed pair:
    Gram eigenvalues (log-det), traces and cross-Gram nuclear norms (Fréchet)."""
    from tanas_jax.distance.frechet import nuclear_norm
    from tanas_jax.fisher import cross_from_gradients, gram_eigenvalues, gram_from_gradients

    K, S = len(tasks), len(seeds)
    own = {s: gradients(store, t, t, s) for s in seeds}
    eigs, ns = {}, np.zeros((K, S), int)
    nuc = np.full((K, S, S), np.nan)
    for i, b in enumerate(tasks):
        for a, s in enumerate(seeds):
            g = own[s] if b == t else gradients(store, b, t, s)
            Kg, ns[i, a] = gram_from_gradients(g, head=head)
            eigs[(i, a)] = gram_eigenvalues(Kg)
            if frechet:
                for c, s2 in enumerate(seeds):
                    nuc[i, a, c] = nuclear_norm(cross_from_gradients(g, own[s2], head=head))
    E = np.stack([np.stack([eigs[(i, a)] for a in range(S)]) for i in range(K)])
    return {"eigs": E, "n": ns, "nuclear": nuc}


def full_tensors(store, tasks, seeds, dc, work: str, init, frechet: bool, log) -> tuple[dict, float]:
    """D[t, b, s, s'] for logdet (and frechet) full spectra; per-target parts kept in ``work``."""
    from tanas_jax.distance.frechet import frechet_distance_full
    from tanas_jax.distance.logdet import logdet_distance_full

    t0 = time.perf_counter()
    K, S = len(tasks), len(seeds)
    out = {"logdet": np.zeros((K, K, S, S))}
    if frechet:
        out["frechet"] = np.zeros((K, K, S, S))
    for j, t in enumerate(tasks):
        rule = "padlogits" if hasattr(store, "data_apply") else "v1"
        path = os.path.join(work, f"full-{rule}-init{init}-{t}-s{'_'.join(map(str, seeds))}-f{int(frechet)}.npz")
        if os.path.exists(path):
            part = dict(np.load(path))
        else:
            part = full_target(store, tasks, t, seeds, dc.head, frechet)
            np.savez(path, **part)
        log(f"   full spectra for target {t} ({time.perf_counter() - t0:.0f} s)")
        E, N, nuc = part["eigs"], part["n"], part["nuclear"]
        tr = E.sum(-1)
        for i in range(K):
            for a in range(S):
                for c in range(S):
                    if i == j and a == c:
                        continue
                    nb, nt = int(N[i, a]), int(N[j, c])
                    if dc.head == "pad":
                        nb = nt = max(nb, nt)
                    out["logdet"][j, i, a, c] = logdet_distance_full(E[i, a], nb, E[j, c], nt, sigma2=dc.sigma2)
                    if frechet:
                        out["frechet"][j, i, a, c] = frechet_distance_full(tr[i, a], tr[j, c], nuc[i, a, c])
    return out, time.perf_counter() - t0


# -- statistics ---------------------------------------------------------------------------------
def shape_of(task: str) -> str:
    return task.split("_", 1)[1] if "_" in task else task


def stats(D: np.ndarray, tasks: list, datasets: dict) -> dict:
    """Consistency, rank stability and structure recovery of one D[t, b, s, s'] tensor."""
    K, S = D.shape[0], D.shape[2]
    eye_t, eye_s = np.eye(K, dtype=bool), np.eye(S, dtype=bool)
    same = np.concatenate([D[j, j][~eye_s] for j in range(K)])
    diff_same_seed = np.concatenate([D[:, :, a, a][~eye_t] for a in range(S)])
    diff_cross = np.concatenate([D[:, :, a, c][~eye_t] for a in range(S) for c in range(S) if a != c])
    med_same = float(np.median(same))
    table = np.stack([D[:, :, a, a] for a in range(S)])            # (S, target, base): single-seed tables
    mean = table.mean(0)
    closest_mean = [int(np.argmin(np.where(eye_t[j], np.inf, mean[j]))) for j in range(K)]
    per_seed = [[int(np.argmin(np.where(eye_t[j], np.inf, table[a, j]))) for a in range(S)] for j in range(K)]
    modal = [max(set(p), key=p.count) for p in per_seed]
    p_modal = [per_seed[j].count(modal[j]) / S for j in range(K)]
    agree_mean = float(np.mean([per_seed[j][a] == closest_mean[j] for j in range(K) for a in range(S)]))
    std = table.std(0, ddof=1) if S > 1 else np.zeros_like(mean)
    ratio = (std / np.where(mean > 0, mean, np.nan))[~eye_t]
    return {
        "same_task_median": med_same, "diff_task_same_seed_median": float(np.median(diff_same_seed)),
        "diff_task_cross_seed_median": float(np.median(diff_cross)),
        "snr": float(np.median(diff_cross) / med_same) if med_same > 0 else float("inf"),
        "snr_same_seed": float(np.median(diff_same_seed) / med_same) if med_same > 0 else float("inf"),
        "frac_diff_closer_than_median_same": float(np.mean(diff_cross < med_same)),
        "frac_diff_same_seed_closer": float(np.mean(diff_same_seed < med_same)),
        "p_closest_modal_mean": float(np.mean(p_modal)), "seed_agrees_with_mean": agree_mean,
        "std_over_mean_median": float(np.nanmedian(ratio)),
        "closest": {tasks[j]: {"base": tasks[closest_mean[j]], "modal": tasks[modal[j]], "p_modal": p_modal[j],
                               "same_dataset": datasets[tasks[closest_mean[j]]] == datasets[tasks[j]],
                               "same_shape": shape_of(tasks[closest_mean[j]]) == shape_of(tasks[j])}
                    for j in range(K)},
        "same_dataset": int(sum(datasets[tasks[closest_mean[j]]] == datasets[tasks[j]] for j in range(K))),
        "same_shape": int(sum(shape_of(tasks[closest_mean[j]]) == shape_of(tasks[j]) for j in range(K))),
        "n_pairs": {"same_task": int(same.size), "diff_same_seed": int(diff_same_seed.size),
                    "diff_cross_seed": int(diff_cross.size)},
    }


def check_against_table(store, D, tasks, seeds, metric, spectrum, cfg) -> float:
    """Largest |D - table| over one seed's same-seed pairs: the study measures what the product computes."""
    from tanas_jax.config import section, updated
    from tanas_jax.distance.table import pair_distance

    dc = section(updated(cfg, {"distance.metric": metric, "distance.spectrum": spectrum}), "distance")
    err = 0.0
    for j, t in enumerate(tasks[:3]):
        for i, b in enumerate(tasks[:3]):
            err = max(err, abs(pair_distance(store, b, t, seeds[0], dc) - D[j, i, 0, 0]))
    return err


# -- driver -------------------------------------------------------------------------------------
def run_init(bank, args, init, tasks, seeds, full_seeds, log) -> dict:
    """Every variant's D tensor, statistics and cost for one initialisation convention."""
    from tanas_jax.config import section
    from tanas_jax.distance.table import FisherStore
    from tanas_jax.tasks import get_task

    cfg = config_for(args.config, init, [f"fisher.full_examples={args.full_examples}"])
    dc = section(cfg, "distance")
    store = FisherStore(bank, cfg, progress=False, log=lambda *a: None)
    t0 = time.perf_counter()
    for s in seeds:
        for t in tasks:
            store.network(t, s)
    nets_s = time.perf_counter() - t0
    datasets = {t: get_task(t).dataset for t in tasks}
    log(f"== init {INIT_LABEL.get(init, init)}: {len(tasks) * len(seeds)} networks ready in {nets_s:.0f} s")
    F, fisher_s = diag_fishers(store, tasks, seeds, log)
    out = {"init_seed": init, "networks_s": nets_s, "diag_fishers_s": fisher_s, "variants": {},
           "accuracy": {t: [float(store.network(t, s)[1]["metrics"]["test_accuracy"]) for s in seeds]
                        for t in tasks},
           "data": {t: store.data_record(t) for t in tasks}, "fisher": store.fisher_record()}
    for metric in METRICS:
        for spectrum in DIAG_SPECTRA:
            D, dist_s = diag_tensor(F, tasks, seeds, metric, spectrum, dc)
            err = check_against_table(store, D, tasks, seeds, metric, spectrum, cfg)
            out["variants"][f"{metric}_{spectrum}"] = {
                "metric": metric, "spectrum": spectrum, "seeds": seeds, "D": D.tolist(),
                "stats": stats(D, tasks, datasets), "max_abs_diff_vs_table": err,
                "cost": {"fishers_s": fisher_s, "distances_s": dist_s,
                         "one_table_one_seed_s": fisher_s / len(seeds) + dist_s / len(seeds) ** 2}}
            log(f"   {metric} {spectrum}: SNR {out['variants'][f'{metric}_{spectrum}']['stats']['snr']:.2f} "
                f"({dist_s:.0f} s, table check {err:.1e})")
    if full_seeds:
        os.makedirs(args.work, exist_ok=True)
        Ds, full_s = full_tensors(store, tasks, full_seeds, dc, args.work, init, not args.no_full_frechet, log)
        for metric, D in Ds.items():
            out["variants"][f"{metric}_full"] = {
                "metric": metric, "spectrum": "full", "seeds": full_seeds, "D": D.tolist(),
                "stats": stats(D, tasks, datasets),
                "cost": {"gradients_and_distances_s": full_s,
                         "one_table_one_seed_s_upper": full_s / len(full_seeds)}}
            log(f"   {metric} full: SNR {out['variants'][f'{metric}_full']['stats']['snr']:.2f}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bank", default="runs/bank")
    p.add_argument("--config", default="quick")
    p.add_argument("--tasks", default="offline8")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--full-seeds", default="0,1,2", help="seeds for full spectra ('' = none)")
    p.add_argument("--full-examples", type=int, default=200)
    p.add_argument("--no-full-frechet", action="store_true", help="full spectra: log-det only")
    p.add_argument("--inits", default="none,0", help="initialisation conventions: none (per-seed) and/or ints")
    p.add_argument("--work", default="runs/metric_study")
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "results_metrics.json"))
    p.add_argument("--md", default=os.path.join(ROOT, "docs", "results_metrics.md"))
    p.add_argument("--labels-note", default="", help="one sentence on the label rule the Fishers used")
    p.add_argument("--full-note", default="", help="one sentence on the full spectra (when not measured)")
    p.add_argument("--partial", default=None, help="write only this run's results to PATH (no doc)")
    p.add_argument("--combine", default=None, help="comma-separated --partial files: merge them into the doc")
    args = p.parse_args(argv)

    from tanas_jax import provenance
    from tanas_jax.bank import Bank
    from tanas_jax.io import atomic_write_json
    from tanas_jax.tasks import resolve_tasks

    t_start = time.perf_counter()
    tasks = resolve_tasks(args.tasks)
    seeds = [int(s) for s in args.seeds.split(",")]
    full_seeds = [int(s) for s in args.full_seeds.split(",") if s.strip()]
    bank = Bank(args.bank)

    def log(msg):
        print(msg, flush=True)

    if args.combine:      # the conventions were run as separate processes (--partial): merge and format
        parts = []
        for path in args.combine.split(","):
            with open(path) as f:
                parts.append(json.load(f))
        results = {k: v for part in parts for k, v in part["results"].items()}
        wall = sum(part["wall_s"] for part in parts)
        command = " ; ".join(part["command"] for part in parts)
    else:
        results = {str(init): run_init(bank, args, init, tasks, seeds, full_seeds, log)
                   for init in parse_inits(args.inits)}
        wall = time.perf_counter() - t_start
        command = "python experiments/metric_study.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    payload = {"tasks": tasks, "seeds": seeds, "full_seeds": full_seeds, "results": results,
               "wall_s": wall, "load": load_average(), "provenance": provenance.stamp(),
               "command": command, "labels_note": args.labels_note, "full_note": args.full_note}
    if args.partial:
        atomic_write_json(args.partial, payload)
        log(f"wrote {args.partial} in {wall:.0f} s")
        return 0
    atomic_write_json(args.json, payload)
    write_markdown(args.md, payload)
    log(f"wrote {args.md} and {args.json} ({payload['wall_s']:.0f} s of study)")
    return 0


def load_average() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def choose_default(payload: dict, min_agree: float = 0.8, max_table_s: float = 120.0) -> dict:
    """The rule the default follows: the best consistency (SNR) among the variants whose single-seed
    closest base agrees with the seed-mean's in >= ``min_agree`` of (target, seed) cases and whose
    one-seed table costs <= ``max_table_s`` on this machine."""
    rows = []
    for init, r in payload["results"].items():
        for key, v in r["variants"].items():
            c = v["cost"].get("one_table_one_seed_s", v["cost"].get("one_table_one_seed_s_upper"))
            rows.append({"init": init, "variant": key, "snr": v["stats"]["snr"],
                         "agree": v["stats"]["seed_agrees_with_mean"], "cost": c})
    ok = [r for r in rows if r["agree"] >= min_agree and r["cost"] <= max_table_s]
    best = max(ok or rows, key=lambda r: r["snr"])
    return {"rule": f"max SNR among variants with single-seed agreement >= {min_agree:.0%} and a one-seed "
                    f"table <= {max_table_s:.0f} s", "best": best, "eligible": [r["variant"] + "@" + r["init"]
                                                                              for r in ok]}


def decision_lines(payload: dict) -> list[str]:
    """The defaults this study sets, with the papers' choice one flag away."""
    def row(init, key):
        v = payload["results"][init]["variants"][key]["stats"]
        return (f"SNR {v['snr']:.2f}, {100 * v['frac_diff_closer_than_median_same']:.0f} % of different-task pairs "
                f"closer than the median same-task pair, single seed = mean's closest "
                f"{100 * v['seed_agrees_with_mean']:.0f} %, same dataset {v['same_dataset']} / 8")
    have = {(i, k) for i, r in payload["results"].items() for k in r["variants"]}
    if not {("None", "frechet_diag_sorted"), ("None", "logdet_diag"), ("0", "frechet_diag_sorted")} <= have:
        return []
    return [
        "", "## Decision", "",
        f"- New default: **`distance.metric = frechet`, `distance.spectrum = diag_sorted`** (also "
        f"`tanas.metric = frechet`).  With today's per-seed initialisation: {row('None', 'frechet_diag_sorted')}; "
        f"the papers' log-det on the diagonal: {row('None', 'logdet_diag')}.",
        f"- The shared initialisation is better still: {row('0', 'frechet_diag_sorted')}.  It is the default "
        "too (**`train.init_seed = 0`**, since session 4): every ε-net starts from init(0) and its seed only "
        "orders the data, so the Fishers of two seeds live in the same parameter coordinates.  Networks "
        "keep their plain bank name (`<net>-seed<S>`); per-seed nets are banked apart as `<net>-perseed-seed<S>`.  "
        "A bank written before this default holds per-seed nets under the plain name: its seed-0 nets are init(0) "
        "nets (bit-identical) and are used, its other seeds are refused with one line (retrain them, or set "
        "`train.init_seed=None`).  The papers' independent nets: `--set train.init_seed=None`.",
        "- The papers' choice stays one flag away: `bin/distance --metric logdet --spectrum diag`; "
        "`bin/tanas --metric logdet --set distance.spectrum=diag`; any command: "
        "`--set distance.metric=logdet --set distance.spectrum=diag --set tanas.metric=logdet`.",
        "- Cost at bin/tanas time is that of the papers' default: the same diagonal Fishers (~5 s each on this "
        "CPU under load), plus one sort per layer per pair (≈ 0.03 s per pair here)."]


def fmt_init(init: str) -> str:
    return INIT_LABEL.get(None if init == "None" else int(init), init)


def summary_lines(payload: dict) -> list[str]:
    L = ["| init | metric | spectrum | seeds | same task, diff. seeds (median) | diff. tasks, same seed "
         "(median) | diff. tasks, diff. seeds (median) | SNR | SNR (same seed) | diff.-task pairs closer than "
         "median same-task pair | P(closest) of modal base | single seed = mean's closest | std/mean | "
         "closest base same dataset | same shape | one table, one seed (s) |",
         "|---" * 16 + "|"]
    for init, r in payload["results"].items():
        for v in r["variants"].values():
            s, c = v["stats"], v["cost"]
            cost = c.get("one_table_one_seed_s", c.get("one_table_one_seed_s_upper"))
            L.append(f"| {fmt_init(init)} | {v['metric']} | {v['spectrum']} | {len(v['seeds'])} | "
                     f"{s['same_task_median']:.4g} | {s['diff_task_same_seed_median']:.4g} | "
                     f"{s['diff_task_cross_seed_median']:.4g} | **{s['snr']:.2f}** | {s['snr_same_seed']:.2f} | "
                     f"{100 * s['frac_diff_closer_than_median_same']:.0f} % | {s['p_closest_modal_mean']:.2f} | "
                     f"{100 * s['seed_agrees_with_mean']:.0f} % | {s['std_over_mean_median']:.3f} | "
                     f"{s['same_dataset']} / {len(payload['tasks'])} | {s['same_shape']} / {len(payload['tasks'])} "
                     f"| {cost:.1f} |")
    return L


def closest_lines(payload: dict) -> list[str]:
    keys = [(init, k) for init, r in payload["results"].items() for k in r["variants"]]
    L = ["| target | " + " | ".join(f"{k} {fmt_init(i)}" for i, k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for t in payload["tasks"]:
        cells = []
        for init, k in keys:
            c = payload["results"][init]["variants"][k]["stats"]["closest"][t]
            cells.append(f"{c['base']}{' (same data)' if c['same_dataset'] else ''} p={c['p_modal']:.1f}")
        L.append(f"| {t} | " + " | ".join(cells) + " |")
    return L


def write_markdown(path: str, payload: dict) -> None:
    from tanas_jax.io import atomic_write_bytes

    stamp = payload["provenance"]
    m = stamp.get("machine") or {}
    machine = (f"{m.get('processor')} {m.get('platform')}, {m.get('cpu_count')} CPU cores, JAX backend "
               f"{m.get('jax_backend')}" if isinstance(m, dict) else str(m))
    any_r = next(iter(payload["results"].values()))
    fc, choice = any_r["fisher"], choose_default(payload)
    L = ["# Metric study: a well-posed Fisher task distance (issue 11, deliverable 3)", "",
         "Generated by `experiments/metric_study.py`; do not edit by hand.  All numbers: "
         "`docs/results_metrics.json`.", "", "## How it was made", "",
         f"- Command: `{payload['command']}`; wall time {payload['wall_s'] / 60:.1f} min (networks and Fishers "
         "already in the bank are reused).",
         f"- Config: `quick` preset (`small_cnn` ε-nets, 5 epochs, Adam 0.001, batch 64); tasks "
         f"{', '.join(payload['tasks'])}; seeds {payload['seeds']} (full spectra: {payload['full_seeds']}); "
         f"diagonal Fishers on {fc['examples']} {fc['split']} examples of the target task, full spectra on "
         f"{fc['full_examples']}; estimator `{fc['estimator']}`; σ² = 1e-10 after unit-trace normalisation; "
         "normalisation `network`, reduction `global`, head `pad`.",
         f"- Machine: {machine}; load when it finished: `{payload['load']}` (shared CPU, other jobs running).",
         f"- Versions: {', '.join(f'{k} {v}' for k, v in sorted((stamp.get('versions') or {}).items()))}.",
         "- Data: " + "; ".join(f"{t}: {d.get('source')} ({d.get('dataset')}, max_train {d.get('max_train')})"
                                for t, d in any_r["data"].items()) + ".",
         f"- Label rule of cross-task Fishers: {payload.get('labels_note') or 'as on this branch'}.",
         f"- Full spectra: {payload.get('full_note') or 'seeds ' + str(payload['full_seeds'])}.", ""]
    L += DEFINITIONS + ["", "## Results", ""] + summary_lines(payload) + [
        "", f"**Default rule** ({choice['rule']}): **{choice['best']['variant']}, init "
        f"{fmt_init(choice['best']['init'])}** (SNR {choice['best']['snr']:.2f}).", "",
    ] + decision_lines(payload) + [
        "", "## Closest base per target (mean over seeds; p = P(closest) of the modal base over seeds)", ""]
    L += closest_lines(payload) + ["", "## ε-networks (test accuracy, mean ± std over seeds)", "",
                                   "| task | " + " | ".join(fmt_init(i) for i in payload["results"]) + " |",
                                   "|---" * (len(payload["results"]) + 1) + "|"]
    for t in payload["tasks"]:
        L.append(f"| {t} | " + " | ".join(f"{np.mean(r['accuracy'][t]):.4f} ± {np.std(r['accuracy'][t], ddof=1):.4f}"
                                          for r in payload["results"].values()) + " |")
    atomic_write_bytes(path, ("\n".join(L) + "\n").encode())


DEFINITIONS = [
    "## What is measured", "",
    "For target t, base b and seeds s, s': D = d(F of b's net (seed s) on t's data, F of t's net (seed s') "
    "on t's data).  *Same task, different seeds*: b = t, s ≠ s' (the papers' consistency theorem says ~0).  "
    "*Different tasks, same seed*: b ≠ t, s = s' (what a table at one seed computes).  *Different tasks, "
    "different seeds*: b ≠ t, s ≠ s' (computed the same way as the same-task pairs).  **SNR** = median "
    "different-task (different seeds) / median same-task distance; *SNR (same seed)* uses the same-seed "
    "different-task median.  *P(closest)*: per target, the fraction of single-seed tables whose closest "
    "base is the modal one, averaged over targets; *single seed = mean's closest*: fraction of (target, seed) "
    "whose single-seed closest base is the closest of the seed-mean table.  *Same dataset / same shape*: "
    "targets whose closest base (seed mean) comes from the same dataset / has the same label structure "
    "(138, 389, 4class, 10way).  *One table, one seed*: Fisher seconds per seed plus the K × K distances, "
    "on this shared machine (full spectra: an upper bound that includes the cross-seed cross-Grams); the "
    "Fisher seconds include bank hits of Fishers warmed by parallel processes, so they are a rough "
    "per-table figure, the same for every diagonal variant (one diagonal Fisher of 500 examples took "
    "~2.5-7 s under load average ~20).", "",
    "Initialisation: *per-seed* = every ε-net starts from init(its training seed) (`train.init_seed=None`, "
    "the papers' independent nets); *shared* = `train.init_seed=0`, every ε-net starts from init(0) and its "
    "seed only orders the data.  `diag_sorted` sorts each layer's normalised diagonal Fisher (invariant to "
    "permuting hidden units).  Under the global reduction the diagonal log-det distance is |Σ log(F_b + σ²) "
    "− Σ log(F_t + σ²)| / n, a difference of two sums, so it is already invariant to any permutation and "
    "`diag_sorted` gives the same numbers; sorting matters for Fréchet, which pairs coordinates.  "
    "The transform distance is not in the study: it trains an MLP per (base, "
    "target, seed) pair (minutes each on this CPU), ~1600 pairs per convention would not fit."]


if __name__ == "__main__":
    sys.exit(main())
