"""Issue 11 (deliverable 4): does FUSE's α select accuracy?  The selector sanity check, per mixture.

    python experiments/selector.py [--mixtures probs,logits,log_softmax] [--seeds 0,1,2,3,4] [--stages 9]
        [--out runs/selector] [--doc docs/results_selector.md] [--render-only]

Three fixed candidates on real Fashion-MNIST (10 classes, 28x28x3, 3,000 train / 1,000 validation
examples): one cell with ``sep_conv_3x3`` on every edge, one all-``none`` cell (a constant output) and one
all-``skip_connect`` cell.  For every mixture and seed, one FUSE round (``fuse_candidates``, the quick preset's
``fuse`` section) runs ``--stages`` α stages with early stopping off (margin 1, tol 1e-9), so the pick after
3 stages (the quick preset's count) is read from the same run's softmax(α) after stage 3 -- the same numbers a
3-stage round gives (a round is a pure function of its seed; tests/test_fuse.py checks the prefix property).
Each (mixture, seed) record is saved in ``--out`` and reused by a rerun, so mixtures can run in parallel
processes and ``--render-only`` writes the table from what is there.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CELLS = ("sep_conv_3x3", "none", "skip_connect")     # candidate c: op on every edge
NAMES = ("conv", "none", "skip")
TASK, SHAPE, MAX_TRAIN, MAX_EVAL = "fashion_10way", (28, 28, 3), 3000, 1000
QUICK_STAGES = 3


def candidates():
    """The three sanity-check cells (conv on every edge, all ``none``, all ``skip_connect``)."""
    from tanas_jax.search.genotype import Genotype, authors_cell_structure

    return [Genotype(authors_cell_structure().with_ops([op] * 6)) for op in CELLS]


def sanity_data():
    from tanas_jax.tasks import load_task_data

    return load_task_data(TASK, SHAPE, "auto", max_train=MAX_TRAIN, max_eval=MAX_EVAL)


def sanity_config(mixture: str, stages: int):
    """The quick preset's ``fuse`` section with ``mixture``, ``stages`` stages, early stopping off."""
    from tanas_jax.config import FuseConfig, from_section, load_config

    return from_section(FuseConfig, load_config("quick").fuse, mixture=mixture, max_stages=stages, margin=1.0,
                        tol=1e-9)


def pick_at(rec: dict, stage: int) -> tuple[int, float]:
    """(argmax softmax(α), margin) after ``stage`` stages of a round record."""
    import numpy as np

    from tanas_jax.search.fuse import softmax_margin

    p = rec["softmax_alpha_per_stage"][min(stage, len(rec["softmax_alpha_per_stage"]) - 1)]
    return int(np.argmax(p)), softmax_margin(p)


def _run(mixture: str, seed: int, stages: int, data, out: str) -> dict:
    from tanas_jax.search import fuse_candidates

    path = os.path.join(out, f"{mixture}-seed{seed}-stages{stages}.json")
    if os.path.exists(path):
        return json.load(open(path))
    t = time.perf_counter()
    rec = fuse_candidates(candidates(), data, sanity_config(mixture, stages), seed)
    rec["run_s"] = time.perf_counter() - t
    os.makedirs(out, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f)
    os.replace(path + ".tmp", path)
    print(f"{mixture} seed {seed}: pick@3 {NAMES[pick_at(rec, 3)[0]]}, pick@{stages} {NAMES[pick_at(rec, stages)[0]]}, "
          f"softmax(α) {[round(p, 3) for p in rec['softmax_alpha_per_stage'][-1]]}, own val acc "
          f"{[round(a, 3) for a in rec['val_accuracy']]} ({rec['run_s']:.0f} s)", flush=True)
    return rec


def _row(mixture: str, recs: list[dict], stages: int) -> list[str]:
    cells = []
    for s in (QUICK_STAGES, stages):
        picks = [pick_at(r, s) for r in recs]
        n = sum(p == 0 for p, _ in picks)
        cells.append(f"**{n}/{len(recs)}**: " + ", ".join(f"{NAMES[p]} {m:.2f}" for p, m in picks))
    accs = ", ".join("/".join(f"{a:.2f}" for a in r["val_accuracy"]) for r in recs)
    by_val = sum(r["val_winner"] == 0 for r in recs)
    return [mixture, *cells, f"{by_val}/{len(recs)}", accs]


def safe_margin(recs: list[dict]) -> float:
    """The smallest margin m such that, in every run, each stage whose softmax(α) margin exceeds m already
    has the run's final leader: stopping at m would never have changed a pick (0 when no stage misleads)."""
    worst = 0.0
    for r in recs:
        final = pick_at(r, len(r["softmax_alpha_per_stage"]) - 1)[0]
        for s in range(1, len(r["softmax_alpha_per_stage"])):
            p, m = pick_at(r, s)
            if p != final:
                worst = max(worst, m)
    return worst


def stops_at(rec: dict, margin: float) -> tuple[int, int]:
    """(stage, pick) where a round with ``margin`` early stopping would end (the run's last stage if never)."""
    n = len(rec["softmax_alpha_per_stage"]) - 1
    for s in range(1, n + 1):
        p, m = pick_at(rec, s)
        if m > margin:
            return s, p
    return n, pick_at(rec, n)[0]


