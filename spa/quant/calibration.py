"""Calibration for GPTQ: ``X^T X`` of the input of every target MatMul.

The intermediate values are exposed as extra graph outputs of a copy of the
model, which ONNX Runtime runs once per calibration batch; each batch's
activations are folded into a float64 ``X^T X`` and dropped, so memory stays
at one ``K x K`` matrix per distinct input (Q/K/V projections reading the
same value share one).

Calibration sources (:func:`load_calibration`):

* an ``.npz`` file: input name -> array with a leading sample axis
  (``arr[i]`` is one feed for that input, with the model's own input shape);
* a folder of ``.npy`` files named after the inputs (``<input>.npy``, any
  character outside ``[A-Za-z0-9_.-]`` written as ``_``), same convention,
  memory-mapped;
* any Python iterable of feed dicts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.errors import UserError
from spa.progress import track

__all__ = [
    "CalibrationSource",
    "ChannelStatistics",
    "HessianStatistics",
    "collect_channel_statistics",
    "collect_hessians",
    "file_name_for_input",
    "load_calibration",
]

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
CalibrationSource = str | os.PathLike[str] | Iterable[Feeds]

_PROTO_LIMIT = 1_800_000_000


@dataclasses.dataclass
class HessianStatistics:
    """``X^T X`` of one value over ``rows`` activation rows; ``hessian`` is ``2 X^T X / rows``."""

    xtx: np.ndarray
    rows: int = 0

    @property
    def hessian(self) -> np.ndarray:
        return 2.0 * self.xtx / max(self.rows, 1)


@dataclasses.dataclass
class ChannelStatistics:
    """Streamed per-channel moments of one activation over ``rows`` rows.

    A row is one position of the activation (a token, a pixel); its channel
    axis gives the columns. ``xtx`` (``C x C``, uncentred) is kept only when
    asked for; the diagonal ``sum_squares`` always is.
    """

    sums: np.ndarray
    sum_squares: np.ndarray
    xtx: np.ndarray | None = None
    rows: int = 0

    @property
    def mean(self) -> np.ndarray:
        return self.sums / max(self.rows, 1)

    @property
    def second_moment(self) -> np.ndarray:
        """``E[x x^T]`` over rows (needs ``xtx``)."""
        assert self.xtx is not None, "collected without the full X^T X"
        return self.xtx / max(self.rows, 1)

    @property
    def norms(self) -> np.ndarray:
        """``||X_c||_2`` per channel over all rows."""
        return np.sqrt(self.sum_squares)

    @property
    def variance(self) -> np.ndarray:
        """Per-channel variance over rows (the FLAP fluctuation)."""
        rows = max(self.rows, 1)
        return np.maximum(self.sum_squares / rows - self.mean**2, 0.0)

    def add(self, rows: np.ndarray) -> None:
        """Fold a ``[n, C]`` block of rows in (float64) and forget it."""
        rows = rows.astype(np.float64, copy=False)
        self.sums += rows.sum(axis=0)
        self.sum_squares += np.einsum("ij,ij->j", rows, rows)
        if self.xtx is not None:
            self.xtx += rows.T @ rows
        self.rows += rows.shape[0]


def channel_rows(value: np.ndarray, channel_axis: int) -> np.ndarray:
    """``value`` as ``[positions, channels]`` with channels on ``channel_axis``."""
    moved = np.moveaxis(value, channel_axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def file_name_for_input(name: str) -> str:
    """The ``.npy`` file name that holds input ``name`` in a calibration folder."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npy"


def _samples(arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    counts = {name: len(array) for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        raise UserError(
            f"calibration arrays have different sample counts {counts}; "
            "give every input the same leading sample axis"
        )
    for index in range(next(iter(counts.values()), 0)):
        yield {name: np.asarray(array[index]) for name, array in arrays.items()}


def load_calibration(source: CalibrationSource, input_names: list[str]) -> Iterable[Feeds]:
    """Feed dicts from an ``.npz``, a folder of ``.npy`` files, or an iterable."""
    if not isinstance(source, str | os.PathLike):
        return source
    path = Path(source)
    if not path.exists():
        raise UserError(
            f"--calib {path}: not an .npz file or a folder of .npy files (nothing is there); "
            "save calibration inputs with numpy.savez"
        )
    if path.is_dir():
        arrays: dict[str, np.ndarray] = {}
        for name in input_names:
            file = path / file_name_for_input(name)
            if not file.is_file():
                raise UserError(
                    f"--calib {path}: no '{file.name}' for input '{name}'; "
                    "save one .npy per model input (leading sample axis)"
                )
            arrays[name] = np.load(file, mmap_mode="r")
        return _samples(arrays)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as archive:
            missing = sorted(set(input_names) - set(archive.files))
            if missing:
                raise UserError(
                    f"--calib {path}: no array for input(s) {missing} "
                    f"(it has {sorted(archive.files)}); name arrays after the model inputs"
                )
            loaded = {name: archive[name] for name in input_names}
        return _samples(loaded)
    raise UserError(
        f"--calib {path}: not an .npz file or a folder of .npy files; "
        "save calibration inputs with numpy.savez"
    )


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (type float, any shape)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {output.name for output in exposed.graph.output}
    element_types = {
        info.name: info.type.tensor_type.elem_type
        for info in [*exposed.graph.value_info, *exposed.graph.input]
    }
    for name in names:
        if name not in existing:
            element = element_types.get(name) or onnx.TensorProto.FLOAT
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, element, None))
    return exposed


