"""Random-search baseline with FUSE's budget.

Public API::

    fuse_budget(cfg) -> {'evaluations', 'steps_per_evaluation'}
    random_search(data, space, cfg, seed, budget=None, steps=None, log=print, final=True) -> dict

Budget (TA-NAS Table 1 compares FUSE with random search "with the same
budget"): the same number of candidate evaluations as FUSE — ``rounds x
candidates`` — each candidate trained alone for the number of weight steps a
FUSE candidate gets at most in a round (``max_stages x weight_steps``, same
batch size and optimiser).  The candidate with the best validation accuracy
wins; it is trained from scratch like FUSE's winner
(:func:`tanas_jax.search.fuse.train_final`) and evaluated once on the test split.

Candidate i is drawn from ``SeedSequence([seed, 2_000_000 + i])`` (distinct
from the earlier ones when the space allows) and initialised from
``SeedSequence([seed, 2_000_000 + i, 1])``: results are reproducible.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from tanas_jax.search.fuse import FuseConfig, _gen, train_final, train_single
from tanas_jax.search.network import param_count

STREAM = 2_000_000


def fuse_budget(cfg: FuseConfig) -> dict:
    return {"evaluations": cfg.rounds * cfg.candidates, "steps_per_evaluation": cfg.max_stages * cfg.weight_steps}


def random_search(data, space, cfg: FuseConfig, seed: int = 0, *, budget: int | None = None,
                  steps: int | None = None, log: Callable[[str], None] = print, final: bool = True) -> dict:
    b = fuse_budget(cfg)
    n = int(budget if budget is not None else b["evaluations"])
    steps = int(steps if steps is not None else b["steps_per_evaluation"])
    t0 = time.perf_counter()
    evaluations, seen = [], []
    compile_s = 0.0
    for i in range(n):
        g = space.sample_distinct(_gen(seed, STREAM + i), 1, exclude=seen)[0]
        seen.append(g)
        t = time.perf_counter()
        fs, state, info = train_single(g, data, cfg, [seed, STREAM + i], steps)
        acc, _ = fs.accuracy(state, data.x_val, data.y_val)
        compile_s += info["compile_s"]
        evaluations.append({"index": i, "genotype": g.to_dict(), "steps": steps,
                            "val_accuracy": float(acc[0]), "params": param_count(state["params"]["weights"][0]),
                            "wall_s": time.perf_counter() - t, "compile_s": info["compile_s"]})
        log(f"random {i + 1}/{n}: val acc {float(acc[0]):.3f}  {g.short()}")
    best = int(np.argmax([e["val_accuracy"] for e in evaluations]))
    winner = seen[best]
    result = {"method": "random", "space": space.to_dict(), "settings": cfg.to_dict(), "seed": seed,
              "budget": {"evaluations": n, "steps_per_evaluation": steps},
              "evaluations": evaluations, "best": best, "winner": winner.to_dict(),
              "winner_short": winner.short(), "search_wall_s": time.perf_counter() - t0,
              "search_compile_s": compile_s, "candidate_evaluations": n}
    if final:
        result["final"] = train_final(winner, data, cfg, seed)
    return result
