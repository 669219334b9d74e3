"""Read-only analysis: channel spaces, index maps, groups, plans."""

from __future__ import annotations

__all__: list[str] = []
