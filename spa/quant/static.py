"""Static (calibrated) INT8/FP8 quantization: ranges, thresholds and per-channel weights.

Activations are quantized per tensor and symmetrically, so a range is one
number, ``amax``: INT8 uses ``scale = amax / 127`` with zero point 0, FLOAT8
E4M3FN ``scale = amax / 448`` (its largest finite value). Weights are quantized
per output channel the same way, with ``amax`` taken over each channel.

Activation ranges are calibrated by :func:`spa.calibration.collect_ranges`
(minmax, percentile or entropy over streamed ``|x|`` histograms).
"""

from __future__ import annotations

import logging

import ml_dtypes
import numpy as np

from spa.errors import UserError

__all__ = [
    "FP8_MAX",
    "INT8_MAX",
    "INT8_REDUCED_MAX",
    "KINDS",
    "RANDOM_CALIBRATION",
    "activation_scale",
    "dequantize_weight",
    "quantize_weight",
]

logger = logging.getLogger(__name__)

KINDS = ("int8", "fp8")
INT8_MAX = 127.0
INT8_REDUCED_MAX = 63.0  # 7-bit weights: no 16-bit saturation in u8*s8 pair sums
FP8_MAX = 448.0  # largest finite FLOAT8E4M3FN value
RANDOM_CALIBRATION = "random (no real data: ranges are not representative)"


def _kind_max(kind: str) -> float:
    if kind not in KINDS:
        raise UserError(f"--activations {kind}: choose one of {', '.join(KINDS)}")
    return INT8_MAX if kind == "int8" else FP8_MAX


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
    array: np.ndarray, axis: int | None, kind: str, *, reduce_range: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (``axis``) or per-tensor (``None``) symmetric quantization.

    Returns ``(q, scale)``: ``q`` is int8 in ``[-127, 127]`` (``[-63, 63]`` with
    ``reduce_range``, for ORT's U8S8 kernels on x86 without VNNI; round half to even,
    as ONNX QuantizeLinear) or ``ml_dtypes.float8_e4m3fn``; ``scale`` has the
    weight's float dtype, one entry per channel (a scalar for per-tensor), and
    is 1 for an all-zero channel.
    """
    top = INT8_REDUCED_MAX if reduce_range and kind == "int8" else _kind_max(kind)
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
