"""Reading computed Reshape targets: ``Shape -> Gather -> Unsqueeze -> Concat`` chains.

Exporters often build a Reshape target at run time from the input's own shape
(``[batch, seq, -1, 64]``). :func:`evaluate_target` folds such a chain into
entries: a literal ``int`` (from constants), or :class:`CopiedDim` (dimension
``axis`` of ``value``, read by ``Shape``). :func:`resolve_target` then turns
the entries into output dims, solving a ``-1`` from the input's size.

A little arithmetic is read too, as TorchScript writes it: a dim times or
over a literal (``Mul``: GQA's ``kv_heads * n_rep``; ``Div``: BLOOM's batch read
back as ``merged // heads``) or times another dim of known size
(``x.view(t, b, c * h)``: the first dim times the second's size; two symbolic
dims multiply into a :class:`ComputedDim`), and the ``expand`` idiom
``Where(Equal(t, ConstantOfShape(..) * -1), ConstantOfShape(..), t)``, entry by
entry where the comparison is decidable (a copied dim is never negative).
A sum or difference of dims (a KV cache's ``past + seq``) is read as a
:class:`ComputedDim`: a run-time size spa never rewrites (a rebuilt target
reads it back from the original one).

Other chains are not read: the caller freezes them.

:func:`evaluate_ints` computes a small integer chain for given sizes instead
(``Shape`` reads of chosen dims replaced by numbers), so that a rule can ask
how a computed bound moves when a dim is pruned: ``torch.chunk`` exported by
TorchScript slices at ``((dim + 1) / 2) * i``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from spa.analysis.rules.registry import RuleContext

__all__ = [
    "ComputedDim",
    "CopiedDim",
    "Entry",
    "evaluate_ints",
    "evaluate_target",
    "resolve_target",
    "sizes_read",
]


@dataclasses.dataclass(frozen=True)
class CopiedDim:
    """Dimension ``axis`` of the value named ``value`` (``None`` when symbolic)."""

    value: str
    axis: int
    size: int | None
    factor: int = 1  # the entry is ``dim * factor // divisor``
    divisor: int = 1  # BLOOM's ``merged // heads``: a batch read back from batch x heads

    @property
    def product(self) -> int | None:
        if self.size is None or (self.size * self.factor) % self.divisor:
            return None
        return self.size * self.factor // self.divisor


@dataclasses.dataclass(frozen=True)
class ComputedDim:
    """A dim computed at run time from other dims (``past + seq``): size unknown,
    never a channel count; ``nonnegative`` when it is a sum of dims."""

    nonnegative: bool = False


Entry = int | CopiedDim | ComputedDim
_MAX_DEPTH = 12


def _shape_entries(node: ir.Node, context: RuleContext) -> list[Entry] | None:
    source = node.inputs[0]
    shape = context.shape(source)
    if source is None or shape is None:
        return None
    rank = len(shape)

    def bound(attribute: str, default: int) -> int:  # negative: from the end; clamped to [0, rank]
        value = context.attribute(node, attribute)
        position = default if value is None else int(value)
        return min(max(position + rank if position < 0 else position, 0), rank)

    start, end = bound("start", 0), bound("end", rank)
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
    if op == "Reshape":  # a shape vector flattened: same entries
        return evaluate_target(node.inputs[0], context, depth + 1)
    if op == "Mul":
        return _elementwise(node, context, depth, _times)
    if op == "Div":
        return _elementwise(node, context, depth, _divided)
    if op in ("Add", "Sub"):
        return _elementwise(node, context, depth, _plus if op == "Add" else _minus)
    if op == "Equal":
        return _elementwise(node, context, depth, _equal)
    if op in ("Min", "Max") and len(node.inputs) == 2:
        return _elementwise(node, context, depth, _least if op == "Min" else _greatest)
    if op == "Where":
        return _where(node, context, depth)
    if op == "ConstantOfShape":
        return _filled(node, context, depth)
    if op == "Slice":
        return _sliced(node, context, depth)
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


def _operands(node: ir.Node, context: RuleContext, depth: int) -> list[list[Entry]] | None:
    """Both operands' entries, broadcast to one length."""
    left, right = [*(evaluate_target(v, context, depth + 1) for v in node.inputs[:2]), None][:2]
    if left is None or right is None:
        return None
    if len(left) != len(right) and 1 not in (len(left), len(right)):
        return None
    length = max(len(left), len(right))
    return [part * length if len(part) == 1 else part for part in (left, right)]


