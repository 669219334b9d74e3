"""Per-output-channel weight-only quantization (INT4/INT8), the form spa uses for
Conv weights: one scale (and, asymmetric, one zero point) per output channel,
stored for a ``DequantizeLinear(axis=0)`` (``docs/formats.md``).

Symmetric: ``scale = amax / qmax`` (qmax 7 for INT4, 127 for INT8), values in
``[-qmax-1, qmax]``, no zero point. Asymmetric: unsigned, ``scale = (max - min)
/ (2^bits - 1)`` with ``min``/``max`` widened to include 0, so 0 stays exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["ChannelQuantized", "dequantize_channels", "quantize_channels"]


@dataclasses.dataclass(frozen=True)
class ChannelQuantized:
    """Integer values (``int8``/``uint8`` arrays holding ``bits``-bit numbers) and
    per-channel ``scale`` (and ``zero_point``) shaped ``[channels]``."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int

    @property
    def signed(self) -> bool:
        return self.zero_point is None


def _per_channel(vector: np.ndarray, ndim: int) -> np.ndarray:
    return vector.reshape((-1,) + (1,) * (ndim - 1))


def quantize_channels(weight: np.ndarray, bits: int, symmetric: bool = True) -> ChannelQuantized:
    """RTN of ``weight`` (axis 0 = output channel) to ``bits`` per channel; the scale
    keeps ``weight``'s float dtype."""
    if bits not in (4, 8):
        raise ValueError(f"bits={bits}: per-channel quantization stores 4 or 8 bits")
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = np.abs(flat).max(axis=1)
        scale = np.where(amax > 0, amax / qmax, 1.0)
        values = np.clip(np.rint(flat / scale[:, None]), -qmax - 1, qmax).astype(np.int8)
        zero = None
    else:
        levels = 2**bits - 1
        low = np.minimum(flat.min(axis=1), 0.0)
        high = np.maximum(flat.max(axis=1), 0.0)
        scale = np.where(high > low, (high - low) / levels, 1.0)
        zero_float = np.clip(np.rint(-low / scale), 0, levels)
        values = np.clip(np.rint(flat / scale[:, None]) + zero_float[:, None], 0, levels)
        values = values.astype(np.uint8)
        zero = zero_float.astype(np.uint8)
    scale = scale.astype(weight.dtype)
    return ChannelQuantized(values.reshape(weight.shape), scale, zero, bits)


def dequantize_channels(quantized: ChannelQuantized) -> np.ndarray:
    """The float weight ``DequantizeLinear(axis=0)`` computes from ``quantized``."""
    values = quantized.values.astype(np.float32)
    ndim = values.ndim
    if quantized.zero_point is not None:
        values = values - _per_channel(quantized.zero_point.astype(np.float32), ndim)
    scale = _per_channel(quantized.scale.astype(np.float32), ndim)
    return (values * scale).astype(quantized.scale.dtype)
