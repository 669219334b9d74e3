"""Write the harness's layout/correctness cases: ``python -m spa.trt.bench_cases DIR``.

For each case, the kernel-layout arrays produced by spa's repackers
(:mod:`spa.trt.repack`) and the FP32 dense weight they stand for, computed
from the ONNX-side arrays. ``plugins/bench/harness`` checks its device
dequantizer against that weight bit for bit, then every kernel against an FP32
GEMM of it. Files: ``DIR/cases.txt`` (``kernel K N group_size nnz prefix`` per
line; w4_gqsa_tile: nnz holds its ``keep``) and
``DIR/<prefix>.{a,b,idx,rows,scales,wref}.bin`` (raw little-endian).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spa.quant.blockwise import QuantizedWeight
from spa.trt import repack

__all__ = [
    "SHAPES",
    "SMALL_SHAPES",
    "gqsa_arrays",
    "tile_gqsa_arrays",
    "write_cases",
    "write_gqsa_case",
    "write_tile_case",
]

# (K, N): an N that is not a multiple of 64 (a partly idle block) and 3 groups
# (uneven split-K), then a mid-size layer.
SHAPES = ((384, 80), (4096, 2048))
# Small enough to carry to a GPU machine (about 2 MB); 1024 x 48 is split by
# the launcher's own split-K choice.
SMALL_SHAPES = ((384, 80), (1024, 48))


def _w4(rng: np.random.Generator, k: int, n: int, two_four: bool) -> QuantizedWeight:
    q = rng.integers(-8, 8, size=(k, n)).astype(np.int8)
    if two_four:
        order = np.argsort(rng.random((k // 4, n, 4)), axis=-1)
        mask = np.zeros((k // 4, n, 4), bool)
        np.put_along_axis(mask, order[..., :2], True, axis=-1)
        q = np.where(mask.transpose(0, 2, 1).reshape(k, n), q, 0).astype(np.int8)
    scales = (rng.random((k // repack.GROUP, n)) * 0.02 + 0.002).astype(np.float16)
    return QuantizedWeight(q, scales, None, 4, repack.GROUP)


def _dense(weight: QuantizedWeight) -> np.ndarray:
    scales = np.repeat(weight.scales.astype(np.float32), weight.block, axis=0)
    return (weight.q.astype(np.float32) * scales).astype(np.float32)


def gqsa_arrays(rng: np.random.Generator, k: int, n: int, g: int, keep: float) -> repack.GQSAArrays:
    """Random GQSA op arrays (docs/formats.md (c)); rows keep a random number of groups."""
    blocks = k // g
    kept = rng.random((n, blocks)) < keep
    rows, cols = np.nonzero(kept)  # row-major: ascending n, then ascending b
    nnz = rows.size
    unsigned = rng.integers(0, 16, size=(nnz, g)).astype(np.uint8)
    values = (unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)).astype(np.uint8)
    row_ptr = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(np.int32)
    scales = (rng.random(nnz) * 0.02 + 0.002).astype(np.float16)
    return repack.GQSAArrays(values, cols.astype(np.int32), row_ptr, scales, k, n, g)


def tile_gqsa_arrays(rng: np.random.Generator, k: int, n: int, keep: int) -> repack.GQSAArrays:
    """Random tile-shared GQSA op arrays (g = 16): each 16-column tile keeps ``keep`` random
    groups of every 128-k slab, the same for its 16 columns (docs/formats.md (c))."""
    tiles, slabs = n // 16, k // repack.GROUP
    order = np.argsort(rng.random((tiles, slabs, 8)), axis=-1)[..., :keep]
    positions = np.sort(order, axis=-1)  # [tile, slab, keep] ascending
    groups = positions + 8 * np.arange(slabs)[:, None]  # group index b per (tile, slab, j)
    col_idx = np.broadcast_to(groups[:, None], (tiles, 16, slabs, keep)).reshape(-1)
    nnz = col_idx.size
    unsigned = rng.integers(0, 16, size=(nnz, 16)).astype(np.uint8)
    values = (unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)).astype(np.uint8)
    row_ptr = (np.arange(n + 1) * slabs * keep).astype(np.int32)
    scales = (rng.random(nnz) * 0.02 + 0.002).astype(np.float16)
    return repack.GQSAArrays(values, col_idx.astype(np.int32), row_ptr, scales, k, n, 16)


def _save(folder: Path, prefix: str, **arrays: np.ndarray) -> None:
    for suffix, array in arrays.items():
        np.ascontiguousarray(array).tofile(folder / f"{prefix}.{suffix}.bin")


def write_cases(
    folder: Path, seed: int = 0, shapes: tuple[tuple[int, int], ...] = SHAPES
) -> list[str]:
    """Write every case (for each ``(K, N)`` of ``shapes``) into ``folder``; returns the manifest lines."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for k, n in shapes:
        weight = _w4(rng, k, n, two_four=False)
        dense = repack.repack_w4a16(weight)
        prefix = f"w4a16_{k}x{n}"
        _save(folder, prefix, a=dense.packed, scales=dense.scales, wref=_dense(weight))
        lines.append(f"w4a16 {k} {n} {repack.GROUP} 0 {prefix}")

        weight = _w4(rng, k, n, two_four=True)
        sparse = repack.repack_w4_sp24(weight)
        prefix = f"w4_sp24_{k}x{n}"
        _save(
            folder,
            prefix,
            a=sparse.values,
            b=sparse.meta,
            scales=sparse.scales,
            wref=_dense(weight),
        )
        lines.append(f"w4_sp24 {k} {n} {repack.GROUP} 0 {prefix}")

        for g in (8, 16, 32, 64) if k * n <= 2**16 else (16,):
            lines.append(
                write_gqsa_case(
                    folder, gqsa_arrays(rng, k, n, g, keep=0.5), f"w4_gqsa_g{g}_{k}x{n}"
                )
            )
        for keep in (2, 4):
            arrays = tile_gqsa_arrays(rng, k, n, keep)
            lines.append(write_tile_case(folder, arrays, f"w4_gqsa_tile_keep{keep}_{k}x{n}"))
    (folder / "cases.txt").write_text("\n".join(lines) + "\n")
    return lines


