"""Rules for layers with parameters: Conv, ConvTranspose, Gemm, MatMul,
normalisations and pooling.
"""

from __future__ import annotations

import onnx_ir as ir

from spa.analysis.index_maps import Block, Identity, IndexMap, Tile
from spa.analysis.rules.elementwise import broadcast_couplings
from spa.analysis.rules.registry import (
    Barrier,
    Coupling,
    RuleContext,
    Unconstrained,
    name,
    register_rule,
    unknown_shapes,
)

__all__: list[str] = []

Result = list[Coupling | Barrier | Unconstrained]


def _identity(a: tuple[str, int], b: tuple[str, int], size: int | None) -> Result:
    return [] if size is None else [Coupling(a, b, Identity(size))]


@register_rule("Conv")
def _conv(node: ir.Node, context: RuleContext) -> Result:
    x, w = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    assert x is not None and w is not None
    w_shape, y_shape = context.shape(w), context.shape(y)
    if w_shape is None or y_shape is None:
        return [unknown_shapes(node, x, y)]
    group = int(context.attribute(node, "group", 1))
    c_out, c_in_per_group = w_shape[0], w_shape[1]
    out: Result = _identity((name(y), 0), (name(x), 0), y_shape[0])
    out += _identity((name(w), 0), (name(y), 1), c_out)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        out += _identity((name(w), 0), (name(node.inputs[2]), 0), c_out)
    if group == 1:
        out += _identity((name(x), 1), (name(w), 1), c_in_per_group)
    elif c_in_per_group == 1 and c_out is not None and c_out % group == 0:
        # depthwise (with a channel multiplier): input channel c owns outputs c*m .. c*m+m-1;
        # ``group`` follows the input's channel count (sized_attributes)
        multiplier = c_out // group
        index_map = Identity(group) if multiplier == 1 else Block(group, multiplier)
        out.append(Coupling((name(x), 1), (name(y), 1), index_map))
    elif c_out is not None and c_in_per_group is not None and c_out % group == 0:
        # grouped: prune the same positions in every group, so the group count stays
        out.append(Coupling((name(w), 1), (name(x), 1), Tile(c_in_per_group, group)))
        per_group = (f"{node.name or id(node)}/out_per_group", 0)
        out.append(Coupling(per_group, (name(w), 0), Tile(c_out // group, group)))
    else:
        spaces = ((name(x), 1), (name(y), 1), (name(w), 0), (name(w), 1))
        out.append(Barrier(f"Conv '{node.name}' has group={group} and C_out={c_out}", spaces))
    return out


@register_rule("ConvTranspose")
def _conv_transpose(node: ir.Node, context: RuleContext) -> Result:
    """Weight ``[C_in, C_out/group, k...]``. Grouped: the same positions go in
    every group; one input channel per group (depthwise): input channel c owns
    outputs ``c*m .. c*m+m-1`` and ``group`` follows the input channels."""
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and w is not None
    w_shape = context.shape(w)
    group = int(context.attribute(node, "group", 1))
    c_in = w_shape[0] if w_shape is not None else None
    per_group_out = w_shape[1] if w_shape is not None else None
    if c_in is None or per_group_out is None or c_in % group:
        return [
            Barrier(
                f"ConvTranspose '{node.name}' has group={group}", values=(name(x), name(y), name(w))
            )
        ]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out: Result = _identity((name(x), 1), (name(w), 0), c_in)
    c_out = group * per_group_out
    shape = context.shape(y)
    out += _identity((name(y), 0), (name(x), 0), shape[0] if shape else None)
    if group == 1:
        out += _identity((name(w), 1), (name(y), 1), per_group_out)
    elif c_in == group:
        index_map = Identity(group) if per_group_out == 1 else Block(group, per_group_out)
        out.append(Coupling((name(x), 1), (name(y), 1), index_map))
    else:
        per_group_in = (f"{node.name or id(node)}/in_per_group", 0)
        out.append(Coupling(per_group_in, (name(w), 0), Tile(c_in // group, group)))
        out.append(Coupling((name(w), 1), (name(y), 1), Tile(per_group_out, group)))
    if bias is not None:
        out += _identity((name(y), 1), (name(bias), 0), c_out)
    return out


@register_rule("Gemm")
def _gemm(node: ir.Node, context: RuleContext) -> Result:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert a is not None and b is not None
    a_shape, b_shape = context.shape(a), context.shape(b)
    if a_shape is None or b_shape is None:
        return [unknown_shapes(node, a, b, y)]
    trans_a = int(context.attribute(node, "transA", 0))
    trans_b = int(context.attribute(node, "transB", 0))
    a_k, a_m = (0, 1) if trans_a else (1, 0)
    b_k, b_n = (1, 0) if trans_b else (0, 1)
    out: Result = _identity((name(a), a_k), (name(b), b_k), b_shape[b_k])
    out += _identity((name(b), b_n), (name(y), 1), b_shape[b_n])
    out += _identity((name(y), 0), (name(a), a_m), a_shape[a_m])
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        out += broadcast_couplings([node.inputs[2]], y, context)
    return out


@register_rule("MatMul")
def _matmul(node: ir.Node, context: RuleContext) -> Result:
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert a is not None and b is not None
    a_shape, b_shape, y_shape = context.shape(a), context.shape(b), context.shape(y)
    if (
        a_shape is None
        or b_shape is None
        or y_shape is None
        or len(a_shape) < 2
        or len(b_shape) < 2
    ):
        return [
            Barrier(
                f"MatMul '{node.name}' has unknown or 1-D shapes",
                values=(name(a), name(b), name(y)),
            )
        ]
    rank = len(y_shape)
    out: Result = _identity(
        (name(a), len(a_shape) - 1), (name(b), len(b_shape) - 2), a_shape[-1] or b_shape[-2]
    )
    out += _identity((name(b), len(b_shape) - 1), (name(y), rank - 1), b_shape[-1])
    out += _identity((name(a), len(a_shape) - 2), (name(y), rank - 2), a_shape[-2])
    for value, shape in ((a, a_shape), (b, b_shape)):
        for axis in range(len(shape) - 2):
            out_axis = rank - len(shape) + axis
            if shape[axis] != 1 or y_shape[out_axis] == 1:
                out += _identity((name(value), axis), (name(y), out_axis), y_shape[out_axis])
    return out


@register_rule("BatchNormalization", "InstanceNormalization")
def _channel_norm(node: ir.Node, context: RuleContext) -> Result:
    """Per-channel normalisation: axis 1 carries the scale and bias.

    BatchNormalization (inference) is elementwise per channel, so every axis
    passes through. InstanceNormalization reduces over axes 2..: those axes
    are barriers, as LayerNormalization's reduced axes are.
    """
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    training = int(context.attribute(node, "training_mode", 0))
    if training:
        return [
            Barrier(
                f"BatchNormalization '{node.name}' is in training mode", values=(name(x), name(y))
            )
        ]
    out: Result = []
    for axis, dim in enumerate(shape):
        if node.op_type == "InstanceNormalization" and axis >= 2:
            # Its statistics mix every element of axes 2.. (GroupNorm(1, C) exported as
            # Reshape -> InstanceNormalization -> Reshape folds the channels into axis 2).
            reason = f"InstanceNormalization '{node.name}' normalises over axis {axis} (inexact)"
            out.append(Barrier(reason, ((name(x), axis), (name(y), axis))))
            continue
        out += _identity((name(x), axis), (name(y), axis), dim)
    for parameter in node.inputs[1:]:
        if parameter is not None:
            out += _identity((name(parameter), 0), (name(y), 1), shape[1])
    return out


@register_rule(
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "GlobalLpPool",
    "LRN",
)
def _pool(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(y)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    out = _identity((name(x), 0), (name(y), 0), shape[0])
    if node.op_type == "LRN":
        # LRN normalises across neighbouring channels: removing one changes the others.
        return [
            *out,
            Barrier(f"LRN '{node.name}' mixes neighbouring channels", ((name(x), 1), (name(y), 1))),
        ]
    return out + _identity((name(x), 1), (name(y), 1), shape[1])


_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_hidden_space(node: ir.Node) -> tuple[str, int]:
    """The virtual channel space of an LSTM/GRU/RNN's hidden units."""
    return (f"{node.name or id(node)}/hidden", 0)


@register_rule("LSTM", "GRU", "RNN")
def _recurrent(node: ir.Node, context: RuleContext) -> Result:
    """Hidden units: gate blocks of W/R/B (Tile over gates), R's columns, states.

    Exact under masking with the default activations: a unit whose rows and
    columns are zero keeps a zero state. Other activations and ``layout=1``
    are barriers.
    """
    values = [v for v in (*node.inputs, *node.outputs) if v is not None]
    hidden = int(context.attribute(node, "hidden_size", 0))
    gates = _GATES[node.op_type]
    w, r = node.inputs[1], node.inputs[2]
    w_shape = context.shape(w)
    if (
        context.attribute(node, "activations") is not None
        or int(context.attribute(node, "layout", 0)) != 0
        or w is None
        or r is None
        or w_shape is None
        or hidden <= 0
    ):
        reason = f"{node.op_type} '{node.name}' has a layout or activations spa does not slice"
        return [Barrier(reason, values=tuple(name(v) for v in values))]
    space = recurrent_hidden_space(node)
    out: Result = [
        Coupling(space, (name(w), 1), Tile(hidden, gates)),
        Coupling(space, (name(r), 1), Tile(hidden, gates)),
        Coupling(space, (name(r), 2), Identity(hidden)),
    ]
    optional: dict[int, IndexMap] = {
        3: Tile(hidden, 2 * gates),
        5: Identity(hidden),
        6: Identity(hidden),
        7: Tile(hidden, 3),
    }
    for index, index_map in optional.items():
        value = node.inputs[index] if len(node.inputs) > index else None
        if value is not None:
            out.append(Coupling(space, (name(value), 2 if index in (5, 6) else 1), index_map))
    x = node.inputs[0]
    if x is not None and w_shape[2] is not None:
        out.append(Coupling((name(x), 2), (name(w), 2), Identity(w_shape[2])))
    for position, axis in ((0, 3), (1, 2), (2, 2)):
        if len(node.outputs) > position and node.outputs[position].name:
            out.append(Coupling(space, (name(node.outputs[position]), axis), Identity(hidden)))
    directions = tuple(
        (name(v), 0)
        for v in (w, r, *(node.inputs[i] for i in (3, 5, 6, 7) if len(node.inputs) > i))
        if v is not None
    )
    out.append(Barrier(f"{node.op_type} '{node.name}' direction axis", directions))
    return out
