"""Running models in ONNX Runtime (imported lazily)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spa.errors import UserError
from spa.ort import create_session

__all__ = ["run_model"]

logger = logging.getLogger(__name__)


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
    try:
        values = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    except Exception as error:  # ORT raises its own Fail/InvalidArgument types
        where = str(model) if isinstance(model, str | os.PathLike) else "model"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{where}: ONNX Runtime failed to run it ({first}); check the node it names"
        ) from None
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}
