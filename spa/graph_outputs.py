"""What computes a graph's outputs: the producing node of an output, looking
through Identity nodes, the logits behind each ``Softmax``/``LogSoftmax``
output, which outputs hold class scores along their last axis, and which axis
of an output holds its features.

One rule for every caller: ``spa verify``'s pre-softmax checks and its
Softmax resolution (:mod:`spa.verify`, :mod:`spa.verify.tolerance`) and the
sensitivity measurement's logits (:mod:`spa.pruning.sensitivity`). An output
reached through Identity nodes after a Softmax (Paddle's and skl2onnx's
classifiers end in Softmax -> Identity -> output) is still probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

__all__ = [
    "class_score_outputs",
    "declared_dims",
    "declared_shapes",
    "feature_axis",
    "output_producer",
    "softmax_inputs",
]

_SOFTMAX_OPS = ("Softmax", "LogSoftmax")
_DEFAULT_DOMAINS = ("", "ai.onnx")


def output_producer(producers: Mapping[str, onnx.NodeProto], name: str) -> onnx.NodeProto | None:
    """The node that computes value ``name`` (``producers``: value name -> the node
    that outputs it), looking through Identity nodes; None for a value no node
    computes (a graph input or initializer, directly or through Identity)."""
    node = producers.get(name)
    for _ in range(len(producers)):
        if node is None or node.op_type != "Identity" or node.domain not in _DEFAULT_DOMAINS:
            break
        node = producers.get(node.input[0])
    return node


def softmax_inputs(proto: onnx.ModelProto) -> dict[str, str]:
    """Graph output -> the input (the logits) of the ``Softmax``/``LogSoftmax``
    (default domain) that computes it, looking through Identity nodes
    (:func:`output_producer`); in graph-output order. The logits may be a graph
    input, an initializer or a graph output themselves: callers that only want
    values the graph computes and does not already return filter them."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    found: dict[str, str] = {}
    for value in proto.graph.output:
        node = output_producer(producers, value.name)
        if node is not None and node.op_type in _SOFTMAX_OPS and node.domain in _DEFAULT_DOMAINS:
            found[value.name] = node.input[0]
    return found


#: Ops whose output's last axis is the N of a matrix product: a classifier head.
_PRODUCTS = {("", "MatMul"), ("", "Gemm"), ("", "MatMulInteger"), ("", "QLinearMatMul"),
             ("com.microsoft", "MatMulNBits"), ("com.microsoft", "FusedMatMul"),
             ("com.microsoft", "DynamicQuantizeMatMul"), ("com.microsoft", "MatMulIntegerToFloat")}  # fmt: skip
#: Elementwise ops looked through when their other operand is a constant (a bias, a
#: temperature, a scale); Sigmoid (multi-label heads) looked through as well.
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")
#: Pools that end a convolutional classifier before a Flatten/Reshape/Squeeze.
_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "AveragePool", "ReduceMax")
#: Shape-only ops looked through (pooled heads; a product's scores regrouped).
_RESHAPES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def class_score_outputs(proto: onnx.ModelProto) -> dict[str, int | None]:
    """Graph outputs whose last axis holds class scores, so that its arg-max is a
    decision (a class, a token, a CTC symbol): the output of a ``Softmax`` or
    ``LogSoftmax`` over its last axis, of a matrix product (``MatMul``, ``Gemm``
    and their quantized forms; the last axis is the head's N), or of a pooled
    convolutional head flattened to rank 2, looking through Identity, Sigmoid and
    elementwise ops with a constant operand. Anything else (embeddings after a
    normalisation, a detector's concatenated boxes and scores, a probability
    map) is not: its arg-max along the last axis picks an anchor or a dimension,
    not a decision.

    Maps each such output to the size its last axis must have at run time, or
    None when any: a product's scores looked at through a Reshape, Flatten,
    Squeeze or Unsqueeze (an OCR head ``Gemm -> Reshape [T, batch, -1]``) are
    class scores only while the last axis still holds the product's N columns
    (known from its constant weight), which the graph may not declare (an
    export's declared output ``[1, seqlen]`` for a run-time ``[T, 1, classes]``)."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    constants = {init.name for init in proto.graph.initializer}
    constants |= {
        out for node in proto.graph.node if node.op_type == "Constant" for out in node.output
    }
    opset = next((o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS), 13)
    shapes = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    found: dict[str, int | None] = {}
    for value in proto.graph.output:
        dims = declared_dims(value)
        rank = None if dims is None else len(dims)
        node = output_producer(producers, value.name)
        reshaped = False
        for _ in range(len(producers)):
            if node is None:
                break
            key = ("" if node.domain in _DEFAULT_DOMAINS else node.domain, node.op_type)
            if key[1] in _SOFTMAX_OPS and not key[0]:
                axis = next(
                    (a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1
                )
                if not reshaped and (axis == -1 or (rank is not None and axis == rank - 1)):
                    found[value.name] = None
                break
            if key in _PRODUCTS:
                width = _product_width(node, shapes) if reshaped else None
                if not reshaped or width is not None:
                    found[value.name] = width
                break
            if key == ("", "Sigmoid"):
                node = output_producer(producers, node.input[0])
                continue
            if key[1] in _ELEMENTWISE and not key[0] and len(node.input) == 2:
                variable = [name for name in node.input if name not in constants]
                if len(variable) != 1:
                    break
                node = output_producer(producers, variable[0])
                continue
            if key[1] in _RESHAPES and not key[0]:
                source = output_producer(producers, node.input[0])
                if rank == 2 and key[1] != "Unsqueeze" and source is not None and source.op_type in _POOLS:
                    found[value.name] = None
                    break
                node, reshaped = source, True
                continue
            break
    return found


def _product_width(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The columns (N) of a MatMul or Gemm whose weight is a constant, else None."""
    if node.domain not in _DEFAULT_DOMAINS or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    weight = shapes.get(node.input[1])
    if not weight or len(weight) < 2:
        return None
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        return int(weight[0])
    return int(weight[-1])


def declared_dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    """A value's declared shape: an int per fixed dim, None per symbolic or
    unknown one (a negative value, Paddle's -1, included); None where it declares
    no shape."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor.shape.dim
    )


def declared_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...] | None]:
    """Graph output -> its declared shape (:func:`declared_dims`)."""
    return {value.name: declared_dims(value) for value in proto.graph.output}


def feature_axis(
    shape: tuple[int, ...], declared: tuple[int | None, ...] | None = None
) -> int | None:
    """The axis whose entries are features, for a rank >= 3 output, or None.

    Of axis 1 and the last axis, the one the graph declares with a fixed size
    (a sequence or anchor count is usually symbolic: ``[batch, 4 + classes,
    anchors]``, ``[batch, tokens, hidden]``, ``[batch, classes, H, W]``); when
    both are fixed, or the graph declares no shape, the shorter of the two
    (``[batch, anchors, 5 + classes]``). None below rank 3, when neither is
    fixed in a declared shape, or when the chosen axis has one entry (a single
    probability map). Agreement measured per feature counts each feature once:
    a detector's box coordinates (up to the image size) would otherwise
    outweigh its class scores (at most 1)."""
    if len(shape) < 3:
        return None
    last = len(shape) - 1
    candidates = [1, last]
    if declared is not None and len(declared) == len(shape):
        candidates = [axis for axis in candidates if declared[axis] is not None]
    if not candidates:
        return None
    axis = min(candidates, key=lambda a: (shape[a], a))
    return axis if shape[axis] >= 2 else None
