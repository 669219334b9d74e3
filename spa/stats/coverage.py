"""Multiply-accumulates of the weighted layers (MatMul/Gemm/Conv, LSTM/GRU/RNN), from
(inferred) shapes.

Symbolic dimensions count as 1, so the numbers are per sample at the smallest
shape; they are used only as shares (how much of the compute is covered).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import onnx

from spa.model_io import iter_graph_protos
from spa.stats.shape_facts import SPA_DOMAIN, SPA_MATMULS

__all__ = [
    "RECURRENT_OPS",
    "WEIGHTED_OPS",
    "covered_share",
    "mac_coverage",
    "node_macs",
    "set_input_shapes",
    "value_shapes",
    "value_shapes_and_types",
    "weight_coverage",
]

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


def value_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Value name -> shape (symbolic dims as 1) after ONNX shape inference."""
    return value_shapes_and_types(model)[0]


def value_shapes_and_types(model: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    """Value name -> shape (symbolic dims as 1), and -> element type (TensorProto
    data type), from one run of ONNX shape inference; where a weighted layer
    reads or writes a dim ONNX left unknown (not one of the graph inputs' named
    dims), from :func:`spa.stats.shape_facts.infer_shapes` (ORT's symbolic
    inference, else one ORT run): TorchScript's GroupNorm restores its input's
    shape through ``Reshape(x, Shape(input))``, and ONNX's unknown dims, counted
    as 1, had made a ResNetV2-BiT's convolutions after its stem 0.1 % of its MACs."""
    inferred = model
    # data_prop: shapes computed by Constant/Shape arithmetic (a Reshape's target, the
    # axes input of opset 18+ reductions and slices) become concrete instead of symbolic.
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=data_prop)
            break
        except Exception as error:  # inference may reject custom domains; shapes stay partial
            logger.debug("shape inference (data_prop=%s) failed: %s", data_prop, error)
    named = {d.dim_param for value in model.graph.input for d in value.type.tensor_type.shape.dim if d.dim_param}
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    unknown: set[str] = set()
    for graph in iter_graph_protos(inferred.graph):  # If/Loop/Scan bodies too
        for tensor in graph.initializer:
            shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
            types[tensor.name] = tensor.data_type
        for info in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = info.type.tensor_type
            types[info.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                dims = tensor_type.shape.dim
                shapes[info.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else 1 for d in dims)
                if any(not d.HasField("dim_value") and d.dim_param not in named for d in dims):
                    unknown.add(info.name)
    if any(name in unknown for node in _weighted_layers(inferred) for name in (*node.input, *node.output)):
        from spa.stats.shape_facts import infer_shapes, known_shape

        found, _ = infer_shapes(model)
        for name in unknown:
            shape = known_shape(found, name)
            if shape is not None:
                shapes[name] = shape
    return shapes, types


def _weighted_layers(model: onnx.ModelProto) -> Iterable[onnx.NodeProto]:
    for graph in iter_graph_protos(model.graph):
        for node in graph.node:
            if node.op_type in WEIGHTED_OPS:
                yield node


def set_input_shapes(model: onnx.ModelProto, sample_shapes: Mapping[str, Shape]) -> None:
    """Give the graph inputs named in ``sample_shapes`` those concrete shapes and drop
    ``value_info``, in place, so that shape inference starts afresh from them."""
    for value in model.graph.input:
        if value.name in sample_shapes:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for size in sample_shapes[value.name]:
                shape.dim.add().dim_value = int(size)
    del model.graph.value_info[:]


#: Recurrent ops counted as weighted layers: W (input 1) and R (input 2) per step.
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
#: Standard ops whose constant weight input makes them weighted layers.
WEIGHTED_OPS = frozenset({"MatMul", "Gemm", "Conv"}) | RECURRENT_OPS


def node_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int:
    """MACs of one weighted layer: MatMul/Gemm/Conv/MatMulNBits (or spa matmul), or an
    LSTM/GRU/RNN (``seq * batch * (prod(W) + prod(R))``); 0 when shapes are unknown."""
    inputs = [shapes.get(name) for name in node.input]
    output = shapes.get(node.output[0]) if node.output else None
    if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx"):
        x, w, r = (inputs + [None] * 3)[:3]
        if not (x and w and r) or len(x) != 3:
            return 0
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        seq, batch = (x[1], x[0]) if layout else (x[0], x[1])
        return seq * batch * (math.prod(w) + math.prod(r))
    if node.op_type == "Conv" and output and len(inputs) > 1 and inputs[1]:
        return math.prod(output) * math.prod(inputs[1][1:])
    if node.op_type == "MatMulNBits" or (node.domain == SPA_DOMAIN and node.op_type in SPA_MATMULS):
        k = next((a.i for a in node.attribute if a.name == "K"), 0)
        n = next((a.i for a in node.attribute if a.name == "N"), 0)
        return (math.prod(output) * k) if output else k * n
    if node.op_type not in ("MatMul", "Gemm") or len(inputs) < 2:
        return 0
    activation, weight = inputs[0], inputs[1]
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = (activation[0] if trans_a else activation[-1]) if activation else 0
    else:
        k = activation[-1] if activation else (weight[-2] if weight and len(weight) > 1 else 0)
    if output:
        return math.prod(output) * k
    if weight and len(weight) == 2:
        return weight[0] * weight[1]
    return 0


def covered_share(model: onnx.ModelProto, covered: Callable[[onnx.NodeProto], bool]) -> float:
    """Share of weighted-layer MACs in the nodes for which ``covered`` is true
    (a node inside an If/Loop/Scan body counts once, whatever its trip count)."""
    shapes = value_shapes(model)
    total = done = 0
    for node in (node for graph in iter_graph_protos(model.graph) for node in graph.node):
        macs = node_macs(node, shapes)
        total += macs
        if covered(node):
            done += macs
    return done / total if total else 0.0


def weight_coverage(model: onnx.ModelProto, weights: Collection[str]) -> float:
    """Share of weighted-layer MACs whose weight (second input) is in ``weights``."""
    return covered_share(model, lambda node: len(node.input) > 1 and node.input[1] in weights)


def mac_coverage(model: onnx.ModelProto, decisions: Iterable[Any]) -> float:
    """Share of weighted-layer MACs whose weight was quantized (by ``decisions``)."""
    quantized = {d.weight for d in decisions if getattr(d, "action", "") == "quantized"}
    return weight_coverage(model, quantized)
