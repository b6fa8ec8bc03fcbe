"""Quick preset: small nets and capped data so the whole pipeline runs on a 2-core CPU.

Every default and its meaning lives in the section dataclasses of ``tanas_jax.config``; this preset
only states where it differs from them.  Override any field on the command line with
``--set section.field=value``.
"""
from tanas_jax.config import preset

OVERRIDES = {
    # transform distance: faster pruning schedule, capped examples (small_cnn features, F = 64)
    "transform": {"prune_rate": 0.3, "refine": 1, "min_fraction": 0.005, "max_steps": 40,
                  "max_train": 2000, "max_val": 1000},
    # FUSE: 3 rounds x at most 3 stages so bin/tanas (4 searches) fits a 2-core CPU (a round ends early once
    # softmax(α)'s leader beats the runner-up by fuse.margin; every round logs its margin); persistent XLA cache:
    # a rerun (or resume) loads the round's compiled steps (env TANAS_XLA_CACHE=DIR overrides, =0 disables)
    "fuse": {"max_stages": 3, "weight_steps": 30, "compilation_cache": "~/.cache/tanas_jax/xla"},
    # DARTS / TETLO: MNIST digits sit in the central 20x20 box: the crop halves the supernet's CPU cost
    "search.darts": {"steps": 60, "batch_size": 32, "history_every": 5, "checkpoint_every": 20,
                     "input_shape": (20, 20, 1)},
}


def get_config():
    return preset("quick", OVERRIDES)
