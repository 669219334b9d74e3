"""GPTQ (Frantar et al., 2022): quantize a weight column by column along K,
spreading each column's rounding error over the columns not yet quantized so
that ``||X W - X Q||`` stays small on calibration inputs ``X``.

For ``MatMul(X, W)`` with ``W[K, N]`` the loss of output column ``n`` is
``(w_n - q_n)^T H (w_n - q_n)`` with ``H = 2 X^T X`` over the K inputs; all N
columns share ``H``. The steps:

1. ``H`` is damped: ``H += percdamp * mean(diag H) * I`` (an input that is always
   zero gets ``H[k, k] = 1``); with ``act_order`` the K inputs are visited by
   decreasing ``diag H``.
2. ``U`` is the upper Cholesky factor of ``H^-1``. Input ``k`` is rounded, its
   error ``e = (w_k - q_k) / U[k, k]`` updates the inputs still to come by
   ``- e U[k, k+1:]``. Updates are applied lazily: within a batch of
   ``lazy_batch`` inputs immediately, to the rest once per batch.
3. Block scales (one per ``block`` consecutive inputs of the *original* order,
   so the result packs into the same formats as RTN) are fixed the first time
   an input of that block is visited, from the block's current, already
   error-corrected weights.

Without a Hessian GPTQ is RTN (``H = I`` propagates no error).
"""

from __future__ import annotations

import logging

import numpy as np

from spa.quant.blockwise import (
    QuantizedWeight,
    block_parameters,
    n_blocks,
    quantize_rtn,
    quantize_with_parameters,
)

__all__ = [
    "conv_matrix",
    "gptq_conv",
    "gptq_quantize",
    "hessian_error",
    "patch_hessian_in_weight_order",
    "upper_cholesky_of_inverse",
]

logger = logging.getLogger(__name__)


