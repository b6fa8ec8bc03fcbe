"""Issue 11 deliverable 5: search methods compared with their noise, on whole Fashion-MNIST test splits.

    python experiments/compare.py [--targets fashion_4class,fashion_10way] [--seeds 0-4]
        [--baselines standard,random,darts1,tetlo] [--config quick] [--set SECTION.FIELD=VALUE ...]
        [--bank runs/bank] [--out runs/compare] [--doc docs/results_compare.md] [--write-only]

For every target and seed the ``bin/tanas`` pipeline (:func:`tanas_jax.api.run_tanas`) runs task-aware
FUSE and the baselines (standard-space FUSE, random search with FUSE's budget, DARTS, TETLO), every winner
trained from scratch by the same ``final`` protocol and tested on the target's whole test split
(``data.max_test=10000``; the search's validation split keeps ``data.max_eval``).  Each seed's result goes
to ``OUT/TARGET/seedK/result.json`` and is reused by a rerun (so two processes, one per target, can share
the bank and a final ``--write-only`` call writes the doc).  The doc gets, per target, the paired table
(each method minus task-aware FUSE, paired by seed, 95 % t-interval: :func:`tanas_jax.compare.paired_table`)
and the anytime plot ``docs/img/anytime_TARGET.png``; every number is in ``docs/results_compare.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments.search import DEFAULT_BASES  # noqa: E402

DEFAULT_TARGETS = "fashion_4class,fashion_10way"
BASELINES = "standard,random,darts1,tetlo"
FIXED = ["data.max_test=10000"]       # the whole Fashion-MNIST test split for a 10-way / grouped target
COLORS = {"task-aware": "tab:red", "standard": "tab:blue", "random": "tab:green", "darts1": "tab:purple",
          "darts2": "tab:purple", "tetlo": "tab:orange"}


def parse_args(argv):
    from tanas_jax.cli.common import add_common_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", default=DEFAULT_TARGETS)
    p.add_argument("--bases", default=DEFAULT_BASES, help="the targets are held out")
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--baselines", default=BASELINES)
    p.add_argument("--doc", default="docs/results_compare.md")
    p.add_argument("--json", default="docs/results_compare.json")
    p.add_argument("--write-only", action="store_true", help="no runs: write the doc from OUT's results")
    add_common_args(p, seed=False)
    return p.parse_args(argv)


def _config(args, target):
    from tanas_jax.cli.common import config_from_args, updated

    fixed = argparse.Namespace(**{**vars(args), "overrides": FIXED + [o for o in args.overrides if o not in FIXED]})
    return updated(config_from_args(fixed), {"tanas.target": target, "tanas.bases": args.bases,
                                            "tanas.baselines": args.baselines})


def run_all(args, targets, seeds, out) -> None:
    """Every (target, seed) whose result.json is missing, one after the other."""
    from tanas_jax import api
    from tanas_jax.cli.common import open_bank

    bank = open_bank(args)
    for target in targets:
        cfg = _config(args, target)
        for s in seeds:
            d = os.path.join(out, target, f"seed{s}")
            if os.path.exists(os.path.join(d, "result.json")):
                print(f"{target} seed {s}: done before ({d}/result.json)", flush=True)
                continue
            t0 = time.perf_counter()
            res = api.run_tanas(cfg, bank, out=d, seed=s, progress=not args.no_progress, log=print)
            print(f"{target} seed {s}: {time.perf_counter() - t0:.0f} s; "
                  + "; ".join(f"{r['method']}: {r['test_acc']:.4f}" for r in res["table"]), flush=True)


def load_results(out, targets, seeds) -> dict:
    """``{target: [result per seed that finished]}``."""
    got = {}
    for target in targets:
        got[target] = []
        for s in seeds:
            path = os.path.join(out, target, f"seed{s}", "result.json")
            if os.path.exists(path):
                with open(path) as f:
                    got[target].append(json.load(f))
    return got


def main(argv=None) -> int:
    from tanas_jax.cli.tanas import seed_list

    args = parse_args(argv)
    out = args.out or "runs/compare"
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    seeds = seed_list(args.seeds)
    if not args.write_only:
        run_all(args, targets, seeds, out)
    results = load_results(out, targets, seeds)
    if not any(results.values()):
        print(f"no results under {out}: run without --write-only first")
        return 1
    write_doc(args, results, out)
    return 0


# --- the doc ----------------------------------------------------------------------------------
def target_summary(results: list[dict]) -> dict:
    """Per method: the paired table row, mean search/compile seconds and params, plus the traces."""
    import numpy as np

    from tanas_jax.compare import accuracies_by_method, paired_table
    from tanas_jax.pipeline import RUN_LABELS

    n_test = results[0]["final_data"]["sizes"]["test"]
    table = paired_table(accuracies_by_method(results), "task-aware", n_test=n_test)
    for row in table:
        runs = [r["runs"][row["method"]] for r in results if row["method"] in r["runs"]]
        row["search_s"] = float(np.mean([x["search_wall_s"] for x in runs]))
        row["search_s_per_seed"] = [x["search_wall_s"] for x in runs]
        row["compile_s"] = float(np.mean([x.get("search_compile_s") or 0.0 for x in runs]))
        row["params"] = float(np.mean([x["final"]["params"] for x in runs]))
        row["val_accuracies"] = [x["final"]["val_accuracy"] for x in runs]
        row["label"] = RUN_LABELS[row["method"]].format(space=results[0]["space"]["name"])
    table.sort(key=lambda row: list(RUN_LABELS).index(row["method"]))
    return {"n_test": n_test, "table": table, "seeds": [r["seed"] for r in results],
            "closest": {r["seed"]: r["closest"] for r in results},
            "p_closest": {r["seed"]: r["confidence"]["p"] for r in results},
            "traces": {r["seed"]: r["traces"] for r in results},
            "data": results[0]["data"], "final_data": results[0]["final_data"],
            "base_sources": sorted({f"{n['task']}: {n['source']}" for n in results[0]["networks"]
                                    if n["role"] == "base"}),
            "wall_s": {r["seed"]: r["timings"]["total_s"] for r in results},
            "eps_net": [row for row in results[0]["table"] if row["method"].startswith("epsilon-net")]}


def anytime_plot(target: str, summary: dict, path: str) -> str:
    """Best validation accuracy so far against search seconds: one thin line per seed, one colour per method;
    DARTS/TETLO one marker per seed (see tanas_jax.compare.TRACE_NOTES); an x per seed and method: the
    winner's validation accuracy after the same final training, at the search's total seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tanas_jax.io import save_figure

    fig, ax = plt.subplots(figsize=(11, 5), dpi=100)
    labels = {row["method"]: row["label"] for row in summary["table"]}   # canonical order
    seen = set()
    for _seed, traces in sorted(summary["traces"].items()):
        for m, t in traces.items():
            lab = None if m in seen else labels.get(m, m)
            seen.add(m)
            if t["kind"] == "supernet":
                ax.plot(t["seconds"], t["best_val"], "o" if m.startswith("darts") else "s", color=COLORS.get(m),
                        mfc="none", label=lab and f"{lab} (supernet, end)")
            else:
                ax.step(t["seconds"], t["best_val"], where="post", color=COLORS.get(m), lw=1, alpha=0.8,
                        label=lab)
                ax.plot(t["seconds"], t["best_val"], ".", color=COLORS.get(m), ms=3)
    for row in summary["table"]:   # every winner after the same final training
        ax.plot(row["search_s_per_seed"], row["val_accuracies"], "x", color=COLORS.get(row["method"]), ms=7)
    ax.plot([], [], "x", color="k", ms=7, label="x: winner after the same final training (val)")
    ax.set_xlabel("search seconds so far (compile time included)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(f"{target}: anytime search, {len(summary['traces'])} seeds (one line each)")
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    canon = list(labels.values())
    bare = [n.split(" (supernet")[0] for n in names]
    order = sorted(range(len(names)), key=lambda i: canon.index(bare[i]) if bare[i] in canon else 99)
    ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_figure(fig, path)


def _paired_lines(summary: dict) -> list[str]:
    from tanas_jax.report import markdown_table

    rows = []
    for r in summary["table"]:
        d = r.get("vs_reference")
        rows.append({"method": r["label"], "test accuracy, mean over seeds": f"{r['mean']:.4f}",
                     "binomial std (one run)": f"{r['binomial_std']:.4f}",
                     "std over seeds": f"{r['std']:.4f}",
                     "per seed": ", ".join(f"{a:.4f}" for a in r["accuracies"]),
                     "Δ vs task-aware [95 % CI]": "reference" if d is None else
                     f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]",
                     "significant?": "" if d is None else ("**yes**" if d["significant"] else "no"),
                     "search s (mean)": f"{r['search_s']:.0f}", "params": f"{r['params']:.0f}"})
    return markdown_table(rows, list(rows[0]))