def _create_session(model: onnx.ModelProto, folder: Path) -> Any:
    from spa.verify.runner import create_session

    if model.ByteSize() < _PROTO_LIMIT:
        return create_session(model.SerializeToString())
    path = folder / "calibration.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="calibration.data")
    return create_session(path)


def collect_hessians(
    model: onnx.ModelProto,
    value_names: Iterable[str],
    feeds: Iterable[Feeds],
    *,
    max_samples: int | None = None,
) -> dict[str, HessianStatistics]:
    """Accumulate ``X^T X`` (float64) of each value in ``value_names`` over ``feeds``.

    ``model`` must hold its weights (load external data first). A value's
    activation ``[..., K]`` contributes its rows ``reshape(-1, K)``.
    """
    names = sorted(set(value_names))
    statistics: dict[str, HessianStatistics] = {}
    if not names:
        return statistics
    for _, outputs in _calibration_runs(model, names, feeds, max_samples, len(names)):
        for name in names:
            _accumulate(statistics, name, np.asarray(outputs[name]))
        del outputs
    return statistics


def collect_channel_statistics(
    model: onnx.ModelProto,
    values: Mapping[str, int],
    feeds: Iterable[Feeds],
    *,
    full: bool = False,
    max_samples: int | None = None,
) -> dict[str, ChannelStatistics]:
    """Per-channel statistics of each value in ``values`` (name -> channel axis).

    The values are exposed as extra outputs and ONNX Runtime runs one feed
    (a batch) at a time; each result is folded into running sums and dropped,
    so memory is ``O(C)`` per value, or ``O(C^2)`` with ``full`` (``X^T X``).
    """
    statistics: dict[str, ChannelStatistics] = {}
    if not values:
        return statistics
    graph_inputs = {value.name for value in model.graph.input}
    names = sorted(name for name in values if name not in graph_inputs)
    for inputs, outputs in _calibration_runs(model, names, feeds, max_samples, len(values)):
        for name, axis in values.items():
            value = outputs[name] if name in outputs else inputs[name]
            rows = channel_rows(np.asarray(value), axis)
            entry = statistics.get(name)
            if entry is None:
                channels = rows.shape[1]
                entry = statistics[name] = ChannelStatistics(
                    np.zeros(channels),
                    np.zeros(channels),
                    np.zeros((channels, channels)) if full else None,
                )
            entry.add(rows)
            del value, rows
        del inputs, outputs
    return statistics


def _calibration_runs(
    model: onnx.ModelProto,
    names: list[str],
    feeds: Iterable[Feeds],
    max_samples: int | None,
    activations: int,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Run ``model`` with ``names`` exposed as outputs on each feed (at most
    ``max_samples``), yielding ``(inputs, outputs by name)`` one feed at a time.

    One-line :class:`UserError` for a feed that lacks a model input and for
    calibration data with no samples; ``activations`` is only for the log line.
    """
    exposed = _with_outputs(model, names)
    with tempfile.TemporaryDirectory(prefix="spa-calib-") as folder:
        session = _create_session(exposed, Path(folder))
        wanted = {value.name for value in session.get_inputs()}
        seen = 0
        for feed in track(feeds, description="calibrate"):
            if max_samples is not None and seen >= max_samples:
                break
            missing = sorted(wanted - set(feed))
            if missing:
                raise UserError(
                    f"calibration sample {seen} lacks input(s) {missing}; give every model input"
                )
            inputs = {key: np.asarray(feed[key]) for key in wanted}
            outputs = dict(zip(names, session.run(names, inputs) if names else [], strict=True))
            yield inputs, outputs
            del inputs, outputs  # one feed's activations in memory at a time
            seen += 1
    logger.info("calibration: %d samples, %d activations", seen, activations if seen else 0)
    if seen == 0:
        raise UserError("calibration data holds no samples; give at least one")


def _accumulate(statistics: dict[str, HessianStatistics], name: str, value: np.ndarray) -> None:
    rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
    entry = statistics.get(name)
    if entry is None:
        entry = statistics[name] = HessianStatistics(np.zeros((rows.shape[1],) * 2))
    entry.xtx += rows.T @ rows
    entry.rows += rows.shape[0]
