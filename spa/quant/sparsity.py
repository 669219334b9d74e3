"""2:4 semi-structured sparsity along the reduction axis, and its checker.

In every run of 4 consecutive weights along the reduction axis at most 2 are
nonzero. The reduction axis is where the sparse tensor cores (and TensorRT's
sparse-weights mode) need it:

* ``MatMul(A, W)``, ``W[K, N]``: for each output column ``n``, rows
  ``k = 4j .. 4j+3``;
* ``Conv``, ``W[O, I, kh, kw]``: for each ``(o, kh, kw)``, input channels
  ``i = 4j .. 4j+3`` (TensorRT's developer guide, "Data Formats and Tensors" ->
  Structured Sparsity, asks for the 2:4 pattern along the input channels at
  each output channel and kernel position, and along K for matrix multiplies).

Mask selection:

* :func:`magnitude_2to4`: keep the two largest ``|w|`` of every run of 4;
* :func:`sparsegpt_2to4`: SparseGPT (Frantar & Alistarh, 2023). Inputs are
  visited in order along K; at the start of every run of 4 the 2 weights with
  the smallest OBS saliency ``w^2 / [H^-1]_kk^2`` (``U`` the upper Cholesky
  factor of ``H^-1``) are removed, and each input's error is spread over the
  inputs not yet visited, ``- (w - w') / U_kk * U[k, k+1:]``, lazily per
  block of ``block`` inputs. With ``H = I`` no error moves and the mask is
  the magnitude mask.

Weights stay dense floats with zeros (the ONNX / TensorRT form).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from spa.model_io import FLOAT_TYPES
from spa.progress import track
from spa.quant.gptq import upper_cholesky_of_inverse

__all__ = [
    "SparseWeightInfo",
    "is_2to4",
    "magnitude_2to4",
    "reduction_first",
    "sparse_weight_report",
    "sparsegpt_2to4",
    "zero_share",
]

RUN = 4
KEEP = 2


def reduction_first(weight: np.ndarray, axis: int) -> np.ndarray:
    """``weight`` as ``[reduction, rest]``: the reduction axis first, everything else flattened."""
    moved = np.moveaxis(np.asarray(weight), axis, 0)
    return moved.reshape(moved.shape[0], -1)


def is_2to4(weight: np.ndarray, axis: int = 0) -> bool:
    """True when every run of 4 along ``axis`` has at most 2 nonzeros (size a multiple of 4)."""
    matrix = reduction_first(weight, axis)
    if matrix.shape[0] == 0 or matrix.shape[0] % RUN:
        return False
    nonzero = (matrix != 0).reshape(-1, RUN, matrix.shape[1]).sum(axis=1)
    return bool(np.all(nonzero <= KEEP))


def zero_share(weight: np.ndarray) -> float:
    """Share of exact zeros in ``weight``."""
    array = np.asarray(weight)
    return float(np.count_nonzero(array == 0)) / max(array.size, 1)


def magnitude_2to4(matrix: np.ndarray) -> np.ndarray:
    """``matrix[K, N]`` with the 2 smallest ``|w|`` of every run of 4 along K set to 0."""
    rows, cols = matrix.shape
    if rows % RUN:
        raise ValueError(f"2:4 needs the reduction size to be a multiple of 4, got {rows}")
    runs = np.asarray(matrix).reshape(rows // RUN, RUN, cols)
    order = np.argsort(np.abs(runs), axis=1, kind="stable")
    mask = np.ones(runs.shape, dtype=bool)
    np.put_along_axis(mask, order[:, : RUN - KEEP], False, axis=1)
    return np.where(mask, runs, 0).reshape(rows, cols).astype(matrix.dtype)


def sparsegpt_2to4(
    matrix: np.ndarray, hessian: np.ndarray, *, block: int = 128, percdamp: float = 0.01
) -> np.ndarray:
    """SparseGPT 2:4 of ``matrix[K, N]`` against ``hessian[K, K]``: pruned and reconstructed."""
    rows, cols = matrix.shape
    if rows % RUN:
        raise ValueError(f"2:4 needs the reduction size to be a multiple of 4, got {rows}")
    if hessian.shape != (rows, rows):
        raise ValueError(f"Hessian shape {hessian.shape} does not match K={rows}")
    block = max(RUN, block - block % RUN)
    upper = upper_cholesky_of_inverse(hessian, percdamp)
    diagonal = np.diag(upper)
    current = np.array(matrix, dtype=np.float64).T  # [N, K]
    result = np.zeros((rows, cols))  # [K, N]
    for start in track(range(0, rows, block), description="sparsegpt"):
        stop = min(start + block, rows)
        # the block's inputs as contiguous rows [inputs, N] (a column of `current` is strided)
        batch = np.ascontiguousarray(current[:, start:stop].T)
        errors = np.zeros((stop - start, cols))
        for run in range(start, stop, RUN):
            at = run - start
            saliency = (batch[at : at + RUN] ** 2 / diagonal[run : run + RUN, None] ** 2).T
            pruned = np.zeros((cols, RUN), dtype=bool)
            lowest = np.argsort(saliency, axis=1, kind="stable")[:, : RUN - KEEP]
            np.put_along_axis(pruned, lowest, True, axis=1)
            for offset in range(RUN):
                column, row = run + offset, at + offset
                values = batch[row]
                kept = np.where(pruned[:, offset], 0.0, values)
                error = (values - kept) / upper[column, column]
                batch[row:] -= np.outer(upper[column, column:stop], error)
                result[column] = kept
                errors[row] = error
        current[:, stop:] -= errors.T @ upper[start:stop, stop:]
    return result.astype(matrix.dtype)


@dataclasses.dataclass(frozen=True)
class SparseWeightInfo:
    """Whether one MatMul/Gemm/Conv weight holds the 2:4 pattern along its reduction axis.

    ``sparse_2to4`` is None when the weight's bytes were not read (external data).
    """

    node: str
    op_type: str
    weight: str
    shape: tuple[int, ...]
    axis: int
    sparse_2to4: bool | None
    zero_share: float | None

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shape"] = list(self.shape)
        return data




def _reduction_axis(node: onnx.NodeProto, rank: int) -> int | None:
    if node.op_type == "MatMul" and rank >= 2:
        return rank - 2
    if node.op_type == "Gemm" and rank == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 1 if trans_b else 0
    if node.op_type == "Conv" and rank >= 3:
        return 1
    return None


def sparse_weight_report(
    proto: onnx.ModelProto, base_dir: str | os.PathLike[str], *, read_external: bool = False
) -> list[SparseWeightInfo]:
    """2:4 status of every float initializer weight of a main-graph MatMul/Gemm/Conv.

    Embedded weights are checked; weights in external data only with
    ``read_external`` (otherwise ``sparse_2to4`` is None).
    """
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        tensor = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if tensor is None or tensor.data_type not in FLOAT_TYPES:
            continue
        axis = _reduction_axis(node, len(tensor.dims))
        if axis is None:
            continue
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        status, zeros = None, None
        if read_external or not external:
            array = numpy_helper.to_array(tensor, base_dir=str(base_dir))
            status, zeros = is_2to4(array, axis), zero_share(array)
        found.append(
            SparseWeightInfo(
                node.name, node.op_type, tensor.name, tuple(int(d) for d in tensor.dims),
                axis, status, zeros,
            )
        )  # fmt: skip
    return found
