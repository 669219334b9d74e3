"""Block-wise weight quantization along K (round-to-nearest) and its inverse.

A weight of a ``MatMul(A, W)`` is ``W[K, N]``: K is the reduction (input)
axis, N the output axis. Each column ``n`` is cut into blocks of ``block``
consecutive rows along K; every block has one scale (and, when asymmetric,
one zero point). The last block may be short when K is not a multiple of
``block`` (only MatMulNBits can store that; see ``docs/formats.md``).

* symmetric: ``q = clip(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1)``,
  ``s = max|w| / (2^(b-1) - 1)``, ``q`` signed (``int8``), no zero point;
* asymmetric: the block range ``[min(w, 0), max(w, 0)]`` maps onto
  ``[0, 2^b - 1]``: ``s = (hi - lo) / (2^b - 1)``, ``z = round(-lo / s)``,
  ``q = clip(round(w / s) + z, 0, 2^b - 1)``, ``q`` and ``z`` unsigned (``uint8``).

Dequantization is ``(q - z) * s`` (``z = 0`` when symmetric). Rounding is
half-to-even (numpy's ``rint``) and scales are rounded to their storage dtype
*before* ``q`` is computed, so ``dequantize`` reproduces exactly what a
runtime computes from the stored values, and ``|w - dequantize(q)| <= s / 2``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "QuantizedWeight",
    "block_parameters",
    "dequantize",
    "expand_blocks",
    "n_blocks",
    "quantize_rtn",
    "quantize_with_parameters",
    "quantized_range",
]


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """Integer weight ``q[K, N]`` with per-block ``scales[n_blocks, N]``.

    ``q`` is ``int8`` for symmetric quantization (no zero points) and
    ``uint8`` for asymmetric (``zero_points[n_blocks, N]`` ``uint8``).
    """

    q: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    block: int

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.q.shape
        return int(rows), int(cols)


#: Largest number of weight elements quantized at once: RTN works in float64
#: with a few temporaries, so a chunk costs about 5 x 8 bytes per element
#: (2^22 elements: ~170 MB) whatever the size of the tensor.
CHUNK_ELEMENTS = 1 << 22


def n_blocks(rows: int, block: int) -> int:
    """Blocks along K (the last one may be short)."""
    return -(-rows // block)


def quantized_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest stored integer."""
    if symmetric:
        limit = 2 ** (bits - 1) - 1
        return -limit, limit
    return 0, 2**bits - 1


def _check(bits: int, block: int) -> None:
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")


def expand_blocks(per_block: np.ndarray, rows: int, block: int) -> np.ndarray:
    """``[n_blocks, N]`` -> ``[rows, N]`` (each block row repeated ``block`` times)."""
    return np.repeat(per_block, block, axis=0)[:rows]


def block_parameters(
    weight: np.ndarray, bits: int, symmetric: bool, scale_dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (and zero point) of each column of ``weight[rows, N]`` taken as one block.

    Returns ``scales[N]`` in ``scale_dtype`` and ``zero_points[N]`` (``uint8``) or None.
    """
    values = np.asarray(weight, dtype=np.float64)
    low, high = quantized_range(bits, symmetric)
    tiny = float(np.finfo(scale_dtype).tiny)
    if symmetric:
        scale = np.abs(values).max(axis=0) / high
    else:
        lo = np.minimum(values.min(axis=0), 0.0)
        hi = np.maximum(values.max(axis=0), 0.0)
        scale = (hi - lo) / (high - low)
    scale = np.where(scale > 0, scale, 1.0)
    stored = np.maximum(scale.astype(scale_dtype), np.asarray(tiny, dtype=scale_dtype))
    if symmetric:
        return stored, None
    lo = np.minimum(values.min(axis=0), 0.0)
    zero = np.clip(np.rint(-lo / stored.astype(np.float64)), low, high).astype(np.uint8)
    return stored, zero


def quantize_with_parameters(
    weight: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    bits: int,
) -> np.ndarray:
    """Round ``weight`` (broadcast against ``scales``) to stored integers."""
    symmetric = zero_points is None
    low, high = quantized_range(bits, symmetric)
    steps = np.rint(np.asarray(weight, dtype=np.float64) / np.asarray(scales, dtype=np.float64))
    if zero_points is not None:
        steps = steps + zero_points.astype(np.float64)
    return np.clip(steps, low, high).astype(np.int8 if symmetric else np.uint8)


def quantize_rtn(
    weight: np.ndarray,
    bits: int,
    block: int,
    symmetric: bool = True,
    scale_dtype: np.dtype | type | None = None,
) -> QuantizedWeight:
    """Round-to-nearest block quantization of ``weight[K, N]`` along K.

    ``scale_dtype`` defaults to the weight's floating dtype (the activation
    dtype of the MatMul it feeds).
    """
    _check(bits, block)
    weight = np.asarray(weight)
    if weight.ndim != 2 or not np.issubdtype(weight.dtype, np.floating):
        raise ValueError(f"need a 2-D floating weight, got {weight.dtype} {weight.shape}")
    dtype = np.dtype(scale_dtype or weight.dtype)
    rows, cols = weight.shape
    step = max(1, CHUNK_ELEMENTS // max(rows, 1))
    if cols > step:  # columns are independent: bound the float64 working set
        parts = [
            quantize_rtn(weight[:, start : start + step], bits, block, symmetric, dtype)
            for start in range(0, cols, step)
        ]
        zeros_parts = [part.zero_points for part in parts]
        return QuantizedWeight(
            q=np.concatenate([part.q for part in parts], axis=1),
            scales=np.concatenate([part.scales for part in parts], axis=1),
            zero_points=None if zeros_parts[0] is None else np.concatenate(zeros_parts, axis=1),  # type: ignore[arg-type]
            bits=bits,
            block=block,
        )
    blocks = n_blocks(rows, block)
    padded = np.zeros((blocks * block, cols), dtype=np.float64)
    padded[:rows] = weight
    grouped = padded.reshape(blocks, block, cols).transpose(1, 0, 2).reshape(block, -1)
    scales, zeros = block_parameters(grouped, bits, symmetric, dtype)
    scales = scales.reshape(blocks, cols)
    zero_points = None if zeros is None else zeros.reshape(blocks, cols)
    full_zero = None if zero_points is None else expand_blocks(zero_points, rows, block)
    q = quantize_with_parameters(weight, expand_blocks(scales, rows, block), full_zero, bits)
    return QuantizedWeight(q=q, scales=scales, zero_points=zero_points, bits=bits, block=block)


def dequantize(weight: QuantizedWeight, dtype: np.dtype | type | None = None) -> np.ndarray:
    """``(q - z) * s`` as ``[K, N]``, computed in float64 then cast to ``dtype``.

    ``dtype`` defaults to the scales' dtype.
    """
    rows, _ = weight.shape
    values = weight.q.astype(np.float64)
    if weight.zero_points is not None:
        values = values - expand_blocks(weight.zero_points, rows, weight.block).astype(np.float64)
    scales = expand_blocks(weight.scales, rows, weight.block).astype(np.float64)
    return (values * scales).astype(dtype or weight.scales.dtype)
