"""``bin/tanas``: the whole TA-NAS pipeline (TA-NAS Algorithm 1) with a report.

    bin/tanas [--target T] [--bases offline8] [--metric logdet|frechet|transform] [--top-k 1]
              [--config quick|paper|FILE] [--bank DIR] [--out DIR]

1. every base task and the target get trained epsilon-approximation networks
   (``cfg.bank.seeds``), reusing the bank;
2. the distance table over bases + target (Fisher log-det / Fréchet, or the
   transform-network distance), cached in the bank; the k closest bases to the
   target (column = target, as in the papers);
3. those k bases get a genotype if they lack one (the bank's, a bundled genotype
   file in ``configs/genotypes``, or a standard-space FUSE run on the base, which
   is banked);
4. FUSE in the task-aware space (union of the k closest bases' ops and cells),
   the winner trained from scratch and tested once, its genotype banked as the
   target's (the target becomes a base task);
5. baselines with the same settings: FUSE in the standard space, random search
   with the same budget, and the target's epsilon-approximation net;
6. ``OUT/report.md``, ``OUT/result.json`` and PNGs (distance heatmap with the
   chosen base highlighted, alpha over rounds).

Every expensive step is cached in the bank (networks, Fishers, genotypes, and
each search result keyed by a fingerprint of its inputs), so a rerun reuses
what exists and prints what it reused.  Searches are checkpointed per round in
``OUT/checkpoints`` and resume after an interruption.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

from tanas_jax.io import json_default
from tanas_jax.cli.common import (add_common_args, check_out_dir, cli_main, config_from_args, open_bank,
                                  print_table, run_as_script, write_result)

METRICS = ("logdet", "frechet", "transform")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tanas", description="Task-aware NAS for a target task: distances to the "
                                "bank's base tasks, search space from the closest, FUSE, report.")
    p.add_argument("--target", default=None, help="target task (default: config tanas.target)")
    p.add_argument("--bases", default=None, help="base task set or comma list (default: config tanas.bases); "
                                                 "the target is held out")
    p.add_argument("--metric", choices=METRICS, default=None, help="task distance (default: config tanas.metric)")
    p.add_argument("--top-k", type=int, default=None, help="closest bases whose cells form the space (default 1)")
    p.add_argument("--skip-baselines", action="store_true", help="only the task-aware search (no standard/random)")
    add_common_args(p)
    return p


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    """State of one ``bin/tanas`` run; each step records what it reused."""

    def __init__(self, args, cfg, bank, log):
        from tanas_jax import tasks

        self.args, self.cfg, self.bank, self.log = args, cfg, bank, log
        self.target = tasks.canonical(args.target or cfg.tanas.target)
        self.bases = [b for b in tasks.resolve_tasks(args.bases or cfg.tanas.bases) if b != self.target]
        if not self.bases:
            from tanas_jax.errors import UserError

            raise UserError(f"no base tasks left after holding out the target {self.target}; give --bases")
        self.metric = args.metric or cfg.tanas.metric
        if self.metric not in METRICS:
            from tanas_jax.errors import UserError

            raise UserError(f"unknown metric '{self.metric}': valid: {', '.join(METRICS)}")
        self.k = int(args.top_k or cfg.tanas.top_k)
        if not 1 <= self.k <= len(self.bases):
            from tanas_jax.errors import UserError

            raise UserError(f"--top-k must be in 1..{len(self.bases)} (number of bases), got {self.k}")
        self.seeds = [int(s) for s in cfg.bank.seeds]
        self.reused: list[str] = []
        self.computed: list[str] = []
        self.timings: dict[str, float] = {}
        self.progress = not args.no_progress

    # 1 -------------------------------------------------------------------------------------
    def networks(self) -> list[dict]:
        from tanas_jax.train import ensure_network

        t0 = time.perf_counter()
        rows = []
        net = self.cfg.train.net
        for task in self.bases + [self.target]:
            for seed in self.seeds:
                had = self.bank.has_network(task, net, seed)
                _, meta = ensure_network(self.bank, task, seed, self.cfg, progress=self.progress, log=self.log)
                (self.reused if had else self.computed).append(f"network {task} [{net} seed {seed}]")
                m = meta["metrics"]
                rows.append({"task": task, "seed": seed, "net": net, "test_accuracy": m["test_accuracy"],
                             "reached_epsilon": m["reached_epsilon"], "params": m["n_params"],
                             "source": meta["data"]["source"], "role": "target" if task == self.target else "base"})
        self.timings["networks_s"] = time.perf_counter() - t0
        return rows

    # 2 -------------------------------------------------------------------------------------
    def distances(self) -> dict:
        """The distance table over bases + target (all columns when small, else the target's column)."""
        t0 = time.perf_counter()
        tasks_all = self.bases + [self.target]
        self.cfg.distance.metric = self.metric if self.metric != "transform" else self.cfg.distance.metric
        if self.metric == "transform":
            from tanas_jax.distance.transform import transform_distance_table

            table = transform_distance_table(self.bank, tasks_all, self.cfg, seeds=self.seeds,
                                             progress=self.progress, log=self.log)
        else:
            from tanas_jax.distance.table import fisher_distance_table

            full = len(tasks_all) <= int(self.cfg.tanas.full_table_max)
            table = fisher_distance_table(self.bank, tasks_all, self.cfg, self.seeds,
                                          targets=None if full else [self.target], progress=self.progress,
                                          log=self.log)
            c = table.get("cache", {})
            if c.get("reused"):
                self.reused.append(f"{c['reused']} Fisher spectra")
            if c.get("computed"):
                self.computed.append(f"{c['computed']} Fisher spectra")
        t = tasks_all.index(self.target)
        col = [(table["mean"][i][t], b) for i, b in enumerate(tasks_all) if b != self.target]
        ranking = [b for _, b in sorted(col)]
        self.timings["distances_s"] = time.perf_counter() - t0
        return {"table": table, "tasks": tasks_all, "ranking": ranking,
                "column": {b: float(d) for d, b in col}, "closest": ranking[: self.k]}

    # 3 -------------------------------------------------------------------------------------
    def base_genotypes(self, closest: list[str], fcfg) -> dict:
        from tanas_jax.search.genotype import Genotype
        from tanas_jax.search.spaces import bundled_genotype_path, standard_space

        out = {}
        for b in closest:
            g = self.bank.load_genotype(b)
            if g is not None:
                self.reused.append(f"genotype of {b} (bank)")
                out[b] = {"genotype": g[0], "from": "bank"}
                continue
            path = bundled_genotype_path(b)
            if path:
                self.log(f"{b}: using the bundled genotype {path}")
                out[b] = {"genotype": json.load(open(path)), "from": path}
                continue
            self.log(f"{b} has no genotype: searching one with FUSE in the standard space")
            data = self._search_data(b)
            res = self._search(b, data, "standard", standard_space(), fcfg, "fuse")
            geno = Genotype.from_dict(res["winner"]).to_dict()
            self.bank.save_genotype(b, geno, {"source": "bin/tanas (standard-space FUSE for a base)",
                                              "seed": self.args.seed, "val_accuracy": res["final"]["val_accuracy"],
                                              "test_accuracy": res["final"]["test_accuracy"],
                                              "data": data.record()})
            out[b] = {"genotype": geno, "from": "standard-space FUSE (banked)"}
        return out

    # 4/5 -----------------------------------------------------------------------------------
    def _search_data(self, task):
        from tanas_jax import tasks

        c = self.cfg
        return tasks.load_task_data(task, tuple(c.search.input_shape), c.data.source, split_seed=c.data.split_seed,
                                    val_fraction=c.data.val_fraction, max_train=c.search.max_train,
                                    max_eval=c.data.max_eval, normalization=c.data.normalization,
                                    data_dir=c.data.data_dir)

    def _search(self, task, data, label, space, fcfg, method) -> dict:
        """One search (FUSE or random), cached in the bank by a fingerprint of its inputs."""
        from tanas_jax.config import section, to_dict
        from tanas_jax.search.fuse import fuse_search
        from tanas_jax.search.random_search import random_search

        key = "search-" + _fingerprint({"method": method, "space": space.to_dict(), "fuse": to_dict(fcfg),
                                        "final": to_dict(section(self.cfg, "final")),
                                        "seed": self.args.seed, "data": data.record()})
        hit = self.bank.load_artifact(task, "searches", key)
        if hit is not None:
            self.reused.append(f"{method} search for {task} in space {label} (bank)")
            return hit[1]["result"]
        ck = os.path.join(self.out, "checkpoints", f"{task}-{method}-{key[-8:]}") if self.out else None
        self.log(f"== {method} for {task}, space {label}: {len(space.ops)} ops ({', '.join(space.ops)}), "
                 f"{space.size()} cells")
        if method == "random":
            res = random_search(data, space, fcfg, self.args.seed, final=section(self.cfg, "final"), log=self.log)
        else:
            res = fuse_search(data, space, fcfg, self.args.seed, final=section(self.cfg, "final"), checkpoint_dir=ck,
                              log=self.log)
        import numpy as np

        self.bank.save_artifact(task, "searches", key, {"done": np.ones(1, np.int8)},
                                {"result": json.loads(json.dumps(res, default=json_default))})
        self.computed.append(f"{method} search for {task} in space {label}")
        return res

    def run(self, out: str | None) -> dict:
        from tanas_jax.config import section
        from tanas_jax.search.genotype import Genotype
        from tanas_jax.search.runtime import enable_compilation_cache
        from tanas_jax.search.spaces import resolve_space, standard_space

        self.out = out
        t_all = time.perf_counter()
        fcfg = section(self.cfg, "fuse")
        enable_compilation_cache(fcfg.compilation_cache)
        self.log(f"target {self.target}; {len(self.bases)} bases: {', '.join(self.bases)}; metric {self.metric}; "
                 f"top-{self.k}; net {self.cfg.train.net}; seeds {self.seeds}")
        nets = self.networks()
        dist = self.distances()
        self.log("closest bases to " + self.target + ": " +
                 ", ".join(f"{b} ({dist['column'][b]:.4g})" for b in dist["ranking"]))
        closest = dist["closest"]
        t0 = time.perf_counter()
        genos = self.base_genotypes(closest, fcfg)
        self.timings["base_genotypes_s"] = time.perf_counter() - t0

        data = self._search_data(self.target)
        self.log(data.summary())
        space = resolve_space(f"from:closest:{self.k}", bank=self.bank, target=self.target,
                              closest_fn=lambda _t: dist["ranking"], log=self.log)
        runs = {}
        t0 = time.perf_counter()
        runs["task-aware"] = self._search(self.target, data, space.name, space, fcfg, "fuse")
        if not self.args.skip_baselines:
            std = standard_space()
            runs["standard"] = self._search(self.target, data, "standard", std, fcfg, "fuse")
            runs["random"] = self._search(self.target, data, "standard", std, fcfg, "random")
        self.timings["searches_s"] = time.perf_counter() - t0

        best = runs["task-aware"]
        geno = Genotype.from_dict(best["winner"]).to_dict()
        self.bank.save_genotype(self.target, geno, {
            "source": "bin/tanas", "space": space.name, "closest": closest, "metric": self.metric,
            "seed": self.args.seed, "val_accuracy": best["final"]["val_accuracy"],
            "test_accuracy": best["final"]["test_accuracy"], "params": best["final"]["params"],
            "data": data.record()})
        self.log(f"bank: stored the task-aware winner as {self.target}'s genotype")

        rows = []
        labels = {"task-aware": f"FUSE, task-aware space ({space.name})", "standard": "FUSE, standard space",
                  "random": "random search, standard space (same budget)"}
        for name, r in runs.items():
            f = r["final"]
            rows.append({"method": labels[name], "test_acc": f["test_accuracy"], "val_acc": f["val_accuracy"],
                         "params": f["params"], "search_s": r["search_wall_s"],
                         "evaluations": r["candidate_evaluations"], "architecture": r["winner_short"]})
        for n in nets:
            if n["role"] == "target":
                rows.append({"method": f"epsilon-net {n['net']} (seed {n['seed']})", "test_acc": n["test_accuracy"],
                             "val_acc": "", "params": n["params"], "search_s": "", "evaluations": "",
                             "architecture": n["net"]})
        self.timings["total_s"] = time.perf_counter() - t_all
        return {"command": "tanas", "target": self.target, "bases": self.bases, "metric": self.metric,
                "top_k": self.k, "seed": self.args.seed, "config": self.cfg.to_dict(), "data": data.record(),
                "networks": nets, "distance": dist, "closest": closest, "base_genotypes": genos,
                "space": space.to_dict(), "runs": runs, "table": rows, "genotype": geno,
                "reused": self.reused, "computed": self.computed, "timings": self.timings}


COLUMNS = ["method", "test_acc", "val_acc", "params", "search_s", "evaluations", "architecture"]


def write_report(out: str, result: dict) -> dict:
    """report.md + PNGs in ``out``; returns the paths."""
    from tanas_jax.io import atomic_write_bytes
    from tanas_jax.search.plots import plot_alpha

    paths = {}
    dist = result["distance"]
    paths["heatmap"] = _heatmap(os.path.join(out, "distances.png"), dist, result["target"], result["closest"],
                                result["metric"])
    ta = result["runs"]["task-aware"]
    if ta.get("history"):
        paths["alpha"] = plot_alpha(ta["history"], os.path.join(out, "alpha_task_aware.png"),
                                    f"FUSE on {result['target']}, task-aware space")
    if "standard" in result["runs"] and result["runs"]["standard"].get("history"):
        paths["alpha_standard"] = plot_alpha(result["runs"]["standard"]["history"],
                                             os.path.join(out, "alpha_standard.png"),
                                             f"FUSE on {result['target']}, standard space")
    prov = result.get("provenance", {})
    lines = [f"# TA-NAS report: {result['target']}", "",
             f"- bases ({len(result['bases'])}): {', '.join(result['bases'])}",
             f"- metric: {result['metric']}; closest {result['top_k']}: **{', '.join(result['closest'])}**",
             f"- data: {result['data']['source']}, target sizes {result['data']['sizes']}",
             f"- config: {result['config'].get('preset')} (seed {result['seed']}); ε-nets "
             f"{result['config']['train']['net']}, seeds {result['config']['bank']['seeds']}",
             f"- machine: {prov.get('machine', {}).get('platform', '?')}, {prov.get('machine', {}).get('cpu_count', '?')} "
             f"CPUs, backend {prov.get('machine', {}).get('jax_backend', '?')}; jax "
             f"{prov.get('versions', {}).get('jax', '?')}",
             f"- wall time: {result['timings']['total_s']:.0f} s "
             f"({', '.join(f'{k[:-2]} {v:.0f} s' for k, v in result['timings'].items() if k != 'total_s')})", "",
             "## Distances to the target (closest first)", "",
             "| base | distance |", "|---|---|"]
    lines += [f"| {b}{' **(chosen)**' if b in result['closest'] else ''} | {dist['column'][b]:.5g} |"
              for b in dist["ranking"]]
    lines += ["", f"![distances]({os.path.basename(paths['heatmap'])})", "",
              "## Architectures", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result["table"]:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in COLUMNS) + " |")
    lines += ["", f"Search space: {result['space']['name']} — ops {', '.join(result['space']['ops'])}.",
              f"Banked genotype of {result['target']}: `{json.dumps(result['genotype'], sort_keys=True)}`", ""]
    if "alpha" in paths:
        lines += [f"![alpha]({os.path.basename(paths['alpha'])})", ""]
    lines += ["## Reused from the bank", ""] + [f"- {r}" for r in result["reused"] or ["nothing"]]
    lines += ["", "## Computed in this run", ""] + [f"- {c}" for c in result["computed"] or ["nothing"]]
    atomic_write_bytes(os.path.join(out, "report.md"), ("\n".join(lines) + "\n").encode())
    paths["report"] = os.path.join(out, "report.md")
    return paths


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}" if v < 10 else f"{v:.1f}"
    return str(v)


