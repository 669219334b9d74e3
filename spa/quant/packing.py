"""Packing quantized weights into the stored layouts (see ``docs/formats.md``).

Two formats, one section each in ``docs/formats.md``:

* ``com.microsoft.MatMulNBits`` (ORT): ``B`` is ``uint8 [N, n_blocks, block*bits/8]``
  (the weight transposed, K contiguous per output column, two 4-bit values a
  byte, low nibble first); ``scales`` ``[N * n_blocks]``; ``zero_points``
  ``uint8 [N * ceil(n_blocks*bits/8)]`` (4-bit: two a byte, low nibble first,
  each column padded to a whole byte) or absent (symmetric: ORT's default
  zero point ``2^(bits-1)``).
* ONNX block QDQ (``DequantizeLinear`` opset 21, ``axis=0``, ``block_size``):
  ``x`` ``[K, N]`` INT4/UINT4/INT8/UINT8 (4-bit packed as ONNX does: row-major
  element order, two a byte, low nibble first, an odd count padded), ``x_scale``
  ``[K/block, N]``, ``x_zero_point`` like ``x_scale`` in ``x``'s type, or absent.

Every function is numpy-only and vectorised; ``unpack_*(pack_*(w)) == w``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spa.quant.blockwise import QuantizedWeight, n_blocks

__all__ = [
    "MatMulNBitsArrays",
    "QDQArrays",
    "pack_matmulnbits",
    "pack_nibbles",
    "pack_qdq",
    "unpack_matmulnbits",
    "unpack_nibbles",
    "unpack_qdq",
]


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pack 4-bit values along the last axis, two a byte, element ``2i`` in the low nibble.

    Values may be signed (two's complement is kept) or unsigned; an odd last
    axis is padded with 0. Returns ``uint8 [..., ceil(n/2)]``.
    """
    nibbles = np.asarray(values).astype(np.uint8) & 0x0F
    if nibbles.shape[-1] % 2:
        pad = [(0, 0)] * (nibbles.ndim - 1) + [(0, 1)]
        nibbles = np.pad(nibbles, pad)
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int, signed: bool = False) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: ``uint8``/``int8 [..., count]``."""
    packed = np.asarray(packed, dtype=np.uint8)
    pairs = np.stack([packed & 0x0F, packed >> 4], axis=-1)
    values = pairs.reshape(*packed.shape[:-1], 2 * packed.shape[-1])[..., :count]
    if signed:
        return ((values.astype(np.int16) ^ 8) - 8).astype(np.int8)
    return values.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class MatMulNBitsArrays:
    """The initializers and attributes of one ``com.microsoft.MatMulNBits``."""

    b: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int
    n: int
    bits: int
    block: int


def _default_zero(bits: int) -> int:
    return 2 ** (bits - 1)


def pack_matmulnbits(weight: QuantizedWeight) -> MatMulNBitsArrays:
    """MatMulNBits arrays for ``weight`` (4 or 8 bits, block a power of 2 >= 16)."""
    bits, block = weight.bits, weight.block
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits packing supports 4 or 8 bits here, got {bits}")
    rows, cols = weight.shape
    blocks = n_blocks(rows, block)
    unsigned = weight.q.astype(np.int16)
    if weight.zero_points is None:
        unsigned = unsigned + _default_zero(bits)
        pad_rows = np.full((blocks * block - rows, cols), _default_zero(bits), np.int16)
    else:
        pad_rows = np.broadcast_to(
            weight.zero_points[-1:].astype(np.int16), (blocks * block - rows, cols)
        )
    columns = np.concatenate([unsigned, pad_rows]).astype(np.uint8).T.reshape(cols, blocks, block)
    b = pack_nibbles(columns) if bits == 4 else np.ascontiguousarray(columns)
    scales = np.ascontiguousarray(weight.scales.T).reshape(-1)
    zero_points = None
    if weight.zero_points is not None:
        zeros = np.ascontiguousarray(weight.zero_points.T)
        zero_points = (pack_nibbles(zeros) if bits == 4 else zeros).reshape(-1)
    return MatMulNBitsArrays(b, scales, zero_points, rows, cols, bits, block)


def unpack_matmulnbits(arrays: MatMulNBitsArrays) -> QuantizedWeight:
    """Inverse of :func:`pack_matmulnbits` (also reads MatMulNBits written by ORT's tools).

    Without zero points the stored values are shifted by ORT's default zero
    point ``2^(bits-1)`` into a symmetric (signed) weight; explicit zero points
    give an asymmetric (unsigned) weight.
    """
    k, n, bits, block = arrays.k, arrays.n, arrays.bits, arrays.block
    blocks = n_blocks(k, block)
    b = np.asarray(arrays.b, dtype=np.uint8).reshape(n, blocks, -1)
    columns = unpack_nibbles(b, block) if bits == 4 else b[..., :block]
    values = columns.reshape(n, blocks * block)[:, :k].T
    scales = np.asarray(arrays.scales).reshape(n, blocks).T.copy()
    if arrays.zero_points is None:
        q = (values.astype(np.int16) - _default_zero(bits)).astype(np.int8)
        return QuantizedWeight(q, scales, None, bits, block)
    zeros = np.asarray(arrays.zero_points, dtype=np.uint8).reshape(n, -1)
    zero_points = unpack_nibbles(zeros, blocks) if bits == 4 else zeros[:, :blocks]
    return QuantizedWeight(
        np.ascontiguousarray(values), scales, np.ascontiguousarray(zero_points.T), bits, block
    )


@dataclasses.dataclass(frozen=True)
class QDQArrays:
    """The constant inputs of one block-wise ``DequantizeLinear`` (axis 0).

    ``x`` and ``zero_point`` hold the stored bytes: for 4-bit types the packed
    ``uint8`` buffer, for 8-bit types an ``int8``/``uint8`` array ``[K, N]``.
    ``x_type`` is ``"INT4"``, ``"UINT4"``, ``"INT8"`` or ``"UINT8"``.
    """

    x: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    x_type: str
    shape: tuple[int, int]
    block: int


def pack_qdq(weight: QuantizedWeight) -> QDQArrays:
    """Block QDQ arrays for ``weight``; K must be a multiple of the block."""
    rows, cols = weight.shape
    if rows % weight.block:
        raise ValueError(f"block QDQ needs K % block == 0, got K={rows} block={weight.block}")
    if weight.bits not in (4, 8):
        raise ValueError(f"block QDQ supports 4 or 8 bits, got {weight.bits}")
    signed = weight.zero_points is None
    x_type = ("INT" if signed else "UINT") + str(weight.bits)
    if weight.bits == 4:
        x = pack_nibbles(weight.q.reshape(-1))
        zero = None if signed else pack_nibbles(weight.zero_points.reshape(-1))  # type: ignore[union-attr]
    else:
        x = np.ascontiguousarray(weight.q)
        zero = None if signed else np.ascontiguousarray(weight.zero_points)
    return QDQArrays(x, weight.scales.copy(), zero, x_type, (rows, cols), weight.block)


def unpack_qdq(arrays: QDQArrays) -> QuantizedWeight:
    """Inverse of :func:`pack_qdq`.

    A signed type with an explicit, non-zero zero point is returned as an
    asymmetric weight shifted into the unsigned range (same dequantized values).
    """
    rows, cols = arrays.shape
    bits = 4 if arrays.x_type.endswith("4") else 8
    signed = arrays.x_type.startswith("INT")
    scale_shape = arrays.scale.shape
    if bits == 4:
        q = unpack_nibbles(np.asarray(arrays.x).reshape(-1), rows * cols, signed).reshape(
            rows, cols
        )
    else:
        q = np.asarray(arrays.x).reshape(rows, cols)
    zero = None
    if arrays.zero_point is not None:
        size = int(np.prod(scale_shape))
        raw = np.asarray(arrays.zero_point).reshape(-1)
        zero = unpack_nibbles(raw, size, signed) if bits == 4 else raw
        zero = zero.reshape(scale_shape)
    scales = np.asarray(arrays.scale).copy()
    if zero is None or (signed and not np.any(zero)):
        return QuantizedWeight(
            q.astype(np.int8 if signed else np.uint8),
            scales,
            None if signed else np.zeros(scale_shape, np.uint8),
            bits,
            arrays.block,
        )
    if signed:
        shift = 2 ** (bits - 1)
        q = (q.astype(np.int16) + shift).astype(np.uint8)
        zero = (zero.astype(np.int16) + shift).astype(np.uint8)
    return QuantizedWeight(q.astype(np.uint8), scales, zero.astype(np.uint8), bits, arrays.block)
