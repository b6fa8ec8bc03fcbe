"""Random-search baseline with FUSE's budget.

Public API::

    fuse_budget(cfg) -> {'evaluations', 'steps_per_evaluation'}
    random_search(data, space, cfg, seed, *, budget=None, steps=None, final=FinalConfig(),
                  final_data=None, log=print) -> dict

Budget (TA-NAS Table 1 compares FUSE with random search "with the same
budget"): the same number of candidate evaluations as FUSE — ``rounds x
candidates`` — each candidate trained alone for the number of weight steps a
FUSE candidate gets at most in a round (``max_stages x weight_steps``, same
batch size, optimiser and skeleton: :func:`tanas_jax.search.runtime.train_single`
with FUSE's settings).  The candidate with the best validation accuracy wins;
it is trained from scratch by the one final protocol
(:func:`tanas_jax.search.runtime.train_final`) and evaluated once on the test split.

Candidate i is drawn from ``SeedSequence([seed, 2_000_000 + i])`` (distinct
from the earlier ones when the space allows) and initialised from
``SeedSequence([seed, 2_000_000 + i, 0])``: results are reproducible.  Every
candidate (and the final training) runs in the space's switch network
(:class:`tanas_jax.search.runtime.SingleSteps` with the space's op set): one
compiled step for every candidate; numbers equal each candidate's own network's
to float rounding.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from tanas_jax.config import FinalConfig, FuseConfig, to_dict
from tanas_jax.search.network import param_count
from tanas_jax.search.runtime import DEFAULT_FINAL, rng, train_final, train_single

STREAM = 2_000_000


def fuse_budget(cfg: FuseConfig) -> dict:
    return {"evaluations": cfg.rounds * cfg.candidates, "steps_per_evaluation": cfg.max_stages * cfg.weight_steps}


def candidate_recipe(cfg: FuseConfig, steps: int) -> FinalConfig:
    """How one random candidate is trained: FUSE's optimiser, batch, skeleton and eval batch."""
    return FinalConfig(steps=steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                       eval_batch_size=cfg.eval_batch_size, skeleton=cfg.skeleton)


def random_search(data, space, cfg: FuseConfig, seed: int = 0, *, budget: int | None = None,
                  steps: int | None = None, final: FinalConfig | None = DEFAULT_FINAL, final_data=None,
                  log: Callable[[str], None] = print) -> dict:
    b = fuse_budget(cfg)
    n = int(budget if budget is not None else b["evaluations"])
    steps = int(steps if steps is not None else b["steps_per_evaluation"])
    recipe = candidate_recipe(cfg, steps)
    t0 = time.perf_counter()
    evaluations, seen = [], []
    compile_s = 0.0
    for i in range(n):
        g = space.sample_distinct(rng(seed, STREAM + i), 1, exclude=seen)[0]
        seen.append(g)
        t = time.perf_counter()
        fs, state, info = train_single(g, data, recipe, [seed, STREAM + i], steps, space.ops)
        acc = fs.accuracy(state, data.x_val, data.y_val)
        compile_s += info["compile_s"]
        evaluations.append({"index": i, "genotype": g.to_dict(), "steps": steps,
                            "val_accuracy": acc, "params": param_count(fs.variables(state, g)["params"]),
                            "wall_s": time.perf_counter() - t, "compile_s": info["compile_s"]})
        log(f"random {i + 1}/{n}: val acc {acc:.3f}  {g.short()}")
    best = int(np.argmax([e["val_accuracy"] for e in evaluations]))
    winner = seen[best]
    result = {"method": "random", "space": space.to_dict(), "settings": to_dict(cfg), "seed": seed,
              "budget": {"evaluations": n, "steps_per_evaluation": steps},
              "evaluations": evaluations, "best": best, "winner": winner.to_dict(),
              "winner_short": winner.short(), "search_wall_s": time.perf_counter() - t0,
              "search_compile_s": compile_s, "candidate_evaluations": n}
    if final is not None:
        result["final"] = train_final(winner, final_data if final_data is not None else data, final, seed,
                                      space.ops)
    return result
