"""Analysis defaults that the CLI shows without importing the analyzer."""

from __future__ import annotations

__all__ = ["DEFAULT_PRUNABLE_IO"]

#: Graph inputs/outputs that may change size: KV caches, whose heads follow the model.
DEFAULT_PRUNABLE_IO = r"past|present|cache"
