"""Files shipped inside installed PyPI distributions (models, test data, fonts).

The real test beds take their models and data only from wheels that pip installed (the
``testbeds`` extra, see docs/testbeds.md); nothing is downloaded at run time. A missing
distribution is a :class:`~spa.errors.UserError` that names the pip command installing it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from spa.errors import UserError

__all__ = ["package_file"]


def package_file(distribution: str, relative: str, install: str) -> Path:
    """The file ``relative`` (a path inside site-packages, e.g. ``gensim/test/test_data/x``)
    of the installed ``distribution``; ``install`` is the command the error names."""
    try:
        found = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"{distribution} is not installed; {install}") from None
    path = Path(str(found.locate_file(relative)))
    if not path.is_file():
        raise UserError(f"{path} is missing from {distribution} {found.version}; {install}")
    return path
