"""Rules for Reshape and Flatten: axes coupled through *segments*.

A segment is a run of input and output axes whose products agree (size-1
axes ignored). A one-to-one segment is an identity; a merge
``(C, H, W) -> C*H*W`` couples its leading axis by ``Block(C, H*W)``; a split
``H*D -> (H, D)`` couples the leading output axis (heads) by ``Block(H, D)``.
Two patterns couple the inner axis instead: a channel shuffle (split, swap the
two axes, merge back: the within-group position is the channel space) and a
bidirectional RNN output ``[.., directions, hidden]`` merged (hidden unit j is
feature j of every direction). A split whose leading factor is then cut apart
(a packed projection ``3*H*D -> (3, H, D)`` taken apart by Slice, Split or
Gather along the 3: timm's and Paddle's attention) couples the next factor,
the heads: head h is ``h*D .. h*D+D-1`` in each of the 3 blocks. Leading
axes merged with a symbolic batch (``[B, H, S, D] -> [B*H, S, D]``) are left
free when every use splits them back from the input's own shape further on.
Where axes are regrouped on both sides (frames stacked: ``[B, 4T, C] -> [B, T, 4C]``,
or split back), the last axes couple by a ``Tile`` when one holds whole copies of the
other, and the leading axes by a ``Block`` when one divides the other (GroupNorm's
``[N, C, H, W] -> [N, G, C/G*H*W]``: whole groups of channels). Other inner axes stay frozen (the analyzer freezes what a rule leaves out). Run-time targets are read by
:mod:`spa.analysis.shape_exprs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx_ir as ir

from spa.analysis.index_maps import Block, Composed, Identity, Tile
from spa.analysis.rules.registry import (
    Barrier,
    Coupling,
    RuleContext,
    Unconstrained,
    name,
    register_rule,
)
from spa.analysis.rules.shape import slice_axes
from spa.analysis.shape_exprs import CopiedDim, evaluate_target, resolve_target

__all__ = ["merge_sources", "reshape_couplings"]

Result = list[Coupling | Barrier | Unconstrained]


def _segments(
    in_shape: Sequence[int | None],
    out_shape: Sequence[int | None],
    in_names: Sequence[str | None] = (),
    out_names: Sequence[str | None] = (),
    open_tail: bool = False,
) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of axes with equal products; None when dims do not line up (two
    symbolic dims pair unless their names say they differ: ``16*batch`` is not
    ``batch``; plain names such as ``unk__4`` and ``batch`` may be one size).
    ``open_tail``: a run of static dims that meets a symbolic one before its products
    agree takes every axis left on both sides as one last segment (its products
    agree, the earlier ones having agreed): ``[N, 256, H, W] -> [N, 32, 8*H*W]``."""
    segments: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_shape) and j < len(out_shape):
        if in_shape[i] is None or out_shape[j] is None:
            left_name = in_names[i] if i < len(in_names) else None
            right_name = out_names[j] if j < len(out_names) else None
            if _differ(left_name, right_name):
                return None
            if in_shape[i] is None and out_shape[j] is None:
                segments.append(([i], [j]))
                i, j = i + 1, j + 1
                continue
            if in_shape[i] == 1:  # a size-1 axis dropped next to a symbolic one
                i += 1
                continue
            if out_shape[j] == 1:
                j += 1
                continue
            return None
        ins, outs = [i], [j]
        left, right = int(in_shape[i] or 0), int(out_shape[j] or 0)
        while left != right:
            step_in = left < right
            i, j = (i + 1, j) if step_in else (i, j + 1)
            side, k = (in_shape, i) if step_in else (out_shape, j)
            if k >= len(side) or side[k] is None:
                if open_tail and k < len(side):  # the rest of both shapes: one last segment
                    return [*segments, (list(range(ins[0], len(in_shape))), list(range(outs[0], len(out_shape))))]
                return None
            if step_in:
                ins.append(i)
                left *= int(side[k] or 0)
            else:
                outs.append(j)
                right *= int(side[k] or 0)
        segments.append((ins, outs))
        i, j = i + 1, j + 1
    return segments


