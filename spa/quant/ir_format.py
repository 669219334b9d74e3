"""Building and reading the quantized forms in onnx-ir (layouts: ``docs/formats.md``).

* :func:`matmulnbits_node` / :func:`read_matmulnbits`: ``com.microsoft.MatMulNBits``;
* :func:`dequantize_node` / :func:`read_dequantize`: block ``DequantizeLinear``
  (opset 21, ``axis=0``), whose output feeds ``MatMul``.

Readers return ``(QuantizedWeight, None)`` or ``(None, reason)``; they never raise
on a model they cannot read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.quant.blockwise import QuantizedWeight
from spa.quant.packing import (
    MatMulNBitsArrays,
    QDQArrays,
    pack_matmulnbits,
    pack_qdq,
    unpack_matmulnbits,
    unpack_qdq,
)

__all__ = [
    "MS_DOMAIN",
    "QuantDecision",
    "add_initializer",
    "default_opset",
    "dequantize_node",
    "holding_graph",
    "matmulnbits_node",
    "op_key",
    "read_dequantize",
    "read_matmulnbits",
    "remove_initializer_if_unused",
    "replace_node",
    "unique_name",
]

MS_DOMAIN = "com.microsoft"
_QDQ_TYPES = {
    "INT4": ir.DataType.INT4,
    "UINT4": ir.DataType.UINT4,
    "INT8": ir.DataType.INT8,
    "UINT8": ir.DataType.UINT8,
}
_QDQ_NAMES = {value: key for key, value in _QDQ_TYPES.items()}


def unique_name(graph: ir.Graph, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... when an initializer already has that name."""
    name, index = base, 0
    while name in graph.initializers:
        index += 1
        name = f"{base}_{index}"
    return name


def add_initializer(graph: ir.Graph, base: str, tensor: ir.TensorProtocol) -> ir.Value:
    """Register ``tensor`` as a new initializer named after ``base`` (made unique)."""
    name = unique_name(graph, base)
    tensor.name = name
    value = ir.Value(
        name=name,
        const_value=tensor,
        shape=ir.Shape(tuple(int(d) for d in tensor.shape.numpy())),
        type=ir.TensorType(tensor.dtype),
    )
    graph.register_initializer(value)
    return value


def _array_tensor(array: np.ndarray) -> ir.Tensor:
    return ir.Tensor(np.ascontiguousarray(array))


def matmulnbits_node(
    graph: ir.Graph, activation: ir.Value, weight: QuantizedWeight, base: str, name: str
) -> tuple[ir.Node, int]:
    """A MatMulNBits node (not yet inserted) and the bytes of its new initializers."""
    arrays = pack_matmulnbits(weight)
    inputs = [
        activation,
        add_initializer(graph, f"{base}_q{weight.bits}", _array_tensor(arrays.b)),
        add_initializer(graph, f"{base}_scales", _array_tensor(arrays.scales)),
    ]
    size = arrays.b.nbytes + arrays.scales.nbytes
    if arrays.zero_points is not None:
        inputs.append(
            add_initializer(graph, f"{base}_zero_points", _array_tensor(arrays.zero_points))
        )
        size += arrays.zero_points.nbytes
    attributes = {"K": arrays.k, "N": arrays.n, "bits": arrays.bits, "block_size": arrays.block}
    node = ir.node("MatMulNBits", inputs, attributes, domain=MS_DOMAIN, name=name)
    return node, size


def _qdq_tensor(stored: np.ndarray, x_type: str, shape: tuple[int, ...]) -> ir.TensorProtocol:
    dtype = _QDQ_TYPES[x_type]
    if x_type.endswith("4"):
        return ir.PackedTensor(np.ascontiguousarray(stored, dtype=np.uint8), dtype, shape=shape)
    return ir.Tensor(np.ascontiguousarray(stored).reshape(shape), dtype=dtype)


