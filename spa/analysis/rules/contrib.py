"""Rules for ONNX Runtime contrib ops (domain ``com.microsoft``).

Heads inside a fused op are not an axis of any value, so the rule names a
*virtual* space ``("<node name>/heads", 0)`` of size ``num_heads``; the slicing
pass rewrites ``num_heads`` from that space's new size.
"""

from __future__ import annotations

import onnx_ir as ir

from spa.analysis.index_maps import Block, Identity, Offset
from spa.analysis.rules.elementwise import broadcast_couplings, unary_couplings
from spa.analysis.rules.registry import (
    Barrier,
    Coupling,
    RuleContext,
    Unconstrained,
    name,
    register_rule,
    unknown_shapes,
)

__all__ = ["heads_space"]

MS = "com.microsoft"
Result = list[Coupling | Barrier | Unconstrained]


def heads_space(node: ir.Node) -> tuple[str, int]:
    """The virtual channel space of a fused attention node's heads."""
    return (f"{node.name or id(node)}/heads", 0)


@register_rule("Gelu", "QuickGelu", "FastGelu", "BiasGelu", domain=MS)
def _gelu(node: ir.Node, context: RuleContext) -> Result:
    inputs = [value for value in node.inputs if value is not None]
    if len(inputs) == 1:
        return [*unary_couplings(inputs[0], node.outputs[0], context)]
    return [*broadcast_couplings(inputs, node.outputs[0], context)]


@register_rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def _skip_layer_norm(node: ir.Node, context: RuleContext) -> Result:
    x, skip, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and skip is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    last = len(shape) - 1
    out: Result = [
        Barrier(
            f"{node.op_type} '{node.name}' normalises over axis {last} (inexact)",
            ((name(x), last), (name(skip), last), (name(y), last)),
        )
    ]
    same_rank = [v for v in node.outputs[1:] if v.shape is not None and len(v.shape) == len(shape)]
    for axis, dim in enumerate(shape[:-1]):
        if dim is None:
            continue
        out.append(Coupling((name(x), axis), (name(y), axis), Identity(dim)))
        out.append(Coupling((name(skip), axis), (name(y), axis), Identity(dim)))
        for extra in same_rank:
            out.append(Coupling((name(x), axis), (name(extra), axis), Identity(dim)))
    return out


@register_rule("Attention", domain=MS)
def _attention(node: ir.Node, context: RuleContext) -> Result:
    """Packed QKV weights ``[hidden, 3*hidden]``: heads couple q, k and v columns."""
    x, weights = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    assert x is not None and weights is not None
    heads = int(context.attribute(node, "num_heads", 0))
    w_shape, y_shape = context.shape(weights), context.shape(y)
    unsupported = (
        context.attribute(node, "qkv_hidden_sizes") is not None
        or (len(node.outputs) > 1 and node.outputs[1].uses())
        or (len(node.inputs) > 4 and node.inputs[4] is not None)  # past state
    )
    packed = w_shape[1] if w_shape is not None else None
    if (
        w_shape is None
        or y_shape is None
        or w_shape[0] is None
        or packed is None
        or heads <= 0
        or unsupported
        or packed % 3
    ):
        return [
            Barrier(
                f"Attention '{node.name}' has a layout spa does not slice",
                values=(name(x), name(y), name(weights)),
            )
        ]
    hidden = packed // 3
    head_dim = hidden // heads
    space = heads_space(node)
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[3:] if v is not None))]
    out.append(Coupling((name(x), len(y_shape) - 1), (name(weights), 0), Identity(w_shape[0])))
    for axis, dim in enumerate(y_shape[:-1]):
        if dim is not None:
            out.append(Coupling((name(x), axis), (name(y), axis), Identity(dim)))
    out.append(Coupling(space, (name(y), len(y_shape) - 1), Block(heads, head_dim)))
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    for part in range(3):
        part_space = (f"{space[0]}/{'qkv'[part]}", 0)
        out.append(Coupling(space, part_space, Block(heads, head_dim)))
        out.append(
            Coupling(part_space, (name(weights), 1), Offset(hidden, 3 * hidden, part * hidden))
        )
        if bias is not None:
            out.append(
                Coupling(part_space, (name(bias), 0), Offset(hidden, 3 * hidden, part * hidden))
            )
    return out


@register_rule("MatMulNBits", domain=MS)
def _matmul_nbits(node: ir.Node, context: RuleContext) -> Result:
    """Output columns N are sliced (B's first axis, with their scales and zero
    points, per docs/formats.md); K is packed in blocks and stays frozen."""
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert a is not None and b is not None
    a_shape, b_shape, y_shape = context.shape(a), context.shape(b), context.shape(y)
    columns = int(context.attribute(node, "N", 0))
    if a_shape is None or b_shape is None or y_shape is None or b_shape[0] != columns:
        return [unknown_shapes(node, a, b, y)]
    last = len(y_shape) - 1
    block = int(context.attribute(node, "block_size", 0))
    reason = f"MatMulNBits '{node.name}' packs K in blocks of {block}"
    out: Result = [
        Barrier(reason, ((name(a), last), *((name(b), axis) for axis in range(1, len(b_shape))))),
        Coupling((name(b), 0), (name(y), last), Identity(columns)),
    ]
    out += [
        Coupling((name(a), axis), (name(y), axis), Identity(dim))
        for axis, dim in enumerate(a_shape[:-1])
        if dim is not None
    ]
    for index in (2, 3, 5):  # scales, zero_points, bias: one row of values per column
        value = node.inputs[index] if len(node.inputs) > index else None
        shape = context.shape(value)
        if value is None:
            continue
        if shape is None or not shape or shape[0] is None or shape[0] % columns:
            what = f"{reason} and a '{value.name}' spa does not slice"
            out.append(Barrier(what, ((name(y), last),)))
            continue
        per_column = shape[0] // columns
        index_map = Identity(columns) if per_column == 1 else Block(columns, per_column)
        out.append(Coupling((name(b), 0), (name(value), 0), index_map))
        if len(shape) > 1:
            out.append(Barrier(reason, tuple((name(value), axis) for axis in range(1, len(shape)))))
    if len(node.inputs) > 4 and node.inputs[4] is not None:
        out.append(Unconstrained((name(node.inputs[4]),)))  # g_idx: along K
    return out
