"""Paper preset: the papers' settings (VGG-16 epsilon-nets, 10 repeats, long FUSE), for GPUs.

Built on the quick preset's overrides; every default and its meaning lives in ``tanas_jax.config``.
"""
import importlib.util
import os

from tanas_jax.config import preset

_spec = importlib.util.spec_from_file_location("_tanas_quick_preset",
                                               os.path.join(os.path.dirname(__file__), "quick.py"))
_quick = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_quick)

PAPER = {
    "data": {"max_train": None, "max_eval": None},
    "train": {"net": "vgg16", "epochs": 50, "batch_size": 64, "epsilon": 0.05},   # LD-NAS: 50-100 epochs, Adam
    "bank": {"seeds": list(range(10))},            # 10 repeats, seeds 0-9
    # the papers do not state M: 2000 examples per diagonal Fisher, 1000 for full spectra (1000 x 1000 Grams)
    "fisher": {"examples": 2000, "full_examples": 1000, "memory_budget_mb": 4096},
    # TA-NAS §4: the paper's CNN (F = 1024) and a 2048 -> 512 -> 1024 transform
    "transform": {"net": "tanas_cnn", "prune_rate": 0.2, "refine": 2, "min_fraction": 0.001, "max_steps": 60,
                  "max_train": None, "max_val": None},
    # FUSE as in the authors' code: 10 stages x (3 child epochs + 10 alpha epochs) per round, 100 rounds;
    # LD-NAS §4: five candidates
    "fuse": {"candidates": 5, "rounds": 100, "max_stages": 10, "weight_steps": 500, "alpha_steps": 200,
             "skeleton": "darts"},
    "final": {"steps": 40000, "skeleton": "darts"},   # winner retrained ~50 epochs
    "search": {"input_shape": (32, 32, 3), "max_train": None},   # LD-NAS: MNIST padded to 32, 3 channels
    # DARTS schedule (50 epochs x ~390 steps of 64 on CIFAR-sized data), DARTS' rates; C=16..64: the
    # block-diagonal dense depthwise conv costs C x the flops, so grouped
    "search.darts": {"skeleton": "darts", "steps": 20000, "batch_size": 64, "w_optimizer": "sgd",
                     "learning_rate": 0.025, "weight_decay": 3e-4, "arch_learning_rate": 3e-4, "unroll_lr": 0.025,
                     "history_every": 100, "checkpoint_every": 400, "input_shape": (32, 32, 3),
                     "mixed_impl": "grouped"},
}


def get_config():
    merged = {k: dict(v) for k, v in _quick.OVERRIDES.items()}
    for sec, fields in PAPER.items():
        merged.setdefault(sec, {}).update(fields)
    return preset("paper", merged)
