"""Error types the CLI maps to exit codes.

A :class:`UserError` is a problem with what the user gave us (a bad file, a
bad flag value). Its message is one line that names the problem and the fix;
the CLI prints it without a traceback and exits with code 1. Anything else is
an internal error and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "VerificationFailed", "first_line"]


class UserError(Exception):
    """Bad input from the user: one line naming the problem and the fix."""


class VerificationFailed(Exception):
    """A numerical check failed (CLI exit code 3)."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type name when it has none):
    what a one-line error quotes of a library's exception."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