def _suffix_segments(
    in_shape: Sequence[int | None], out_shape: Sequence[int | None]
) -> list[tuple[list[int], list[int]]] | None:
    """Symbolic leading dims merged or split (``[B, S, H, D] <-> [B*S, H*D]``): pair
    the static trailing axes by products from the right; the symbolic prefixes
    (each must hold a symbolic dim) stay unmapped."""
    tail_in = _static_tail(in_shape)
    tail_out = _static_tail(out_shape)
    from_right = _segments(in_shape[::-1][:tail_in], out_shape[::-1][:tail_out])
    if from_right is not None:
        # pair from the last axis on; what is left on either side joins the prefix
        # ([16*B, 3, 16, 16] -> [B, 16, 3, 16, 16]: the 16 windows split from the batch)
        used_in = sum(len(ins) for ins, _ in from_right)
        used_out = sum(len(outs) for _, outs in from_right)
        if None in in_shape[: len(in_shape) - used_in] and None in out_shape[
            : len(out_shape) - used_out
        ]:
            last_in, last_out = len(in_shape) - 1, len(out_shape) - 1
            return [
                ([last_in - a for a in reversed(ins)], [last_out - b for b in reversed(outs)])
                for ins, outs in reversed(from_right)
            ]
    while tail_in and tail_out:
        segments = _segments(in_shape[-tail_in:], out_shape[-tail_out:])
        if segments is not None:
            break
        # shrink the longer-product side until the trailing products agree
        if math.prod(in_shape[-tail_in:]) > math.prod(out_shape[-tail_out:]):  # type: ignore[arg-type]
            tail_in -= 1
        else:
            tail_out -= 1
    else:
        return None
    prefix_in, prefix_out = (
        in_shape[: len(in_shape) - tail_in],
        out_shape[: len(out_shape) - tail_out],
    )
    if None not in prefix_in or None not in prefix_out:
        return None
    shift_in, shift_out = len(in_shape) - tail_in, len(out_shape) - tail_out
    return [([a + shift_in for a in ins], [b + shift_out for b in outs]) for ins, outs in segments]


def _differ(left: str | None, right: str | None) -> bool:
    """Do two symbolic dim names denote different sizes for sure? Only when one is
    an arithmetic expression shape inference wrote (``16*batch``, ``seq + 1``)."""
    if left is None or right is None or left == right:
        return False
    return any(op in name for name in (left, right) for op in "*+-/")


def _symbols(value: ir.Value, rank: int) -> list[str | None]:
    """Names of ``value``'s symbolic dims (None for static or unnamed ones)."""
    shape = value.shape if value.const_value is None else None
    if shape is None or len(shape) != rank:
        return []
    return [None if isinstance(d, int) or d.value is None else str(d.value) for d in shape]


def _static_tail(shape: Sequence[int | None]) -> int:
    """How many trailing dims are static."""
    count = 0
    for dim in reversed(shape):
        if dim is None:
            break
        count += 1
    return count


