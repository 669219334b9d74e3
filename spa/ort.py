"""Importing ONNX Runtime, which comes from the ``cpu`` or the ``gpu`` extra.

spa needs exactly one of ``onnxruntime`` and ``onnxruntime-gpu`` (both install
the same ``onnxruntime`` module and break each other when installed together),
so neither is a hard dependency: ``pip install 'spa[cpu]'`` or ``'spa[gpu]'``.
"""

from __future__ import annotations

import contextlib
import tempfile
from types import ModuleType

import onnx

from spa.errors import UserError

__all__ = ["import_onnxruntime", "symbolic_shape_inference"]


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "ONNX Runtime is not installed; pip install 'spa[cpu]' (or 'spa[gpu]' for CUDA)"
        ) from None
    return onnxruntime


def symbolic_shape_inference(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's symbolic shape inference (knows contrib ops, solves dims).

    Runs in a temporary working folder: on incomplete inference the tool writes
    ``sym_shape_infer_temp.onnx`` and its data into the current folder, which
    would litter the user's. Raises whatever the tool raises.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    with tempfile.TemporaryDirectory(prefix="spa-symbolic-") as folder, contextlib.chdir(folder):
        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
