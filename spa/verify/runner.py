"""Running models in ONNX Runtime (imported lazily)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spa.errors import UserError
from spa.ort import create_session, import_onnxruntime, ort_error_message
from spa.progress import progress_bar, track

__all__ = ["run_error", "run_model", "run_model_many"]

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
    ort = import_onnxruntime()
    options = ort.RunOptions()
    options.log_severity_level = 4  # the failure becomes our one line, not ORT's log
    try:
        values = session.run(names, {k: v for k, v in feeds.items() if k in wanted}, options)
    except Exception as error:  # ORT raises its own Fail/InvalidArgument types
        raise run_error(model, session, feeds, error) from None
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def run_model_many(
    session: Any, all_feeds: Sequence[Mapping[str, np.ndarray]], description: str = ""
) -> list[dict[str, np.ndarray]]:
    """:func:`run_model` for each feed, with a progress bar. A
    :class:`spa.ort_segments.SegmentedSession` runs all feeds segment by
    segment instead, holding one segment's weights at a time."""
    if not hasattr(session, "run_many"):
        return [
            run_model(session, feeds)
            for feeds in track(all_feeds, total=len(all_feeds), description=description)
        ]
    names = [output.name for output in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    ort = import_onnxruntime()
    options = ort.RunOptions()
    options.log_severity_level = 4
    chosen = [{k: v for k, v in feeds.items() if k in wanted} for feeds in all_feeds]
    try:
        with progress_bar(total=session.segments, description=description) as advance:
            runs = session.run_many(names, chosen, options, progress=lambda: advance(1))
    except UserError:
        raise
    except Exception as error:  # ORT raises its own Fail/InvalidArgument types
        raise run_error("model", session, all_feeds[0] if all_feeds else {}, error) from None
    return [
        {name: np.asarray(value) for name, value in zip(names, values, strict=True)}
        for values in runs
    ]


def run_error(
    model: Any, session: Any, feeds: Mapping[str, np.ndarray], error: Exception
) -> UserError:
    """One-line error for ORT failing to run ``model`` on ``feeds`` (with the sizes
    the run gave its dynamic dims and how to choose others)."""
    where = str(model) if isinstance(model, str | os.PathLike) else "model"
    return UserError(
        f"{where}: ONNX Runtime failed to run it ({ort_error_message(error)})"
        f"{_dims_hint(session, feeds)}"
    )


def _dims_hint(session: Any, feeds: Mapping[str, np.ndarray]) -> str:
    """Which values the run gave the model's dynamic dims, and how to choose others."""
    used: dict[str, int] = {}
    for value in session.get_inputs():
        feed = feeds.get(value.name)
        if feed is None:
            continue
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, str) and axis < np.ndim(feed):
                used.setdefault(dim, int(np.shape(feed)[axis]))
    if not used:
        return "; check the node it names"
    chosen = ", ".join(f"{name}={size}" for name, size in used.items())
    example = next(iter(used))
    return (
        f"; the run set the dynamic dims {chosen}: if the model needs other sizes, "
        f"pass them (e.g. --dim {example}=2) or give real data with --calib"
    )
