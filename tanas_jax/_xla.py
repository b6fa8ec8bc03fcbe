"""XLA flags that this package sets before JAX starts its CPU backend.

Measured on 2-core x86 CPUs with jaxlib 0.10.2 (see benchmarks/ and docs):
jaxlib routes convolutions to YNNPACK by default; sending them back to Eigen
(``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``) makes
conv forward+backward ~1.5x faster and kernel gradients ~10x more accurate.

XLA reads ``XLA_FLAGS`` when the backend is first *initialised* (first array
op), not when ``jax`` is imported, so setting it on package import works as
long as no computation ran before.  Users override by setting the flag
themselves in ``XLA_FLAGS`` (their value wins) or disable our defaults with
``TANAS_NO_XLA_DEFAULTS=1``.
"""
from __future__ import annotations

import os

DEFAULT_FLAGS = {
    "--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
}


def apply_default_flags() -> str:
    """Add our default XLA flags to ``XLA_FLAGS`` unless the user set them.

    Returns the resulting ``XLA_FLAGS`` string (recorded in result files).
    """
    if os.environ.get("TANAS_NO_XLA_DEFAULTS") == "1":
        return os.environ.get("XLA_FLAGS", "")
    current = os.environ.get("XLA_FLAGS", "")
    parts = current.split()
    names = {p.split("=", 1)[0] for p in parts}
    for name, value in DEFAULT_FLAGS.items():
        if name not in names:
            parts.append(f"{name}={value}")
    os.environ["XLA_FLAGS"] = " ".join(parts)
    return os.environ["XLA_FLAGS"]
