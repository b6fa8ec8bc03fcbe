"""Multi-host start-up: ``jax.distributed.initialize`` from the environment, CPU collectives included.

Every host runs the same command with ``--distributed`` and

    JAX_COORDINATOR_ADDRESS=host0:port   JAX_NUM_PROCESSES=N   JAX_PROCESS_ID=i   (0 <= i < N)

(or a cluster JAX detects by itself: SLURM, Open MPI, TPU pods).  JAX 0.10 reads only the coordinator
address from the environment, so the count and the id are read here and passed explicitly.  On CPU,
cross-process collectives need an implementation: gloo is selected unless the user chose one
(``JAX_CPU_COLLECTIVES_IMPLEMENTATION``).  Each process then sees every host's devices in
``jax.devices()``; the Fisher engine shards the example axis over them, and the results equal the
single-process ones (tests/test_multihost.py).
"""
from __future__ import annotations

import os

from tanas_jax.errors import UserError

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"--distributed: {name}={raw!r} is not an integer; set it to the "
                        f"{'number of processes' if 'NUM' in name else 'process index'}") from None


def initialize() -> tuple[int, int]:
    """``jax.distributed.initialize`` with the settings above; returns ``(process_id, process_count)``."""
    import jax

    address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num, pid = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
    if address and (num is None or pid is None):
        raise UserError("--distributed: JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES or JAX_PROCESS_ID is "
                        "not; set all three on every host")
    if num is not None and pid is not None and not 0 <= pid < num:
        raise UserError(f"--distributed: JAX_PROCESS_ID={pid} must be in 0..{num - 1} (JAX_NUM_PROCESSES={num})")
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--distributed: jax.distributed.initialize() failed ({e}); set "
                        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host") from None
    return jax.process_index(), jax.process_count()
