"""Running models in ONNX Runtime (imported lazily)."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from spa.errors import UserError
from spa.model_io import proto_stored_bytes
from spa.ort import create_session, import_onnxruntime, ort_error_message
from spa.progress import progress_bar, track

__all__ = ["run_error", "run_model", "run_model_many", "runnable_dims"]

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


#: Sizes :func:`runnable_dims` tries for the dynamic dims a model cannot run at 1.
PROBE_SIZES = (32, 64, 128, 256, 512, 1024)
#: Larger models are not probed (loading them twice would cost more than it saves).
PROBE_MAX_BYTES = 1 << 30
#: Two dims and their sum, for a dim that must be the sum of two others (a KV
#: cache's ``total = past + seq``); distinct, so that no other relation holds.
SUM_SIZES = (3, 4)

#: The probe stops trying sizes after this many seconds (a decoder whose ``past``
#: and ``total`` lengths must agree runs at no common size).
PROBE_SECONDS = 20.0


def runnable_dims(
    model: str | os.PathLike[str],
    proto: onnx.ModelProto,
    *,
    shapes: Mapping[str, tuple[int, ...]],
    dims: Mapping[str, int],
    int_ranges: Mapping[str, tuple[int, int]],
) -> dict[str, int]:
    """Sizes for the dynamic dims that neither ``dims`` nor ``shapes`` set, when the
    model does not run with them at 1 (the seeded inputs' default).

    At 1, a CNN's height and width vanish after a few strided layers (a detector's
    Concat of upsampled and skipped features then fails) and an audio model's
    reflect padding has no samples to mirror. The model is run once at the
    defaults; only if ONNX Runtime fails (or an output comes out with a dim named
    like an input's at another size: a cache step at past = seq = total = 1 runs,
    and writes its present cache at total 2), the open dims that never lead an input
    (batch-like dims stay 1) take each of :data:`PROBE_SIZES` in turn, all together,
    then (dims the model leaves unnamed may be unrelated) one input's unnamed dims
    at a time. If none runs, one named dim is tried as the sum of two others
    (:data:`SUM_SIZES`): a decoder step with a KV cache needs ``total = past +
    seq``, and no common size gives that.

    ``proto`` is the model at ``model``, read without its weights. Returns the
    first sizes that run, or ``{}`` (the defaults run, nothing is open, the model
    is over :data:`PROBE_MAX_BYTES`, or no size runs within :data:`PROBE_SECONDS`:
    the later run reports the failure with its dims).
    """
    from spa.verify.feeds import input_specs, make_feeds

    specs = input_specs(proto)
    open_dims: list[str] = []
    unnamed: dict[str, list[str]] = {}  # per input: its dims the model gives no name
    leading: set[str] = set()
    for spec in specs:
        if spec.name in shapes:
            continue
        for axis, dim in enumerate(spec.dims):
            if not isinstance(dim, str) or dim in dims:
                continue
            if axis == 0:
                leading.add(dim)
            elif dim not in open_dims:
                open_dims.append(dim)
                if dim == f"{spec.name}:{axis}":
                    unnamed.setdefault(spec.name, []).append(dim)
    every = sorted(d for d in open_dims if d not in leading)
    if not every or proto_stored_bytes(model, proto) > PROBE_MAX_BYTES:
        return {}
    try:
        session = create_session(model)
    except UserError:
        return {}  # the command's own load reports it
    ort = import_onnxruntime()
    options = ort.RunOptions()
    options.log_severity_level = 4
    names = [output.name for output in session.get_outputs()]

    declared = [list(output.shape) for output in session.get_outputs()]

    def runs(sizes: Mapping[str, int]) -> bool:
        feeds = make_feeds(specs, shapes=shapes, dims={**dims, **sizes}, int_ranges=int_ranges)
        try:
            outputs = session.run(names, feeds, options)
        except Exception:  # ORT raises its own Fail/InvalidArgument types
            return False
        return consistent(feeds, outputs)

    def consistent(feeds: Mapping[str, Any], outputs: list[Any]) -> bool:
        """Whether every output dim named like an input dim came out at the size that input set
        (a cache step at past = seq = total = 1 runs, but writes present.* with total 2)."""
        bound: dict[str, int] = {}
        for spec in specs:
            for axis, dim in enumerate(spec.dims):
                if isinstance(dim, str) and axis < np.ndim(feeds[spec.name]):
                    bound.setdefault(dim, int(np.shape(feeds[spec.name])[axis]))
        for dims_out, value in zip(declared, outputs, strict=True):
            shape = np.shape(value) if isinstance(value, np.ndarray) else ()
            for axis, dim in enumerate(dims_out):
                if isinstance(dim, str) and dim in bound and axis < len(shape) and shape[axis] != bound[dim]:
                    return False
        return True

    if runs({}):
        return {}
    deadline = time.monotonic() + PROBE_SECONDS
    for size in PROBE_SIZES:
        variants = [every] + [sorted(found) for found in unnamed.values()]
        tried: list[list[str]] = []
        for variant in variants:
            if variant in tried:
                continue
            tried.append(variant)
            if time.monotonic() > deadline:
                return {}
            sizes = {d: size for d in variant}
            if runs(sizes):
                return sizes
    named = [d for d in every if not any(d in found for found in unnamed.values())]
    for total in named:
        others = [d for d in named if d != total]
        for first, second in itertools.combinations(others, 2):
            if time.monotonic() > deadline:
                return {}
            sizes = {first: SUM_SIZES[0], second: SUM_SIZES[1], total: sum(SUM_SIZES)}
            if runs(sizes):
                return sizes
    return {}
