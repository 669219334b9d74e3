"""Repack spa's ONNX weight formats into the plugin kernels' layouts.

One function per kernel (``plugins/kernels/*.cu``), each with a NumPy
reference unpacker that inverts it bit for bit; ``plugins/README.md``
documents the layouts. All four layouts store INT4 words in *dequant order*:
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
* ``w4_gqsa_tile``: from *tile-shared* GQSA op inputs (docs/formats.md (c):
  ``g = 16``, the 16 columns of each tile keep the same groups, ``keep`` (1..4
  here) of the 8 groups of every 128-k slab; :func:`tile_keep`). The slab count
  is padded to ``S = 2 * ceil(K/256)`` (the kernel's stages are 256 k; a
  padding slab holds zero scales and ``q = 0``). For tile ``nt`` (rows
  ``n = nt*16 + r`` of ``W^T``) and slab ``b``: ``values uint32 [N/16, S, keep*32]``,
  lane ``l = 4g + t`` owns words ``l*keep .. l*keep + keep - 1``, word ``j`` being
  its mma.m16n8k16 A fragment (the ``(r, c)`` of w4a16 above) of the ``j``-th kept
  group of the slab, where mma column ``c`` is k offset
  ``kk = 4*((c % 8) // 2) + 2*(c // 8) + c % 2`` inside the group,
  ``k = (b*8 + p_j)*16 + kk`` (so lane ``t``'s B fragments are the 4 consecutive
  k from ``4t``: one 8-byte load); ``positions uint32 [N/16, S]``, byte ``j`` =
  ``p_j`` (0..7, ascending; bytes ``j >= keep`` are 0); ``scales float16
  [N/16, S, 8, keep, 2]``, element ``[nt, b, g, j, h]`` = the scale of kept
  group ``j`` of column ``nt*16 + g + 8h`` (lane ``4g + t`` reads its two rows'
  scales as one half2).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spa.quant.blockwise import QuantizedWeight

__all__ = [
    "GROUP",
    "TILE_MAX_KEEP",
    "GQSAArrays",
    "W4A16Packed",
    "W4GQSAPacked",
    "W4GQSATilePacked",
    "W4Sparse24Packed",
    "dequantize_gqsa",
    "repack_w4_gqsa",
    "repack_w4_gqsa_tile",
    "repack_w4_sp24",
    "repack_w4a16",
    "tile_keep",
    "tile_layout",
    "tile_slabs",
    "unpack_w4_gqsa",
    "unpack_w4_gqsa_tile",
    "unpack_w4_sp24",
    "unpack_w4a16",
]

#: Scale group along K of the w4a16 and w4_sp24 kernels (the slab of w4_gqsa_tile).
GROUP = 128
_TILE_GROUP = 16  # w4_gqsa_tile: group size, and columns per tile
_SLAB = GROUP // _TILE_GROUP  # groups per 128-k slab
_ZERO = 8  # stored u = q + 8
#: Most kept groups per slab the w4_gqsa_tile layout holds (positions are bytes of a word).
TILE_MAX_KEEP = 4

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


# ---- w4_gqsa_tile --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class W4GQSATilePacked:
    """Inputs of the w4_gqsa_tile kernel (tile-shared GQSA, ``keep`` groups per slab)."""

    values: np.ndarray  # uint32 [N/16, S, keep*32], S = tile_slabs(K) = 2 * ceil(K/256)
    positions: np.ndarray  # uint32 [N/16, S]
    scales: np.ndarray  # float16 [N/16, S, 8, keep, 2]
    k: int
    n: int
    keep: int


def tile_layout(arrays: GQSAArrays) -> tuple[int, str]:
    """``(keep, "")`` when ``arrays`` are tile-shared and balanced (docs/formats.md (c)):
    ``g = 16``, ``K % 128 == 0``, ``N % 16 == 0``, every column keeps ``keep`` (1..7)
    groups of every 128-k slab and the 16 columns of a tile keep the same ones;
    else ``(0, reason)``."""
    g, k, n = arrays.group_size, arrays.k, arrays.n
    if g != _TILE_GROUP or k % GROUP or n % 16 or not k or not n:
        return (
            0,
            f"tile layout needs group_size 16, K % 128 == 0 and N % 16 == 0, got g={g} K={k} N={n}",
        )
    col_idx = np.asarray(arrays.col_idx, np.int64)
    row_ptr = np.asarray(arrays.row_ptr, np.int64)
    slabs, nnz = k // GROUP, col_idx.shape[0]
    per_column = nnz // n
    if row_ptr.shape != (n + 1,) or not np.array_equal(row_ptr, np.arange(n + 1) * per_column):
        return 0, "columns keep different numbers of groups (row_ptr is not n * keep)"
    keep = per_column // slabs
    if per_column % slabs or not 1 <= keep < _SLAB:
        return 0, f"{per_column} groups per column is not 1..7 in each of the {slabs} slabs"
    columns = col_idx.reshape(n, slabs, keep)
    if np.any(columns // _SLAB != np.arange(slabs)[:, None]) or np.any(np.diff(columns) <= 0):
        return 0, f"a column does not keep exactly {keep} ascending groups in every 128-k slab"
    tiles = columns.reshape(n // 16, 16, slabs, keep)
    if np.any(tiles != tiles[:, :1]):
        return 0, "the 16 columns of a tile keep different groups"
    if np.asarray(arrays.values).size != nnz * _TILE_GROUP // 2:
        return 0, f"values hold {np.asarray(arrays.values).size} bytes, expected nnz * 8 (4-bit)"
    return keep, ""


def tile_keep(arrays: GQSAArrays) -> int:
    """Groups kept per 128-k slab when ``arrays`` are tile-shared and balanced, else 0."""
    return tile_layout(arrays)[0]


def tile_slabs(k: int) -> int:
    """Slabs of 128 k in the w4_gqsa_tile layout: K/128 padded to whole 256-k stages."""
    return 2 * -(-k // (2 * GROUP))


def _tile_coordinates() -> tuple[np.ndarray, np.ndarray]:
    """(row, k offset in the group) of the 8 values of each lane's word: ``_lane_coordinates``
    with mma column ``c`` holding k offset ``4*((c % 8) // 2) + 2*(c // 8) + c % 2``."""
    rows, cols = _lane_coordinates()
    return rows, 4 * ((cols % 8) // 2) + 2 * (cols // 8) + cols % 2


def repack_w4_gqsa_tile(arrays: GQSAArrays) -> W4GQSATilePacked:
    """Tile-shared GQSA op inputs (4-bit, g = 16, keep <= 4) -> the w4_gqsa_tile kernel layout."""
    keep, reason = tile_layout(arrays)
    if not keep:
        raise ValueError(f"w4_gqsa_tile: {reason}")
    if keep > TILE_MAX_KEEP:
        raise ValueError(
            f"w4_gqsa_tile holds at most {TILE_MAX_KEEP} kept groups per 128-k slab, got {keep}: "
            "the w4_gqsa layout takes these arrays"
        )
    k, n = arrays.k, arrays.n
    tiles, slabs, nnz = n // 16, k // GROUP, arrays.col_idx.shape[0]
    padded = tile_slabs(k)
    nibbles = _group_nibbles(arrays.values, nnz, _TILE_GROUP)  # [nnz, 16] in k order
    # [tile, row r, slab, j, kk] -> [tile, slab, j, 16 rows, 16 k] (row r = column nt*16 + r)
    blocks = nibbles.reshape(tiles, 16, slabs, keep, 16).transpose(0, 2, 3, 1, 4)
    rows, ks = _tile_coordinates()  # [32, 8]
    words = _to_words(blocks[:, :, :, rows, ks])  # [tile, slab, j, lane]
    values = np.full((tiles, padded, 32 * keep), 0x88888888, np.uint32)  # padding: q = 0
    values[:, :slabs] = words.transpose(0, 1, 3, 2).reshape(tiles, slabs, 32 * keep)  # lane-major
    slots = np.asarray(arrays.col_idx, np.int64).reshape(tiles, 16, slabs, keep)[:, 0] % _SLAB
    positions = np.zeros((tiles, padded), np.uint32)
    shifts = 8 * np.arange(keep, dtype=np.uint32)
    positions[:, :slabs] = np.bitwise_or.reduce(slots.astype(np.uint32) << shifts, axis=-1)
    # [tile, h, g, slab, j] -> [tile, slab, g, j, h] (column nt*16 + g + 8h)
    grouped = np.asarray(arrays.scales).astype(np.float16).reshape(tiles, 2, 8, slabs, keep)
    scales = np.zeros((tiles, padded, 8, keep, 2), np.float16)
    scales[:, :slabs] = grouped.transpose(0, 3, 2, 4, 1)
    return W4GQSATilePacked(values, positions, scales, k, n, keep)


def unpack_w4_gqsa_tile(packed: W4GQSATilePacked) -> GQSAArrays:
    """NumPy reference reader of the w4_gqsa_tile layout (back to the op's inputs, FP16
    scales; inverse of :func:`repack_w4_gqsa_tile`; the padding slabs are dropped)."""
    k, n, keep = packed.k, packed.n, packed.keep
    tiles, slabs, padded = n // 16, k // GROUP, tile_slabs(k)
    words = np.asarray(packed.values).view(np.uint32).reshape(tiles, padded, 32, keep)[:, :slabs]
    blocks = np.zeros((tiles, slabs, keep, 16, 16), np.uint8)
    rows, ks = _tile_coordinates()
    blocks[:, :, :, rows, ks] = _from_words(words.transpose(0, 1, 3, 2))
    nibbles = blocks.transpose(0, 3, 1, 2, 4).reshape(n * slabs * keep, _TILE_GROUP)
    positions = np.asarray(packed.positions).view(np.uint32).reshape(tiles, padded, 1)[:, :slabs]
    slot = (positions >> (8 * np.arange(keep, dtype=np.uint32))) & 0xFF  # [tile, slab, j]
    groups = slot.astype(np.int64) + _SLAB * np.arange(slabs)[:, None]
    col_idx = np.broadcast_to(groups[:, None], (tiles, 16, slabs, keep)).reshape(-1)
    scales = np.asarray(packed.scales, np.float16).reshape(tiles, padded, 8, keep, 2)[:, :slabs]
    return GQSAArrays(
        (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8),
        col_idx.astype(np.int32),
        (np.arange(n + 1) * slabs * keep).astype(np.int32),
        np.ascontiguousarray(scales.transpose(0, 4, 2, 1, 3).reshape(-1)),
        k,
        n,
        _TILE_GROUP,
    )
