"""Repack spa's ONNX weight formats into the plugin kernels' layouts.

One function per kernel (``plugins/kernels/*.cu``), each with a NumPy
reference unpacker that inverts it bit for bit; ``plugins/README.md``
documents the layouts. All three layouts store INT4 words in *dequant order*:
a ``uint32`` holds eight 4-bit values ``v0..v7`` (stored ``u = q + 8``) with
``v[2p]`` in nibble ``p`` and ``v[2p+1]`` in nibble ``p + 4`` (``p < 4``), so the
kernel gets the pair ``(v[2p], v[2p+1])`` into both halves of a 32-bit register
with one shift and one mask.

* ``w4a16``: ``packed int32 [N/16, K/16, 32]``, read as ``[N/16, K/128, 32, 8]``:
  for 16-column tile ``nt`` of ``W^T`` (rows ``n = nt*16 + r``) and 128-k group
  ``b``, lane ``l = 4g + t`` owns 8 consecutive words (32 B, two 16-B loads),
  word ``s`` being its mma.m16n8k16 A fragment for step ``s``:
  ``(r, c)`` = ``(g, 2t) (g, 2t+1) (g+8, 2t) (g+8, 2t+1) (g, 2t+8) (g, 2t+9) (g+8, 2t+8) (g+8, 2t+9)``,
  where mma column ``c`` of step ``s`` is ``k = b*128 + 32t + 4s + j`` with
  ``j = 2*(c // 8) + c % 2``: lane ``t``'s activations for the whole group are the
  32 consecutive ``k`` from ``32t`` (four 16-B loads), and its B fragments of
  step ``s`` are halves ``4s..4s+3`` of them. ``scales float16 [K/128, N]``.
* ``w4_sp24``: 2:4 along K; ``values int32 [N/16, K/32, 32]`` (lane ``4g + t``:
  the two kept values of chunk ``t`` of rows ``g``, ``g+8``, then chunk ``4 + t``
  of rows ``g``, ``g+8``; a chunk is 4 consecutive k), ``meta uint32 [N/16, K/32, 16]``
  (slot ``2g + h``: bits ``4c..4c+3`` describe chunk ``4h + c`` of row ``g`` and
  bits ``16 + 4c..`` the same chunk of row ``g + 8``; each nibble is
  ``i0 | i1 << 2``, the ascending positions of the two kept values),
  ``scales float16 [K/128, N]``.
* ``w4_gqsa``: from the ``spa.GroupSparseQuantMatMul`` inputs (docs/formats.md
  section (c)): ``values uint32 [nnz, g/8]`` (word ``w`` = k offsets ``8w..8w+7``
  of the group), ``group_idx uint16 [nnz]``, ``row_ptr int32 [N+1]``,
  ``scales float16 [nnz]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spa.quant.blockwise import QuantizedWeight

__all__ = [
    "GROUP",
    "GQSAArrays",
    "W4A16Packed",
    "W4GQSAPacked",
    "W4Sparse24Packed",
    "dequantize_gqsa",
    "repack_w4_gqsa",
    "repack_w4_sp24",
    "repack_w4a16",
    "unpack_w4_gqsa",
    "unpack_w4_sp24",
    "unpack_w4a16",
]

#: Scale group along K of the w4a16 and w4_sp24 kernels.
GROUP = 128
_ZERO = 8  # stored u = q + 8

# Nibble position of v[i] inside a dequant-order word.
_SHIFTS = np.array([0, 16, 4, 20, 8, 24, 12, 28], dtype=np.uint32)


def _to_words(values: np.ndarray) -> np.ndarray:
    """``uint8 [..., 8]`` nibbles -> ``uint32 [...]`` in dequant order."""
    nibbles = values.astype(np.uint32) & 0xF
    return np.bitwise_or.reduce(nibbles << _SHIFTS, axis=-1).astype(np.uint32)


def _from_words(words: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_words`: ``uint8 [..., 8]``."""
    words = (
        np.asarray(words).view(np.uint32)
        if np.asarray(words).dtype == np.int32
        else np.asarray(words, np.uint32)
    )
    return ((words[..., None] >> _SHIFTS) & 0xF).astype(np.uint8)