def _scaled(dim: CopiedDim, factor: int, divisor: int) -> CopiedDim:
    """``dim`` times ``factor / divisor``, the fraction reduced."""
    factor, divisor = dim.factor * factor, dim.divisor * divisor
    common = math.gcd(factor, divisor) or 1
    return dataclasses.replace(dim, factor=factor // common, divisor=divisor // common)


def _divided(a: Entry, b: Entry) -> Entry | None:
    """Integer division by a positive literal: exact literals, or a copied dim over it."""
    if not isinstance(b, int) or b <= 0:
        return None
    if isinstance(a, int):
        return a // b if a % b == 0 else None
    return _scaled(a, 1, b) if isinstance(a, CopiedDim) else None


def _times(a: Entry, b: Entry) -> Entry | None:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if isinstance(a, CopiedDim) and isinstance(b, int):
        return _scaled(a, b, 1)
    if isinstance(b, CopiedDim) and isinstance(a, int):
        return _scaled(b, a, 1)
    if isinstance(a, CopiedDim) and isinstance(b, CopiedDim) and a.divisor == b.divisor == 1:
        # two dims merged (PyTorch's ``x.view(t, b, c * h)``): with the second one's
        # size known, the first dim times it; else a run-time size
        if b.product is not None:
            return dataclasses.replace(a, factor=a.factor * b.product)
        if a.product is not None:
            return dataclasses.replace(b, factor=b.factor * a.product)
        return ComputedDim(nonnegative=_nonnegative(a) and _nonnegative(b))
    if isinstance(a, CopiedDim | ComputedDim) and isinstance(b, CopiedDim | ComputedDim):
        return ComputedDim(nonnegative=_nonnegative(a) and _nonnegative(b))
    return None


def _plus(a: Entry, b: Entry) -> Entry | None:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return ComputedDim(nonnegative=_nonnegative(a) and _nonnegative(b))


def _minus(a: Entry, b: Entry) -> Entry | None:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return ComputedDim()


def _least(a: Entry, b: Entry) -> Entry | None:
    """``Min``: exact for literals; a run-time size otherwise (torch.export bounds a
    sequence by the position table, ``min(2048, seq)``)."""
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return ComputedDim(nonnegative=_nonnegative(a) and _nonnegative(b))


def _greatest(a: Entry, b: Entry) -> Entry | None:
    """``Max``: exact for literals; a run-time size otherwise, never negative when either is not."""
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return ComputedDim(nonnegative=_nonnegative(a) or _nonnegative(b))


def _nonnegative(entry: Entry) -> bool:
    if isinstance(entry, CopiedDim):
        return entry.factor > 0
    if isinstance(entry, ComputedDim):
        return entry.nonnegative
    return entry >= 0


def _equal(a: Entry, b: Entry) -> Entry | None:
    """1/0 where decidable: a copied dim (times a positive factor) or a sum of
    them is never negative."""
    if isinstance(a, int) and isinstance(b, int):
        return int(a == b)
    dim, other = (b, a) if isinstance(a, int) else (a, b)
    if not isinstance(dim, int) and isinstance(other, int) and other < 0 and _nonnegative(dim):
        return 0
    return None


def _elementwise(
    node: ir.Node,
    context: RuleContext,
    depth: int,
    operation: Callable[[Entry, Entry], Entry | None],
) -> list[Entry] | None:
    operands = _operands(node, context, depth)
    if operands is None:
        return None
    results = [operation(a, b) for a, b in zip(*operands, strict=True)]
    return [r for r in results if r is not None] if None not in results else None


def _where(node: ir.Node, context: RuleContext, depth: int) -> list[Entry] | None:
    parts = [evaluate_target(v, context, depth + 1) for v in node.inputs[:3]]
    condition, chosen, other = [*parts, None, None, None][:3]
    if condition is None or chosen is None or other is None:
        return None
    length = max(len(condition), len(chosen), len(other))
    if any(len(p) not in (1, length) for p in (condition, chosen, other)):
        return None
    result: list[Entry] = []
    for i in range(length):
        flag = condition[0 if len(condition) == 1 else i]
        if not isinstance(flag, int):
            return None
        pick = chosen if flag else other
        result.append(pick[0 if len(pick) == 1 else i])
    return result


def _sliced(node: ir.Node, context: RuleContext, depth: int) -> list[Entry] | None:
    """A constant window of a shape vector (``Shape -> Slice[-1:]``)."""
    data = evaluate_target(node.inputs[0], context, depth + 1)
    bounds = [context.constant(v) if v is not None else None for v in node.inputs[1:5]]
    bounds += [None] * (4 - len(bounds))
    starts, ends, axes, steps = bounds
    if data is None or starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if axes is not None and int(axes.reshape(-1)[0]) not in (0, -1):
        return None
    step = 1 if steps is None else int(steps.reshape(-1)[0])
    window = slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), step)
    return data[window] if step else None


