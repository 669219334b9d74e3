"""Rules for elementwise ops: unary, and n-ary with numpy broadcasting.

Broadcasting couples an input axis with the output axis it aligns with (from
the right) only when the input's dim is not 1: a size-1 axis is broadcast,
carries no channels and is left free (a one-channel window of a group keeps
its channel, :func:`broadcast_couplings`). A parameter on a coupled axis (a bias ``[C, 1, 1]``) is
sliced with the group.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnx_ir as ir

from spa.analysis.index_maps import Identity
from spa.analysis.rules.registry import (
    Barrier,
    Coupling,
    RuleContext,
    Unconstrained,
    name,
    register_rule,
)
from spa.analysis.shape_exprs import sizes_read
from spa.model_io import FLOAT_TYPES

__all__ = ["broadcast_couplings", "unary_couplings"]

UNARY = (
    "Abs",
    "Acos",
    "Acosh",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Cosh",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "IsInf",
    "IsNaN",
    "LeakyRelu",
    "Log",
    "Mish",
    "Neg",
    "Not",
    "Reciprocal",
    "Relu",
    "Round",
    "Selu",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
)
#: What a Cast turns a size into when it becomes data: the float types and the FLOAT8 kinds.
_CAST_TO_FLOAT = FLOAT_TYPES | {
    onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ,
}  # fmt: skip
NARY = (
    "Add",
    "And",
    "BitShift",
    "Div",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Max",
    "Mean",
    "Min",
    "Mod",
    "Mul",
    "Or",
    "Pow",
    "PRelu",
    "Sub",
    "Sum",
    "Where",
    "Xor",
)


def unary_couplings(
    source: ir.Value, target: ir.Value, context: RuleContext
) -> list[Coupling | Barrier]:
    """Couple every axis of ``source`` with the same axis of ``target``."""
    shape = context.shape(source) or context.shape(target)
    if shape is None:
        return [Barrier("rank unknown (run shape inference)", values=(name(source), name(target)))]
    out: list[Coupling | Barrier] = []
    for axis, dim in enumerate(shape):
        if dim is None:
            continue
        out.append(Coupling((name(source), axis), (name(target), axis), Identity(dim)))
    return out


def broadcast_couplings(
    inputs: Sequence[ir.Value], output: ir.Value, context: RuleContext
) -> list[Coupling | Barrier | Unconstrained]:
    """Numpy broadcasting: couple non-1 input axes with the output axis they align to.
    A broadcast axis is left free: where it is a one-channel window of a group
    (FocalNet's gate, one channel split from a convolution's output, scales the
    context's channels), the plan keeps that channel (a member never loses its
    last channel) and the group's other channels may go."""
    out_shape = context.shape(output)
    shapes = [context.shape(value) for value in inputs]
    if out_shape is None or any(shape is None for shape in shapes):
        names = tuple(name(v) for v in (*inputs, output))
        return [Barrier("rank unknown (run shape inference)", values=names)]
    couplings: list[Coupling | Barrier | Unconstrained] = []
    rank = len(out_shape)
    for value, shape in zip(inputs, shapes, strict=True):
        assert shape is not None
        for axis, dim in enumerate(shape):
            out_axis = rank - len(shape) + axis
            out_dim = out_shape[out_axis]
            if dim == 1 and out_dim != 1:
                couplings.append(Unconstrained((), spaces=((name(value), axis),)))
                continue  # broadcast axis: no channels here
            size = dim if dim is not None else out_dim
            if size is None:
                continue  # symbolic (batch, sequence): never pruned
            couplings.append(
                Coupling((name(value), axis), (name(output), out_axis), Identity(size))
            )
    return couplings


@register_rule(*UNARY)
def _unary(node: ir.Node, context: RuleContext) -> list[Coupling | Barrier]:
    source, target = node.inputs[0], node.outputs[0]
    if source is None:
        return [Barrier(f"{node.op_type} '{node.name}' has no input")]
    couplings = unary_couplings(source, target, context)
    if node.op_type == "Cast" and int(context.attribute(node, "to", 0)) in _CAST_TO_FLOAT:
        # a size turned into data (RAFT's and TorchScript attention's 1 / sqrt(C) from
        # Shape): pruning that axis would change the value, so it stays whole
        for value_name, axis in sorted(sizes_read(source, context)):
            reason = f"Cast '{node.name}' reads the size of axis {axis} of '{value_name}' as data"
            couplings.append(Barrier(reason, spaces=((value_name, axis),)))
    # Dropout's optional mask output follows its input too.
    if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1].uses():
        couplings += unary_couplings(source, node.outputs[1], context)
    return couplings


@register_rule(*NARY)
def _nary(node: ir.Node, context: RuleContext) -> list[Coupling | Barrier | Unconstrained]:
    inputs = [value for value in node.inputs if value is not None]
    return broadcast_couplings(inputs, node.outputs[0], context)
