"""tanas_jax: task-aware neural architecture search in JAX.

The package keeps a bank of trained networks for solved tasks, measures how far a new task is from
each of them with Fisher-information or transform-network distances, builds a search space from the
closest tasks' cells, and searches it with FUSE, random search, DARTS or TETLO.

The top level owns the foundations every stage shares -- ``errors`` (one-line user errors), ``io``
(atomic writes, hashing, figures), ``config`` (every setting's default and validation), ``layers``
(the conv and pooling layers the Fisher engine recognises), ``provenance`` -- and the stages that are
single modules: ``tasks``, ``train``, ``bank``, and ``pipeline``/``report`` that chain them.  Data
flows one way (docs/ARCHITECTURE.md; checked by tests/test_house.py)::

    errors/io/config/layers -> data -> tasks -> models -> train -> bank -> fisher -> distance
        -> search -> pipeline/report -> cli

Importing the package sets this project's default XLA CPU flags (``_xla``; docs/performance.md)
unless the user set them, so it must happen before any JAX computation.
"""
from tanas_jax._xla import apply_default_flags as _apply_default_flags

_apply_default_flags()

__version__ = "0.1.0"
