"""Reports of a TA-NAS run: the markdown report, its figures, and plain-text tables.

This module owns how results are *presented*: :func:`write_report` turns the
dict returned by :func:`tanas_jax.pipeline.run_pipeline` into ``report.md``
plus PNGs (distance heatmap with the chosen base highlighted, softmax(α) over
the FUSE rounds); :func:`format_table` is the fixed-width table the command
line prints.  Nothing here computes a result.
"""
from __future__ import annotations

import json
import os

COLUMNS = ["method", "test_acc", "val_acc", "params", "search_s", "evaluations", "architecture"]


# --- tables -------------------------------------------------------------------------------
def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain fixed-width table: a header, a rule, one line per row (floats with 4 decimals)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    """A markdown table cell: 4 decimals below 10, one above."""
    if isinstance(v, float):
        return f"{v:.4f}" if v < 10 else f"{v:.1f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]


PAIRED_COLUMNS = ["method", "seeds", "test_acc_mean", "binomial_std", "seed_std", "diff_vs_ref", "ci95",
                  "significant"]


def paired_rows(table: list[dict], labels: dict | None = None) -> list[dict]:
    """Rows of :func:`tanas_jax.compare.paired_table` as display cells (``PAIRED_COLUMNS``); ``labels``
    renames methods."""
    out = []
    for r in table:
        d = r.get("vs_reference")
        row = {"method": (labels or {}).get(r["method"], r["method"]), "seeds": len(r["seeds"]),
               "test_acc_mean": r["mean"], "binomial_std": r.get("binomial_std", ""), "seed_std": r["std"],
               "diff_vs_ref": "(reference)", "ci95": "", "significant": ""}
        if d:
            row.update(diff_vs_ref=f"{d['mean']:+.4f}", ci95=f"[{d['low']:+.4f}, {d['high']:+.4f}]",
                       significant="yes" if d["significant"] else "no")
        out.append(row)
    return out


# --- report.md ----------------------------------------------------------------------------
def write_report(out: str, result: dict) -> dict:
    """``out/report.md`` + PNGs for a pipeline result; returns ``{name: path}``."""
    from tanas_jax.io import atomic_write_bytes

    paths = {"heatmap": _heatmap(os.path.join(out, "distances.png"), result["distance"], result["target"],
                                 result["closest"], result["metric"])}
    paths.update(_alpha_plots(out, result))
    lines = _header_lines(result) + _distance_lines(result, paths) + _architecture_lines(result, paths)
    lines += _trace_lines(result)
    lines += ["## Reused from the bank", ""] + [f"- {r}" for r in result["reused"] or ["nothing"]]
    lines += ["", "## Computed in this run", ""] + [f"- {c}" for c in result["computed"] or ["nothing"]]
    atomic_write_bytes(os.path.join(out, "report.md"), ("\n".join(lines) + "\n").encode())
    paths["report"] = os.path.join(out, "report.md")
    return paths


def _alpha_plots(out: str, result: dict) -> dict:
    """softmax(α) over the rounds of the task-aware and standard-space FUSE runs (when they have a history)."""
    from tanas_jax.search.plots import plot_alpha

    paths = {}
    for key, run, file, space in (("alpha", "task-aware", "alpha_task_aware.png", "task-aware"),
                                  ("alpha_standard", "standard", "alpha_standard.png", "standard")):
        history = result["runs"].get(run, {}).get("history")
        if history:
            paths[key] = plot_alpha(history, os.path.join(out, file), f"FUSE on {result['target']}, {space} space")
    return paths


def _header_lines(result: dict) -> list[str]:
    prov = result.get("provenance", {})
    machine, versions = prov.get("machine", {}), prov.get("versions", {})
    timings = result["timings"]
    steps = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items() if k != "total_s")
    return [f"# TA-NAS report: {result['target']}", "",
            f"- bases ({len(result['bases'])}): {', '.join(result['bases'])}",
            f"- metric: {result['metric']}; closest {result['top_k']}: **{', '.join(result['closest'])}**",
            *_confidence_lines(result),
            f"- data: {result['data']['source']}, target sizes {result['data']['sizes']}",
            f"- config: {result['config'].get('preset')} (seed {result['seed']}); ε-nets "
            f"{result['config']['train']['net']}, seeds {result['config']['bank']['seeds']}",
            f"- machine: {machine.get('platform', '?')}, {machine.get('cpu_count', '?')} "
            f"CPUs, backend {machine.get('jax_backend', '?')}; jax {versions.get('jax', '?')}",
            f"- wall time: {timings['total_s']:.0f} s ({steps})", ""]


