"""tanas_jax: task-aware neural architecture search in JAX.

Fisher-information task distances between a bank of trained networks, search
spaces built from the closest task's cells, and FUSE search.
"""
from tanas_jax._xla import apply_default_flags as _apply_default_flags

_apply_default_flags()

__version__ = "0.1.0"
