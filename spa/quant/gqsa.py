"""GQSA: group-structured sparsity plus INT4 of the kept groups (``docs/formats.md`` (c)).

``W[K, N]`` is cut along K into ``K / g`` groups of ``g`` weights per output
column. :class:`GroupSparseWeight` holds the quantized weight in dense
bookkeeping form (``q[K, N]``, ``scales[K/g, N]``, ``kept[K/g, N]``);
:func:`pack_gqsa` / :func:`unpack_gqsa` convert it to and from the stored
block-sparse-row arrays (:class:`GQSAArrays`), and :func:`dequantize_gqsa` is
the NumPy reference of the layout.

:func:`gqsa_quantize` is the two-stage optimisation:

1. **quantization-pruning calibration**: every column keeps the same number
   of groups, those with the largest OBS group saliency
   ``w_g^T ([H^-1]_gg)^-1 w_g`` (the output error of removing group ``g``
   alone; ``H = I`` gives ``||w_g||^2``). Then, GPTQ-style, inputs are visited
   along K: a kept group's symmetric scale ``max|w| / (2^(b-1) - 1)`` is fixed
   when the group starts, from its already error-corrected weights; each
   input is rounded (or set to 0 when its group is removed) and the error is
   spread over the inputs still to come through the Cholesky factor of
   ``H^-1`` (as in :mod:`spa.quant.gptq`).
2. **scale refinement**: with the integers frozen, the scales of each column
   are the least-squares solution ``s* = argmin (w - Q s)^T H (w - Q s)``
   (``Q[K, keep]``: column ``j`` is group ``j``'s integers in place), i.e.
   ``(Q^T H Q) s = Q^T H w``, against the *original* weight. A column whose
   refined (storage-rounded) scales do not lower its error keeps the old ones,
   so refinement never increases the layer error.

Without calibration data ``H = I`` (data-free): selection is by magnitude,
no error is propagated and stage 2 is a per-group least-squares fit.

``layout="tile"`` (tile-shared GQSA, ``docs/formats.md`` (c)) constrains which
groups are kept, not how they are stored: ``g = 16``, ``K % 128 == 0``,
``N % 16 == 0``; the 16 output columns of each tile keep the same groups, and
every 128-k slab (8 groups) keeps the same number ``8 - 8 * sparsity`` of them.
Selection sums the columns' saliencies over the tile (the output error of
removing the group from all 16 columns); stages 1 and 2 run on that mask
unchanged. It lets a tensor-core kernel (``w4_gqsa_tile``) take a 16x16 weight
tile as one mma A operand.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spa.progress import track
from spa.quant.gptq import upper_cholesky_of_inverse
from spa.quant.packing import pack_nibbles, unpack_nibbles

__all__ = [
    "GROUP_SIZES",
    "LAYOUTS",
    "TILE_COLUMNS",
    "TILE_GROUP",
    "TILE_SLAB_GROUPS",
    "GQSAArrays",
    "GroupSparseWeight",
    "dequantize_gqsa",
    "gqsa_quantize",
    "layer_error",
    "pack_gqsa",
    "refine_scales",
    "select_groups",
    "tile_keep_per_slab",
    "tile_reason",
    "unpack_gqsa",
]

GROUP_SIZES = (8, 16, 32, 64)
#: ``column``: each output column picks its own groups; ``tile``: tile-shared (module docstring).
LAYOUTS = ("column", "tile")
#: Tile-shared layout: output columns per tile, group size, groups per 128-k slab.
TILE_COLUMNS = 16
TILE_GROUP = 16
TILE_SLAB_GROUPS = 8


@dataclasses.dataclass(frozen=True)
class GroupSparseWeight:
    """``q[K, N]`` signed integers (0 in removed groups), ``scales[K/g, N]`` (0 where
    removed), ``kept[K/g, N]`` bool; ``W = q * scale of its group``."""

    q: np.ndarray
    scales: np.ndarray
    kept: np.ndarray
    group: int
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.q.shape
        return int(rows), int(cols)

    def dequantize(self, dtype: np.dtype | type | None = None) -> np.ndarray:
        """``W[K, N]`` computed in float64, cast to ``dtype`` (default: the scales' dtype)."""
        rows, _ = self.shape
        scales = np.repeat(self.scales.astype(np.float64), self.group, axis=0)[:rows]
        return (self.q.astype(np.float64) * scales).astype(dtype or self.scales.dtype)


@dataclasses.dataclass(frozen=True)
class GQSAArrays:
    """The four initializers and the attributes of one ``spa.GroupSparseQuantMatMul``."""

    values: np.ndarray  # uint8 [nnz, g*bits/8]
    col_idx: np.ndarray  # int32 [nnz]
    row_ptr: np.ndarray  # int32 [N + 1]
    scales: np.ndarray  # float [nnz]
    k: int
    n: int
    group: int
    bits: int


def _check_layout(rows: int, group: int, bits: int) -> None:
    if group not in GROUP_SIZES:
        raise ValueError(f"group size {group}: choose one of {GROUP_SIZES}")
    if bits not in (4, 8):
        raise ValueError(f"GQSA stores 4 or 8 bits, got {bits}")
    if rows % group:
        raise ValueError(f"K={rows} is not a multiple of the group size {group}")


def pack_gqsa(weight: GroupSparseWeight) -> GQSAArrays:
    """The block-sparse-row arrays of ``weight``: one row per output column, kept groups
    in ascending group order, values stored unsigned ``q + 2^(bits-1)``."""
    rows, cols = weight.shape
    group, bits = weight.group, weight.bits
    _check_layout(rows, group, bits)
    kept_t = np.asarray(weight.kept, dtype=bool).T  # [N, K/g]: row-major order = BSR order
    columns, groups = np.nonzero(kept_t)
    q_groups = weight.q.T.reshape(cols, rows // group, group)  # [N, K/g, g]
    unsigned = (q_groups[columns, groups].astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    values = pack_nibbles(unsigned) if bits == 4 else unsigned
    counts = kept_t.sum(axis=1)
    row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    scales = weight.scales.T[columns, groups]
    return GQSAArrays(
        np.ascontiguousarray(values.reshape(len(columns), group * bits // 8), dtype=np.uint8),
        groups.astype(np.int32), row_ptr, np.ascontiguousarray(scales), rows, cols, group, bits,
    )  # fmt: skip


def _entry_rows(row_ptr: np.ndarray, nnz: int) -> np.ndarray:
    """The BSR row (output column) of every entry."""
    counts = [int(count) for count in np.diff(np.asarray(row_ptr, dtype=np.int64))]
    return np.repeat(np.arange(len(row_ptr) - 1), counts)[:nnz]


def _signed_groups(arrays: GQSAArrays) -> np.ndarray:
    nnz = len(arrays.col_idx)
    values = np.asarray(arrays.values, dtype=np.uint8).reshape(nnz, arrays.group * arrays.bits // 8)
    unsigned = unpack_nibbles(values, arrays.group) if arrays.bits == 4 else values
    return (unsigned.astype(np.int16) - 2 ** (arrays.bits - 1)).astype(np.int8)  # [nnz, g]


def unpack_gqsa(arrays: GQSAArrays) -> GroupSparseWeight:
    """Inverse of :func:`pack_gqsa` (honours any ``row_ptr``, balanced or not)."""
    rows, cols, group = arrays.k, arrays.n, arrays.group
    _check_layout(rows, group, arrays.bits)
    nnz = len(arrays.col_idx)
    columns = _entry_rows(arrays.row_ptr, nnz)
    groups = np.asarray(arrays.col_idx, dtype=np.int64)
    q_t = np.zeros((cols, rows // group, group), dtype=np.int8)
    q_t[columns, groups] = _signed_groups(arrays)
    scales = np.zeros((rows // group, cols), dtype=np.asarray(arrays.scales).dtype)
    scales[groups, columns] = arrays.scales
    kept = np.zeros((rows // group, cols), dtype=bool)
    kept[groups, columns] = True
    q = np.ascontiguousarray(q_t.reshape(cols, rows).T)
    return GroupSparseWeight(q, scales, kept, group, arrays.bits)


def dequantize_gqsa(arrays: GQSAArrays) -> np.ndarray:
    """NumPy reference of the layout: ``W[b*g + i, n] = (u[e, i] - 2^(bits-1)) * scales[e]``,
    computed as the runtime does (in the scales' dtype), 0 outside the kept groups."""
    rows, cols, group = arrays.k, arrays.n, arrays.group
    nnz = len(arrays.col_idx)
    scales = np.asarray(arrays.scales)
    dequantized = _signed_groups(arrays).astype(scales.dtype) * scales[:, None]
    weight_t = np.zeros((cols, rows // group, group), dtype=scales.dtype)
    weight_t[_entry_rows(arrays.row_ptr, nnz), np.asarray(arrays.col_idx, np.int64)] = dequantized
    return np.ascontiguousarray(weight_t.reshape(cols, rows).T)


def layer_error(hessian: np.ndarray | None, weight: np.ndarray, approximation: np.ndarray) -> float:
    """``trace((W - W')^T H (W - W'))`` (``H = I`` when None): the layer output error."""
    delta = np.asarray(weight, np.float64) - np.asarray(approximation, np.float64)
    if hessian is None:
        return float(np.sum(delta * delta))
    return float(np.einsum("kn,kl,ln->", delta, np.asarray(hessian, np.float64), delta))


def tile_reason(rows: int, cols: int, group: int) -> str:
    """Why ``W[rows, cols]`` in groups of ``group`` cannot take the tile layout ("" if it can)."""
    slab = TILE_GROUP * TILE_SLAB_GROUPS
    if group != TILE_GROUP or rows % slab or cols % TILE_COLUMNS:
        return (
            f"tile layout needs group {TILE_GROUP}, K % {slab} == 0 and N % {TILE_COLUMNS} == 0 "
            f"(got group {group}, K={rows}, N={cols})"
        )
    return ""


def tile_keep_per_slab(sparsity: float) -> int:
    """Groups the tile layout keeps of each 8-group slab: ``8 - 8 * sparsity``, which must
    be a whole number in 1..7 (sparsity a multiple of 1/8 in 0.125..0.875)."""
    removed = sparsity * TILE_SLAB_GROUPS
    keep = TILE_SLAB_GROUPS - round(removed)
    if abs(removed - round(removed)) > 1e-9 or not 1 <= keep < TILE_SLAB_GROUPS:
        raise ValueError(
            f"sparsity {sparsity} removes {removed:g} of the 8 groups of each 128-k slab; the "
            "tile layout removes a whole number 1..7: use a multiple of 1/8 in 0.125..0.875 "
            "(e.g. 0.5 or 0.75) or layout='column'"
        )
    return keep


def _saliency(
    weight: np.ndarray, inverse_diagonal_blocks: np.ndarray | None, group: int
) -> np.ndarray:
    """``[K/g, N]``: ``w_g^T ([H^-1]_gg)^-1 w_g`` per group and column."""
    rows, cols = weight.shape
    groups = np.asarray(weight, np.float64).reshape(rows // group, group, cols)
    if inverse_diagonal_blocks is None:
        return np.sum(groups * groups, axis=1)
    solved = np.linalg.solve(inverse_diagonal_blocks, groups)  # ([H^-1]_gg)^-1 w_g
    return np.sum(groups * solved, axis=1)


def _largest(saliency: np.ndarray, keep: int) -> np.ndarray:
    """Mask of the ``keep`` largest along axis 0 (ties: lowest index first)."""
    order = np.argsort(-saliency, axis=0, kind="stable")
    kept = np.zeros(saliency.shape, dtype=bool)
    np.put_along_axis(kept, order[:keep], True, axis=0)
    return kept


def select_groups(
    weight: np.ndarray, inverse_diagonal_blocks: np.ndarray | None, group: int, keep: int,
    *, layout: str = "column",
) -> np.ndarray:  # fmt: skip
    """``kept[K/g, N]``: the ``keep`` groups of each column with the largest saliency.

    ``inverse_diagonal_blocks[K/g, g, g]`` are the diagonal blocks of ``H^-1``
    (None: ``H = I``, saliency ``||w_g||^2``). ``layout="tile"``: ``keep`` (per
    column, as for ``column``) must be a multiple of ``K/128``; each 128-k slab of
    each 16-column tile keeps the ``keep / (K/128)`` groups with the largest
    saliency summed over the tile's columns, for all 16 columns.
    """
    rows, cols = weight.shape
    saliency = _saliency(weight, inverse_diagonal_blocks, group)
    if layout == "column":
        return _largest(saliency, keep)
    if layout != "tile":
        raise ValueError(f"layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    reason = tile_reason(rows, cols, group)
    if reason:
        raise ValueError(f"{reason}: use layout='column'")
    slabs = rows // (group * TILE_SLAB_GROUPS)
    if keep % slabs or not 0 < keep // slabs <= TILE_SLAB_GROUPS:
        raise ValueError(
            f"keep={keep} groups per column is not a whole number 1..8 per 128-k slab "
            f"({slabs} slabs): give a multiple of {slabs}"
        )
    tiles = cols // TILE_COLUMNS
    summed = saliency.reshape(slabs, TILE_SLAB_GROUPS, tiles, TILE_COLUMNS).sum(axis=3)
    kept = np.stack([_largest(slab, keep // slabs) for slab in summed])  # [slabs, 8, tiles]
    return np.repeat(kept.reshape(rows // group, tiles), TILE_COLUMNS, axis=1)


def _diagonal_blocks(matrix: np.ndarray, group: int) -> np.ndarray:
    blocks = len(matrix) // group
    reshaped = matrix.reshape(blocks, group, blocks, group)
    return np.stack([reshaped[b, :, b, :] for b in range(blocks)])


def _group_scales(values: np.ndarray, bits: int, dtype: np.dtype) -> np.ndarray:
    limit = 2 ** (bits - 1) - 1
    scale = np.abs(values).max(axis=1) / limit  # values [N, g]
    scale = np.where(scale > 0, scale, 1.0).astype(dtype)
    return np.maximum(scale, np.asarray(np.finfo(dtype).tiny, dtype=dtype))


def _round(values: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    limit = 2 ** (bits - 1) - 1
    return np.clip(np.rint(values / scales.astype(np.float64)), -limit, limit)


def _calibrate(
    weight: np.ndarray, kept: np.ndarray, group: int, bits: int,
    dtype: np.dtype, upper: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Stage 1 with a fixed mask: (q[K, N] int8, scales[K/g, N]) with GPTQ error propagation."""
    rows, cols = weight.shape
    current = np.array(weight, dtype=np.float64).T  # [N, K]
    q = np.zeros((cols, rows), dtype=np.int8)
    scales = np.zeros((rows // group, cols), dtype=dtype)
    for index in track(range(rows // group), description="gqsa"):
        start, stop = index * group, (index + 1) * group
        keep = kept[index]  # [N]
        scale = _group_scales(current[:, start:stop], bits, dtype)
        scales[index] = np.where(keep, scale, 0).astype(dtype)
        if upper is None:  # H = I: nothing to propagate
            rounded = _round(current[:, start:stop], scale[:, None], bits) * keep[:, None]
            q[:, start:stop] = rounded.astype(np.int8)
            continue
        errors = np.zeros((cols, group))
        for column in range(start, stop):
            values = current[:, column]
            rounded = _round(values, scale, bits) * keep
            approx = rounded * scale.astype(np.float64)
            error = (values - approx) / upper[column, column]
            current[:, column:stop] -= np.outer(error, upper[column, column:stop])
            errors[:, column - start] = error
            q[:, column] = rounded.astype(np.int8)
        current[:, stop:] -= errors @ upper[start:stop, stop:]
    return np.ascontiguousarray(q.T), scales


def refine_scales(
    weight: np.ndarray, quantized: GroupSparseWeight, hessian: np.ndarray | None
) -> GroupSparseWeight:
    """Stage 2: least-squares scales per column with the integers frozen; never worse.

    Column ``n``'s error as a function of its scales is ``c - 2 s^T r + s^T G s``
    with ``G = Q^T H Q`` and ``r = Q^T H w``; the solution of ``G s = r`` is
    kept only when, rounded to the scales' dtype, it lowers that error.
    """
    rows, cols = quantized.shape
    group, dtype = quantized.group, quantized.scales.dtype
    blocks = rows // group
    target = np.asarray(weight, np.float64)
    if hessian is None:
        h4 = None
        h_target = target
    else:
        matrix = np.asarray(hessian, np.float64)
        h4 = matrix.reshape(blocks, group, blocks, group)
        h_target = matrix @ target  # H w for every column at once
    scales = quantized.scales.copy()
    for column in track(range(cols), description="refine scales"):
        kept = np.nonzero(quantized.kept[:, column])[0]
        if not len(kept):
            continue
        q_groups = quantized.q[:, column].astype(np.float64).reshape(blocks, group)[kept]
        rhs = np.sum(q_groups * h_target[:, column].reshape(blocks, group)[kept], axis=1)
        if h4 is None:
            gram = np.diag(np.sum(q_groups * q_groups, axis=1))
        else:
            gram = np.einsum(
                "ig,igjh,jh->ij", q_groups, h4[kept][:, :, kept], q_groups, optimize=True
            )
        ridge = 1e-12 * max(float(np.trace(gram)), 1e-30) * np.eye(len(kept))
        try:
            solution = np.linalg.solve(gram + ridge, rhs)
        except np.linalg.LinAlgError:
            continue
        candidate = solution.astype(dtype).astype(np.float64)
        old = quantized.scales[kept, column].astype(np.float64)
        if _excess(candidate, gram, rhs) < _excess(old, gram, rhs):
            scales[kept, column] = candidate.astype(dtype)
    return dataclasses.replace(quantized, scales=scales)


def _excess(scales: np.ndarray, gram: np.ndarray, rhs: np.ndarray) -> float:
    """A column's error minus its constant part ``w^T H w``."""
    return float(scales @ gram @ scales - 2.0 * scales @ rhs)


def gqsa_quantize(
    weight: np.ndarray,
    hessian: np.ndarray | None,
    *,
    group: int = 16,
    sparsity: float = 0.5,
    bits: int = 4,
    refine: bool = True,
    percdamp: float = 0.01,
    scale_dtype: np.dtype | type | None = None,
    layout: str = "column",
) -> GroupSparseWeight:
    """GQSA of ``weight[K, N]`` (two stages; ``hessian`` None = data-free, ``H = I``).

    ``layout="tile"``: tile-shared groups (module docstring); ValueError when
    ``group``, ``K``, ``N`` or ``sparsity`` do not fit it.
    """
    weight = np.asarray(weight)
    rows = weight.shape[0]
    _check_layout(rows, group, bits)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    blocks = rows // group
    if layout == "tile":
        reason = tile_reason(rows, weight.shape[1], group)
        if reason:
            raise ValueError(f"{reason}: use layout='column'")
        keep = tile_keep_per_slab(sparsity) * (blocks // TILE_SLAB_GROUPS)
    elif layout == "column":
        keep = max(1, blocks - round(sparsity * blocks))
    else:
        raise ValueError(f"layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    dtype = np.dtype(scale_dtype or weight.dtype)
    upper = None
    inverse_blocks = None
    if hessian is not None:
        if hessian.shape != (rows, rows):
            raise ValueError(f"Hessian shape {hessian.shape} does not match K={rows}")
        upper = upper_cholesky_of_inverse(hessian, percdamp)
        inverse_blocks = _diagonal_blocks(upper.T @ upper, group)
    kept = select_groups(weight, inverse_blocks, group, keep, layout=layout)
    q, scales = _calibrate(weight, kept, group, bits, dtype, upper)
    quantized = GroupSparseWeight(q, scales, kept, group, bits)
    return refine_scales(weight, quantized, hessian) if refine else quantized
