"""ONNX shape inference on an onnx-ir model, linear in its size.

onnx-ir's ``ShapeInferencePass`` hands ONNX a copy of the model with large
initializers turned into inputs, but checks each initializer's membership in
the graph inputs by scanning a list that grows with every initializer it
appends: quadratic in the initializer count (13 s of pure bookkeeping at
20,000 initializers, measured by ``models/bench_scaling.py``). This module does
the same with a set, and merges the inferred shapes and dtypes back by name
graph by graph, as that pass does, reading them from the inferred proto
rather than deserializing it into a second model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import onnx
import onnx_ir as ir

from spa.model_io import iter_graph_protos

__all__ = ["clear_inferred_shapes", "infer_shapes"]

logger = logging.getLogger(__name__)

#: Initializers larger than this are passed to ONNX as typed inputs without data.
_BIG_TENSOR_BYTES = 1000


def _proto_for_inference(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto whose large initializers are inputs without data;
    ``model`` is left as it was (values, initializers and inputs restored)."""
    graph = model.graph
    initializers = list(graph.initializers.values())
    original_inputs = list(graph.inputs)
    listed = {id(value) for value in original_inputs}
    held: dict[int, ir.TensorProtocol | None] = {}
    try:
        for value in initializers:
            tensor = value.const_value
            if tensor is not None:
                value.shape = value.shape if value.shape is not None else tensor.shape  # type: ignore[assignment]
                value.dtype = value.dtype if value.dtype is not None else tensor.dtype
            if id(value) not in listed:
                graph.inputs.append(value)
                listed.add(id(value))
            if tensor is None or tensor.nbytes > _BIG_TENSOR_BYTES:
                held[id(value)] = tensor
                value.const_value = None
                graph.initializers.pop(value.name or "")
        return ir.serde.serialize_model(model)
    finally:
        for value in initializers:
            if id(value) not in held:
                continue
            value.const_value = held[id(value)]
            if value.const_value is not None:
                graph.register_initializer(value)
            else:
                graph.initializers.add(value)
        graph.inputs.clear()
        graph.inputs.extend(original_inputs)


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}
    for value in (*graph.inputs, *graph.initializers.values()):
        if value.name:
            values[value.name] = value
    for node in graph:
        for value in node.outputs:
            if value.name:
                values[value.name] = value
    return values


def _ir_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """``graph`` and its bodies in the order :func:`spa.model_io.iter_graph_protos`
    walks the serialized proto (node order, then attribute order)."""
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _ir_graphs(attr.as_graph())
            elif attr.type == ir.AttributeType.GRAPHS:
                for body in attr.as_graphs():
                    yield from _ir_graphs(body)


def _inferred_types(graph: onnx.GraphProto) -> dict[str, tuple[ir.Shape | None, int]]:
    """Value name -> (shape or None, element type) of the tensors ONNX typed."""
    found: dict[str, tuple[ir.Shape | None, int]] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if not info.type.HasField("tensor_type"):
            continue
        tensor = info.type.tensor_type
        shape = None
        if tensor.HasField("shape"):
            shape = ir.Shape(
                [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tensor.shape.dim
                ]
            )
        found[info.name] = (shape, tensor.elem_type)
    return found


def _merge(model: ir.Model, inferred: onnx.ModelProto) -> bool:
    """Copy inferred shapes and dtypes onto ``model``'s values, graph by graph
    (read from the proto directly: deserializing it cost more than inference)."""
    modified = False
    pairs = zip(_ir_graphs(model.graph), iter_graph_protos(inferred.graph), strict=False)
    for original, result in pairs:
        found = _inferred_types(result)
        for name, value in _values_by_name(original).items():
            entry = found.get(name)
            if entry is None:
                continue
            shape, elem_type = entry
            if shape is not None and value.shape != shape:
                value.shape = shape
                modified = True
            if elem_type and value.dtype != ir.DataType(elem_type):
                value.dtype = ir.DataType(elem_type)
                modified = True
    return modified


def infer_shapes(model: ir.Model, *, strict_mode: bool = True, data_prop: bool = True) -> bool:
    """Infer shapes and dtypes in place (subgraphs included); True when any
    changed. When ONNX rejects the model the model is left unchanged (logged),
    as onnx-ir's pass does."""
    proto = _proto_for_inference(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(
            proto, check_type=True, strict_mode=strict_mode, data_prop=data_prop
        )
    except Exception as error:  # ONNX raises InferenceError and bare errors alike
        logger.info("shape inference failed (%s); the model is left unchanged", error)
        return False
    return _merge(model, inferred)


def clear_inferred_shapes(model: ir.Model, declared: set[str]) -> int:
    """Clear the shape of every intermediate value (bodies included) that the input
    model did not declare (``declared``: its value_info names); returns how many.

    ONNX Runtime fuses on shapes, and the shapes spa's inference leaves behind
    cost it fusions: where inference lost the link to ``sequence_length`` it
    names the dim ``unk__1``, and ORT can no longer prove that the two inputs of
    an Add agree; on MiniLM even correctly named shapes kept it from its
    attention/LayerNorm fusions. A MiniLM pruned by 25% ran 1.20x of dense with
    spa's inferred value_info and 1.33x without; the embedding-factorized one
    0.92x and 1.00x. ORT infers the shapes itself. The input's own value_info
    (an exporter's) is kept: removing it cost ORT fusions elsewhere
    (:class:`spa.passes.cleanup.InferShapesPass`)."""
    cleared = 0
    for graph in _ir_graphs(model.graph):
        interface = {id(value) for value in (*graph.inputs, *graph.outputs)}
        for node in graph:
            for value in node.outputs:
                if value.shape is None or id(value) in interface or value.name in declared:
                    continue
                value.shape = None
                cleared += 1
    return cleared