def _filled(node: ir.Node, context: RuleContext, depth: int) -> list[Entry] | None:
    """ConstantOfShape of a 1-D length: that many copies of its integer fill."""
    length = evaluate_target(node.inputs[0], context, depth + 1)
    if length is None or len(length) != 1:
        return None
    count = length[0].product if isinstance(length[0], CopiedDim) else length[0]
    fill = context.attribute(node, "value")
    array = fill.numpy() if fill is not None else None
    if not isinstance(count, int) or (array is not None and array.dtype.kind not in "iu"):
        return None
    value = int(array.reshape(-1)[0]) if array is not None else 0
    return [value] * count


def resolve_target(
    entries: Sequence[Entry], in_shape: Sequence[int | None], allow_zero: bool = True
) -> list[int | None] | None:
    """Output dims of a Reshape from target entries (None = symbolic); None if unclear.

    A ``0`` copies the input's dim at that position (ONNX semantics); a ``-1`` is
    solved from the input's size when every other factor is known or is a
    symbolic dim the input also has (batch, sequence), which cancels out; where
    the input has more symbolic dims than the other entries, the ``-1`` absorbs
    one and stays symbolic (``[batch, 16, C] -> [-1, C]``).
    """
    dims: list[int | None] = []
    infer_at: int | None = None
    for position, entry in enumerate(entries):
        if isinstance(entry, CopiedDim):
            dims.append(entry.product)
        elif isinstance(entry, ComputedDim):
            dims.append(None)
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
    if symbolic_in > symbolic_out:
        return dims  # the -1 absorbs a symbolic dim (``16*batch``): it stays symbolic
    if symbolic_in != symbolic_out:
        return None
    divisor = math.prod(d for d in others if d is not None)
    total = math.prod(known_in)
    if divisor == 0 or total % divisor:
        return None
    dims[infer_at] = total // divisor
    return dims


#: Ops a shape chain computes with (on rank <= 1 integer values): :func:`sizes_read`
#: looks through them.
_CHAIN_OPS = frozenset({
    "Abs", "Add", "Cast", "Ceil", "Concat", "Div", "Equal", "Floor", "Gather", "Identity", "Max",
    "Min", "Mod", "Mul", "Neg", "Pow", "Reciprocal", "ReduceProd", "ReduceSum", "Reshape", "Slice",
    "Sqrt", "Squeeze", "Sub", "Unsqueeze", "Where",
})  # fmt: skip


