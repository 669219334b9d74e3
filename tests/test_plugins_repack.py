"""Repacking into the plugin kernels' layouts: bit-exact round trips (hypothesis)
against NumPy references, and the documented GQSA op layout (docs/formats.md
section (c)) built here from its text, independently of spa/quant/gqsa.py; the
w4_gqsa_tile layout read back from its description (spa/trt/repack.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa.quant.blockwise import QuantizedWeight
from spa.quant.packing import pack_matmulnbits, pack_qdq, unpack_matmulnbits, unpack_qdq
from spa.trt.repack import (
    TILE_MAX_KEEP,
    GQSAArrays,
    W4GQSATilePacked,
    dequantize_gqsa,
    repack_w4_gqsa,
    repack_w4_gqsa_tile,
    repack_w4_sp24,
    repack_w4a16,
    tile_keep,
    tile_layout,
    unpack_w4_gqsa,
    unpack_w4_gqsa_tile,
    unpack_w4_sp24,
    unpack_w4a16,
)

shapes = st.tuples(st.integers(1, 3), st.integers(1, 4))  # (K/128, N/16)


def random_w4(seed: int, k: int, n: int) -> QuantizedWeight:
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, size=(k, n)).astype(np.int8)
    scales = (rng.random((k // 128, n)) + 0.01).astype(np.float16)
    return QuantizedWeight(q, scales, None, 4, 128)


def two_four(weight: QuantizedWeight, seed: int) -> QuantizedWeight:
    """Zero 2 (or more, when ``extra``) of every 4 consecutive k per column."""
    rng = np.random.default_rng(seed)
    k, n = weight.shape
    keep = np.argsort(rng.random((k // 4, n, 4)), axis=-1)[..., :2]
    mask = np.zeros((k // 4, n, 4), bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    mask = mask.transpose(0, 2, 1).reshape(k, n)
    return QuantizedWeight(np.where(mask, weight.q, 0).astype(np.int8), weight.scales, None, 4, 128)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_w4a16_round_trip_from_matmulnbits(shape: tuple[int, int], seed: int) -> None:
    weight = random_w4(seed, shape[0] * 128, shape[1] * 16)
    from_ort = unpack_matmulnbits(pack_matmulnbits(weight))  # the ORT form spa writes
    packed = repack_w4a16(from_ort)
    assert packed.packed.dtype == np.int32 and packed.packed.shape == (shape[1], shape[0] * 8, 32)
    back = unpack_w4a16(packed)
    np.testing.assert_array_equal(back.q, weight.q)
    np.testing.assert_array_equal(back.scales, weight.scales)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_w4a16_round_trip_from_qdq(shape: tuple[int, int], seed: int) -> None:
    weight = random_w4(seed, shape[0] * 128, shape[1] * 16)
    packed = repack_w4a16(unpack_qdq(pack_qdq(weight)))
    np.testing.assert_array_equal(unpack_w4a16(packed).q, weight.q)


def test_w4a16_lane_word_is_the_documented_fragment() -> None:
    """Lane 5 (g=1, t=1), step s=2 of tile 0, group 1: mma columns 2t, 2t+1, 2t+8, 2t+9 are
    k = 128 + 32t + 4s + (0, 1, 2, 3), rows g and g+8: W^T (1,168) (1,169) (9,168) (9,169) (1,170) (1,171) (9,170) (9,171)."""
    q = np.zeros((256, 16), np.int8)
    wanted = [1, 2, 3, 4, 5, 6, 7, -8]
    coordinates = [(1, 168), (1, 169), (9, 168), (9, 169), (1, 170), (1, 171), (9, 170), (9, 171)]
    for value, (row, col) in zip(wanted, coordinates, strict=True):
        q[col, row] = value  # W[k, n] = W^T[n, k]
    packed = repack_w4a16(QuantizedWeight(q, np.ones((2, 16), np.float16), None, 4, 128))
    words = packed.packed.reshape(1, 2, 32, 8)  # [tile, group, lane, step]
    word = int(words[0, 1, 5, 2]) & 0xFFFFFFFF
    u = [v + 8 for v in wanted]
    # dequant order: v0 v2 v4 v6 in nibbles 0-3, v1 v3 v5 v7 in nibbles 4-7
    expected = sum(u[2 * p] << (4 * p) | u[2 * p + 1] << (16 + 4 * p) for p in range(4))
    assert word == expected
    others = np.delete(words.reshape(-1), 1 * 256 + 5 * 8 + 2)
    assert (others == 0x88888888 - 2**32).all()  # every other word: all zeros (u = 8)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_w4_sp24_round_trip(shape: tuple[int, int], seed: int) -> None:
    weight = two_four(random_w4(seed, shape[0] * 128, shape[1] * 16), seed + 1)
    packed = repack_w4_sp24(weight)
    assert packed.values.shape == (shape[1], shape[0] * 4, 32)
    assert packed.meta.shape == (shape[1], shape[0] * 4, 16) and packed.meta.dtype == np.uint32
    np.testing.assert_array_equal(unpack_w4_sp24(packed).q, weight.q)


def test_w4_sp24_metadata_is_ascending_and_documented() -> None:
    """Row 0 keeps k = 1 and 3 of chunk 0; row 8 keeps k = 0 and 2 of chunk 5."""
    q = np.zeros((128, 16), np.int8)
    q[1, 0], q[3, 0] = 3, -3
    q[20, 8], q[22, 8] = 5, -5
    packed = repack_w4_sp24(QuantizedWeight(q, np.ones((1, 16), np.float16), None, 4, 128))
    meta = packed.meta[0, 0]
    assert meta[0] & 0xF == (1 | 3 << 2)  # slot 2g+h = 0: row 0, chunk 0
    assert (meta[1] >> 16 + 4) & 0xF == (0 | 2 << 2)  # slot 1 (g=0, h=1): row 8, chunk 4+1
    positions = [(int(word) >> s) & 0xF for word in packed.meta.reshape(-1) for s in range(0, 32, 4)]
    assert all((p & 3) < (p >> 2) for p in positions)  # ordered metadata


def test_w4_sp24_rejects_three_of_four() -> None:
    q = np.zeros((128, 16), np.int8)
    q[0:3, 0] = 1
    with pytest.raises(ValueError, match="2:4"):
        repack_w4_sp24(QuantizedWeight(q, np.ones((1, 16), np.float16), None, 4, 128))


def test_w4a16_rejects_asymmetric_and_other_blocks() -> None:
    weight = random_w4(0, 128, 16)
    with pytest.raises(ValueError, match="block 128"):
        repack_w4a16(QuantizedWeight(weight.q, np.ones((2, 16), np.float16), None, 4, 64))
    asym = QuantizedWeight(weight.q.astype(np.uint8), weight.scales, np.zeros((1, 16), np.uint8), 4, 128)
    with pytest.raises(ValueError, match="symmetric"):
        repack_w4a16(asym)


def gqsa_reference(dense_q: np.ndarray, scales: np.ndarray, g: int, keep: np.ndarray) -> GQSAArrays:
    """docs/formats.md (c), written from the text: one BSR row per output column."""
    k, n = dense_q.shape
    values, col_idx, row_ptr, entry_scales = [], [], [0], []
    for column in range(n):
        for block in np.flatnonzero(keep[:, column]):
            u = dense_q[block * g : (block + 1) * g, column].astype(np.int16) + 8
            values.append([int(u[2 * i]) | int(u[2 * i + 1]) << 4 for i in range(g // 2)])
            col_idx.append(block)
            entry_scales.append(scales[block, column])
        row_ptr.append(len(col_idx))
    return GQSAArrays(
        np.array(values, np.uint8).reshape(-1, g // 2),
        np.array(col_idx, np.int32),
        np.array(row_ptr, np.int32),
        np.array(entry_scales, np.float16),
        k,
        n,
        g,
    )


@settings(max_examples=25, deadline=None)
@given(
    g=st.sampled_from([8, 16, 32, 64]),
    blocks=st.integers(1, 6),
    n=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_w4_gqsa_round_trip_and_dequantization(g: int, blocks: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = g * blocks
    q = rng.integers(-8, 8, size=(k, n)).astype(np.int8)
    scales = (rng.random((blocks, n)) + 0.05).astype(np.float16)
    keep = rng.random((blocks, n)) < 0.5  # uneven rows, empty rows allowed
    arrays = gqsa_reference(q, scales, g, keep)
    packed = repack_w4_gqsa(arrays)
    assert packed.values.dtype == np.uint32 and packed.values.shape == (len(arrays.col_idx), g // 8)
    assert packed.group_idx.dtype == np.uint16
    back = unpack_w4_gqsa(packed)
    np.testing.assert_array_equal(back.values, arrays.values)
    np.testing.assert_array_equal(back.col_idx, arrays.col_idx)
    np.testing.assert_array_equal(back.row_ptr, arrays.row_ptr)
    np.testing.assert_array_equal(back.scales, arrays.scales)
    mask = np.repeat(keep, g, axis=0)
    expected = np.where(mask, q.astype(np.float32) * np.repeat(scales.astype(np.float32), g, axis=0), 0)
    np.testing.assert_array_equal(dequantize_gqsa(arrays), expected)


def test_w4_gqsa_rejects_bad_group_size() -> None:
    arrays = GQSAArrays(np.zeros((0, 6), np.uint8), np.zeros(0, np.int32), np.zeros(3, np.int32), np.zeros(0, np.float16), 36, 2, 12)
    with pytest.raises(ValueError, match="group_size"):
        repack_w4_gqsa(arrays)


@pytest.mark.parametrize("group", [8, 16, 32, 64])
def test_spa_gqsa_packer_feeds_the_w4_gqsa_kernel_layout(group: int) -> None:
    """spa.quant.gqsa's packer (what `spa sparsify --pattern gqsa` writes) and the plugin's
    repacker agree: op arrays -> kernel layout -> back gives the same bytes, and the plugin's
    dequantization equals the quantizer's own dense weight."""
    from spa.quant import gqsa

    weight = np.random.default_rng(group).standard_normal((4 * 64, 48)).astype(np.float32)
    quantized = gqsa.gqsa_quantize(weight, None, group=group, sparsity=0.5, bits=4,
                                   scale_dtype=np.float16)
    ours = gqsa.pack_gqsa(quantized)
    arrays = GQSAArrays(ours.values, ours.col_idx, ours.row_ptr, ours.scales, ours.k, ours.n,
                        ours.group)
    back = unpack_w4_gqsa(repack_w4_gqsa(arrays))
    for name in ("values", "col_idx", "row_ptr"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ours, name))
    np.testing.assert_array_equal(np.asarray(back.scales, np.float16), ours.scales)
    np.testing.assert_array_equal(dequantize_gqsa(arrays), quantized.dequantize(np.float32))


