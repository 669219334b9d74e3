"""Consumers of pruned channels: the weights that read a group's channels as inputs.

A *consumer* is a node whose data input carries the group's channels and whose
constant weight is sliced along its input-channel axis:

* ``MatMul(X, B)`` with ``B`` a 2-D initializer ``[K, N]`` (axis 0);
* ``Gemm(X, B)`` (``transA=0``), ``B`` ``[K, N]`` or ``[N, K]`` with ``transB=1``;
* ``Conv(X, W)`` with ``group=1``, ``W`` ``[O, C, *kernel]`` (axis 1).

Each is viewed as a matrix ``[C_in, columns]`` (a Conv's columns are
``O x kernel taps``, output-major) so that one least-squares formula serves all.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from spa.analysis.groups import Group, Member

__all__ = ["Consumer", "add_missing_biases", "consumers_of", "find_bias", "remove_zero_biases"]


@dataclasses.dataclass(frozen=True)
class Consumer:
    """One weight reading channels on its input axis ``axis``."""

    member: Member
    node: ir.Node
    weight: str
    axis: int
    data: str  # the activation whose channels the weight reads
    channel_axis: int  # that activation's channel axis (-1 for MatMul/Gemm, 1 for Conv)

    def matrix(self, array: np.ndarray) -> np.ndarray:
        """``array`` (the weight) as ``[C_in, columns]``."""
        moved = np.moveaxis(array, self.axis, 0)
        return moved.reshape(moved.shape[0], -1)

    def from_matrix(self, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
        moved_shape = np.moveaxis(like, self.axis, 0).shape
        return np.moveaxis(matrix.reshape(moved_shape), 0, self.axis).astype(like.dtype)

    def outputs_per_column(self, array: np.ndarray) -> np.ndarray:
        """Output channel of each matrix column (bias index)."""
        columns = self.matrix(array).shape[1]
        if self.node.op_type == "Conv":
            taps = int(np.prod(array.shape[2:])) if array.ndim > 2 else 1
            return np.arange(columns) // taps
        return np.arange(columns)


def _int_attribute(node: ir.Node, name: str, default: int) -> int:
    attribute = node.attributes.get(name)
    return default if attribute is None else int(attribute.value)


def _consumer(model: ir.Model, member: Member) -> Consumer | None:
    name, axis = member.space
    value = model.graph.initializers.get(name)
    if value is None or value.const_value is None:
        return None
    rank = len(value.const_value.shape)
    uses = list(value.uses())
    if len(uses) != 1:
        return None  # a weight shared by several nodes (tied) cannot follow one input
    for node, index in uses:
        data = node.inputs[0]
        if index != 1 or node.domain != "" or data is None or data.name is None:
            continue
        if node.op_type == "MatMul" and rank == 2 and axis == 0:
            return Consumer(member, node, name, 0, data.name, -1)
        if (
            node.op_type == "Gemm"
            and rank == 2
            and _int_attribute(node, "transA", 0) == 0
            and axis == _int_attribute(node, "transB", 0)
        ):
            return Consumer(member, node, name, axis, data.name, -1)
        if (
            node.op_type == "Conv"
            and axis == 1
            and rank >= 3
            and _int_attribute(node, "group", 1) == 1
        ):
            return Consumer(member, node, name, 1, data.name, 1)
    return None


def consumers_of(model: ir.Model, group: Group) -> list[Consumer]:
    """Every consumer weight among ``group``'s parameter members."""
    found = [_consumer(model, member) for member in group.parameters]
    return [consumer for consumer in found if consumer is not None]


def find_bias(model: ir.Model, node: ir.Node) -> str | None:
    """The 1-D initializer bias of a consumer node (Conv B, Gemm C, MatMul -> Add), if any."""
    columns = None
    bias: ir.Value | None
    if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = node.inputs[2]
    elif node.op_type == "MatMul":
        uses = list(node.outputs[0].uses())
        if len(uses) != 1 or uses[0][0].op_type != "Add" or uses[0][0].domain != "":
            return None
        add = uses[0][0]
        bias = add.inputs[1 - uses[0][1]]
    else:
        return None
    if bias is None or bias.name not in model.graph.initializers or bias.const_value is None:
        return None
    shape = tuple(bias.const_value.shape)
    weight = node.inputs[1]
    assert weight is not None and weight.const_value is not None
    w_shape = tuple(weight.const_value.shape)
    if node.op_type == "Conv":
        columns = w_shape[0]
    elif node.op_type == "Gemm":
        columns = w_shape[0] if _int_attribute(node, "transB", 0) else w_shape[1]
    else:
        columns = w_shape[1]
    return bias.name if shape == (columns,) else None