def _margin_lines(recs: dict, stages: int) -> list[str]:
    from tanas_jax.config import FuseConfig

    m0 = FuseConfig().margin
    lines = ["", f"**Margin.** Largest softmax(α) margin at which a stage's leader was *not* the {stages}-stage "
             "leader (a stop there would have changed the pick), per mixture: "
             + ", ".join(f"{m} {safe_margin(rs):.2f}" for m, rs in recs.items())
             + f". With the default `fuse.margin` = {m0} and `max_stages` = {stages}, rounds would stop at "
             "(stage, pick) per seed: "
             + "; ".join(f"{m}: " + ", ".join(f"{s} {NAMES[p]}" for s, p in (stops_at(r, m0) for r in rs))
                         for m, rs in recs.items()) + "."]
    return lines


def _reading(recs: dict, stages: int) -> list[str]:
    def score(m, s):
        return sum(pick_at(r, s)[0] == 0 for r in recs[m])

    summary = "; ".join(f"`{m}` {score(m, QUICK_STAGES)}/{len(rs)} after {QUICK_STAGES} and "
                        f"{score(m, stages)}/{len(rs)} after {stages} stages" for m, rs in recs.items())
    return ["", f"**Reading.** α picks the conv cell: {summary}. Under `logits` (the papers' eq. (7)) the all-`none` "
            "cell, whose output is a constant, acts as a temperature: weighting it by w scales the other cells' "
            "logits by 1 - w, and validation cross-entropy rewards that calibration, so α drifts towards `none` as "
            "stages go on (and the conv cell's own accuracy inside the mixture can drop: the candidates co-adapt "
            "to one shared output). `log_softmax` is the same loss as `logits`: Σ_c w_c log_softmax(z_c) differs from "
            "Σ_c w_c z_c by a per-example constant, which the cross-entropy's own normalisation removes, so it keeps "
            "the knob (its seed-0 run matches `logits` to 3 decimals; the other seeds were not run). "
            "Under `probs` the loss is -log of the α-weighted mixture of the "
            "candidates' class probabilities; a constant candidate contributes only 1/K to it, so weighting it "
            "costs cross-entropy wherever another candidate is right, and α follows the candidates' accuracy. "
            "A small final margin means two candidates are close in accuracy, which the own-accuracy column shows. "
            "`--winner val` (each candidate's own validation accuracy) picks conv in "
            + ", ".join(f"{sum(r['val_winner'] == 0 for r in rs)}/{len(rs)} (`{m}`)" for m, rs in recs.items())
            + f" after {stages} stages.", ""]


def render(mixtures, seeds, stages: int, out: str, doc: str, wall_s: float | None) -> str:
    from tanas_jax import provenance

    paths = {m: [os.path.join(out, f"{m}-seed{s}-stages{stages}.json") for s in seeds] for m in mixtures}
    recs = {m: [json.load(open(p)) for p in ps if os.path.exists(p)] for m, ps in paths.items()}
    recs = {m: rs for m, rs in recs.items() if rs}
    st = provenance.stamp()
    lines = [
        "## FUSE selector sanity check: conv / all-`none` / all-`skip_connect` on Fashion-MNIST", "",
        f"Command: `python experiments/selector.py --mixtures {','.join(mixtures)} --seeds "
        f"{','.join(map(str, seeds))} --stages {stages}`", "",
        f"Machine: {st['machine']['platform']}, {st['machine']['cpu_count']} CPUs shared with other jobs; "
        f"jax {st['versions'].get('jax')}, flax {st['versions'].get('flax')}."
        + (f" Wall time {wall_s / 60:.1f} min." if wall_s else "")
        + f" One {stages}-stage round took {min(r['run_s'] for rs in recs.values() for r in rs):.0f}-"
        f"{max(r['run_s'] for rs in recs.values() for r in rs):.0f} s (compile included).", "",
        f"Data: {TASK} (real Fashion-MNIST, data.source auto), {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, {MAX_TRAIN} train / "
        f"{MAX_EVAL} validation examples. One FUSE round per seed with the quick preset's `fuse` section "
        "(30 weight + 10 α steps per stage, batch 64, tiny skeleton), early stopping off; the pick after 3 stages is "
        f"softmax(α) after stage 3 of the same {stages}-stage run.", "",
        f"| mixture | α picks conv after 3 stages (pick, margin per seed) | after {stages} stages | "
        f"winner=val picks conv ({stages} stages) | own val accuracy conv/none/skip after {stages} stages, per seed |",
        "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_row(m, recs[m], stages)) + " |" for m in mixtures]
    lines += _margin_lines(recs, stages)
    lines += _reading(recs, stages)
    lines += ["", "Margin = softmax(α) of the leader minus the runner-up. Own val accuracy = each candidate "
              "evaluated alone (eval-mode BatchNorm) with the weights it has inside the mixture.", ""]
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    with open(doc, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mixtures", default="probs,logits,log_softmax")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--stages", type=int, default=3 * QUICK_STAGES)
    p.add_argument("--out", default="runs/selector")
    p.add_argument("--doc", default="docs/results_selector.md")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    mixtures = [m for m in args.mixtures.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    wall = None
    if not args.render_only:
        t0 = time.perf_counter()
        data = sanity_data()
        for m in mixtures:
            for s in seeds:
                _run(m, s, args.stages, data, args.out)
        wall = time.perf_counter() - t0
    print(render(mixtures, seeds, args.stages, args.out, args.doc, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
