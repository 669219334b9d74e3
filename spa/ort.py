"""Importing ONNX Runtime, which comes from the ``cpu`` or the ``gpu`` extra.

spa needs exactly one of ``onnxruntime`` and ``onnxruntime-gpu`` (both install
the same ``onnxruntime`` module and break each other when installed together),
so neither is a hard dependency: ``pip install 'spa[cpu]'`` or ``'spa[gpu]'``.
"""

from __future__ import annotations

from types import ModuleType

from spa.errors import UserError

__all__ = ["import_onnxruntime"]


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "ONNX Runtime is not installed; pip install 'spa[cpu]' (or 'spa[gpu]' for CUDA)"
        ) from None
    return onnxruntime