def add_missing_biases(model: ir.Model, nodes: list[ir.Node]) -> list[ir.Node]:
    """Give each consumer node without a bias a zero one; return those nodes."""
    created = []
    for node in nodes:
        if find_bias(model, node) is not None:
            continue
        weight = node.inputs[1]
        assert weight is not None and weight.const_value is not None
        array = weight.const_value.numpy()
        if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2 and node.inputs[2] is not None:
            _own_bias_copy(model, node)  # Identity of a shared constant: a private copy
            continue
        if node.op_type == "Conv":
            columns = array.shape[0]
        elif node.op_type == "Gemm":
            columns = array.shape[0] if _int_attribute(node, "transB", 0) else array.shape[1]
        else:
            columns = array.shape[1]
        name = f"{node.name or weight.name}.spa_bias"
        bias = ir.Value(
            name=name, const_value=ir.Tensor(np.zeros(columns, dtype=array.dtype), name=name)
        )
        bias.shape = ir.Shape([columns])
        bias.type = ir.TensorType(weight.const_value.dtype)
        model.graph.register_initializer(bias)
        if node.op_type in ("Conv", "Gemm"):
            node.resize_inputs(3)
            node.replace_input_with(2, bias)
        else:
            product = node.outputs[0]
            # unnamed nodes are told apart by their weight (ORT refuses duplicate names)
            add = ir.node("Add", [product, bias], name=f"{node.name or weight.name}.spa_bias_add")
            was_output = product.is_graph_output()
            product.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
            add.replace_input_with(0, product)
            result = add.outputs[0]
            result.type, result.shape = product.type, product.shape
            if was_output:  # the graph output keeps its name, now after the Add
                original = product.name
                product.name = f"{original}.unbiased"
                result.name = original
            else:
                result.name = f"{product.name}.biased"
            model.graph.insert_after(node, add)
        created.append(node)
    return created


def _own_bias_copy(model: ir.Model, node: ir.Node) -> None:
    """Replace a bias read through ``Identity`` of a constant (shared between
    layers by deduplication) with the node's own initializer, so it can change."""
    bias = node.inputs[2]
    producer = bias.producer() if bias is not None else None
    if bias is None or producer is None or producer.op_type != "Identity":
        return
    source = producer.inputs[0]
    if source is None or source.const_value is None or len(source.const_value.shape) != 1:
        return
    name = f"{node.name or bias.name}.spa_bias"
    array = source.const_value.numpy().copy()
    copy = ir.Value(name=name, const_value=ir.Tensor(array, name=name))
    copy.shape, copy.type = ir.Shape(array.shape), ir.TensorType(source.const_value.dtype)
    model.graph.register_initializer(copy)
    node.replace_input_with(2, copy)
    if not list(bias.uses()) and not bias.is_graph_output():
        model.graph.remove(producer, safe=True)


def _drop_initializer(model: ir.Model, value: ir.Value) -> None:
    if value.name is not None and value.name in model.graph.initializers and not list(value.uses()):
        model.graph.initializers.pop(value.name)


def _is_zero(value: ir.Value | None) -> bool:
    return (
        value is not None and value.const_value is not None and not value.const_value.numpy().any()
    )


def remove_zero_biases(model: ir.Model, nodes: list[ir.Node]) -> int:
    """Take out the biases :func:`add_missing_biases` gave ``nodes`` that stayed zero."""
    removed = 0
    for node in nodes:
        if node.op_type in ("Conv", "Gemm"):
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            if bias is not None and _is_zero(bias):
                node.resize_inputs(2)
                _drop_initializer(model, bias)
                removed += 1
            continue
        product = node.outputs[0]
        uses = list(product.uses())
        if len(uses) != 1 or not (uses[0][0].name or "").endswith(".spa_bias_add"):
            continue
        add = uses[0][0]
        bias = add.inputs[1]
        if bias is None or not _is_zero(bias):
            continue
        result = add.outputs[0]
        if result.is_graph_output():
            name = result.name
            result.replace_all_uses_with(product, replace_graph_outputs=True)
            result.name = f"{name}.spa_removed"
            product.name = name
        else:
            result.replace_all_uses_with(product)
        model.graph.remove(add, safe=True)
        _drop_initializer(model, bias)
        removed += 1
    return removed
