"""Low-rank factorization of embedding tables (``factorize-embeddings``).

A vocabulary table ``E[V, d]`` read only by ``Gather`` (axis 0, as the data
input) becomes ``A[V, r] = E V_r`` and ``B[r, d] = V_r^T``, with ``V_r`` the
top ``r`` right singular vectors of ``E``; each ``Gather(E, ids)`` becomes
``MatMul(Gather(A, ids), B)``. Parameters ``V d -> (V + d) r``; ``A B`` is the
best rank-``r`` approximation of ``E`` in the Frobenius norm (Eckart-Young), so
the rows that change most are the ones with most energy outside the top
directions. ALBERT (Lan et al., ICLR 2020) factorizes its embedding the same
way and trains it so; here it is applied after training, without fine-tuning,
so it is *not exact*: the decision records the share of the table's energy
kept (``sum(s_i^2, i <= r) / sum(s_i^2)``) and quality has to be measured
(``spa prune --embedding-rank R --calib ... [--eval ...]``). On
all-MiniLM-L6-v2 (token table 30522x384, 52% of its parameters) rank 192 kept
79% of the energy, removed 25.6% of the model's parameters and moved Spearman
on Lee-50 / WordSim-353 / SimLex-999 from 0.508 / 0.729 / 0.446 to 0.527 /
0.724 / 0.455 (``models/compare_minilm.py``).

``V_r`` comes from the eigenvectors of the ``d x d`` Gram matrix ``E^T E``
(accumulated over row chunks in float64), so a 128k-row table never needs a
``V x d`` SVD. Tables with fewer than :data:`MIN_ROWS_PER_COLUMN` rows per
column (position and token-type tables: small, and every row is used), tables
with any other use (a tied output projection, a graph output), and ranks that
would not save parameters are left, each with its reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.errors import UserError
from spa.pass_manager import SpaPass, SpaPassResult, register_pass
from spa.quant.ir_format import add_initializer, replace_node

__all__ = ["MIN_ROWS_PER_COLUMN", "FactorizeDecision", "FactorizeEmbeddingsPass", "resolve_rank"]

#: A table is a vocabulary (worth factorizing) with at least this many rows per column.
MIN_ROWS_PER_COLUMN = 8
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_CHUNK_ROWS = 1 << 14


@dataclasses.dataclass(frozen=True)
class FactorizeDecision:
    """What happened to one table: ``action`` is ``factorized`` or ``skipped``."""

    table: str
    action: str
    reason: str = ""
    rows: int = 0
    columns: int = 0
    rank: int = 0
    energy: float = 0.0
    params_before: int = 0
    params_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_rank(rank: float, columns: int) -> int:
    """``rank`` >= 1: that rank; 0 < ``rank`` < 1: that share of ``columns`` (rounded up)."""
    if not rank > 0:
        raise UserError(
            f"--embedding-rank {rank}: give a rank >= 1 or a share of the width in (0, 1)"
        )
    if rank >= 1:
        if rank != int(rank):
            raise UserError(f"--embedding-rank {rank}: a rank >= 1 must be an integer")
        return int(rank)
    return max(1, int(np.ceil(rank * columns)))


def _gather_uses(value: ir.Value) -> tuple[list[ir.Node], str]:
    """The Gather nodes reading ``value`` as their table, or why the table is not only that."""
    if value.is_graph_output():
        return [], "also a graph output"
    nodes = []
    for use in value.uses():
        node, index = use.node, use.idx
        if (node.domain, node.op_type) != ("", "Gather") or index != 0:
            return [], f"also read by {node.op_type} '{node.name}' (e.g. a tied output projection)"
        if (node.attributes.get_int("axis", 0) or 0) != 0:
            return (
                [],
                f"read by Gather '{node.name}' along axis {node.attributes.get_int('axis', 0)}",
            )
        nodes.append(node)
    if not nodes:
        return [], "not read"
    return nodes, ""


def top_directions(table: np.ndarray, rank: int) -> tuple[np.ndarray, float]:
    """The top ``rank`` right singular vectors of ``table`` as ``[d, rank]`` and the
    share of the energy they hold (from the Gram matrix, row chunks in float64)."""
    columns = table.shape[1]
    gram = np.zeros((columns, columns), dtype=np.float64)
    for start in range(0, table.shape[0], _CHUNK_ROWS):
        chunk = np.asarray(table[start : start + _CHUNK_ROWS], dtype=np.float64)
        gram += chunk.T @ chunk
    eigenvalues, eigenvectors = np.linalg.eigh(gram)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    total = float(eigenvalues.sum())
    energy = float(eigenvalues[:rank].sum() / total) if total > 0 else 1.0
    return eigenvectors[:, order[:rank]], energy


@register_pass
class FactorizeEmbeddingsPass(SpaPass):
    """Replace each vocabulary table read by Gather with a rank-``rank`` factorization
    (module docstring). ``rank``: an integer >= 1, or a share in (0, 1) of the table's width."""

    name = "factorize-embeddings"
    summary = "Low-rank (truncated SVD) factorization of Gather-read vocabulary tables (not exact)"
    fidelity = "lossy"

    def __init__(self, rank: float) -> None:
        super().__init__()
        resolve_rank(rank, 1)  # one-line error before any work
        self.rank = rank
        self.decisions: list[FactorizeDecision] = []

    def options(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def _table(self, graph: ir.Graph, value: ir.Value) -> FactorizeDecision | None:
        tensor = value.const_value
        name = value.name or ""
        if tensor is None or len(tensor.shape) != 2 or tensor.dtype not in _FLOATS:
            return None
        rows, columns = (int(d) for d in tensor.shape.numpy())
        if rows < MIN_ROWS_PER_COLUMN * columns:
            return None  # position/type tables: not vocabularies, not reported
        gathers, reason = _gather_uses(value)
        rank = resolve_rank(self.rank, columns)
        before = rows * columns
        if not reason and (rows + columns) * rank >= before:
            reason = f"rank {rank} saves nothing on a {rows}x{columns} table"
        if reason:
            return FactorizeDecision(
                name, "skipped", reason, rows, columns, rank, 0.0, before, before
            )
        array = tensor.numpy()
        directions, energy = top_directions(array, rank)
        low = np.concatenate([
            np.asarray(array[start : start + _CHUNK_ROWS], dtype=np.float64) @ directions
            for start in range(0, rows, _CHUNK_ROWS)
        ])  # fmt: skip
        dtype = array.dtype if array.dtype != np.float64 else np.float32
        low_value = add_initializer(graph, f"{name}_low{rank}", ir.Tensor(low.astype(dtype)))
        up_value = add_initializer(
            graph, f"{name}_up{rank}", ir.Tensor(np.ascontiguousarray(directions.T).astype(dtype))
        )
        for index, gather in enumerate(gathers):
            suffix = f"_{index}" if len(gathers) > 1 else ""
            rows_node = ir.node(
                "Gather",
                [low_value, gather.inputs[1]],
                {"axis": 0},
                name=f"{gather.name}_low{suffix}",
            )
            rows_node.outputs[0].name = f"{name}_low{rank}_rows{suffix}"
            up = ir.node(
                "MatMul", [rows_node.outputs[0], up_value], name=f"{gather.name}_up{suffix}"
            )
            replace_node(graph, gather, [rows_node, up])
        graph.initializers.pop(name)
        after = (rows + columns) * rank
        return FactorizeDecision(
            name, "factorized", "", rows, columns, rank, round(energy, 6), before, after
        )

    def call(self, model: ir.Model) -> SpaPassResult:
        self.decisions = []
        graph = model.graph
        for value in list(graph.initializers.values()):
            decision = self._table(graph, value)
            if decision is not None:
                self.decisions.append(decision)
        done = [d for d in self.decisions if d.action == "factorized"]
        statistics: dict[str, int | float] = {
            "tables_factorized": len(done),
            "tables_skipped": len(self.decisions) - len(done),
            "params_removed": sum(d.params_before - d.params_after for d in done),
        }
        details = {"decisions": list(self.decisions)}
        return SpaPassResult(model, bool(done), statistics, details)