def reshape_couplings(
    x: ir.Value,
    y: ir.Value,
    context: RuleContext,
    what: str,
    out_dims: Sequence[int | None] | None = None,
) -> Result:
    in_shape = context.shape(x)
    out_shape = tuple(out_dims) if out_dims is not None else context.shape(y)
    if in_shape is None or out_shape is None:
        return [Barrier(f"{what} has unknown shapes", values=(name(x), name(y)))]
    names = _symbols(x, len(in_shape)), _symbols(y, len(out_shape))
    segments = _segments(in_shape, out_shape, *names)
    if segments is None:
        segments = _suffix_segments(in_shape, out_shape)
    if not segments:  # GroupNorm's [N, 256, H, W] -> [N, 32, 8*H*W] at run-time sizes
        segments = _segments(in_shape, out_shape, *names, open_tail=True) or segments
    if segments is None:
        return [Barrier(f"{what} reshapes {in_shape} -> {out_shape}", values=(name(x), name(y)))]
    out: Result = []
    for all_ins, all_outs in segments:
        # size-1 axes carry no channels: [B, 1, C] -> [B, C] is an identity on C
        ins = [a for a in all_ins if in_shape[a] != 1] or all_ins[:1]
        outs = [a for a in all_outs if out_shape[a] != 1] or all_outs[:1]
        first_in, first_out = ins[0], outs[0]
        in_dim, out_dim = in_shape[first_in], out_shape[first_out]
        if in_dim is None or out_dim is None:
            continue
        if len(ins) == 1 and len(outs) == 1:
            out.append(Coupling((name(x), first_in), (name(y), first_out), Identity(in_dim)))
        elif len(outs) == 1 and len(ins) == 2 and _is_direction_axis(x, first_in):
            # bidirectional RNN output [.., directions, hidden] merged: hidden unit j
            # is feature j of every direction
            hidden = in_shape[ins[1]]
            assert hidden is not None
            out.append(Coupling((name(x), ins[1]), (name(y), first_out), Tile(hidden, in_dim)))
        elif len(outs) == 1:
            out.append(
                Coupling(
                    (name(x), first_in), (name(y), first_out), Block(in_dim, out_dim // in_dim)
                )
            )
        elif len(ins) == 1 and len(outs) == 2 and _feeds_shuffle(y, first_out, context):
            # channel shuffle: the within-group position is the channel space (a kept
            # position stays kept in every group, so the shuffle stays a shuffle)
            per_group = in_dim // out_dim
            out.append(Coupling((name(y), outs[1]), (name(x), first_in), Tile(per_group, out_dim)))
        elif len(ins) == 1 and len(outs) >= 2 and _cut_along(y, first_out, context):
            # packed projection [.., 3, H, D] cut into its 3 parts: the leading factor
            # is no channel space; the next one (heads) is, repeated in every part
            inner_dim = out_shape[outs[1]]
            assert inner_dim is not None
            block = in_dim // (out_dim * inner_dim)
            index_map = Composed((Block(inner_dim, block), Tile(inner_dim * block, out_dim)))
            out.append(Coupling((name(y), outs[1]), (name(x), first_in), index_map))
        elif len(ins) == 1:
            out.append(
                Coupling(
                    (name(y), first_out), (name(x), first_in), Block(out_dim, in_dim // out_dim)
                )
            )
        else:
            out += _leading_blocks(x, y, in_dim, out_dim, first_in, first_out)
            out += _stacked_frames(x, y, in_shape[ins[-1]], out_shape[outs[-1]], ins, outs)
    mapped = {a for all_ins, _ in segments for a in all_ins}
    merged = [a for a in range(len(in_shape)) if a not in mapped]
    if merged == list(range(len(merged))) and len(merged) > 1 and _restored(y, 0, x, merged, context):
        # leading axes (a symbolic batch among them) merged for a batched op and split
        # back from the input's own shape further on (TorchExport's attention:
        # [B, H, S, D] -> [B*H, S, D] -> transpose -> [B, H, D, S]): the heads axis
        # passes through unchanged, and the restoring Reshape couples it
        out.append(Unconstrained((), spaces=tuple((name(x), a) for a in merged)))
    return out


def _leading_blocks(x: ir.Value, y: ir.Value, lead_in: int, lead_out: int, axis_in: int, axis_out: int) -> Result:
    """Axes regrouped on both sides: their leading axes couple by a ``Block`` where one
    divides the other. In row-major order index ``b`` of the coarser axis holds indices
    ``b*k .. b*k+k-1`` of the finer one, whatever follows: GroupNorm exported as
    ``[N, C, H, W] -> [N, G, C/G*H*W]`` (InstanceNormalization) and back, where group
    ``g`` holds channels ``g*C/G ..``, so that whole groups prune exactly."""
    if lead_in % lead_out == 0:
        return [Coupling((name(y), axis_out), (name(x), axis_in), Block(lead_out, lead_in // lead_out))]
    if lead_out % lead_in == 0:
        return [Coupling((name(x), axis_in), (name(y), axis_out), Block(lead_in, lead_out // lead_in))]
    return []


def _stacked_frames(
    x: ir.Value,
    y: ir.Value,
    inner_in: int | None,
    inner_out: int | None,
    ins: list[int],
    outs: list[int],
) -> Result:
    """Axes regrouped on both sides (``[B, 16, C] -> [B, 4, 4C]``: frames stacked, as
    Magika's and speech models' subsampling do; or the inverse split). Where one last
    axis holds whole copies of the other, element ``c`` of the narrow one is element
    ``c + narrow*k`` of the wide one for every k: a Tile from the narrow axis. The
    leading axes of the run stay unmapped (frozen)."""
    if inner_in is None or inner_out is None:
        return []
    if inner_out % inner_in == 0:
        return [Coupling((name(x), ins[-1]), (name(y), outs[-1]), Tile(inner_in, inner_out // inner_in))]
    if inner_in % inner_out == 0:
        return [Coupling((name(y), outs[-1]), (name(x), ins[-1]), Tile(inner_out, inner_in // inner_out))]
    return []


def _restored(
    value: ir.Value, position: int, x: ir.Value, merged: list[int], context: RuleContext
) -> bool:
    """Does every use of ``value`` (through Transposes) end in a Reshape that splits
    its axis ``position`` back into ``x``'s axes ``merged``, read from ``x``'s shape?"""

    def restores(node: ir.Node, axis: int) -> bool:
        if node.op_type != "Reshape" or axis != 0:
            return False
        entries = evaluate_target(node.inputs[1], context)
        return entries is not None and all(
            i < len(entries)
            and isinstance(entries[i], CopiedDim)
            and entries[i] == CopiedDim(name(x), a, entries[i].size)  # type: ignore[union-attr]
            for i, a in enumerate(merged)
        )

    return _every_use(value, position, context, restores, through_identity=False)


def _cut_along(value: ir.Value, axis: int, context: RuleContext) -> bool:
    """Is every use of ``value`` (through Transposes and Identities) a Slice, Split
    or Gather along ``axis``: a packed projection taken apart?"""

    def cuts(node: ir.Node, axis: int) -> bool:
        rank = len(context.shape(node.inputs[0]) or ())
        if rank == 0:
            return False
        if node.op_type in ("Split", "Gather"):
            return int(context.attribute(node, "axis", 0)) % rank == axis
        axes = slice_axes(node, context) if node.op_type == "Slice" else None
        return axes is not None and [int(a) % rank for a in axes] == [axis]

    return _every_use(value, axis, context, cuts, through_identity=True)


def _every_use(
    value: ir.Value,
    axis: int,
    context: RuleContext,
    accept: Callable[[ir.Node, int], bool],
    through_identity: bool,
    depth: int = 0,
) -> bool:
    """Does every use of ``value`` end, through Transposes (which move ``axis``) and,
    if asked, Identities, in a node that ``accept(node, axis)`` takes?"""
    consumers = value.consumers()
    if not consumers or depth > 4:
        return False
    for node in consumers:
        if node.domain or node.inputs[0] is not value:
            return False
        if node.op_type == "Transpose":
            perm = context.attribute(node, "perm")
            follows = perm is not None and _every_use(
                node.outputs[0], list(perm).index(axis), context, accept, through_identity, depth + 1
            )
        elif node.op_type == "Identity" and through_identity:
            follows = _every_use(node.outputs[0], axis, context, accept, through_identity, depth + 1)
        else:
            follows = accept(node, axis)
        if not follows:
            return False
    return True


def _is_direction_axis(value: ir.Value, axis: int) -> bool:
    """Is ``axis`` of ``value`` the num_directions axis of an LSTM/GRU/RNN output
    (through Transposes)?"""
    for _ in range(8):
        producer = value.producer()
        if producer is None or producer.domain:
            return False
        if producer.op_type in ("LSTM", "GRU", "RNN"):
            return value is producer.outputs[0] and axis == 1
        perm = producer.attributes.get("perm")
        source = producer.inputs[0]
        if producer.op_type != "Transpose" or perm is None or source is None:
            return False
        value, axis = source, perm.value[axis]
    return False


def _feeds_shuffle(y: ir.Value, axis: int, context: RuleContext) -> bool:
    """Is ``y`` (axes ``axis, axis+1`` just split from one) transposed to swap exactly
    those two axes and merged back by a Reshape (reshape-transpose-reshape)?"""
    consumers = y.consumers()
    if len(consumers) != 1 or consumers[0].op_type != "Transpose" or consumers[0].domain:
        return False
    transpose = consumers[0]
    shape = context.shape(y)
    perm = context.attribute(transpose, "perm")
    if shape is None or perm is None:
        return False
    swapped = list(range(len(shape)))
    swapped[axis], swapped[axis + 1] = axis + 1, axis
    if list(perm) != swapped:
        return False
    t = transpose.outputs[0]
    merges = t.consumers()
    if len(merges) != 1 or merges[0].op_type != "Reshape" or merges[0].domain:
        return False
    merged = context.shape(merges[0].outputs[0])
    t_shape = context.shape(t)
    if merged is None or t_shape is None or len(merged) != len(t_shape) - 1:
        return False
    product = None if None in t_shape[axis : axis + 2] else t_shape[axis] * t_shape[axis + 1]  # type: ignore[operator]
    return (
        product is not None
        and merged[axis] == product
        and tuple(merged[:axis]) == tuple(t_shape[:axis])
        and tuple(merged[axis + 1 :]) == tuple(t_shape[axis + 2 :])
    )


@register_rule("Reshape")
def _reshape(node: ir.Node, context: RuleContext) -> Result:
    x, shape, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and shape is not None
    what = f"Reshape '{node.name}'"
    if context.constant(shape) is not None:
        out = [*reshape_couplings(x, y, context, what)]
    else:
        out = _computed_reshape(node, x, shape, y, context, what)
    mapped = {c.source for c in out if isinstance(c, Coupling)} | {c.target for c in out if isinstance(c, Coupling)}
    if (name(x), 1) not in mapped:
        out += _merged_heads(node, x, y, context)
    if (name(y), 1) not in mapped:
        out += _restored_heads(y, context)
    return out


#: Ops that keep a leading batch axis apart (elementwise, per-row): the merged
#: batch x heads axis of fairseq-style attention passes through them.
_BATCHWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Where", "Cast", "Identity", "Dropout", "Exp", "Neg", "Relu",
    "Sigmoid", "Tanh", "Erf", "Sqrt", "Softmax", "LogSoftmax", "MatMul", "Transpose",
})  # fmt: skip


def _merged_heads(node: ir.Node, x: ir.Value, y: ir.Value, context: RuleContext) -> Result:
    """Batch and heads merged into one run-time axis, ``[B, H, ..] -> [B*H, ..]`` (fairseq's
    and BLOOM's ``view(bsz * num_heads, ..)``, older exports of BART, Marian and Whisper).
    Where every use of the merged axis passes through batch-wise ops (elementwise,
    MatMul batches, Softmax over another axis) and ends in a Reshape that splits it back
    into a run-time batch and the same literal ``H``, head ``h`` is head ``h`` there: the
    heads couple to each restoring Reshape's output. The pruning pass rewrites the
    ``H`` in both targets (``batch * H`` here, the literal there)."""
    in_shape, out_shape = context.shape(x), context.shape(y)
    target = node.inputs[1]
    if in_shape is None or out_shape is None or len(in_shape) < 3 or target is None:
        return []
    heads = in_shape[1]
    if in_shape[0] is not None or heads is None or heads < 2 or out_shape[0] is not None:
        return []
    entries = evaluate_target(target, context)
    first = entries[0] if entries else None
    merges = isinstance(first, CopiedDim) and first.size is None and first.factor == heads
    if not merges and first != -1:
        return []
    restorers = _restorers(y, 0, heads, context, set())
    if not restorers:
        return []
    return [Coupling((name(x), 1), (name(r), 1), Identity(heads)) for r in restorers]


def _restored_heads(y: ir.Value, context: RuleContext) -> Result:
    """The other end of :func:`_merged_heads`: where ``y`` splits a merged batch x heads
    axis back and every path to its input leads, through batch-wise ops, to Reshapes
    that merged heads restored here, ``y``'s heads couple to theirs."""
    node = y.producer()
    x = node.inputs[0] if node is not None else None
    if node is None or x is None:
        return []
    merges = merge_sources(x, 0, context, set())
    if not merges:
        return []
    out: Result = []
    for merge in merges:
        couplings = _merged_heads(merge, merge.inputs[0], merge.outputs[0], context)  # type: ignore[arg-type]
        if not any(isinstance(c, Coupling) and c.target == (name(y), 1) for c in couplings):
            return []
        out += [c for c in couplings if isinstance(c, Coupling) and c.target == (name(y), 1)]
    return out


def merge_sources(value: ir.Value, axis: int, context: RuleContext, seen: set[int],
                   depth: int = 0) -> list[ir.Node] | None:  # fmt: skip
    """The Reshapes that merged ``value``'s run-time ``axis`` from batch x heads, walking
    producers through batch-wise ops; None where a path leads anywhere else."""
    producer = value.producer()
    if depth > 16 or producer is None or producer.domain:
        return None
    if id(producer) in seen:
        return []
    seen.add(id(producer))
    if producer.op_type == "Reshape":
        return [producer] if axis == 0 else None
    if producer.op_type not in _BATCHWISE:
        return None
    out_shape = context.shape(value)
    if out_shape is None or (producer.op_type == "MatMul" and axis >= len(out_shape) - 2):
        return None  # a matrix axis of a MatMul is no batch axis
    found: list[ir.Node] = []
    for source in producer.inputs[:2] if producer.op_type != "Where" else producer.inputs:
        shape = context.shape(source) if source is not None else None
        if source is None or shape is None:
            continue
        if producer.op_type == "Transpose":
            perm = context.attribute(producer, "perm")
            if perm is None:
                return None
            source_axis = int(list(perm)[axis])
        else:
            source_axis = axis - (len(out_shape) - len(shape))
        if source_axis >= len(shape):
            return None
        if source_axis < 0 or shape[source_axis] == 1 or source.const_value is not None:
            continue  # broadcast along the merged axis
        if shape[source_axis] is not None:
            return None
        deeper = merge_sources(source, source_axis, context, seen, depth + 1)
        if deeper is None:
            return None
        found += deeper
    return found


def _restorers(value: ir.Value, axis: int, heads: int, context: RuleContext, seen: set[int],
               depth: int = 0) -> list[ir.Value] | None:  # fmt: skip
    """The outputs of the Reshapes that split ``value``'s merged ``axis`` back into
    ``[batch, heads]``, every use passing through batch-wise ops; None where a use
    does anything else (a graph output, another op, a static dim at that axis)."""
    if depth > 16 or value.is_graph_output():
        return None
    found: list[ir.Value] = []
    for use in value.uses():
        consumer, position = use.node, use.idx
        if id(consumer) in seen or (consumer.op_type == "Shape" and not consumer.domain):
            continue  # a Shape reads the merged size (BLOOM's batch = merged // heads): no channels
        seen.add(id(consumer))
        if consumer.domain or consumer.op_type not in _BATCHWISE | {"Reshape"}:
            return None
        out = consumer.outputs[0]
        in_shape, out_shape = context.shape(value), context.shape(out)
        if in_shape is None or out_shape is None:
            return None
        if consumer.op_type == "Reshape":
            if position != 0 or len(out_shape) != len(in_shape) + 1 or axis != 0:
                return None
            if out_shape[0] is not None or out_shape[1] != heads or out_shape[2:] != in_shape[1:]:
                return None
            found.append(out)
            continue
        if consumer.op_type == "Transpose":
            perm = context.attribute(consumer, "perm")
            if perm is None:
                return None
            next_axis = list(perm).index(axis)
        else:
            next_axis = axis + len(out_shape) - len(in_shape)  # broadcasting aligns from the right
            if consumer.op_type == "MatMul" and next_axis >= len(out_shape) - 2:
                return None  # a matrix axis, not a batch axis
            softmax_axis = int(context.attribute(consumer, "axis", -1)) % len(in_shape)
            if consumer.op_type in ("Softmax", "LogSoftmax") and softmax_axis == axis:
                return None
            for other in consumer.inputs:
                other_shape = context.shape(other) if other is not None and other is not value else None
                if other_shape is None:
                    continue
                other_axis = next_axis - (len(out_shape) - len(other_shape))
                if 0 <= other_axis < len(other_shape) and other_shape[other_axis] not in (None, 1):
                    return None  # a static size there: not the same merged axis
        deeper = _restorers(out, next_axis, heads, context, seen, depth + 1)
        if deeper is None:
            return None
        found += deeper
    return found


def _computed_reshape(
    node: ir.Node, x: ir.Value, shape: ir.Value, y: ir.Value, context: RuleContext, what: str
) -> Result:
    """A target built from Shape/Gather/Concat: -1 and copied dims follow a pruned
    axis at run time; literal entries are rewritten by the slicing pass, which
    gives the node a private copy of the target (other layers keep theirs)."""
    in_shape = context.shape(x)
    entries = evaluate_target(shape, context)
    allow_zero = not int(context.attribute(node, "allowzero", 0))
    out_dims = (
        None
        if entries is None or in_shape is None
        else resolve_target(entries, in_shape, allow_zero)
    )
    if entries is None or out_dims is None:
        return [
            Barrier(
                f"{what} has a computed target shape spa cannot read", values=(name(x), name(y))
            ),
            Unconstrained((name(shape),)),
        ]
    out: Result = [Unconstrained((name(shape),))]
    out += reshape_couplings(x, y, context, what, out_dims)
    for axis, entry in enumerate(entries):
        copied = isinstance(entry, CopiedDim) and entry.factor == entry.divisor == 1 and entry.value != name(x)
        if copied and isinstance(entry, CopiedDim) and entry.size is not None:
            out.append(Coupling((entry.value, entry.axis), (name(y), axis), Identity(entry.size)))
    return out


@register_rule("Flatten")
def _flatten(node: ir.Node, context: RuleContext) -> Result:
    x = node.inputs[0]
    assert x is not None
    return reshape_couplings(x, node.outputs[0], context, f"Flatten '{node.name}'")