def sizes_read(value: ir.Value | None, context: RuleContext, depth: int = 0) -> set[tuple[str, int]]:
    """The dims (value name, axis) whose sizes ``value``, a shape chain (rank <= 1),
    is computed from through ``Shape``/``Size`` reads: exactly where the chain can be
    read (:func:`evaluate_target`), else the union over the inputs of the chain op
    that computes it (``Sqrt``, ``Pow``: sizes no target holds), down to the reads."""
    if value is None or depth > _MAX_DEPTH:
        return set()
    shape = context.shape(value)
    node = value.producer()
    if shape is None or len(shape) > 1 or node is None or node.domain != "":
        return set()  # an activation, a constant or a graph input: no shape read
    if node.op_type == "Size":
        source = node.inputs[0]
        rank = None if source is None else context.shape(source)
        return set() if source is None or rank is None else {(source.name or "", a) for a in range(len(rank))}
    entries = evaluate_target(value, context)
    if entries is not None and not any(isinstance(e, ComputedDim) for e in entries):
        return {(e.value, e.axis) for e in entries if isinstance(e, CopiedDim)}
    if node.op_type not in _CHAIN_OPS:
        return set()
    return {read for v in node.inputs for read in sizes_read(v, context, depth + 1)}


_INT_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Max": np.maximum,
    "Min": np.minimum,
    # ONNX's integer Div truncates toward zero
    "Div": lambda a, b: np.sign(a) * np.sign(b) * (np.abs(a) // np.maximum(np.abs(b), 1)),
}
_INT_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8,
                        ir.DataType.UINT64, ir.DataType.UINT32, ir.DataType.UINT16, ir.DataType.UINT8})  # fmt: skip


def evaluate_ints(
    value: ir.Value | None,
    context: RuleContext,
    sizes: dict[tuple[str, int], int],
    depth: int = 0,
) -> np.ndarray | None:
    """The integer chain ``value`` as a flat int64 array, with ``Shape`` reads of the
    dims in ``sizes`` (value name, axis) taking those sizes and other reads their
    static dims (an object array while it holds a symbolic dim no op has needed
    yet); None where the chain holds anything else (a symbolic dim, a float,
    an op outside Shape/Gather/Concat/Squeeze/Unsqueeze/Reshape/Cast/Identity/Neg and
    integer Add/Sub/Mul/Div/Max/Min)."""
    if value is None or depth > _MAX_DEPTH:
        return None
    constant = context.constant(value)
    if constant is not None:
        return constant.reshape(-1).astype(np.int64) if constant.dtype.kind in "iu" else None
    node = value.producer()
    if node is None or node.domain != "":
        return None
    op = node.op_type
    if op == "Shape":
        entries = _shape_entries(node, context)
        if entries is None:
            return None
        dims = [sizes.get((e.value, e.axis), e.size) for e in entries if isinstance(e, CopiedDim)]
        # symbolic dims stay None until an op needs their value (a Gather may skip them)
        return np.array(dims, dtype=np.int64 if None not in dims else object)
    if op == "Cast" and ir.DataType(int(context.attribute(node, "to", 0))) not in _INT_TYPES:
        return None
    if op in ("Squeeze", "Unsqueeze", "Reshape", "Cast", "Identity", "Neg"):
        inner = evaluate_ints(node.inputs[0], context, sizes, depth + 1)
        if inner is None or (op == "Neg" and inner.dtype == object):
            return None
        return -inner if op == "Neg" else inner
    parts = [evaluate_ints(v, context, sizes, depth + 1) for v in node.inputs if v is not None]
    if any(part is None for part in parts) or not parts:
        return None
    arrays: list[np.ndarray] = parts  # type: ignore[assignment]
    if op == "Concat":
        return np.concatenate(arrays)
    if op == "Gather" and len(arrays) == 2 and int(context.attribute(node, "axis", 0)) == 0:
        data, indices = arrays
        if indices.dtype == object or np.any(indices >= data.size) or np.any(indices < -data.size):
            return None
        picked = data[indices]
        return picked.astype(np.int64) if None not in picked.tolist() else picked
    if op in _INT_BINARY and len(arrays) == 2:
        if any(array.dtype == object and None in array.tolist() for array in arrays):
            return None
        left, right = (array.astype(np.int64) for array in arrays)
        if left.size != right.size and 1 not in (left.size, right.size):
            return None
        return np.asarray(_INT_BINARY[op](left, right), dtype=np.int64).reshape(-1)
    return None
