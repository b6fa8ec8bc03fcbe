"""``bin/fuse``: FUSE architecture search for a target task (TA-NAS Algorithms 1-2).

    bin/fuse --task mnist_10way --space from:task7 [--candidates 3] [--rounds 10] [--bank DIR] [--out DIR]
    bin/fuse --task mnist_10way --compare standard,from:task7,random --out DIR
    bin/fuse ... [--winner alpha|val] [--mixture probs|logits|log_softmax] [--margin 0.25]

Searches cells in ``--space`` (standard | from:TASK | from:closest[:k] |
ops:a,b,c | a JSON file), trains the winner from scratch, tests it once and
stores its genotype in the bank as the target's (the target becomes a base
task; ``--no-bank-write`` to skip).  ``--compare`` runs several spaces and the
random-search baseline (``random``: same budget, samples ``--random-space``)
and prints a table.  With ``--out`` every run is checkpointed after each round
in ``OUT/checkpoints/``; rerunning the same command resumes (``--restart``
starts over).  Writes ``OUT/result.json`` and ``OUT/alpha_<space>.png`` (softmax(α), each round's
margin and the candidates' own validation accuracies).  ``--winner``, ``--mixture`` and ``--margin`` set
the ``fuse`` section's fields of the same names (see :mod:`tanas_jax.search.fuse`).
"""
from __future__ import annotations

import argparse
import os
import re
import time

from tanas_jax.cli.common import (
    add_common_args,
    check_out_dir,
    cli_main,
    config_from_args,
    logger,
    make_parser,
    open_bank,
    parse_task,
    print_table,
    progress_from_args,
    run_as_script,
    updated,
    write_result,
)
from tanas_jax.errors import UserError, did_you_mean

COLUMNS = ["method", "space", "test_acc", "val_acc", "params", "search_s", "compile_s", "evals", "winner"]


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("fuse", "FUSE architecture search for a target task.")
    p.add_argument("--task", required=True, help="target task name or alias (e.g. mnist_10way, task3)")
    p.add_argument("--space", default=None,
                   help="search space: standard | from:TASK | from:closest[:k] | ops:a,b,c | FILE.json "
                        "(default: config search.space)")
    p.add_argument("--compare", default=None,
                   help="comma-separated spaces and/or 'random', run side by side, e.g. "
                        "standard,from:task7,random")
    p.add_argument("--random-space", default=None, help="with --compare ...,random: the space the random baseline "
                   "samples (default standard)")
    p.add_argument("--candidates", type=int, default=None, help="C, candidates per round (config fuse.candidates)")
    p.add_argument("--rounds", type=int, default=None, help="I, rounds (config fuse.rounds)")
    p.add_argument("--winner", default=None, metavar="alpha|val",
                   help="a round's winner: alpha = argmax α (the papers' eq. 10) | val = the candidate with the best "
                        "own validation accuracy (config fuse.winner, default alpha)")
    p.add_argument("--mixture", default=None, metavar="probs|logits|log_softmax",
                   help="what α mixes: probs (default) | logits (the papers' eq. 7, for reproduction) | log_softmax "
                        "(config fuse.mixture)")
    p.add_argument("--margin", type=float, default=None,
                   help="a round stops once softmax(α)'s leader beats the runner-up by more than this "
                        "(config fuse.margin; 1 = never early)")
    p.add_argument("--restart", action="store_true", help="ignore and replace existing checkpoints in --out")
    p.add_argument("--no-bank-write", action="store_true", help="do not store the winner in the bank")
    add_common_args(p)
    return p


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s)


def closest_fn_for(bank, cfg, log=logger.info):
    """Ranking of base tasks for ``from:closest``: ``tanas_jax.distance.closest_bases``.

    Bases are ``cfg.tanas.bases`` minus the target, ranked by ``cfg.tanas.metric``
    (Fishers and networks come from the bank, computed when missing).  ``cfg`` is not changed.
    """
    metric = cfg.tanas.metric
    dcfg = updated(cfg, {"distance.metric": metric}) if metric != "transform" else cfg

    def fn(target):
        from tanas_jax.distance import closest_bases

        return list(closest_bases(bank, target, dcfg, metric=metric, log=log))

    return fn


SPACE_FORMS = ("standard", "random", "from:TASK", "from:closest", "ops:a,b,c", "FILE.json")


def _methods(args, cfg) -> list[str]:
    """The spaces to search (and ``random``), in order: ``--compare``, else ``--space`` / search.space; flags
    that the chosen mode ignores are refused."""
    if args.compare is None:
        if args.random_space is not None:
            raise UserError("--random-space is used only by --compare ...,random; drop it or add random to --compare")
        return [cfg.search.space if args.space is None else args.space]
    if args.space is not None:
        raise UserError("give --space for one search or --compare for several, not both")
    methods = list(dict.fromkeys(m.strip() for m in args.compare.split(",") if m.strip()))
    if not methods:
        raise UserError("--compare is empty; give e.g. standard,from:task7,random")
    for m in methods:
        if not (m in ("standard", "random") or m.startswith(("from:", "ops:")) or m.endswith(".json")
                or os.path.exists(m)):
            raise UserError(f"unknown --compare item '{m}'; {did_you_mean(m, SPACE_FORMS)}")
    if args.random_space is not None and "random" not in methods:
        raise UserError("--random-space is used only when --compare lists random; drop it or add random")
    return methods