def upper_cholesky_of_inverse(hessian: np.ndarray, percdamp: float = 0.01) -> np.ndarray:
    """Upper ``U`` with ``U^T U = (H + damp I)^-1``; damping grows until ``H`` is positive definite."""
    matrix = np.array(hessian, dtype=np.float64)
    diagonal = np.diag(matrix).copy()
    dead = diagonal <= 0
    matrix[dead, dead] = 1.0
    diagonal[dead] = 1.0
    damp = max(percdamp, 1e-8) * float(np.mean(diagonal))
    # With J the order-reversing permutation and J H J = L L^T, U = J L^-1 J is upper
    # triangular and U^T U = J L^-T L^-1 J = H^-1: one Cholesky and one triangular inverse,
    # where inverting H and factoring the inverse took 2.7x as long at K = 4096.
    flipped = matrix[::-1, ::-1]
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(flipped + damp * np.eye(len(matrix)))
            return np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])
        except np.linalg.LinAlgError:
            logger.debug("Hessian not positive definite with damp %.3g; increasing", damp)
            damp *= 10.0
    raise ValueError("Hessian is not positive definite even with heavy damping")


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a lower triangular matrix, by halves (matrix products, K^3 / 3 flops):
    ``[[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]``."""
    size = len(lower)
    if size <= 128:
        return np.asarray(np.linalg.inv(lower))
    half = size // 2
    first, last = _lower_inverse(lower[:half, :half]), _lower_inverse(lower[half:, half:])
    inverse = np.zeros_like(lower)
    inverse[:half, :half], inverse[half:, half:] = first, last
    inverse[half:, :half] = -(last @ (lower[half:, :half] @ first))
    return inverse


class _GroupParameters:
    """Scales/zero points of each K block, fixed on first use."""

    def __init__(
        self, rows: int, cols: int, bits: int, block: int, symmetric: bool, dtype: np.dtype
    ) -> None:
        self.bits, self.block, self.symmetric, self.dtype = bits, block, symmetric, dtype
        blocks = n_blocks(rows, block)
        self.scales = np.zeros((blocks, cols), dtype=dtype)
        self.zero_points = None if symmetric else np.zeros((blocks, cols), dtype=np.uint8)
        self.ready = np.zeros(blocks, dtype=bool)

    def get(
        self, group: int, current: np.ndarray, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.ready[group]:
            values = current[:, positions].T  # [rows in block, N]
            scales, zeros = block_parameters(values, self.bits, self.symmetric, self.dtype)
            self.scales[group] = scales
            if self.zero_points is not None and zeros is not None:
                self.zero_points[group] = zeros
            self.ready[group] = True
        zero = None if self.zero_points is None else self.zero_points[group]
        return self.scales[group], zero


def gptq_quantize(
    weight: np.ndarray,
    hessian: np.ndarray | None,
    bits: int,
    block: int,
    symmetric: bool = True,
    *,
    percdamp: float = 0.01,
    act_order: bool = False,
    lazy_batch: int = 128,
    scale_dtype: np.dtype | type | None = None,
) -> QuantizedWeight:
    """GPTQ of ``weight[K, N]`` with Hessian ``hessian[K, K]`` (None: RTN)."""
    weight = np.asarray(weight)
    dtype = np.dtype(scale_dtype or weight.dtype)
    if hessian is None:
        return quantize_rtn(weight, bits, block, symmetric, dtype)
    rows, cols = weight.shape
    if hessian.shape != (rows, rows):
        raise ValueError(f"Hessian shape {hessian.shape} does not match K={rows}")
    diagonal = np.diag(hessian)
    order = np.argsort(-diagonal, kind="stable") if act_order else np.arange(rows)
    position_of = np.empty(rows, dtype=np.int64)
    position_of[order] = np.arange(rows)
    upper = upper_cholesky_of_inverse(hessian[np.ix_(order, order)], percdamp)
    current = np.array(weight, dtype=np.float64).T[:, order]  # [N, K] in visiting order
    stored = np.zeros((cols, rows), dtype=np.int16)
    groups = _GroupParameters(rows, cols, bits, block, symmetric, dtype)
    for start in range(0, rows, lazy_batch):
        stop = min(start + lazy_batch, rows)
        # The batch's inputs as contiguous rows [inputs, N]: each input's values and its
        # updates of the inputs after it stay in cache (a column of `current` is strided).
        batch = np.ascontiguousarray(current[:, start:stop].T)
        errors = np.zeros((stop - start, cols))
        for column in range(start, stop):
            at = column - start
            group = int(order[column]) // block
            if not groups.ready[group]:  # its scales read the batch's corrected values
                current[:, start:stop] = batch.T
            positions = position_of[group * block : min((group + 1) * block, rows)]
            scales, zeros = groups.get(group, current, positions)
            values = batch[at]
            q = quantize_with_parameters(values, scales, zeros, bits)
            offset = 0.0 if zeros is None else zeros.astype(np.float64)
            approx = (q.astype(np.float64) - offset) * scales.astype(np.float64)
            error = (values - approx) / upper[column, column]
            batch[at:] -= np.outer(upper[column, column:stop], error)
            errors[at] = error
            stored[:, column] = q
        current[:, start:stop] = batch.T
        current[:, stop:] -= errors.T @ upper[start:stop, stop:]
    q_values = stored[:, position_of].T.astype(np.int8 if symmetric else np.uint8)
    return QuantizedWeight(
        np.ascontiguousarray(q_values), groups.scales, groups.zero_points, bits, block
    )


def hessian_error(hessian: np.ndarray, weight: np.ndarray, approximation: np.ndarray) -> float:
    """``trace((W - Q)^T H (W - Q))``: the squared output error on the calibration data."""
    delta = np.asarray(weight, np.float64) - np.asarray(approximation, np.float64)
    return float(np.einsum("kn,kl,ln->", delta, np.asarray(hessian, np.float64), delta))


def conv_matrix(weight: np.ndarray) -> np.ndarray:
    """A Conv weight ``W[O, C, k...]`` as the MatMul weight ``[K, O]``, ``K = C * prod(k)`` in
    the weight's own order (channel-major): blocks of consecutive rows are what the Conv's
    block formats store (:func:`spa.passes.quantize_conv.quantize_conv_blocks`)."""
    return np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T)


def patch_hessian_in_weight_order(hessian: np.ndarray, weight_shape: tuple[int, ...]) -> np.ndarray:
    """A Conv's im2col patch Hessian (``(k..., c)`` order, :func:`spa.calibration.conv_patches`)
    permuted to :func:`conv_matrix`'s ``(c, k...)`` order."""
    channels, positions = int(weight_shape[1]), int(np.prod(weight_shape[2:]))
    rows = channels * positions
    if hessian.shape != (rows, rows):
        raise ValueError(f"patch Hessian shape {hessian.shape} does not match {rows} patch columns")
    native = np.arange(rows)
    patch_index = (native % positions) * channels + native // positions
    return hessian[np.ix_(patch_index, patch_index)]


def gptq_conv(
    weight: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    block: int,
    symmetric: bool = True,
    *,
    percdamp: float = 0.01,
    act_order: bool = False,
) -> QuantizedWeight:
    """GPTQ of a Conv weight ``[O, C, k...]`` as the MatMul ``patches @ conv_matrix(W)``,
    against the Hessian of its im2col patches (:func:`spa.calibration.conv_patches` order):
    ``[K, O]`` with blocks of ``block`` consecutive ``K`` (``block >= K``: one scale per
    output channel)."""
    ordered = patch_hessian_in_weight_order(hessian, weight.shape)
    return gptq_quantize(
        conv_matrix(weight), ordered, bits, block, symmetric, percdamp=percdamp,
        act_order=act_order, scale_dtype=weight.dtype,
    )  # fmt: skip
