"""Static (calibrated) INT8/FP8 quantization: ranges, thresholds and per-channel weights.

Activations are quantized per tensor and symmetrically, so a range is one
number, ``amax``: INT8 uses ``scale = amax / 127`` with zero point 0, FLOAT8
E4M3FN ``scale = amax / 448`` (its largest finite value). Weights are quantized
per output channel the same way, with ``amax`` taken over each channel.

Calibration (:func:`collect_ranges`) exposes the wanted values as extra graph
outputs of a copy of the model, runs ONNX Runtime once per calibration sample
and folds each value into a bounded statistic before dropping it:

* ``minmax``: the running maximum of ``|x|``;
* ``percentile``: a running 2048-bin histogram of ``|x|`` (:class:`AbsHistogram`)
  whose range doubles (merging bin pairs, exactly) when a sample exceeds it; the
  threshold is the upper edge of the first bin where the cumulative share reaches
  the percentile;
* ``entropy``: the same histogram, then the KL-divergence threshold search
  (:func:`entropy_threshold`, described in ``docs/quantization.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx

from spa.errors import UserError
from spa.progress import track

__all__ = [
    "CALIBRATION_METHODS",
    "FP8_MAX",
    "INT8_MAX",
    "KINDS",
    "RANDOM_CALIBRATION",
    "AbsHistogram",
    "RangeStatistics",
    "activation_scale",
    "collect_ranges",
    "dequantize_weight",
    "entropy_threshold",
    "percentile_threshold",
    "quantize_weight",
]

logger = logging.getLogger(__name__)

KINDS = ("int8", "fp8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_MAX = 127.0
FP8_MAX = 448.0  # largest finite FLOAT8E4M3FN value
HISTOGRAM_BINS = 2048
RANDOM_CALIBRATION = "random (no real data: ranges are not representative)"

Feeds = Mapping[str, np.ndarray]


def _kind_max(kind: str) -> float:
    if kind not in KINDS:
        raise UserError(f"--activations {kind}: choose one of {', '.join(KINDS)}")
    return INT8_MAX if kind == "int8" else FP8_MAX


class AbsHistogram:
    """A histogram of ``|x|`` over ``[0, top)`` in ``bins`` equal bins, ``top`` growing.

    Bin ``i`` holds ``[i * width, (i + 1) * width)``. ``top`` starts at the power
    of two above the first batch's largest value; when a batch reaches ``top``,
    ``top`` doubles and bin pairs merge, which keeps every count in the bin that
    contains its value (the same counts as binning all data at once over the
    final range): no data is re-read.
    """

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.counts = np.zeros(bins, dtype=np.int64)
        self.top = 0.0
        self.amax = 0.0

    @property
    def bins(self) -> int:
        return len(self.counts)

    @property
    def width(self) -> float:
        return self.top / self.bins

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def _double(self) -> None:
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.concatenate([merged, np.zeros(self.bins // 2, dtype=np.int64)])
        self.top *= 2.0

    def add(self, values: np.ndarray) -> None:
        magnitudes = np.abs(np.asarray(values, dtype=np.float64)).ravel()
        magnitudes = magnitudes[np.isfinite(magnitudes)]
        if not magnitudes.size:
            return
        largest = float(magnitudes.max())
        self.amax = max(self.amax, largest)
        if largest == 0.0 and self.top == 0.0:
            self.counts[0] += magnitudes.size  # zeros belong in bin 0 whatever top becomes
            return
        if self.top == 0.0:  # the power of two above the first batch: dyadic bin edges
            self.top = float(2.0 ** (np.floor(np.log2(largest)) + 1))
        while largest >= self.top:
            self._double()
        index = np.minimum((magnitudes / self.width).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)


def percentile_threshold(histogram: AbsHistogram, percentile: float) -> float:
    """Upper edge of the first bin where the cumulative share of ``|x|`` reaches ``percentile``."""
    if not 0.0 < percentile <= 100.0:
        raise UserError(f"--percentile {percentile}: give a value in (0, 100], e.g. 99.99")
    total = histogram.total
    if total == 0 or histogram.top == 0.0:
        return histogram.amax
    cumulative = np.cumsum(histogram.counts) / total
    index = int(np.searchsorted(cumulative, percentile / 100.0 - 1e-12, side="left"))
    return min((index + 1) * histogram.width, histogram.amax)


def entropy_threshold(histogram: AbsHistogram, levels: int = 128) -> float:
    """The clipping threshold minimising KL(P || Q) over the histogram (TensorRT-style).

    For every candidate ``i`` from ``levels`` to ``bins``: ``P`` is the first ``i``
    bins with the counts beyond them added to bin ``i - 1``; ``Q`` is the first ``i``
    bins merged into ``levels`` groups, each group's count spread evenly over its
    non-empty bins. The threshold is the upper edge of the best ``i``.
    """
    counts = histogram.counts.astype(np.float64)
    bins = len(counts)
    if histogram.total == 0 or histogram.top == 0.0:
        return histogram.amax
    last = int(np.flatnonzero(counts)[-1]) + 1  # beyond the last non-empty bin nothing changes
    best_index, best_divergence = bins, np.inf
    suffix = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    for index in range(levels, max(levels, last) + 1):
        kept = counts[:index]
        reference = kept.copy()
        reference[-1] += suffix[index]
        groups = (np.arange(index) * levels) // index
        occupied = kept > 0
        sums = np.bincount(groups, weights=kept, minlength=levels)
        filled = np.bincount(groups, weights=occupied, minlength=levels)
        candidate = np.where(occupied, sums[groups] / np.maximum(filled[groups], 1), 0.0)
        p = reference / reference.sum()
        q_total = candidate.sum()
        if q_total == 0:
            continue
        q = candidate / q_total
        mask = p > 0
        divergence = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if divergence < best_divergence:
            best_index, best_divergence = index, divergence
    return min(best_index * histogram.width, histogram.amax)


@dataclasses.dataclass
class RangeStatistics:
    """Calibrated ``amax`` per value name, with how it was found."""

    amax: dict[str, float]
    method: str
    samples: int


def _method_check(method: str, percentile: float) -> None:
    if method not in CALIBRATION_METHODS:
        raise UserError(
            f"--calib-method {method}: choose one of {', '.join(CALIBRATION_METHODS)}"
        )
    if method == "percentile" and not 0.0 < percentile <= 100.0:
        raise UserError(f"--percentile {percentile}: give a value in (0, 100], e.g. 99.99")


def collect_ranges(
    model: onnx.ModelProto,
    value_names: Iterable[str],
    feeds: Iterable[Feeds],
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    levels: int = 128,
    max_samples: int | None = None,
) -> RangeStatistics:
    """Run ``model`` in ORT on ``feeds`` and return the calibrated ``amax`` of each value.

    ``model`` must hold its weights. Values that are graph inputs are read from
    the feeds. Memory stays at one histogram (or one float) per value.
    """
    from spa.quant.calibration import _create_session, _with_outputs

    _method_check(method, percentile)
    names = sorted(set(value_names))
    graph_inputs = {value.name for value in model.graph.input}
    computed = [name for name in names if name not in graph_inputs]
    histograms = {name: AbsHistogram() for name in names}
    samples = 0
    with tempfile.TemporaryDirectory(prefix="spa-ranges-") as folder:
        session = _create_session(_with_outputs(model, computed), Path(folder))
        wanted = [value.name for value in session.get_inputs()]
        for feed in track(feeds, description="calibrate"):
            if max_samples is not None and samples >= max_samples:
                break
            missing = sorted(set(wanted) - set(feed))
            if missing:
                raise UserError(
                    f"calibration sample {samples} lacks input(s) {missing}; give every model input"
                )
            run_feeds = {key: np.asarray(feed[key]) for key in wanted}
            values = session.run(computed, run_feeds) if computed else []
            arrays = dict(zip(computed, values, strict=True))
            arrays.update({name: run_feeds[name] for name in names if name in graph_inputs})
            for name, array in arrays.items():
                if method == "minmax":
                    finite = np.abs(np.asarray(array, dtype=np.float64))
                    finite = finite[np.isfinite(finite)]
                    if finite.size:
                        histograms[name].amax = max(histograms[name].amax, float(finite.max()))
                else:
                    histograms[name].add(array)
            samples += 1
    if samples == 0:
        raise UserError("calibration data holds no samples; give at least one")
    amax: dict[str, float] = {}
    for name, histogram in histograms.items():
        if method == "percentile":
            amax[name] = percentile_threshold(histogram, percentile)
        elif method == "entropy":
            amax[name] = entropy_threshold(histogram, levels)
        else:
            amax[name] = histogram.amax
    logger.info("calibration (%s): %d samples, %d values", method, samples, len(amax))
    return RangeStatistics(amax, method, samples)


def activation_scale(amax: float, kind: str) -> float:
    """Per-tensor scale for ``amax`` (1.0 for an all-zero tensor, which stays exact)."""
    top = _kind_max(kind)
    return float(amax) / top if amax > 0 and np.isfinite(amax) else 1.0


def _channel_amax(array: np.ndarray, axis: int | None) -> np.ndarray:
    magnitudes = np.abs(array.astype(np.float64))
    if axis is None:
        return np.asarray(magnitudes.max() if magnitudes.size else 0.0)
    others = tuple(index for index in range(array.ndim) if index != axis)
    return magnitudes.max(axis=others) if others else magnitudes


def _broadcast(scale: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None:
        return scale
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


def quantize_weight(
    array: np.ndarray, axis: int | None, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (``axis``) or per-tensor (``None``) symmetric quantization.

    Returns ``(q, scale)``: ``q`` is int8 in ``[-127, 127]`` (round half to even,
    as ONNX QuantizeLinear) or ``ml_dtypes.float8_e4m3fn``; ``scale`` has the
    weight's float dtype, one entry per channel (a scalar for per-tensor), and
    is 1 for an all-zero channel.
    """
    top = _kind_max(kind)
    amax = _channel_amax(array, axis)
    scale64 = np.where(amax > 0, amax / top, 1.0)
    scale = scale64.astype(array.dtype)
    scaled = array.astype(np.float64) / _broadcast(scale.astype(np.float64), array.ndim, axis)
    scaled = np.clip(scaled, -top, top)
    if kind == "int8":
        return np.rint(scaled).astype(np.int8), scale
    # float32 first: a float64 -> float8 cast may round twice differently from ORT's float32 path
    return scaled.astype(np.float32).astype(ml_dtypes.float8_e4m3fn), scale


def dequantize_weight(q: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    """The NumPy reference of ONNX DequantizeLinear for :func:`quantize_weight`'s output."""
    values = q.astype(np.float32) * _broadcast(scale.astype(np.float32), q.ndim, axis)
    return values.astype(scale.dtype)