def write_gqsa_case(folder: Path, arrays: repack.GQSAArrays, prefix: str) -> str:
    """Write one GQSA case's files into ``folder``; returns its manifest line (not added to cases.txt)."""
    packed = repack.repack_w4_gqsa(arrays)
    _save(
        folder, prefix, a=packed.values, idx=packed.group_idx, rows=packed.row_ptr,
        scales=packed.scales, wref=repack.dequantize_gqsa(arrays),
    )  # fmt: skip
    return f"w4_gqsa {arrays.k} {arrays.n} {arrays.group_size} {packed.group_idx.size} {prefix}"


def write_tile_case(folder: Path, arrays: repack.GQSAArrays, prefix: str) -> str:
    """Write one tile-shared GQSA case (w4_gqsa_tile; positions in ``.b.bin``); returns its
    manifest line, whose nnz field holds ``keep``."""
    packed = repack.repack_w4_gqsa_tile(arrays)
    _save(
        folder, prefix, a=packed.values, b=packed.positions, scales=packed.scales,
        wref=repack.dequantize_gqsa(arrays),
    )  # fmt: skip
    return f"w4_gqsa_tile {arrays.k} {arrays.n} 16 {packed.keep} {prefix}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--small", action="store_true", help=f"shapes {SMALL_SHAPES} instead of {SHAPES}"
    )
    args = parser.parse_args()
    lines = write_cases(args.folder, args.seed, SMALL_SHAPES if args.small else SHAPES)
    print(f"wrote {len(lines)} cases to {args.folder}")


if __name__ == "__main__":
    main()
