"""User-facing errors.

A :class:`UserError` is a mistake of the user's (bad name, missing data,
unwritable folder): the command-line tools print its message as one line and
exit with status 2, without a traceback.  Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """One-line, actionable error: what was wrong, what is valid, how to fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class CorruptEntryError(UserError):
    """A bank entry or checkpoint failed its integrity check."""


def did_you_mean(name: str, valid) -> str:
    """A short hint listing valid names (closest first when one is close)."""
    import difflib

    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"valid: {', '.join(valid)}{hint}"
