"""Worked example of the Python API (docs/python_api.md): your own task from arrays, ranked against bank
bases with P(closest), a one-round FUSE, results printed and figures saved.

    .venv/bin/python docs/examples/own_task.py OUT_DIR [--bank DIR]

The data are real: Fashion-MNIST footwear (sandal, sneaker, ankle boot) when its files are on the machine
(Debian's dataset-fashion-mnist; ./setup.sh installs it), else the bundled MNIST digits 1, 4 and 7.  The
settings are tiny (``OVERRIDES``) so the whole example runs in about a minute on 2 CPU cores; drop them for
real numbers.  ``main()`` returns what it computed (tests/test_api.py checks it).
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from tanas_jax import api
from tanas_jax.data import available_sources, load_dataset

OVERRIDES = {"train.epochs": 1, "data.max_train": 300, "data.max_eval": 200, "fisher.examples": 64,
             "fuse.rounds": 1, "fuse.max_stages": 1, "fuse.weight_steps": 4, "fuse.alpha_steps": 2,
             "fuse.batch_size": 32, "final.steps": 8, "search.max_train": 200, "search.input_shape": (16, 16, 1)}
SEEDS = [0, 1]     # P(closest): in how many of the seeds' networks each base is the closest


def my_arrays(per_class: int = 150, test_per_class: int = 40):
    """``(name, x_train, y_train, x_test, y_test, class_names)``: three real classes as plain arrays,
    labels 0..2, as a user would have them."""
    if "files" in available_sources("fashion_mnist"):
        name, raw, classes = "footwear", load_dataset("fashion_mnist", "files"), {5: "sandal", 7: "sneaker",
                                                                                   9: "ankle boot"}
    else:
        name, raw, classes = "digits147", load_dataset("mnist", "bundled"), {1: "one", 4: "four", 7: "seven"}

    def pick(images, labels, n):
        idx = [np.flatnonzero(labels == c)[:n] for c in classes]
        y = np.concatenate([np.full(len(i), k) for k, i in enumerate(idx)])
        return images[np.concatenate(idx)], y

    x_train, y_train = pick(raw.train_images, raw.train_labels, per_class)
    x_test, y_test = pick(raw.test_images, raw.test_labels, test_per_class)
    return name, x_train, y_train, x_test, y_test, list(classes.values())


def bases_here() -> list[str]:
    """Three offline8 base tasks whose data this machine has (their ε-nets are trained into the bank)."""
    if "files" in available_sources("fashion_mnist"):
        return ["mnist_138", "fashion_138", "fashion_4class"]
    return ["mnist_138", "mnist_389", "mnist_4class"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder for the figures (and the bank, unless --bank)")
    p.add_argument("--bank", default=None, help="bank folder (default OUT/bank)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    # 1. a task from arrays
    name, x_train, y_train, x_test, y_test, class_names = my_arrays()
    task = api.task_from_arrays(name, x_train, y_train, x_test, y_test, class_names=class_names,
                                overrides=OVERRIDES)
    print(task)

    # 2. its epsilon-net, trained once and banked; asking again loads the banked one
    bank = api.open_bank(args.bank or os.path.join(args.out, "bank"))
    net = api.ensure_net(bank, task, seed=0, overrides=OVERRIDES)
    again = api.ensure_net(bank, task, seed=0, overrides=OVERRIDES)
    print(f"{net.net} on {task.name}: test accuracy {net.metrics['test_accuracy']:.3f} "
          f"({'trained' if net.trained else 'from the bank'}; then {'trained' if again.trained else 'from the bank'})")

    # 3. the bases ranked by Fisher distance, with P(closest) over the seeds
    ranking = api.rank(bank, task, bases=bases_here(), seeds=SEEDS, overrides=OVERRIDES)
    for r in ranking.rows:
        print(f"  {r.base:16s} {ranking.metric} {r.mean:10.4g} ± {r.std:.2g}   P(closest) {r.p_closest:.2f}")

    # 4. one round of FUSE (standard space: space=f"from:{ranking.closest}" searches the closest base's
    #    space once that base has a genotype, which api.run finds or searches itself)
    found = api.search(task, space="standard", bank=bank, save=True, overrides=OVERRIDES)
    print(f"FUSE: {found.winner_short}, test accuracy {found.final['test_accuracy']:.3f} (banked as "
          f"{task.name}'s genotype)")

    figures = {"ranking": ranking.figure(), "alpha": found.figure()}
    paths = []
    for key, fig in figures.items():
        paths.append(os.path.join(args.out, f"{key}.png"))
        fig.savefig(paths[-1])
    print("figures:", ", ".join(paths))
    return {"task": task, "bank": bank, "net": net, "again": again, "ranking": ranking, "search": found,
            "figures": figures, "paths": paths}


if __name__ == "__main__":
    main()