def _lane_coordinates() -> tuple[np.ndarray, np.ndarray]:
    """(row, col) inside a 16x16 tile of the 8 values of each of the 32 lanes (mma.m16n8k16 A fragment)."""
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    rows = np.stack([g, g, g + 8, g + 8, g, g, g + 8, g + 8], axis=1)
    cols = np.stack(
        [2 * t, 2 * t + 1, 2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9, 2 * t + 8, 2 * t + 9], axis=1
    )
    return rows, cols


def _w4a16_coordinates() -> tuple[np.ndarray, np.ndarray]:
    """(row, k) inside a 16x128 group tile of value ``i`` of word ``s`` of lane ``l``: ``[32, 8, 8]`` each."""
    rows, cols = _lane_coordinates()  # [32, 8]
    t = (np.arange(32) % 4)[:, None, None]
    step = np.arange(8)[None, :, None]
    c = cols[:, None, :]
    k = 32 * t + 4 * step + 2 * (c // 8) + c % 2
    return np.broadcast_to(rows[:, None, :], k.shape), k


def _check_w4(weight: QuantizedWeight, kernel: str) -> tuple[int, int]:
    k, n = weight.shape
    if weight.bits != 4 or not weight.symmetric:
        raise ValueError(
            f"{kernel} needs symmetric 4-bit weights (zero point 8), got bits={weight.bits} symmetric={weight.symmetric}"
        )
    if weight.block != GROUP:
        raise ValueError(f"{kernel} needs block {GROUP} along K, got {weight.block}")
    if k % GROUP or n % 16:
        raise ValueError(f"{kernel} needs K % {GROUP} == 0 and N % 16 == 0, got K={k} N={n}")
    return k, n


def _tiles(unsigned: np.ndarray, k_tile: int) -> np.ndarray:
    """``[K, N]`` -> tiles of ``W^T``: ``[N/16, K/k_tile, 16, k_tile]``."""
    k, n = unsigned.shape
    return unsigned.T.reshape(n // 16, 16, k // k_tile, k_tile).transpose(0, 2, 1, 3)


def _untile(tiles: np.ndarray) -> np.ndarray:
    n_tiles, k_tiles, _, k_tile = tiles.shape
    return tiles.transpose(0, 2, 1, 3).reshape(n_tiles * 16, k_tiles * k_tile).T


# ---- w4a16 -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class W4A16Packed:
    """Inputs of the w4a16 kernel for one ``[K, N]`` weight."""

    packed: np.ndarray  # int32 [N/16, K/16, 32]
    scales: np.ndarray  # float16 [K/128, N]
    k: int
    n: int


def repack_w4a16(weight: QuantizedWeight) -> W4A16Packed:
    """Symmetric INT4, block 128 (e.g. from ``unpack_matmulnbits``/``unpack_qdq``) -> w4a16."""
    k, n = _check_w4(weight, "w4a16")
    unsigned = (weight.q.astype(np.int16) + _ZERO).astype(np.uint8)
    rows, ks = _w4a16_coordinates()
    lanes = _tiles(unsigned, GROUP)[:, :, rows, ks]  # [N/16, K/128, 32 lanes, 8 words, 8 values]
    packed = _to_words(lanes).reshape(n // 16, k // 16, 32).view(np.int32)
    return W4A16Packed(np.ascontiguousarray(packed), weight.scales.astype(np.float16), k, n)


def unpack_w4a16(arrays: W4A16Packed) -> QuantizedWeight:
    """NumPy reference reader of the w4a16 layout (inverse of :func:`repack_w4a16`)."""
    k, n = arrays.k, arrays.n
    lanes = _from_words(arrays.packed.reshape(n // 16, k // GROUP, 32, 8))
    tiles = np.zeros((n // 16, k // GROUP, 16, GROUP), np.uint8)
    rows, ks = _w4a16_coordinates()
    tiles[:, :, rows, ks] = lanes
    q = (_untile(tiles).astype(np.int16) - _ZERO).astype(np.int8)
    return QuantizedWeight(np.ascontiguousarray(q), arrays.scales.copy(), None, 4, GROUP)


# ---- w4_sp24 -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class W4Sparse24Packed:
    """Inputs of the w4_sp24 kernel for one ``[K, N]`` weight."""

    values: np.ndarray  # int32 [N/16, K/32, 32]
    meta: np.ndarray  # uint32 [N/16, K/32, 16]
    scales: np.ndarray  # float16 [K/128, N]
    k: int
    n: int


def _pair_table() -> np.ndarray:
    """For each 4-bit non-zero mask, the two kept positions (ascending), or (4, 4) if > 2 set."""
    table = np.full((16, 2), 4, np.uint8)
    for mask in range(16):
        ones = [i for i in range(4) if mask >> i & 1]
        if len(ones) <= 2:
            zeros = [i for i in range(4) if not mask >> i & 1]
            table[mask] = sorted(ones + zeros[: 2 - len(ones)])
    return table


_PAIRS = _pair_table()


def _kept_positions(q_chunks: np.ndarray) -> np.ndarray:
    """Ascending positions ``[..., 2]`` of the kept values of each 4-chunk.

    Non-zero values are kept; a chunk with fewer than two non-zeros is padded
    with its first zero positions (a kept value may quantize to 0).
    """
    masks = ((q_chunks != 0) << np.arange(4, dtype=np.uint8)).sum(axis=-1, dtype=np.uint8)
    positions = _PAIRS[masks]
    if np.any(positions[..., 0] == 4):
        raise ValueError(
            "w4_sp24 needs 2:4 sparsity along K: a chunk of 4 has more than 2 non-zeros"
        )
    return positions


def repack_w4_sp24(weight: QuantizedWeight) -> W4Sparse24Packed:
    """Symmetric INT4, block 128, 2:4 sparse along K -> w4_sp24 values and metadata."""
    k, n = _check_w4(weight, "w4_sp24")
    tiles = _tiles(weight.q.astype(np.int8), 32)  # [NT, KT, 16, 32] signed
    chunks = tiles.reshape(*tiles.shape[:3], 8, 4)  # [NT, KT, 16 rows, 8 chunks, 4]
    positions = _kept_positions(chunks)  # [NT, KT, 16, 8, 2]
    kept = np.take_along_axis(chunks, positions.astype(np.int64), axis=-1)
    unsigned = (kept.astype(np.int16) + _ZERO).astype(np.uint8)
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    # Lane values: (row g, chunk t), (row g+8, chunk t), (row g, chunk 4+t), (row g+8, chunk 4+t).
    parts = [
        unsigned[:, :, g, t],
        unsigned[:, :, g + 8, t],
        unsigned[:, :, g, 4 + t],
        unsigned[:, :, g + 8, 4 + t],
    ]
    values = _to_words(np.concatenate(parts, axis=-1)).view(np.int32)  # [NT, KT, 32]
    nibbles = (positions[..., 0] | (positions[..., 1] << 2)).astype(np.uint32)  # [NT, KT, 16, 8]
    slot = np.arange(16)
    sg, sh = slot // 2, slot % 2
    meta = np.zeros((*tiles.shape[:2], 16), np.uint32)
    for c in range(4):
        meta |= nibbles[:, :, sg, 4 * sh + c] << np.uint32(4 * c)
        meta |= nibbles[:, :, sg + 8, 4 * sh + c] << np.uint32(16 + 4 * c)
    return W4Sparse24Packed(
        np.ascontiguousarray(values), meta, weight.scales.astype(np.float16), k, n
    )


def unpack_w4_sp24(arrays: W4Sparse24Packed) -> QuantizedWeight:
    """NumPy reference reader of the w4_sp24 layout (inverse of :func:`repack_w4_sp24`)."""
    k, n = arrays.k, arrays.n
    n_tiles, k_tiles = n // 16, k // 32
    lanes = _from_words(arrays.values.reshape(n_tiles, k_tiles, 32)).astype(np.int16) - _ZERO
    meta = np.asarray(arrays.meta, np.uint32).reshape(n_tiles, k_tiles, 16)
    tiles = np.zeros((n_tiles, k_tiles, 16, 8, 4), np.int16)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for part, (row, chunk) in enumerate([(g, t), (g + 8, t), (g, 4 + t), (g + 8, 4 + t)]):
            h, c = divmod(chunk, 4)
            shift = 4 * c + (16 if row >= 8 else 0)
            nibble = (meta[:, :, 2 * (row % 8) + h] >> np.uint32(shift)) & 0xF
            for slot, position in enumerate([nibble & 3, nibble >> 2]):
                np.put_along_axis(
                    tiles[:, :, row, chunk],
                    position.astype(np.int64)[..., None],
                    lanes[:, :, lane, 2 * part + slot][..., None],
                    axis=-1,
                )
    q = _untile(tiles.reshape(n_tiles, k_tiles, 16, 32)).astype(np.int8)
    return QuantizedWeight(np.ascontiguousarray(q), arrays.scales.copy(), None, 4, GROUP)


# ---- w4_gqsa -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GQSAArrays:
    """The inputs and attributes of one ``spa.GroupSparseQuantMatMul`` (4-bit)."""

    values: np.ndarray  # uint8 [nnz, g/2], u = q + 8, low nibble first
    col_idx: np.ndarray  # int32 [nnz]
    row_ptr: np.ndarray  # int32 [N+1]
    scales: np.ndarray  # float16/float32 [nnz]
    k: int
    n: int
    group_size: int


@dataclasses.dataclass(frozen=True)
class W4GQSAPacked:
    """Inputs of the w4_gqsa kernel."""

    values: np.ndarray  # uint32 [nnz, g/8]
    group_idx: np.ndarray  # uint16 [nnz]
    row_ptr: np.ndarray  # int32 [N+1]
    scales: np.ndarray  # float16 [nnz]
    k: int
    n: int
    group_size: int


def _group_nibbles(values: np.ndarray, nnz: int, g: int) -> np.ndarray:
    """``uint8 [nnz, g/2]`` (low nibble first) -> ``uint8 [nnz, g]`` (also for nnz = 0)."""
    packed = np.asarray(values, np.uint8).reshape(nnz, g // 2)
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(nnz, g)


def repack_w4_gqsa(arrays: GQSAArrays) -> W4GQSAPacked:
    """GQSA op inputs (4-bit) -> the w4_gqsa kernel layout."""
    g, k = arrays.group_size, arrays.k
    if g not in (8, 16, 32, 64) or k % g:
        raise ValueError(f"w4_gqsa needs group_size in 8/16/32/64 dividing K, got g={g} K={k}")
    if k // g > 65536:
        raise ValueError(f"w4_gqsa stores group indices as uint16: K/g = {k // g} > 65536")
    nnz = arrays.col_idx.shape[0]
    nibbles = _group_nibbles(arrays.values, nnz, g)
    words = _to_words(nibbles.reshape(nnz, g // 8, 8))
    return W4GQSAPacked(
        words,
        np.asarray(arrays.col_idx).astype(np.uint16),
        np.asarray(arrays.row_ptr, np.int32).copy(),
        np.asarray(arrays.scales).astype(np.float16),
        k,
        arrays.n,
        g,
    )


def unpack_w4_gqsa(packed: W4GQSAPacked) -> GQSAArrays:
    """NumPy reference reader of the w4_gqsa layout (back to the op's inputs, FP16 scales)."""
    nnz = packed.group_idx.shape[0]
    g = packed.group_size
    nibbles = _from_words(packed.values.reshape(nnz, g // 8)).reshape(nnz, g)
    return GQSAArrays(
        (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8),
        packed.group_idx.astype(np.int32),
        packed.row_ptr.copy(),
        packed.scales.copy(),
        packed.k,
        packed.n,
        packed.group_size,
    )


def dequantize_gqsa(arrays: GQSAArrays) -> np.ndarray:
    """Dense FP32 ``W[K, N]`` of a GQSA op (the formula of docs/formats.md (c))."""
    g, n = arrays.group_size, arrays.n
    nnz = arrays.col_idx.shape[0]
    q = _group_nibbles(arrays.values, nnz, g).astype(np.float32) - _ZERO
    weights = q * np.asarray(arrays.scales, np.float32)[:, None]
    rows = np.repeat(np.arange(n), np.diff(np.asarray(arrays.row_ptr)))
    dense_t = np.zeros((n, arrays.k), np.float32)
    ks = np.asarray(arrays.col_idx, np.int64)[:, None] * g + np.arange(g)
    dense_t[rows[:, None], ks] = weights
    return dense_t.T.copy()