def dequantize_node(
    graph: ir.Graph, weight: QuantizedWeight, base: str, name: str
) -> tuple[ir.Node, int]:
    """A block DequantizeLinear node producing ``W[K, N]`` and its initializers' bytes."""
    arrays = pack_qdq(weight)
    inputs = [
        add_initializer(
            graph, f"{base}_q{weight.bits}", _qdq_tensor(arrays.x, arrays.x_type, arrays.shape)
        ),
        add_initializer(graph, f"{base}_scales", _array_tensor(arrays.scale)),
    ]
    size = arrays.x.nbytes + arrays.scale.nbytes
    if arrays.zero_point is not None:
        zero = _qdq_tensor(arrays.zero_point, arrays.x_type, arrays.scale.shape)
        inputs.append(add_initializer(graph, f"{base}_zero_points", zero))
        size += arrays.zero_point.nbytes
    attributes = {"axis": 0, "block_size": weight.block}
    node = ir.node("DequantizeLinear", inputs, attributes, name=name)
    return node, size


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def read_matmulnbits(node: ir.Node) -> tuple[QuantizedWeight | None, str]:
    """The quantized weight of a MatMulNBits node, or a reason it cannot be read."""
    attributes = node.attributes
    bits = attributes.get_int("bits", 4)
    if bits not in (4, 8):
        return None, f"MatMulNBits with bits={bits} (spa reads 4 and 8)"
    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    if inputs[4] is not None or inputs[5] is not None:
        return None, "MatMulNBits with g_idx or bias inputs is not converted"
    b, scales = _constant(inputs[1]), _constant(inputs[2])
    if b is None or scales is None:
        return None, "MatMulNBits B/scales are not constant initializers"
    zero = None
    if inputs[3] is not None:
        zero = _constant(inputs[3])
        if zero is None or zero.dtype != np.uint8:
            return None, "MatMulNBits zero_points are not constant uint8"
    arrays = MatMulNBitsArrays(
        b, scales, zero, attributes.get_int("K", 0), attributes.get_int("N", 0), bits,
        attributes.get_int("block_size", 0),
    )  # fmt: skip
    return unpack_matmulnbits(arrays), ""


def read_dequantize(node: ir.Node) -> tuple[QuantizedWeight | None, str]:
    """The quantized weight of a block DequantizeLinear (axis 0), or a reason."""
    attributes = node.attributes
    block = attributes.get_int("block_size", 0)
    axis = attributes.get_int("axis", 1)
    x = node.inputs[0]
    if x is None or x.const_value is None or x.is_graph_input():
        return None, "DequantizeLinear input is not a constant initializer"
    if block <= 0 or axis != 0 or len(x.const_value.shape) != 2:
        return (
            None,
            f"DequantizeLinear is not block-wise along axis 0 of a 2-D weight (axis={axis}, block_size={block})",
        )
    x_type = _QDQ_NAMES.get(x.const_value.dtype)
    if x_type is None:
        return None, f"DequantizeLinear of {x.const_value.dtype} (spa reads INT4/UINT4/INT8/UINT8)"
    scale = _constant(node.inputs[1])
    zero_value = node.inputs[2] if len(node.inputs) > 2 else None
    if scale is None or (zero_value is not None and zero_value.const_value is None):
        return None, "DequantizeLinear scale/zero point are not constant"
    rows, cols = x.const_value.shape.numpy()
    shape = (int(rows), int(cols))
    stored = _stored(x.const_value, x_type)
    zero = None if zero_value is None else _stored(zero_value.const_value, x_type)  # type: ignore[arg-type]
    return unpack_qdq(QDQArrays(stored, scale, zero, x_type, shape, block)), ""


def _stored(tensor: ir.TensorProtocol, x_type: str) -> np.ndarray:
    if x_type.endswith("4"):
        return np.frombuffer(tensor.tobytes(), dtype=np.uint8)
    return tensor.numpy().view(np.int8 if x_type == "INT8" else np.uint8)


@dataclasses.dataclass(frozen=True)
class QuantDecision:
    """What happened to one node: ``action`` is ``quantized``, ``converted`` or ``skipped``."""

    node: str
    op_type: str
    action: str
    reason: str = ""
    weight: str = ""
    k: int = 0
    n: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def replace_node(graph: ir.Graph, old: ir.Node, new_nodes: list[ir.Node]) -> None:
    """Insert ``new_nodes`` before ``old``; the last one's output takes over ``old``'s output."""
    old_value, new_value = old.outputs[0], new_nodes[-1].outputs[0]
    graph.insert_before(old, new_nodes)
    new_value.shape, new_value.type = old_value.shape, old_value.type
    name = old_value.name
    old_value.replace_all_uses_with(new_value, replace_graph_outputs=True)
    graph.remove(old, safe=True)
    new_value.name = name


def holding_graph(item: ir.Node | ir.Value, default: ir.Graph) -> ir.Graph:
    """The graph that holds ``item`` (an If/Loop/Scan body, say), else ``default``."""
    owner = item.graph
    return owner if isinstance(owner, ir.Graph) else default


def remove_initializer_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    name = value.name
    if name and name in graph.initializers and not value.uses() and not value.is_graph_output():
        graph.initializers.pop(name)


def default_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


def op_key(node: ir.Node) -> tuple[str, str]:
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return domain, node.op_type