def _heatmap(path: str, dist: dict, target: str, closest: list[str], metric: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    tasks_all = dist["tasks"]
    def arr(m):
        return np.array([[np.nan if v is None else v for v in row] for row in m], float)

    mean = arr(dist["table"]["mean"])
    std = arr(dist["table"]["std"]) if dist["table"].get("std") is not None else np.zeros_like(mean)
    n_seeds = len(dist["table"].get("seeds", [])) or 1
    panels = [(mean, "mean")] + ([(std, f"std over {n_seeds} seeds")] if n_seeds > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2), dpi=100, squeeze=False)
    for ax, (mat, title) in zip(axes[0], panels):
        im = ax.imshow(mat, cmap="viridis")
        ax.set_xticks(range(len(tasks_all)), tasks_all, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(tasks_all)), tasks_all, fontsize=7)
        ax.set_xlabel("target task t (column)")
        ax.set_ylabel("base task b (row)")
        ax.set_title(f"{metric} distance d[b, t]: {title}")
        for i in range(len(tasks_all)):
            for j in range(len(tasks_all)):
                if np.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2g}", ha="center", va="center", fontsize=7, color="w")
        t = tasks_all.index(target)
        for b in closest:
            i = tasks_all.index(b)
            ax.add_patch(Rectangle((t - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"target {target}: chosen base {', '.join(closest)} (red)")
    from tanas_jax.io import save_figure

    return save_figure(fig, path)


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    out = args.out or os.path.join("runs", f"tanas_{cfg.tanas.target if not args.target else args.target}")
    check_out_dir(out)
    bank = open_bank(args)
    log = print if not args.no_progress else (lambda m: print(m, flush=True))
    pipe = Pipeline(args, cfg, bank, log)
    result = pipe.run(out)
    from tanas_jax import provenance

    result["provenance"] = provenance.stamp()
    paths = write_report(out, result)
    result["files"] = paths
    write_result(out, json.loads(json.dumps(result, default=json_default)))
    print()
    print(f"TA-NAS on {pipe.target}: closest base(s) {', '.join(result['closest'])} by {pipe.metric}")
    print_table(result["table"], COLUMNS)
    print(f"\nreused {len(pipe.reused)} item(s) from the bank, computed {len(pipe.computed)}; "
          f"wall time {pipe.timings['total_s']:.0f} s")
    print(f"report: {paths['report']}  result: {os.path.join(out, 'result.json')}")
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
