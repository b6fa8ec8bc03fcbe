"""Reproduction of the LD-NAS distance tables on offline8 (issue 5, §3a and §3c), one command.

    python experiments/distances.py --bank runs/bank            # quick preset, seeds 0-4

For every (metric, spectrum) in {log-det, Fréchet} x {diag, full}: the K x K table d[base, target]
(mean and std over networks trained with seeds 0-4), for each target the closest base and whether it
comes from the same dataset (the papers' main observation), and the std/mean ratio across seeds (the
FTD consistency claim).  §3c: the authors' Fisher variant (square of the batch-mean gradient, then
mean over each parameter's first axis) vs the per-example empirical Fisher: how many targets change
their closest base, and Spearman / Kendall correlations of the base rankings.

Writes docs/results_distances.md, heatmaps docs/img/distances_*.png and the raw tables as JSON
(--json).  Networks and Fishers are cached in the bank, so a rerun only formats.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import tanas_jax  # noqa: E402,F401  (XLA flags before JAX starts)

RUNS = [("logdet", "diag", {}), ("frechet", "diag", {}), ("logdet", "full", {}), ("frechet", "full", {}),
        ("logdet", "diag", {"head": "backbone"}), ("logdet", "diag", {"authors_fisher": True}),
        ("frechet", "diag", {"authors_fisher": True})]


def label(metric, spectrum, extra):
    s = f"{metric} {spectrum}"
    if extra.get("head"):
        s += f", head={extra['head']}"
    if extra.get("authors_fisher"):
        s += ", authors' Fisher"
    return s


def stem(metric, spectrum, extra):
    s = f"{metric}_{spectrum}"
    if extra.get("head"):
        s += f"_{extra['head']}"
    if extra.get("authors_fisher"):
        s += "_authors"
    return s


def summarize(r: dict) -> dict:
    """Closest base per target, same-dataset count, std/mean over off-diagonal entries."""
    from tanas_jax.distance.table import rank_bases

    mean, std = np.array(r["mean"], float), np.array(r["std"], float)
    off = ~np.eye(len(r["tasks"]), dtype=bool)
    ratio = std[off] / np.where(mean[off] > 0, mean[off], np.nan)
    closest = {}
    for t in r["tasks"]:
        ranked = rank_bases(r, t)
        b, m, s = ranked[0]
        closest[t] = {"base": b, "mean": m, "std": s, "same_dataset": r["datasets"][b] == r["datasets"][t],
                      "ranking": [x[0] for x in ranked], "margin": ranked[1][1] - m if len(ranked) > 1 else None}
    # how often each seed alone picks the same closest base as the mean table
    per_seed = np.array(r["per_seed"], float)
    agree = []
    for si in range(per_seed.shape[0]):
        for j, t in enumerate(r["tasks"]):
            col = per_seed[si, :, j].copy()
            col[j] = np.inf
            agree.append(r["tasks"][int(np.argmin(col))] == closest[t]["base"])
    return {"closest": closest, "same": sum(c["same_dataset"] for c in closest.values()),
            "ratio_median": float(np.nanmedian(ratio)), "ratio_mean": float(np.nanmean(ratio)),
            "seed_agreement": float(np.mean(agree)), "wall_s": r["timing"]["wall_s"]}


def compare_rankings(a: dict, b: dict) -> dict:
    from scipy.stats import kendalltau, spearmanr

    rows, changed, rho, tau = [], 0, [], []
    tasks = a["tasks"]
    ma, mb = np.array(a["mean"], float), np.array(b["mean"], float)
    for j, t in enumerate(tasks):
        idx = [i for i in range(len(tasks)) if i != j]
        ra, rb = ma[idx, j], mb[idx, j]
        s, k = spearmanr(ra, rb).statistic, kendalltau(ra, rb).statistic
        ca, cb = tasks[idx[int(np.argmin(ra))]], tasks[idx[int(np.argmin(rb))]]
        changed += ca != cb
        rho.append(s)
        tau.append(k)
        rows.append({"target": t, "closest_a": ca, "closest_b": cb, "spearman": float(s), "kendall": float(k)})
    return {"rows": rows, "changed": int(changed), "spearman_mean": float(np.mean(rho)),
            "kendall_mean": float(np.mean(tau))}


def md_matrix(r: dict) -> str:
    tasks = r["tasks"]
    mean, std = np.array(r["mean"], float), np.array(r["std"], float)
    short = [t.replace("fashion_", "f_").replace("mnist_", "m_") for t in tasks]
    lines = ["| base \\ target | " + " | ".join(short) + " |", "|---|" + "---|" * len(tasks)]
    for i, b in enumerate(short):
        cells = []
        for j in range(len(tasks)):
            if i == j:
                cells.append("0")
                continue
            col = mean[:, j].copy()
            col[j] = np.inf
            cell = f"{mean[i, j]:.3g} ± {std[i, j]:.2g}"
            cells.append(f"**{cell}**" if i == int(np.argmin(col)) else cell)
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def network_table(bank, tasks, net, seeds) -> tuple[str, dict]:
    from tanas_jax.distance.stats import seed_mean_std

    rows, acc = [], {}
    for t in tasks:
        a = []
        for s in seeds:
            _, meta = bank.load_network(t, net, s)
            a.append(meta["metrics"]["test_accuracy"])
        acc[t] = a
        reached = sum(x >= 0.9 for x in a)
        mean, std = seed_mean_std(a)
        rows.append(f"| {t} | {mean:.4f} ± {std:.4f} | {reached}/{len(a)} |")
    header = ["| task | test accuracy (mean ± std over seeds) | reached 1-ε = 0.90 |", "|---|---|---|"]
    return "\n".join(header + rows), acc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bank", default=os.path.join(ROOT, "runs", "bank"))
    p.add_argument("--tasks", default="offline8")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--config", default="quick")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--full-examples", type=int, default=100,
                   help="examples per full-spectrum Gram (quick preset: 200; 100 keeps the run within ~25 min)")
    p.add_argument("--md", default=os.path.join(ROOT, "docs", "results_distances.md"))
    p.add_argument("--img", default=os.path.join(ROOT, "docs", "img"))
    p.add_argument("--json", default=os.path.join(ROOT, "runs", "distances", "result.json"))
    p.add_argument("--ld3", default=os.path.join(ROOT, "runs", "ld3", "result.json"),
                   help="result.json of the issue-3 run `bin/distance --tasks offline8 --metric logdet --repeats 3` "
                        "to summarise too (skipped when absent)")
    p.add_argument("--ld3-elapsed", default=None, help="the whole command's wall time (e.g. from /usr/bin/time)")
    p.add_argument("--only", default=None, help="comma-separated stems to run (debugging)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from tanas_jax import provenance
    from tanas_jax.bank import Bank
    from tanas_jax.config import load_config, updated
    from tanas_jax.distance.table import fisher_distance_table, plot_heatmap
    from tanas_jax.io import atomic_write_json
    from tanas_jax.tasks import resolve_tasks
    from tanas_jax.train import bank_key

    t_start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = resolve_tasks(args.tasks)
    bank = Bank(args.bank)
    os.makedirs(args.img, exist_ok=True)
    results, summaries = {}, {}
    for metric, spectrum, extra in RUNS:
        key = stem(metric, spectrum, extra)
        if args.only and key not in args.only.split(","):
            continue
        cfg = updated(load_config(args.config, args.overrides),
                      {"fisher.full_examples": args.full_examples, "distance.metric": metric,
                       "distance.spectrum": spectrum, **{f"distance.{k}": v for k, v in extra.items()}})
        print(f"== {label(metric, spectrum, extra)} ({len(seeds)} seeds)", flush=True)
        r = fisher_distance_table(bank, tasks, cfg, seeds, progress=not args.no_progress)
        results[key] = r
        summaries[key] = summarize(r)
        plot_heatmap(os.path.join(args.img, f"distances_{key}.png"), r,
                     title=f"{label(metric, spectrum, extra)}: d[base, target], {r['net']}, {len(seeds)} seeds")
        print(f"   {summaries[key]['same']}/{len(tasks)} closest from the same dataset; std/mean median "
              f"{summaries[key]['ratio_median']:.3f}; {r['timing']['wall_s']:.0f} s", flush=True)
    comparisons = {}
    for metric in ("logdet", "frechet"):
        a, b = f"{metric}_diag", f"{metric}_diag_authors"
        if a in results and b in results:
            comparisons[metric] = compare_rankings(results[a], results[b])
    wall = time.perf_counter() - t_start
    cfg = load_config(args.config, args.overrides)
    acc_md, acc = network_table(bank, tasks, bank_key(cfg.train), seeds)
    stamp = provenance.stamp()
    payload = {"tables": results, "summaries": summaries, "comparisons": comparisons, "accuracy": acc,
               "wall_s": wall, "provenance": stamp, "seeds": seeds, "tasks": tasks}
    atomic_write_json(args.json, payload)
    write_markdown(args, results, summaries, comparisons, acc_md, stamp, wall, seeds, tasks, cfg)
    print(f"wrote {args.md} and {args.json} in {wall:.0f} s")
    return 0


def write_markdown(args, results, summaries, comparisons, acc_md, stamp, wall, seeds, tasks, cfg):
    from tanas_jax.io import atomic_write_bytes

    any_r = next(iter(results.values()))
    rel_img = os.path.relpath(args.img, os.path.dirname(args.md))
    m = stamp.get("machine") or {}
    machine = (f"{m.get('processor')} {m.get('platform')}, {m.get('cpu_count')} CPU cores, JAX backend "
               f"{m.get('jax_backend')}, XLA_FLAGS `{m.get('xla_flags')}`") if isinstance(m, dict) else str(m)
    cmd = "python experiments/distances.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:]))
    L = ["# Fisher task distances on offline8: reproduction of LD-NAS §3a / §3c", "",
         "Generated by `experiments/distances.py`; do not edit by hand.", "",
         "## How it was made", "",
         f"- Command: `{cmd.strip()}` (after `bin/distance --tasks offline8 --metric logdet --repeats 3 "
         f"--out runs/ld3 --bank runs/bank`, which trained seeds 0-2).",
         f"- Config: `{args.config}` preset (`{cfg.train.net}` ε-networks, {cfg.train.epochs} epochs, Adam "
         f"{cfg.train.learning_rate}, batch {cfg.train.batch_size}); seeds {', '.join(map(str, seeds))}; "
         f"diagonal Fishers on {any_r['fisher']['examples']} training examples of the target task, full spectra on "
         f"{args.full_examples}" + (f" (the preset's {cfg.fisher.full_examples}, reduced to fit the time budget)"
                                    if args.full_examples < cfg.fisher.full_examples else "") + "; estimator "
         f"`{any_r['fisher']['estimator']}`; σ² = {any_r['settings']['sigma2']:g} after unit-trace normalisation; "
         f"normalisation `{any_r['settings']['normalization']}`, reduction `{any_r['settings']['reduction']}` "
         f"(paper eq. 2), head `{any_r['settings']['head']}` (authors) unless stated.",
         f"- Machine: {machine}; total wall time {wall / 60:.1f} min for this command "
         "(shared 2-core CPU, other jobs running; networks and Fishers already in the bank are reused).",
         f"- Versions: {', '.join(f'{k} {v}' for k, v in sorted((stamp.get('versions') or {}).items()))}.",
         "- Data: " + "; ".join(f"{t}: {d.get('source')} ({d.get('dataset')}, max_train {d.get('max_train')})"
                                for t, d in any_r["data"].items()) + ".",
         "- Layout: d[row = base, column = target] (LD-NAS Figure 1); **bold** = closest base of each column.",
         "", "## ε-approximation networks", "", acc_md, "",
         "## Summary (§3a)", "",
         "| distance | closest base from the same dataset | std/mean across seeds (median, mean) | "
         "single seed picks the mean's closest base | wall time |", "|---|---|---|---|---|"]
    for key, s in summaries.items():
        metric, spectrum = key.split("_")[:2]
        extra = {"head": "backbone"} if "backbone" in key else ({"authors_fisher": True} if "authors" in key else {})
        L.append(f"| {label(metric, spectrum, extra)} | {s['same']} / {len(tasks)} | {s['ratio_median']:.3f}, "
                 f"{s['ratio_mean']:.3f} | {100 * s['seed_agreement']:.0f} % | {s['wall_s']:.0f} s |")
    L += ["", "### Closest base per target", "",
          "| target | " + " | ".join(summaries) + " |", "|---|" + "---|" * len(summaries)]
    for t in tasks:
        cells = []
        for s in summaries.values():
            c = s["closest"][t]
            cells.append(f"{c['base']}{' (same)' if c['same_dataset'] else ''}")
        L.append(f"| {t} | " + " | ".join(cells) + " |")
    if comparisons:
        L += ["", "## §3c: the authors' Fisher vs the per-example empirical Fisher", "",
              "The authors' code squares the mini-batch mean gradient and averages over each parameter's first "
              "axis (docs/authors_code.md); ours sums squared per-example gradients.  "
              "Same networks, same examples.", "",
              "| metric (diag) | targets whose closest base changes | Spearman ρ of base rankings (mean over "
              "targets) | Kendall τ (mean) |", "|---|---|---|---|"]
        for metric, c in comparisons.items():
            L.append(f"| {metric} | {c['changed']} / {len(tasks)} | {c['spearman_mean']:.3f} "
                     f"| {c['kendall_mean']:.3f} |")
        for metric, c in comparisons.items():
            L += ["", f"{metric}: per target", "", "| target | closest (per-example) | closest (authors) | ρ | τ |",
                  "|---|---|---|---|---|"]
            L += [f"| {r['target']} | {r['closest_a']} | {r['closest_b']} | {r['spearman']:.2f} | {r['kendall']:.2f} |"
                  for r in c["rows"]]
    if args.ld3 and os.path.exists(args.ld3):
        with open(args.ld3) as f:
            r3 = json.load(f)
        s3 = summarize(r3)
        L += ["", "## Issue 3 \"done when\": `bin/distance --tasks offline8 --metric logdet --repeats 3`", "",
              f"`bin/distance --tasks offline8 --metric logdet --repeats 3 --out runs/ld3 --bank runs/bank` "
              f"(quick preset, fresh bank: it trained all 24 networks): command wall time "
              f"{args.ld3_elapsed or '?'}, of which the table (Fishers + distances after training) "
              f"{r3['timing']['wall_s']:.0f} s with {r3['timing']['fisher_s']:.0f} s in Fishers "
              f"({r3['cache']['computed']} computed, {r3['cache']['reused']} reused), on the shared 2-core CPU "
              "(load average 4-8 from other jobs).  Closest base from the same dataset: "
              f"**{s3['same']} of {len(r3['tasks'])}** targets; std/mean median {s3['ratio_median']:.3f}.", "",
              md_matrix(r3), ""]
    L += ["", "## Tables (mean ± std over seeds)", ""]
    for key, r in results.items():
        s = r["settings"]
        L += [f"### {key.replace('_', ' ')}", "",
              f"metric {s['metric']}, spectrum {s['spectrum']}, head {s['head']}, authors' Fisher "
              f"{r['fisher']['authors_fisher']}; {r['timing']['wall_s']:.0f} s "
              f"(Fishers computed {r['cache']['computed']}, reused {r['cache']['reused']}).", "",
              md_matrix(r), "", f"![{key}]({rel_img}/distances_{key}.png)", ""]
    atomic_write_bytes(args.md, ("\n".join(L) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
