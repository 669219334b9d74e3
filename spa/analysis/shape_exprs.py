"""Reading computed Reshape targets: ``Shape -> Gather -> Unsqueeze -> Concat`` chains.

Exporters often build a Reshape target at run time from the input's own shape
(``[batch, seq, -1, 64]``). :func:`evaluate_target` folds such a chain into
entries: a literal ``int`` (from constants), or :class:`CopiedDim` (dimension
``axis`` of ``value``, read by ``Shape``). :func:`resolve_target` then turns
the entries into output dims, solving a ``-1`` from the input's size. Chains
through other ops (arithmetic on dims) are not read: the caller freezes them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import onnx_ir as ir

from spa.analysis.rules import RuleContext

__all__ = ["CopiedDim", "Entry", "evaluate_target", "resolve_target"]


@dataclasses.dataclass(frozen=True)
class CopiedDim:
    """Dimension ``axis`` of the value named ``value`` (``None`` when symbolic)."""

    value: str
    axis: int
    size: int | None


Entry = int | CopiedDim
_MAX_DEPTH = 12


def _shape_entries(node: ir.Node, context: RuleContext) -> list[Entry] | None:
    source = node.inputs[0]
    shape = context.shape(source)
    if source is None or shape is None:
        return None
    rank = len(shape)
    start = int(context.attribute(node, "start", 0)) % (rank + 1) if rank else 0
    end_attr = context.attribute(node, "end")
    end = (
        rank
        if end_attr is None
        else int(end_attr) % (rank + 1)
        if int(end_attr) < 0
        else min(int(end_attr), rank)
    )
    return [CopiedDim(source.name or "", axis, shape[axis]) for axis in range(start, end)]


def evaluate_target(
    value: ir.Value | None, context: RuleContext, depth: int = 0
) -> list[Entry] | None:
    """The entries of a 1-D int64 shape value, or None when it cannot be read."""
    if value is None or depth > _MAX_DEPTH:
        return None
    constant = context.constant(value)
    if constant is not None:
        return [int(v) for v in constant.reshape(-1).tolist()]
    node = value.producer()
    if node is None or node.domain != "":
        return None
    op = node.op_type
    if op == "Shape":
        return _shape_entries(node, context)
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return evaluate_target(node.inputs[0], context, depth + 1)
    if op == "Concat":
        parts = [evaluate_target(v, context, depth + 1) for v in node.inputs]
        if any(part is None for part in parts):
            return None
        return [entry for part in parts for entry in part]  # type: ignore[union-attr]
    if op == "Gather":
        data = evaluate_target(node.inputs[0], context, depth + 1)
        indices = context.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if data is None or indices is None or int(context.attribute(node, "axis", 0)) != 0:
            return None
        try:
            return [data[int(i)] for i in indices.reshape(-1).tolist()]
        except IndexError:
            return None
    return None


def resolve_target(
    entries: Sequence[Entry], in_shape: Sequence[int | None], allow_zero: bool = True
) -> list[int | None] | None:
    """Output dims of a Reshape from target entries (None = symbolic); None if unclear.

    A ``0`` copies the input's dim at that position (ONNX semantics); a ``-1`` is
    solved from the input's size when every other factor is known or is a
    symbolic dim the input also has (batch, sequence), which cancels out.
    """
    dims: list[int | None] = []
    infer_at: int | None = None
    for position, entry in enumerate(entries):
        if isinstance(entry, CopiedDim):
            dims.append(entry.size)
        elif entry == 0 and allow_zero:
            dims.append(in_shape[position] if position < len(in_shape) else None)
        elif entry == -1:
            if infer_at is not None:
                return None
            infer_at = position
            dims.append(None)
        else:
            dims.append(int(entry))
    if infer_at is None:
        return dims
    known_in = [d for d in in_shape if d is not None]
    symbolic_in = len(in_shape) - len(known_in)
    others = [d for i, d in enumerate(dims) if i != infer_at]
    symbolic_out = sum(1 for d in others if d is None)
    if symbolic_in != symbolic_out:
        return None
    divisor = math.prod(d for d in others if d is not None)
    total = math.prod(known_in)
    if divisor == 0 or total % divisor:
        return None
    dims[infer_at] = total // divisor
    return dims
