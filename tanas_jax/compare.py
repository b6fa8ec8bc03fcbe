"""Comparisons of search methods that carry their noise: paired differences over seeds and anytime traces.

Public API::

    binomial_std(p, n) -> float                       # sqrt(p (1 - p) / n): one accuracy's sampling std
    paired_difference(a, b, confidence=0.95) -> dict  # mean of a - b over paired seeds, t-interval
    paired_table(acc, reference, confidence=0.95, n_test=None) -> list[dict]
        # acc = {method: {seed: accuracy}}; each method vs ``reference`` paired by seed
    accuracies_by_method(results) -> {run name: {seed: final test accuracy}}   # bin/tanas results
    anytime_trace(run) -> {'kind', 'seconds', 'best_val', 'measured'}   # from a search result dict
    TRACE_NOTES                                        # what each kind of trace plots (captions, docs)

**Paired differences.**  Method m and the reference were run with the same seeds (same data, same
final-training protocol); the seed is the unit.  With d_s = acc_m(s) - acc_ref(s) over the n seeds both
have, the interval is  mean(d) ± t_{1-(1-c)/2, n-1} · sd(d) / sqrt(n)  (Student's t, sd with ddof 1), the
standard paired t-interval.  "significant" is said only when the interval excludes 0.  Pairing removes the
variation that the seed causes in both methods alike (e.g. which data order a seed gives); the binomial
std of one accuracy on n test images (``binomial_std``) is the test-set sampling noise of a single number,
shown next to it, and is already inside the seed-to-seed spread the interval uses.

**Anytime traces.**  ``(search seconds so far, best validation accuracy so far)`` from what a search
already measured, compile time included (it is inside every method's wall times):

* ``fuse``: one point per round at the cumulative sum of the rounds' ``wall_s``; the value is the best
  own validation accuracy of any candidate evaluated so far (each candidate evaluated alone with the
  weights it has inside the round's mixture);
* ``random``: one point per candidate at the cumulative sum of the candidates' ``wall_s``; the value
  is the best validation accuracy of the candidates trained so far;
* ``darts``/``tetlo``: these searches measure no discrete architecture's validation accuracy while they
  run (their history records softmax(β) and the losses); the trace is ONE point at the end of the search
  (``search_wall_s``) whose value is the supernet's validation accuracy at that point
  (``supernet_val_accuracy``; the mixture of all ops, not a cell one could deploy).

No trace re-runs anything.  The accuracies of the final networks (every method's winner trained from
scratch by the same final protocol) are the paired tables' numbers, not the traces'.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

TRACE_NOTES = {
    "fuse": "FUSE: best own validation accuracy of any candidate so far, one point per round",
    "random": "random search: best validation accuracy of the candidates trained so far, one point per candidate",
    "supernet": "DARTS / TETLO: one point at the end of the search, the supernet's validation accuracy "
                "(they measure no discrete cell's accuracy while searching)",
}


def binomial_std(p: float, n: int) -> float:
    """The sampling std of an accuracy ``p`` measured on ``n`` independent examples: sqrt(p(1-p)/n)."""
    if n < 1:
        raise ValueError(f"binomial_std: n must be >= 1, got {n}")
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of ``a[i] - b[i]`` with its two-sided Student-t interval at ``confidence``.

    Returns ``{'n', 'mean', 'sd', 'half_width', 'low', 'high', 'significant', 'differences'}``; with one
    pair the interval is undefined (NaN bounds, not significant)."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_difference: needs two equally long non-empty lists, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "half_width": float("nan"), "low": float("nan"),
                "high": float("nan"), "significant": False, "differences": d.tolist()}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n))
    low, high = mean - half, mean + half
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "low": low, "high": high,
            "significant": bool(low > 0.0 or high < 0.0), "differences": d.tolist()}


def paired_table(acc: Mapping[str, Mapping[int, float]], reference: str, confidence: float = 0.95,
                 n_test: int | None = None) -> list[dict]:
    """One row per method: its mean test accuracy over seeds (with the mean binomial std on ``n_test``
    images when given) and, for every method but ``reference``, the paired difference method - reference
    over the seeds both have (:func:`paired_difference`)."""
    if reference not in acc:
        raise ValueError(f"paired_table: reference {reference!r} not among {sorted(acc)}")
    ref = acc[reference]
    rows = []
    for m, per_seed in acc.items():
        seeds = sorted(per_seed)
        vals = np.array([per_seed[s] for s in seeds], float)
        row = {"method": m, "seeds": seeds, "accuracies": vals.tolist(), "mean": float(vals.mean()),
               "std": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")}
        if n_test:
            row["binomial_std"] = float(np.mean([binomial_std(v, n_test) for v in vals]))
        if m != reference:
            common = [s for s in seeds if s in ref]
            row["vs_reference"] = (paired_difference([per_seed[s] for s in common], [ref[s] for s in common],
                                                     confidence) if common else None)
        rows.append(row)
    return rows


def accuracies_by_method(results: Sequence[Mapping]) -> dict:
    """``{run name: {seed: final test accuracy}}`` from pipeline results (one per seed; ``runs`` of each)."""
    acc: dict = {}
    for res in results:
        for name, run in res["runs"].items():
            acc.setdefault(name, {})[int(res["seed"])] = float(run["final"]["test_accuracy"])
    return acc


def _cumulative(records: Sequence[Mapping], values: Sequence[float]) -> tuple[list, list]:
    seconds = np.cumsum([float(r["wall_s"]) for r in records]).tolist()
    best = np.maximum.accumulate(np.asarray(values, float)).tolist()
    return seconds, best


def anytime_trace(run: Mapping) -> dict:
    """The anytime trace of one search result (FUSE, random, DARTS or TETLO; see the module docstring)."""
    method = run.get("method")
    if method == "fuse":
        hist = run["history"]
        seconds, best = _cumulative(hist, [max(h["val_accuracy"]) for h in hist])
        return {"kind": "fuse", "seconds": seconds, "best_val": best, "measured": "candidates' own val accuracy"}
    if method == "random":
        ev = run["evaluations"]
        seconds, best = _cumulative(ev, [e["val_accuracy"] for e in ev])
        return {"kind": "random", "seconds": seconds, "best_val": best, "measured": "candidates' val accuracy"}
    if method in ("darts1", "darts2", "tetlo"):
        return {"kind": "supernet", "seconds": [float(run["search_wall_s"])],
                "best_val": [float(run["supernet_val_accuracy"])], "measured": "supernet val accuracy at the end"}
    raise ValueError(f"anytime_trace: unknown search method {method!r}")


__all__ = ["TRACE_NOTES", "accuracies_by_method", "anytime_trace", "binomial_std", "paired_difference", "paired_table"]