def resolve_spaces(specs: dict[str, str], args, cfg, target: str) -> dict:
    """``{name: --space spec}`` -> ``{name: SearchSpace}``, checked before any work: the bank is only read
    (nothing is created), and ``from:closest`` (which needs task distances, i.e. work) is resolved last."""
    from tanas_jax.search.spaces import closest_k, resolve_space

    lazy = [m for m, spec in specs.items() if spec.strip().startswith("from:closest")]
    for m in lazy:
        closest_k(specs[m].strip())
    reader = open_bank(args, create=False)
    spaces = {m: resolve_space(spec, bank=reader, target=target, log=logger.info)
              for m, spec in specs.items() if m not in lazy}
    if lazy:
        bank = open_bank(args)
        closest = closest_fn_for(bank, cfg, logger.info)
        spaces.update({m: resolve_space(specs[m], bank=bank, target=target, closest_fn=closest, log=logger.info)
                       for m in lazy})
    return {m: spaces[m] for m in specs}


def _search_one(m: str, space, data, fcfg, args, target: str, final) -> dict:
    """One FUSE search (checkpointed in ``--out``) or the random baseline."""
    from tanas_jax.search import checkpoint as ckpt
    from tanas_jax.search.fuse import fuse_search
    from tanas_jax.search.plots import plot_alpha
    from tanas_jax.search.random_search import random_search

    logger.info(f"== {m}: space {space.name} ({len(space.ops)} ops: {', '.join(space.ops)}; {space.size()} cells)")
    if m == "random":
        return random_search(data, space, fcfg, args.seed, final=final, log=logger.info)
    ck_dir = os.path.join(args.out, "checkpoints", _slug(m)) if args.out else None
    if ck_dir and args.restart and os.path.exists(ckpt.path(ck_dir)):
        os.unlink(ckpt.path(ck_dir))
    res = fuse_search(data, space, fcfg, args.seed, final=final, checkpoint_dir=ck_dir, log=logger.info)
    if args.out and res["history"]:
        res["alpha_plot"] = plot_alpha(res["history"], os.path.join(args.out, f"alpha_{_slug(m)}.png"),
                                       f"FUSE {target}, space {m}")
    return res


def _row(m: str, space, res: dict) -> dict:
    f = res["final"]
    return {"method": "random" if m == "random" else "fuse", "space": space.name,
            "test_acc": f["test_accuracy"], "val_acc": f["val_accuracy"], "params": f["params"],
            "search_s": res["search_wall_s"], "compile_s": res["search_compile_s"],
            "evals": res["candidate_evaluations"], "winner": res["winner_short"]}


def _bank_best(runs: dict, bank, target: str, data, fcfg, args) -> str | None:
    """Store the best FUSE winner (by validation accuracy) as the target's genotype; returns its space."""
    from tanas_jax.search.genotype import Genotype
    from tanas_jax.search.network import get_skeleton

    fuse_runs = [(m, r) for m, r in runs.items() if m != "random"]
    if not fuse_runs:
        return None
    m, best = max(fuse_runs, key=lambda mr: mr[1]["final"]["val_accuracy"])
    meta = {"source": "bin/fuse", "space": m, "seed": args.seed, "skeleton": get_skeleton(fcfg.skeleton).to_dict(),
            "val_accuracy": best["final"]["val_accuracy"], "test_accuracy": best["final"]["test_accuracy"],
            "params": best["final"]["params"], "data": data.record(), "out": args.out}
    bank.save_genotype(target, Genotype.from_dict(best["winner"]).to_dict(), meta)
    logger.info(f"bank: stored the {m} winner as {target}'s genotype in {bank.root}")
    return m


def run(argv) -> int:
    from tanas_jax.config import FuseConfig, from_section, section
    from tanas_jax.pipeline import search_data
    from tanas_jax.search.runtime import enable_compilation_cache

    args = build_parser().parse_args(argv)
    progress_from_args(args)
    cfg = config_from_args(args)
    fcfg = from_section(FuseConfig, cfg.fuse, candidates=args.candidates, rounds=args.rounds, winner=args.winner,
                        mixture=args.mixture, margin=args.margin)
    enable_compilation_cache(fcfg.compilation_cache)
    target = parse_task(args.task)
    check_out_dir(args.out, restart=args.restart)
    methods = _methods(args, cfg)
    spaces = resolve_spaces({m: (args.random_space or "standard") if m == "random" else m for m in methods},
                            args, cfg, target)
    bank = open_bank(args)
    data = search_data(cfg, target)
    logger.info(data.summary())
    t_all = time.perf_counter()
    runs = {m: _search_one(m, spaces[m], data, fcfg, args, target, section(cfg, "final")) for m in methods}
    rows = [_row(m, spaces[m], runs[m]) for m in methods]
    print()
    table = print_table(rows, COLUMNS)
    banked = None
    if not args.no_bank_write and cfg.search.write_bank:
        banked = _bank_best(runs, bank, target, data, fcfg, args)
    result = {"command": "fuse", "task": target, "seed": args.seed, "config": cfg.to_dict(),
              "data": data.record(), "methods": methods, "runs": runs,
              "table": rows, "table_text": table,
              "banked": banked, "wall_s": time.perf_counter() - t_all}
    path = write_result(args.out, result)
    if path:
        logger.info(f"wrote {path}")
    return 0


main = cli_main(run)

if __name__ == "__main__":
    run_as_script(main)