def _header_lines(args, results: dict, wall: dict, stamp: dict, load: str) -> list[str]:
    first = next(r for rs in results.values() for r in rs)
    cfg = first["config"]
    sets = " ".join(f"--set {o}" for o in args.overrides if o not in FIXED)
    return ["## Search methods compared with their noise (issue 11)", "",
            f"Command: `python experiments/compare.py --targets {args.targets} --seeds {args.seeds} --baselines "
            f"{args.baselines} --config {args.config} --bases {args.bases} {sets}`"
            f" (each target in its own process, then `--write-only`; the script adds "
            f"`--set {' '.join(FIXED)}`).", "",
            f"Machine: {stamp['machine']['platform']}, {stamp['machine']['cpu_count']} CPUs shared with other "
            f"jobs ({load}), backend {stamp['machine'].get('jax_backend')}; jax {stamp['versions'].get('jax')}, "
            f"flax {stamp['versions'].get('flax')}; XLA_FLAGS `{stamp['machine']['xla_flags']}`. Wall time per "
            "target (sum over seeds): " + ", ".join(f"{t} {w / 60:.0f} min" for t, w in wall.items()) + ".", "",
            f"Settings: preset `{cfg.get('preset')}`; FUSE {cfg['fuse']['rounds']} rounds x "
            f"{cfg['fuse']['candidates']} candidates, at most {cfg['fuse']['max_stages']} stages of "
            f"{cfg['fuse']['weight_steps']} weight + {cfg['fuse']['alpha_steps']} α steps, mixture "
            f"`{cfg['fuse']['mixture']}`, winner by `{cfg['fuse']['winner']}`; random search: FUSE's budget; "
            f"DARTS/TETLO {cfg['search']['darts']['steps']} steps of batch {cfg['search']['darts']['batch_size']} "
            f"on a {tuple(cfg['search']['darts']['input_shape'])} crop; final training (every method) "
            f"{cfg['final']['steps']} steps; `train.init_seed` = {cfg['train'].get('init_seed')}; "
            f"distance `{cfg['tanas']['metric']}` ({cfg['distance'].get('spectrum')}); bank seeds "
            f"{cfg['bank']['seeds']}.", ""]


