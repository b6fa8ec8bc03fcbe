"""Command-line entry points (``bin/*`` and the ``tanas-*`` console scripts).

Each module is argument parsing plus one call into the library: ``common``
holds what they share (the ``cli_main`` error wrapper, the ``tanas_jax``
logger set-up and ``--no-progress``, ``make_parser``, ``parse_seeds`` /
``parse_names`` / ``parse_tasks``, the common flags, result files).  The
pipeline of ``bin/tanas`` lives in :mod:`tanas_jax.pipeline`, its report in
:mod:`tanas_jax.report`.  A command never changes the config it was handed:
command-line settings make a new one with :func:`tanas_jax.config.updated`.
"""
