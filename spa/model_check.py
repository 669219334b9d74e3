"""Validation of a ModelProto on load, once, before anything else reads it.

:func:`check_model_proto` turns every defect that would otherwise surface as a
traceback deep inside NumPy, onnx-ir, ONNX shape inference or ONNX Runtime
into one :class:`~spa.errors.UserError` that names the tensor, node or value
and the fix. It checks, in every graph and subgraph:

- tensors: a known data type; dims non-negative and not absurdly large; the
  bytes held (``raw_data``, or the typed ``*_data`` field) match the shape;
  external ``length`` matches the shape;
- nodes: attributes carry the type their schema declares (default domain),
  ``group`` of Conv/ConvTranspose is positive, attributes hold one value;
- structure: graph inputs, initializers and node outputs are each defined
  once; every node input is defined (in this graph or an enclosing one);
  every graph output is defined; nodes are in topological order (no cycle);
- value infos: no negative dims (a -1, some exporters' dynamic dim, becomes a
  dim without a size in the loaded proto).

External-data locations and file lengths are checked by
:mod:`spa.model_io`, which knows the model's folder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import onnx
from onnx import TensorProto

from spa.errors import UserError

__all__ = ["MAX_ELEMENTS", "check_model_proto"]

#: A tensor with more elements than this is refused (2**40: 4 TiB of float32).
MAX_ELEMENTS = 2**40

_FIX = "re-export the model"
_KNOWN_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
_NIBBLE_TYPES = frozenset(
    getattr(TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(TensorProto, name)
)
#: The typed field each data type stores its values in (when not in raw_data).
_TYPED_FIELD: dict[int, str] = {
    TensorProto.FLOAT: "float_data",
    TensorProto.COMPLEX64: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.COMPLEX128: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.STRING: "string_data",
}
_CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})


def _dtype_name(data_type: int) -> str:
    try:
        return str(TensorProto.DataType.Name(data_type))
    except ValueError:
        return str(data_type)


def _expected_values(tensor: TensorProto, elements: int) -> int:
    """How many entries the typed field must hold for ``elements`` values."""
    if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        return 2 * elements
    if tensor.data_type in _NIBBLE_TYPES:
        return (elements + 1) // 2
    return elements


def _expected_bytes(tensor: TensorProto, elements: int) -> int:
    if tensor.data_type in _NIBBLE_TYPES:
        return (elements + 1) // 2
    size = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return elements * size


def _check_tensor(tensor: TensorProto, where: str) -> None:
    name = f"{where}tensor '{tensor.name}'"
    if tensor.data_type not in _KNOWN_TYPES:
        raise UserError(f"{name} has unknown data type {tensor.data_type}; {_FIX}")
    if any(dim < 0 for dim in tensor.dims):
        raise UserError(f"{name} has a negative dim in shape {list(tensor.dims)}; {_FIX}")
    elements = math.prod(tensor.dims)
    if elements > MAX_ELEMENTS:
        raise UserError(
            f"{name} has shape {list(tensor.dims)} ({elements} elements), more than any "
            f"real model holds; {_FIX}"
        )
    if tensor.data_type == TensorProto.STRING:
        if len(tensor.string_data) != elements:
            raise UserError(
                f"{name} holds {len(tensor.string_data)} strings for shape "
                f"{list(tensor.dims)} ({elements}); {_FIX}"
            )
        return
    if tensor.data_location == TensorProto.EXTERNAL:
        info = {entry.key: entry.value for entry in tensor.external_data}
        length = info.get("length")
        expected = _expected_bytes(tensor, elements)
        if length is not None and length.isdigit() and int(length) != expected:
            raise UserError(
                f"{name} ({_dtype_name(tensor.data_type)} {list(tensor.dims)}) needs "
                f"{expected} bytes but its external data length is {length}; {_FIX}"
            )
        return
    if tensor.HasField("raw_data"):
        expected = _expected_bytes(tensor, elements)
        if len(tensor.raw_data) != expected:
            raise UserError(
                f"{name} ({_dtype_name(tensor.data_type)} {list(tensor.dims)}) needs "
                f"{expected} bytes of raw_data but holds {len(tensor.raw_data)}; {_FIX}"
            )
        return
    field = _TYPED_FIELD.get(tensor.data_type, "int32_data")
    held = len(getattr(tensor, field))
    if held != _expected_values(tensor, elements):
        raise UserError(
            f"{name} ({_dtype_name(tensor.data_type)} {list(tensor.dims)}) needs "
            f"{_expected_values(tensor, elements)} values in {field} but holds {held}; {_FIX}"
        )


def _check_value_info(value: onnx.ValueInfoProto, where: str) -> None:
    if not value.type.HasField("tensor_type"):
        return
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in _KNOWN_TYPES | {TensorProto.UNDEFINED}:
        raise UserError(
            f"{where}value '{value.name}' has unknown element type {tensor_type.elem_type}; {_FIX}"
        )
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value == -1:
            # Paddle2ONNX and some older exporters write -1 for a dynamic dim (ONNX
            # Runtime reads it so): it becomes a dim without a size, as ONNX spells it.
            dim.ClearField("dim_value")
        elif dim.HasField("dim_value") and dim.dim_value < 0:
            raise UserError(
                f"{where}value '{value.name}' has negative dim {dim.dim_value}; {_FIX}"
            )


def _check_attributes(node: onnx.NodeProto, opset: int | None, where: str) -> None:
    label = f"{where}node '{node.name or node.op_type}' ({node.op_type})"
    schema = None
    if node.domain in ("", "ai.onnx") and opset is not None:
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except (onnx.defs.SchemaError, TypeError):  # TypeError: op type is not UTF-8
            raise UserError(
                f"{label}: '{node.op_type}' is not an ONNX operator at opset {opset}; "
                "fix the op type or the model's opset_import"
            ) from None
    if schema is not None:
        present = {attr.name for attr in node.attribute}
        for attr_name, declared_attr in schema.attributes.items():
            if declared_attr.required and attr_name not in present:
                raise UserError(f"{label}: required attribute '{attr_name}' is missing; {_FIX}")
    for attr in node.attribute:
        if schema is not None and attr.name in schema.attributes:
            declared = int(cast(Any, schema.attributes[attr.name].type))
            if attr.type != declared:
                raise UserError(
                    f"{label}: attribute '{attr.name}' is "
                    f"{onnx.AttributeProto.AttributeType.Name(attr.type)} but the operator "
                    f"declares {onnx.AttributeProto.AttributeType.Name(declared)}; {_FIX}"
                )
        if attr.type == onnx.AttributeProto.TENSOR:
            _check_tensor(attr.t, f"{label} attribute '{attr.name}': ")
        if node.op_type in _CONV_OPS and attr.name == "group" and attr.i <= 0:
            raise UserError(f"{label}: group={attr.i}; a Conv group must be >= 1, {_FIX}")


def _check_structure(graph: onnx.GraphProto, outer: frozenset[str], where: str) -> set[str]:
    """Each name defined once, every use defined, no cycle; returns the names defined."""
    defined: set[str] = set()
    producer: dict[str, int] = {}

    def define(name: str, what: str) -> None:
        if name in defined:
            raise UserError(f"{where}value '{name}' is defined twice (again as {what}); {_FIX}")
        defined.add(name)

    for value in graph.input:
        define(value.name, "a graph input")
    inputs = set(defined)
    initializers: set[str] = set()
    for tensor in graph.initializer:
        if tensor.name in initializers:
            raise UserError(f"{where}initializer '{tensor.name}' is defined twice; {_FIX}")
        initializers.add(tensor.name)
        if tensor.name not in inputs:  # an initializer may back a graph input
            define(tensor.name, "an initializer")
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                define(name, f"an output of node '{node.name or node.op_type}'")
                producer[name] = index
    visible = defined | outer
    computed = inputs | initializers | outer
    for node in graph.node:
        for name in node.input:
            if name and name not in visible:
                raise UserError(
                    f"{where}node '{node.name or node.op_type}' reads '{name}', which no "
                    f"node, input or initializer defines; {_FIX}"
                )
            if name and name not in computed:
                raise UserError(
                    f"{where}node '{node.name or node.op_type}' reads '{name}' before the node "
                    f"computing it (nodes must be in topological order, without cycles); {_FIX}"
                )
        computed.update(node.output)
    for value in graph.output:
        if value.name not in visible:
            raise UserError(f"{where}graph output '{value.name}' is never computed; {_FIX}")
    _check_acyclic(graph, producer, where)
    return defined


def _check_acyclic(graph: onnx.GraphProto, producer: dict[str, int], where: str) -> None:
    depends = [
        {producer[name] for name in node.input if name in producer} for node in graph.node
    ]
    users: list[list[int]] = [[] for _ in graph.node]
    for index, sources in enumerate(depends):
        for source in sources:
            users[source].append(index)
    waiting = [len(sources) for sources in depends]
    ready = [index for index, count in enumerate(waiting) if count == 0]
    done = 0
    while ready:
        index = ready.pop()
        done += 1
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if done != len(graph.node):
        stuck = next(graph.node[i] for i, count in enumerate(waiting) if count > 0)
        raise UserError(
            f"{where}the nodes form a cycle (through node '{stuck.name or stuck.op_type}'); "
            f"{_FIX}"
        )


def _check_graph(graph: onnx.GraphProto, opset: int | None, outer: frozenset[str], depth: int) -> None:
    where = f"graph '{graph.name}': " if depth else ""
    for tensor in graph.initializer:
        _check_tensor(tensor, where)
    for value in _value_infos(graph):
        _check_value_info(value, where)
    defined = _check_structure(graph, outer, where)
    inner = outer | defined
    for node in graph.node:
        _check_attributes(node, opset, where)
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                _check_graph(sub, opset, inner, depth + 1)


def _value_infos(graph: onnx.GraphProto) -> Iterable[onnx.ValueInfoProto]:
    yield from graph.input
    yield from graph.output
    yield from graph.value_info


def _subgraphs(attr: onnx.AttributeProto) -> Iterable[onnx.GraphProto]:
    if attr.HasField("g"):
        yield attr.g
    yield from attr.graphs


def check_model_proto(proto: onnx.ModelProto) -> None:
    """Raise a one-line UserError for the first defect found in ``proto`` (see module doc)."""
    opset = next(
        (entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")),
        None,
    )
    if opset is None and any(node.domain in ("", "ai.onnx") for node in proto.graph.node):
        raise UserError(
            "the model uses ONNX operators but imports no ai.onnx opset; add one to "
            f"opset_import or {_FIX}"
        )
    if opset is not None and opset <= 0:
        raise UserError(f"the model imports ai.onnx opset {opset}; {_FIX}")
    try:
        _check_graph(proto.graph, opset, frozenset(), 0)
    except RecursionError:
        raise UserError(f"the model nests subgraphs too deeply to read; {_FIX}") from None