READING_MARK = "<!-- reading: written by hand from the numbers above; kept when the doc is regenerated -->"


def _kept_reading(doc: str) -> str:
    """The hand-written reading after :data:`READING_MARK` in the existing doc (kept on regeneration)."""
    if not os.path.exists(doc):
        return "**Reading.** (to be written from the numbers above)"
    text = open(doc).read()
    return text.split(READING_MARK, 1)[1].lstrip("\n") if READING_MARK in text else ""


def write_doc(args, results: dict, out: str) -> None:
    """docs/results_compare.md, docs/img/anytime_TARGET.png and the JSON of every number."""
    import subprocess

    from tanas_jax import compare, provenance
    from tanas_jax.io import atomic_write_json, json_default

    stamp = provenance.stamp()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load")[-1]
    summaries = {t: target_summary(rs) for t, rs in results.items() if rs}
    wall = {t: sum(s["wall_s"].values()) for t, s in summaries.items()}
    lines = _header_lines(args, results, wall, stamp, "load" + load + " when written")
    img_dir = os.path.join(os.path.dirname(os.path.abspath(args.doc)), "img")
    for target, s in summaries.items():
        png = anytime_plot(target, s, os.path.join(img_dir, f"anytime_{target}.png"))
        fd, d = s["final_data"], s["data"]
        lines += [f"### Target {target} ({len(s['seeds'])} seeds: {', '.join(map(str, s['seeds']))})", "",
                  f"Data: {d['source']}; search splits train {d['sizes']['train']}, val {d['sizes']['val']}; "
                  f"final networks tested on **{fd['sizes']['test']} test images** (the whole test split). "
                  "Closest base per seed (P(closest)): "
                  + ", ".join(f"{','.join(c)} ({s['p_closest'][k]:.2f})" for k, c in s["closest"].items()) + ". "
                  "Bases' ε-nets trained on: " + "; ".join(s["base_sources"]) + ".",
                  ""] + _paired_lines(s)
        eps = s["eps_net"]
        if eps:
            lines += ["", f"Hand-designed reference: {eps[0]['method']}, test accuracy {eps[0]['test_acc']:.4f} "
                      f"({eps[0]['params']} params; the bank's ε-net, tested on the bank's capped test split)."]
        lines += ["", f"![anytime {target}](img/{os.path.basename(png)})", "",
                  "Anytime plot: " + "; ".join(compare.TRACE_NOTES.values()) + "; x: each winner's validation "
                  "accuracy after the same final training, at its search's total seconds. Later seeds reuse compiled "
                  "steps (in-process and on-disk XLA caches), so the first seed's curves start later.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.doc)), exist_ok=True)
    lines += [READING_MARK, _kept_reading(args.doc)]
    with open(args.doc, "w") as f:
        f.write("\n".join(lines))
    atomic_write_json(args.json, json.loads(json.dumps({"provenance": stamp, "targets": summaries},
                                                       default=json_default)))
    print("\n".join(lines))
    print(f"wrote {args.doc}, {args.json}")


if __name__ == "__main__":
    sys.exit(main())