# ---- w4_gqsa_tile ------------------------------------------------------------------


def tile_mask(rng: np.random.Generator, k: int, n: int, keep: int) -> np.ndarray:
    """kept[K/16, N]: ``keep`` random groups of every 8-group slab, the same for 16 columns."""
    slabs, tiles = k // 128, n // 16
    order = np.argsort(rng.random((slabs, 8, tiles)), axis=1)[:, :keep]
    mask = np.zeros((slabs, 8, tiles), bool)
    np.put_along_axis(mask, order, True, axis=1)
    return np.repeat(mask.reshape(k // 16, tiles), 16, axis=1)


def tile_arrays(seed: int, k: int, n: int, keep: int) -> GQSAArrays:
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, size=(k, n)).astype(np.int8)
    scales = (rng.random((k // 16, n)) + 0.05).astype(np.float16)
    return gqsa_reference(q, scales, 16, tile_mask(rng, k, n, keep))


def read_tile_layout(packed: W4GQSATilePacked) -> np.ndarray:
    """Dense FP32 W[K, N] read from the w4_gqsa_tile layout as described in
    spa/trt/repack.py (loops over tiles, slabs, kept groups, lanes, values)."""
    k, n, keep = packed.k, packed.n, packed.keep
    weight = np.zeros((k, n), np.float32)
    assert packed.values.shape[1] == 2 * -(-k // 256)  # slabs padded to whole 256-k stages
    for nt in range(n // 16):
        for b in range(k // 128):
            for j in range(keep):
                p = (int(packed.positions[nt, b]) >> (8 * j)) & 0xFF
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    fragment = [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1),
                                (g, 2 * t + 8), (g, 2 * t + 9), (g + 8, 2 * t + 8), (g + 8, 2 * t + 9)]
                    word = int(packed.values[nt, b, lane * keep + j])
                    for i, (r, c) in enumerate(fragment):
                        nibble = i // 2 + 4 * (i % 2)  # dequant order: v[2p] nibble p, v[2p+1] nibble p+4
                        u = (word >> (4 * nibble)) & 0xF
                        kk = 4 * ((c % 8) // 2) + 2 * (c // 8) + c % 2  # mma column c holds k offset kk
                        scale = np.float32(packed.scales[nt, b, r % 8, j, r // 8])
                        weight[(b * 8 + p) * 16 + kk, nt * 16 + r] = np.float32(u - 8) * scale
    for b in range(k // 128, packed.values.shape[1]):  # padding slabs add nothing: q = 0, scale 0
        assert (packed.values[:, b] == 0x88888888).all() and (packed.scales[:, b] == 0).all()
    return weight


@settings(max_examples=25, deadline=None)
@given(slabs=st.integers(1, 3), tiles=st.integers(1, 3), keep=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_w4_gqsa_tile_round_trip(slabs: int, tiles: int, keep: int, seed: int) -> None:
    k, n = slabs * 128, tiles * 16
    arrays = tile_arrays(seed, k, n, keep)
    assert tile_layout(arrays) == (keep, "")
    packed = repack_w4_gqsa_tile(arrays)
    assert packed.keep == keep and (packed.k, packed.n) == (k, n)
    padded = slabs + slabs % 2  # whole 256-k stages
    assert packed.values.dtype == np.uint32 and packed.values.shape == (tiles, padded, keep * 32)
    assert packed.positions.dtype == np.uint32 and packed.positions.shape == (tiles, padded)
    assert packed.scales.dtype == np.float16 and packed.scales.shape == (tiles, padded, 8, keep, 2)
    if keep < 4:
        assert (packed.positions >> np.uint32(8 * keep) == 0).all()  # bytes j >= keep are 0
    back = unpack_w4_gqsa_tile(packed)
    for name in ("values", "col_idx", "row_ptr", "scales"):
        np.testing.assert_array_equal(getattr(back, name), getattr(arrays, name))
        assert getattr(back, name).dtype == getattr(arrays, name).dtype
    assert (back.k, back.n, back.group_size) == (k, n, 16)


@pytest.mark.parametrize(("k", "n", "keep"), [(128, 16, 2), (256, 32, 4), (384, 16, 3), (128, 48, 4), (256, 16, 1)])
def test_w4_gqsa_tile_reads_as_documented(k: int, n: int, keep: int) -> None:
    arrays = tile_arrays(k + n + keep, k, n, keep)
    np.testing.assert_array_equal(read_tile_layout(repack_w4_gqsa_tile(arrays)), dequantize_gqsa(arrays))


def test_w4_gqsa_tile_hand_checked_example() -> None:
    """K = 128, N = 16, keep 2: every column keeps groups 1 and 6 (k 16..31, 96..111).
    Column 0 has q = 1 at k = 16 (group 1, k offset 0); column 9 has q = -3 at k = 105 (group 6,
    k offset 9); every other kept value is 0. The scale of column n's j-th kept group is n + j/2.
    One slab of 128 k is padded to two (a 256-k stage)."""
    q = np.zeros((128, 16), np.int8)
    q[16, 0], q[105, 9] = 1, -3
    scales = (np.arange(16)[None, :] + 0.5 * np.array([0, 0, 0, 0, 0, 0, 1, 0])[:, None]).astype(np.float16)
    mask = np.zeros((8, 16), bool)
    mask[[1, 6]] = True
    packed = repack_w4_gqsa_tile(gqsa_reference(q, scales, 16, mask))
    assert packed.positions.tolist() == [[0x0601, 0]]  # byte 0 = 1, byte 1 = 6; the padding slab
    assert (packed.values[0, 1] == 0x88888888).all() and (packed.scales[0, 1] == 0).all()
    words = packed.values[0, 0]
    # (row 0, k offset 0) of group j = 0: mma column 0, lane 0 (g = 0, t = 0), value 0 (nibble 0), word 0*2 + 0.
    assert int(words[0]) == 0x88888889
    # (row 9, k offset 9) of group j = 1: mma column c = 5 (4 * (5 // 2) + 0 + 1 = 9), so t = 2, g = 1:
    # lane 6, value 2 * (9 // 8) + 5 % 2 = 3 (nibble 5), word 6*2 + 1.
    assert int(words[13]) == 0x88588888
    assert (np.delete(words, [0, 13]) == 0x88888888).all()
    assert packed.scales[0, 0, 1, 1, 1] == 9.5  # column 0*16 + 1 + 8 = 9, kept group j = 1
    assert packed.scales[0, 0, 3, 0, 0] == 3.0  # column 3, j = 0
    assert packed.scales[0, 0, 7, 1, 0] == 7.5


def test_w4_gqsa_tile_rejects_arrays_that_are_not_tile_shared() -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, size=(256, 32)).astype(np.int8)
    scales = np.ones((16, 32), np.float16)
    shared = tile_mask(rng, 256, 32, 4)
    cases = {}
    differ = shared.copy()
    differ[:8, 3] = ~differ[:8, 3]  # column 3 keeps the other 4 groups of slab 0
    cases["the 16 columns of a tile keep different groups"] = (differ, q, 16)
    uneven = np.zeros((16, 32), bool)
    uneven[[0, 1, 2, 8]] = True  # 4 per column, but 3 in slab 0 and 1 in slab 1
    cases["exactly 2 ascending groups in every 128-k slab"] = (uneven, q, 16)
    unbalanced = shared.copy()
    unbalanced[:, 20] = False
    cases["columns keep different numbers of groups"] = (unbalanced, q, 16)
    cases["not 1..7"] = (np.ones((16, 32), bool), q, 16)  # everything kept
    for reason, (mask, weights, g) in cases.items():
        arrays = gqsa_reference(weights, scales, g, mask)
        assert tile_keep(arrays) == 0
        with pytest.raises(ValueError, match=reason):
            repack_w4_gqsa_tile(arrays)
    eight = gqsa_reference(q, np.ones((32, 32), np.float16), 8, np.repeat(shared, 2, axis=0))
    narrow = gqsa_reference(q[:, :8], scales[:, :8], 16, shared[:, :8])
    for arrays in (eight, narrow):
        with pytest.raises(ValueError, match="group_size 16, K % 128 == 0 and N % 16 == 0"):
            repack_w4_gqsa_tile(arrays)


def test_spa_tile_quantizer_feeds_the_w4_gqsa_tile_layout() -> None:
    """gqsa_quantize(layout="tile") -> pack_gqsa (what `spa sparsify --gqsa-layout tile` writes)
    is tile-shared; the kernel layout reads back to the same bytes and the same weight."""
    from spa.quant import gqsa

    weight = np.random.default_rng(1).standard_normal((384, 48)).astype(np.float32)
    for sparsity, keep in ((0.5, 4), (0.75, 2), (0.125, 7)):
        quantized = gqsa.gqsa_quantize(weight, None, sparsity=sparsity, scale_dtype=np.float16, layout="tile")
        ours = gqsa.pack_gqsa(quantized)
        arrays = GQSAArrays(ours.values, ours.col_idx, ours.row_ptr, ours.scales, ours.k, ours.n, ours.group)
        assert tile_keep(arrays) == keep
        if keep > TILE_MAX_KEEP:  # tile-shared, but more than the kernel layout's 4 per slab
            with pytest.raises(ValueError, match="at most 4 kept groups per 128-k slab, got 7"):
                repack_w4_gqsa_tile(arrays)
            continue
        packed = repack_w4_gqsa_tile(arrays)
        back = unpack_w4_gqsa_tile(packed)
        for name in ("values", "col_idx", "row_ptr", "scales"):
            np.testing.assert_array_equal(getattr(back, name), getattr(ours, name))
        np.testing.assert_array_equal(read_tile_layout(packed), quantized.dequantize(np.float32))
    column = gqsa.pack_gqsa(gqsa.gqsa_quantize(weight, None, scale_dtype=np.float16))
    assert tile_keep(GQSAArrays(column.values, column.col_idx, column.row_ptr, column.scales, 384, 48, 16)) == 0
