"""Rules for ops that move axes: Reshape, Flatten, Transpose, Squeeze/Unsqueeze,
Concat, Split, Slice, Gather, Softmax, reductions, Pad, Resize, Shape.

A Reshape couples axes through *segments*: runs of input and output axes
whose products agree. A one-to-one segment is an identity; a merge
``(C, H, W) -> C*H*W`` couples its leading axis by ``Block(C, H*W)``; a split
``H*D -> (H, D)`` couples the leading output axis (heads) by ``Block(H, D)``.
Inner axes of a merge or split stay frozen (the analyzer freezes what a rule
leaves out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx_ir as ir

from spa.analysis.index_maps import Block, Identity, Offset, Tile
from spa.analysis.rules import (
    Barrier,
    Coupling,
    RuleContext,
    Unconstrained,
    name,
    register_rule,
    unknown_shapes,
)
from spa.analysis.rules_elementwise import broadcast_couplings
from spa.analysis.shape_exprs import CopiedDim, evaluate_target, resolve_target

__all__ = ["reshape_couplings"]

Result = list[Coupling | Barrier | Unconstrained]


def _segments(
    in_shape: Sequence[int | None], out_shape: Sequence[int | None]
) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of axes with equal products; None when dims do not line up."""
    segments: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_shape) and j < len(out_shape):
        if in_shape[i] is None or out_shape[j] is None:
            if in_shape[i] is None and out_shape[j] is None:
                segments.append(([i], [j]))
                i, j = i + 1, j + 1
                continue
            return None
        ins, outs = [i], [j]
        left, right = int(in_shape[i] or 0), int(out_shape[j] or 0)
        while left != right:
            if left < right:
                i += 1
                if i >= len(in_shape) or in_shape[i] is None:
                    return None
                ins.append(i)
                left *= int(in_shape[i] or 0)
            else:
                j += 1
                if j >= len(out_shape) or out_shape[j] is None:
                    return None
                outs.append(j)
                right *= int(out_shape[j] or 0)
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
    segments = _segments(in_shape, out_shape)
    if segments is None:
        segments = _suffix_segments(in_shape, out_shape)
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
            out.append(
                Coupling((name(y), outs[1]), (name(x), first_in), Tile(per_group, out_dim))
            )
        elif len(ins) == 1:
            out.append(
                Coupling(
                    (name(y), first_out), (name(x), first_in), Block(out_dim, in_dim // out_dim)
                )
            )
    return out


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
        return [*reshape_couplings(x, y, context, what)]
    return _computed_reshape(node, x, shape, y, context, what)


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
        copied = isinstance(entry, CopiedDim) and entry.factor == 1 and entry.value != name(x)
        if copied and isinstance(entry, CopiedDim) and entry.size is not None:
            out.append(Coupling((entry.value, entry.axis), (name(y), axis), Identity(entry.size)))
    return out


@register_rule("Flatten")
def _flatten(node: ir.Node, context: RuleContext) -> Result:
    x = node.inputs[0]
    assert x is not None
    return reshape_couplings(x, node.outputs[0], context, f"Flatten '{node.name}'")


@register_rule("Transpose")
def _transpose(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    perm = context.attribute(node, "perm") or list(reversed(range(len(shape))))
    out: Result = []
    for out_axis, in_axis in enumerate(perm):
        if shape[in_axis] is not None:
            out.append(Coupling((name(x), in_axis), (name(y), out_axis), Identity(shape[in_axis])))
    return out


def _axes(node: ir.Node, context: RuleContext, rank: int) -> list[int] | None:
    axes = context.attribute(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = context.constant(node.inputs[1])
        axes = None if constant is None else constant.tolist()
    if axes is None:
        return None
    return sorted(int(a) % rank for a in axes)


@register_rule("Squeeze", "Unsqueeze")
def _squeeze(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    in_shape, out_shape = context.shape(x), context.shape(y)
    if in_shape is None or out_shape is None:
        return [unknown_shapes(node, x, y)]
    squeezing = node.op_type == "Squeeze"
    removed = [a for a, d in enumerate(in_shape) if d == 1] if squeezing else []
    inserted: list[int] = []
    axes = _axes(node, context, len(in_shape) if squeezing else len(out_shape))
    if axes is not None:
        removed, inserted = (axes, []) if squeezing else ([], axes)
    elif not squeezing:
        return [Barrier(f"Unsqueeze '{node.name}' has computed axes", values=(name(x), name(y)))]
    kept_in = [a for a in range(len(in_shape)) if a not in removed]
    kept_out = [a for a in range(len(out_shape)) if a not in inserted]
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    for in_axis, out_axis in zip(kept_in, kept_out, strict=False):
        dim = in_shape[in_axis]
        if dim is not None:
            out.append(Coupling((name(x), in_axis), (name(y), out_axis), Identity(dim)))
    return out


@register_rule("Concat")
def _concat(node: ir.Node, context: RuleContext) -> Result:
    y = node.outputs[0]
    out_shape = context.shape(y)
    inputs = [v for v in node.inputs if v is not None]
    shapes = [context.shape(v) for v in inputs]
    if out_shape is None or any(s is None for s in shapes):
        return [unknown_shapes(node, *inputs, y)]
    axis = int(context.attribute(node, "axis", 0)) % len(out_shape)
    total, offset = out_shape[axis], 0
    out: Result = []
    for value, shape in zip(inputs, shapes, strict=True):
        assert shape is not None
        for a, dim in enumerate(shape):
            if dim is None or (a == axis and total is None):
                continue
            index_map = Offset(dim, total or 0, offset) if a == axis else Identity(dim)
            out.append(Coupling((name(value), a), (name(y), a), index_map))
        offset += shape[axis] or 0
    return out


@register_rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    axis = int(context.attribute(node, "axis", -1)) % len(shape)
    out: Result = [
        Barrier(
            f"{node.op_type} '{node.name}' normalises over axis {axis} (inexact)",
            ((name(x), axis), (name(y), axis)),
        )
    ]
    for a, dim in enumerate(shape):
        if a != axis and dim is not None:
            out.append(Coupling((name(x), a), (name(y), a), Identity(dim)))
    return out


@register_rule(
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ReduceLogSum",
)
def _reduce(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    axes = _axes(node, context, len(shape))
    if axes is None:
        axes = list(range(len(shape)))
    keepdims = int(context.attribute(node, "keepdims", 1))
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    out_axis = 0
    for a, dim in enumerate(shape):
        if a in axes:
            out_axis += keepdims
            continue
        if dim is not None:
            out.append(Coupling((name(x), a), (name(y), out_axis), Identity(dim)))
        out_axis += 1
    return out


@register_rule("Shape", "Size")
def _shape(node: ir.Node, context: RuleContext) -> Result:
    # Reading a shape does not constrain channels; shape chains recompute after slicing.
    return [Unconstrained(tuple(name(v) for v in node.inputs if v is not None))]


@register_rule("Pad")
def _pad(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    pads_value = node.inputs[1] if len(node.inputs) > 1 else None
    pads = context.attribute(node, "pads")
    if pads is None and pads_value is not None:
        constant = context.constant(pads_value)
        pads = None if constant is None else constant.tolist()
    if shape is None or pads is None or (len(node.inputs) > 3 and node.inputs[3] is not None):
        return [Barrier(f"Pad '{node.name}' has computed pads or axes", values=(name(x), name(y)))]
    rank = len(shape)
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    for a, dim in enumerate(shape):
        if dim is not None and pads[a] == 0 and pads[a + rank] == 0:
            out.append(Coupling((name(x), a), (name(y), a), Identity(dim)))
    return out


@register_rule("Resize", "Upsample")
def _resize(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    in_shape, out_shape = context.shape(x), context.shape(y)
    if in_shape is None or out_shape is None:
        return [unknown_shapes(node, x, y)]
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    for a, (dim_in, dim_out) in enumerate(zip(in_shape, out_shape, strict=True)):
        if dim_in is not None and dim_in == dim_out and a < 2:
            out.append(Coupling((name(x), a), (name(y), a), Identity(dim_in)))
    return out


@register_rule("Gather")
def _gather(node: ir.Node, context: RuleContext) -> Result:
    data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert data is not None and indices is not None
    data_shape, index_shape = context.shape(data), context.shape(indices)
    if data_shape is None or index_shape is None:
        return [unknown_shapes(node, data, y)]
    axis = int(context.attribute(node, "axis", 0)) % len(data_shape)
    out: Result = []
    for a, dim in enumerate(data_shape):
        if a == axis or dim is None:
            continue
        out_axis = a if a < axis else a - 1 + len(index_shape)
        out.append(Coupling((name(data), a), (name(y), out_axis), Identity(dim)))
    for a, dim in enumerate(index_shape):
        if dim is not None:
            out.append(Coupling((name(indices), a), (name(y), axis + a), Identity(dim)))
    return out


@register_rule("ConstantOfShape")
def _constant_of_shape(node: ir.Node, context: RuleContext) -> Result:
    """A filled tensor has no channels of its own: every axis may shrink with the
    group it feeds, its shape (constant or a readable Shape/Concat chain) being
    rewritten by the slicing pass. Consumers of one shared fill are coupled."""
    shape = node.inputs[0]
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs if v is not None))]
    if shape is not None and evaluate_target(shape, context) is not None:
        out.append(Unconstrained((name(node.outputs[0]),)))
    return out


@register_rule(
    "Constant",
    "Range",
    "EyeLike",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
)
def _constant(node: ir.Node, context: RuleContext) -> Result:
    # Generated values: their inputs are shapes/scalars; outputs are frozen by default.
    return [Unconstrained(tuple(name(v) for v in node.inputs if v is not None))]


def _split_sizes(node: ir.Node, context: RuleContext, total: int | None) -> list[int] | None:
    sizes = context.attribute(node, "split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = context.constant(node.inputs[1])
        sizes = None if constant is None else constant.tolist()
    if sizes is None and total is not None:
        count = len(node.outputs)
        if total % count == 0:
            sizes = [total // count] * count
    return None if sizes is None else [int(s) for s in sizes]


@register_rule("Split")
def _split(node: ir.Node, context: RuleContext) -> Result:
    x = node.inputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x)]
    axis = int(context.attribute(node, "axis", 0)) % len(shape)
    sizes = _split_sizes(node, context, shape[axis])
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    total = shape[axis]
    if sizes is None or total is None or sum(sizes) != total:
        return out  # the split axis stays unmapped, hence frozen
    offset = 0
    for output, size in zip(node.outputs, sizes, strict=True):
        for a, dim in enumerate(shape):
            if a == axis:
                out.append(Coupling((name(x), a), (name(output), a), Offset(total, size, -offset)))
            elif dim is not None:
                out.append(Coupling((name(x), a), (name(output), a), Identity(dim)))
        offset += size
    return out


@register_rule("Expand")
def _expand(node: ir.Node, context: RuleContext) -> Result:
    x, shape_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and shape_value is not None
    out: Result = [Unconstrained((name(shape_value),))]
    if context.constant(shape_value) is not None:
        return [*out, *broadcast_couplings([x], y, context)]
    # A run-time target spa can read: its literals are rewritten when sliced.
    entries = evaluate_target(shape_value, context)
    in_shape, out_shape = context.shape(x), context.shape(y)
    if entries is None or in_shape is None or out_shape is None or len(entries) != len(out_shape):
        reason = f"Expand '{node.name}' has a computed target shape spa cannot read"
        return [*out, Barrier(reason, values=(name(x), name(y)))]
    return [*out, *broadcast_couplings([x], y, context)]


@register_rule("Tile")
def _tile(node: ir.Node, context: RuleContext) -> Result:
    x, repeats_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and repeats_value is not None
    shape, repeats = context.shape(x), context.constant(repeats_value)
    if shape is None or repeats is None:
        return [
            Barrier(f"Tile '{node.name}' has computed repeats", values=(name(x), name(y))),
            Unconstrained((name(repeats_value),)),
        ]
    out: Result = [Unconstrained((name(repeats_value),))]
    for a, (dim, count) in enumerate(zip(shape, repeats.tolist(), strict=True)):
        if dim is not None:
            out.append(Coupling((name(x), a), (name(y), a), Tile(dim, int(count))))
    return out


@register_rule("LayerNormalization", "RMSNormalization")
@register_rule("SimplifiedLayerNormalization", "LayerNormalization", domain="com.microsoft")
def _layer_norm(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    axis = int(context.attribute(node, "axis", -1)) % len(shape)
    reason = f"{node.op_type} '{node.name}' normalises over axis {axis} (inexact)"
    out: Result = []
    for a, dim in enumerate(shape):
        if a >= axis:
            out.append(Barrier(reason, ((name(x), a), (name(y), a))))
        elif dim is not None:
            out.append(Coupling((name(x), a), (name(y), a), Identity(dim)))
    return out


@register_rule("Slice")
def _slice(node: ir.Node, context: RuleContext) -> Result:
    """Axes a Slice does not cut are identities; a cut axis stays frozen."""
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    in_shape, out_shape = context.shape(x), context.shape(y)
    if in_shape is None or out_shape is None:
        return [unknown_shapes(node, x, y)]
    rank = len(in_shape)
    axes_value = node.inputs[3] if len(node.inputs) > 3 else None
    if axes_value is not None:
        constant = context.constant(axes_value)
        if constant is None:
            return [Barrier(f"Slice '{node.name}' has computed axes", values=(name(x), name(y)))]
        cut = {int(a) % rank for a in constant.tolist()}
    else:
        starts = context.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        count = len(starts) if starts is not None else rank
        cut = set(range(count))
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    for axis, dim in enumerate(in_shape):
        if axis not in cut and dim is not None and out_shape[axis] == dim:
            out.append(Coupling((name(x), axis), (name(y), axis), Identity(dim)))
    return out
