"""Command-line entry points (``bin/*`` and the ``tanas-*`` console scripts)."""
