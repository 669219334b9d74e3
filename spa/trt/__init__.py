"""spa's TensorRT plugin side: repacking into kernel layouts, the plugin-form
rewrite passes' contracts, and the engine builder (TensorRT imported lazily)."""

from __future__ import annotations

__all__: list[str] = []
