"""Importing ONNX Runtime, which comes from the ``cpu`` or the ``gpu`` extra.

spa needs exactly one of ``onnxruntime`` and ``onnxruntime-gpu`` (both install
the same ``onnxruntime`` module and break each other when installed together),
so neither is a hard dependency: ``pip install 'spa[cpu]'`` or ``'spa[gpu]'``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from spa.errors import UserError, first_line

__all__ = ["create_session", "import_onnxruntime", "ort_error_message", "symbolic_shape_inference"]

logger = logging.getLogger(__name__)


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

    # Its warnings ("Unable to determine if floor(...) <= ..., treat as equal") are
    # about dims it merges; spa reports what stays unknown itself.
    tool_logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = tool_logger.level
    tool_logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="spa-symbolic-") as folder, contextlib.chdir(folder):
            return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    finally:
        tool_logger.setLevel(level)


def create_session(
    model: str | os.PathLike[str] | bytes,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 0,
    external_folder: Path | None = None,
    optimization: str = "all",
) -> Any:
    """An ORT InferenceSession for a model path (external data allowed) or bytes
    (whose external data, if any, ORT reads from ``external_folder``), with
    ORT's graph optimizations at ``optimization`` ("all", "basic" or "none")."""
    ort = import_onnxruntime()

    options = ort.SessionOptions()
    # Failures reach the user as spa's one-line errors; ORT's own error log would
    # repeat them (a failing If body logs each level) unless spa runs with -v.
    options.log_severity_level = 3 if logger.isEnabledFor(logging.INFO) else 4
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if threads:
        options.intra_op_num_threads = threads
    if external_folder is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(external_folder)
        )
    source = model if isinstance(model, bytes) else str(Path(model))
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as error:  # ORT raises its own Fail/InvalidGraph types
        where = "model" if isinstance(model, bytes) else str(model)
        message = ort_error_message(error)
        plugin = re.search(r"\bspa:(\w+)\(-?\d+\) is not a registered", message)
        if plugin:  # spa's TensorRT plugin ops (plugins/README.md): TensorRT runs them, not ORT
            raise UserError(
                f"{where}: ONNX Runtime cannot run spa's TensorRT plugin op {plugin.group(1)}; "
                "skip the check with --no-verify, or run the plugin-to-ort pass on a copy to "
                "check it in ONNX Runtime"
            ) from None
        raise UserError(
            f"{where}: ONNX Runtime cannot load it ({message}); check the model with `spa inspect`"
        ) from None


def ort_error_message(error: BaseException) -> str:
    """The first line of an ORT error without its source-file and signature noise."""
    text = first_line(error).replace("[ONNXRuntimeError] : ", "")
    # "/onnxruntime_src/.../reshape_helper.h:84 onnxruntime::ReshapeHelper::ReshapeHelper(...) "
    return re.sub(r"/\S*onnxruntime_src/\S+:\d+ (\S+\(.*?\) )?", "", text)
