"""Progress bars for long work, shown only when the CLI turns them on.

The library never prints; :func:`enable` (called by the ``spa`` command) lets
:func:`track` draw a tqdm bar on stderr, and tqdm hides it when stderr is not
a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["enable", "enabled", "progress_bar", "track"]

T = TypeVar("T")
_ENABLED = False


def enable(on: bool = True) -> None:
    """Let :func:`track` draw bars (the CLI calls this once)."""
    global _ENABLED
    _ENABLED = on


def enabled() -> bool:
    return _ENABLED


def track(items: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
    """Iterate ``items``, with a bar on stderr when enabled and stderr is a terminal."""
    if not _ENABLED:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=description, leave=False, disable=None)


@contextmanager
def progress_bar(*, total: int | None, description: str = "") -> Iterator[Callable[[int], None]]:
    """A bar advanced by hand (``advance(n)``), for work done in batches."""
    if not _ENABLED:
        yield lambda count: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, leave=False, disable=None) as bar:
        yield bar.update
