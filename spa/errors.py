"""Error types the CLI maps to exit codes.

A :class:`UserError` is a problem with what the user gave us (a bad file, a
bad flag value). Its message is one line that names the problem and the fix;
the CLI prints it without a traceback and exits with code 1. Anything else is
an internal error and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "VerificationFailed"]


class UserError(Exception):
    """Bad input from the user: one line naming the problem and the fix."""


class VerificationFailed(Exception):
    """A numerical check failed (CLI exit code 3)."""
