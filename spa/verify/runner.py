"""Running models in ONNX Runtime (imported lazily)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spa.errors import UserError
from spa.ort import import_onnxruntime

__all__ = ["create_session", "run_model"]

logger = logging.getLogger(__name__)


def create_session(
    model: str | os.PathLike[str] | bytes,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 0,
) -> Any:
    """An ORT InferenceSession for a model path (external data allowed) or bytes."""
    ort = import_onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(Path(model))
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as error:  # ORT raises its own Fail/InvalidGraph types
        where = "model" if isinstance(model, bytes) else str(model)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UserError(
            f"{where}: ONNX Runtime cannot load it ({first_line}); check the model with `spa inspect`"
        ) from None


def run_model(
    model: str | os.PathLike[str] | bytes | Any,
    feeds: Mapping[str, np.ndarray],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> dict[str, np.ndarray]:
    """Run once; returns output name -> array. ``model`` may be an existing session."""
    session: Any = model if hasattr(model, "run") else create_session(model, providers=providers)
    names = [output.name for output in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    values = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}