def _confidence_lines(result: dict) -> list[str]:
    """The confidence of the choice of base, and the warning when it is low (results without one: none)."""
    conf = result["distance"].get("confidence")
    if not conf:
        return []
    lines = [f"- confidence: {conf['message']}"]
    return lines + ([f"- **warning**: {conf['warning']}"] if conf.get("warning") else [])


def _distance_lines(result: dict, paths: dict) -> list[str]:
    dist = result["distance"]
    p = dist.get("p_closest") or {}
    over = (dist.get("confidence") or {}).get("over", "")
    lines = ["## Distances to the target (closest first)", "",
             f"P(closest): how often the base is the closest over {over or 'the seeds'}.", "",
             "| base | distance | P(closest) |", "|---|---|---|"]
    lines += [f"| {b}{' **(chosen)**' if b in result['closest'] else ''} | {dist['column'][b]:.5g} | "
              f"{'' if p.get(b) is None else format(p[b], '.2f')} |" for b in dist["ranking"]]
    return lines + ["", f"![distances]({os.path.basename(paths['heatmap'])})", ""]


def _architecture_lines(result: dict, paths: dict) -> list[str]:
    lines = ["## Architectures", ""] + markdown_table(result["table"], COLUMNS)
    lines += ["", f"Search space: {result['space']['name']} — ops {', '.join(result['space']['ops'])}.",
              f"Banked genotype of {result['target']}: `{json.dumps(result['genotype'], sort_keys=True)}`", ""]
    if "alpha" in paths:
        lines += [f"![alpha]({os.path.basename(paths['alpha'])})", ""]
    return lines


def _trace_lines(result: dict) -> list[str]:
    """Each search's anytime trace, summarised: points, search seconds, best validation accuracy at the
    end (what each kind measures: :data:`tanas_jax.compare.TRACE_NOTES`)."""
    traces = result.get("traces")
    if not traces:
        return []
    from tanas_jax.compare import TRACE_NOTES

    rows = [{"search": name, "points": len(t["seconds"]), "search s": float(t["seconds"][-1]),
             "best val so far": float(t["best_val"][-1]), "measured": t["measured"]} for name, t in traces.items()]
    return ["## Anytime traces", "", "; ".join(TRACE_NOTES.values()) + "; compile time included.", ""] + \
        markdown_table(rows, list(rows[0])) + [""]


# --- figures ------------------------------------------------------------------------------
def _matrix(rows):
    """Nested lists (None for a missing entry) as a float array with NaN."""
    import numpy as np

    return np.array([[np.nan if v is None else v for v in row] for row in rows], float)


def _heatmap(path: str, dist: dict, target: str, closest: list[str], metric: str) -> str:
    """Mean (and std over seeds) of the distance table; the chosen bases' cells in the target column in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from tanas_jax.io import save_figure

    table = dist["table"]
    mean = _matrix(table["mean"])
    std = _matrix(table["std"]) if table.get("std") is not None else np.zeros_like(mean)
    n_seeds = len(table.get("seeds", [])) or 1
    panels = [(mean, "mean")] + ([(std, f"std over {n_seeds} seeds")] if n_seeds > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2), dpi=100, squeeze=False)
    for ax, (mat, title) in zip(axes[0], panels):
        _heatmap_panel(fig, ax, mat, dist["tasks"], target, closest, f"{metric} distance d[b, t]: {title}")
    conf = dist.get("confidence") or {}
    sure = f", P(closest) = {conf['p']:.2f} over {conf['over']}" if conf else ""
    fig.suptitle(f"target {target}: chosen base {', '.join(closest)} (red){sure}")
    return save_figure(fig, path)


def _heatmap_panel(fig, ax, mat, tasks_all: list[str], target: str, closest: list[str], title: str) -> None:
    import numpy as np
    from matplotlib.patches import Rectangle

    im = ax.imshow(mat, cmap="viridis")
    ax.set_xticks(range(len(tasks_all)), tasks_all, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks_all)), tasks_all, fontsize=7)
    ax.set_xlabel("target task t (column)")
    ax.set_ylabel("base task b (row)")
    ax.set_title(title)
    for i in range(len(tasks_all)):
        for j in range(len(tasks_all)):
            if np.isfinite(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2g}", ha="center", va="center", fontsize=7, color="w")
    t = tasks_all.index(target)
    for b in closest:
        i = tasks_all.index(b)
        ax.add_patch(Rectangle((t - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
    fig.colorbar(im, ax=ax, fraction=0.046)


__all__ = ["COLUMNS", "PAIRED_COLUMNS", "format_table", "markdown_table", "paired_rows", "write_report"]
