"""BatchNormalization folding into the linear op that produces its input.

An inference BatchNorm is ``y = x * factor + offset`` per channel (axis 1),
with ``factor = scale / sqrt(var + epsilon)`` and ``offset = shift - mean *
factor``. When ``x`` comes from a linear op whose output channels lie on that
axis, the factor scales the op's weight along its output-channel axis and the
offset joins its bias. Arithmetic is done in float64 and stored in the weight's
own dtype.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from spa.constants import constant_array
from spa.pass_manager import SpaPass, SpaPassResult, register_pass

__all__ = ["FOLD_RULES", "FoldBatchNormPass"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ChannelAffine:
    """``y = x * factor + offset`` along the channel axis, in float64."""

    factor: np.ndarray
    offset: np.ndarray


#: A rule folds ``affine`` into ``producer`` (and rewires ``bn``); it returns
#: None when it folded, or the reason it could not.
FoldRule = Callable[[ir.Graph, ir.Node, ir.Node, ChannelAffine], str | None]


@register_pass
class FoldBatchNormPass(SpaPass):
    """Fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before it.

    Cases (:data:`FOLD_RULES`):

    * ``Conv`` of any group (depthwise included), with or without bias;
    * ``ConvTranspose`` of any group, with or without bias;
    * ``Gemm`` with ``transB`` 0 or 1, any ``alpha``/``beta``, any bias
      broadcastable to ``[N]`` (``beta`` becomes 1);
    * ``MatMul`` of a 2-D activation by a constant 2-D weight: the weight's
      columns are scaled and the BatchNorm becomes ``Add`` of the offset.

    Weights held by initializers are rewritten in place; weights held by
    ``Constant`` nodes get a new initializer. A BatchNorm whose output is a
    graph output hands its name to the folded op's output.

    Left alone (counted as ``batchnorms_skipped``; each reason logged at DEBUG, a
    summary at INFO):
    training mode or used mean/var outputs, ``spatial=0``, non-constant or
    invalid (``var + epsilon <= 0``) statistics, a producer that is none of the
    above, a producer output with other consumers (or that is a graph output),
    weights or biases that are not constant or are shared with another node,
    non-float or 8-bit weights, and BatchNorms inside subgraphs.
    """

    name = "fold-batchnorm"
    summary = "Fold BatchNormalization into the Conv/Gemm/MatMul before it"

    def call(self, model: ir.Model) -> SpaPassResult:
        folded = 0
        kept: list[str] = []
        for node in list(model.graph):
            if node.op_type != "BatchNormalization" or node.domain != "":
                continue
            reason = _try_fold(model.graph, node)
            if reason is None:
                folded += 1
                continue
            kept.append(reason)
            logger.debug("BatchNormalization '%s' kept: %s", node.name, reason)
        if kept:
            logger.info(
                "fold-batchnorm kept %d BatchNormalization node(s), e.g. one because %s "
                "(DEBUG logs each)", len(kept), kept[0],
            )  # fmt: skip
        statistics = {"batchnorms_folded": folded, "batchnorms_skipped": len(kept)}
        return SpaPassResult(model, folded > 0, dict(statistics))


def _try_fold(graph: ir.Graph, bn: ir.Node) -> str | None:
    reason = _not_inference(bn)
    if reason is not None:
        return reason
    affine = _channel_affine(bn)
    if isinstance(affine, str):
        return affine
    x = bn.inputs[0]
    producer = x.producer() if x is not None else None
    rule = FOLD_RULES.get(producer.op_type) if producer and producer.domain == "" else None
    if x is None or producer is None or rule is None:
        kind = producer.op_type if producer is not None else "no node"
        return f"its input comes from {kind}, not from Conv, ConvTranspose, Gemm or MatMul"
    if x.is_graph_output() or len(x.uses()) != 1:
        return f"{producer.op_type} '{producer.name}' output '{x.name}' has other consumers"
    return rule(graph, producer, bn, affine)


def _not_inference(bn: ir.Node) -> str | None:
    if "training_mode" in bn.attributes and bn.attributes["training_mode"].as_int():
        return "training_mode=1"
    if "spatial" in bn.attributes and not bn.attributes["spatial"].as_int():
        return "spatial=0 (per-activation statistics)"
    if any(out.uses() or out.is_graph_output() for out in bn.outputs[1:]):
        return "its running mean/var outputs are used"
    if len(bn.inputs) != 5 or bn.inputs[0] is None:
        return f"it has {len(bn.inputs)} inputs, expected 5"
    return None


def _channel_affine(bn: ir.Node) -> ChannelAffine | str:
    params = [constant_array(value) for value in bn.inputs[1:5]]
    if any(p is None for p in params):
        return "scale, bias, mean or var is not constant"
    scale, shift, mean, var = (np.asarray(p, dtype=np.float64).ravel() for p in params)
    if not scale.size == shift.size == mean.size == var.size:
        return "scale, bias, mean and var differ in length"
    epsilon = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
    if np.any(var + epsilon <= 0):
        return "var + epsilon <= 0 (an invalid BatchNorm)"
    factor = scale / np.sqrt(var + epsilon)
    return ChannelAffine(factor=factor, offset=shift - mean * factor)


def _private_constant(value: ir.Value | None, what: str) -> np.ndarray | str:
    """The constant's array when only one node reads it, else the reason why not."""
    if value is None:
        return f"it has no {what}"
    if value.is_graph_output() or len(value.uses()) != 1:
        return f"{what} '{value.name}' is shared with another node"
    array = constant_array(value)
    if array is None:
        return f"{what} '{value.name}' is not constant"
    dtype = ir.DataType.from_numpy(array.dtype)
    if not dtype.is_floating_point() or dtype.itemsize < 2:
        return f"{what} '{value.name}' has dtype {dtype.name}"
    return array


def _new_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    name = f"{base}__bn_folded"
    while name in graph.initializers:
        name += "_"
    tensor = ir.Tensor(array, name=name)
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def _store(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray) -> None:
    """Give input ``index`` of ``node`` the contents ``array`` (it is the only reader)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is not None and value.is_initializer() and value.graph is graph:
        value.const_value = ir.Tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)
        return
    base = value.name if value is not None and value.name else f"{node.name or node.op_type}_bias"
    replacement = _new_initializer(graph, base, array)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, replacement)


def _scaled(weight: np.ndarray, factor: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``weight * factor`` with factor's dimensions laid on ``axes``, in weight's dtype."""
    shape = [1] * weight.ndim
    for axis, size in zip(axes, factor.shape, strict=True):
        shape[axis] = size
    return (weight.astype(np.float64) * factor.reshape(shape)).astype(weight.dtype)


def _bypass(graph: ir.Graph, bn: ir.Node) -> None:
    """Remove ``bn``; its input takes its uses (and its name if it is a graph output)."""
    x, y = bn.inputs[0], bn.outputs[0]
    assert x is not None
    if x.shape is None:
        x.shape = y.shape
    if x.type is None:
        x.type = y.type
    is_output = y.is_graph_output()
    ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
    if is_output:
        name, y.name = y.name, None
        x.name = name
    graph.remove(bn, safe=True)


def _weight_and_bias(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | str:
    """Input 1 (weight) and optional input 2 (bias) as private constants, or why not."""
    weight = _private_constant(node.inputs[1] if len(node.inputs) > 1 else None, "weight")
    if isinstance(weight, str):
        return f"{node.op_type} '{node.name}': {weight}"
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = _private_constant(bias_value, "bias") if bias_value is not None else None
    if isinstance(bias, str):
        return f"{node.op_type} '{node.name}': {bias}"
    return weight, bias


def _fold_conv_like(
    graph: ir.Graph, node: ir.Node, bn: ir.Node, affine: ChannelAffine, transpose: bool
) -> str | None:
    parameters = _weight_and_bias(node)
    if isinstance(parameters, str):
        return parameters
    weight, bias = parameters
    group = node.attributes["group"].as_int() if "group" in node.attributes else 1
    channels = weight.shape[1] * group if transpose else weight.shape[0]
    if weight.ndim < 3 or channels != affine.factor.size or weight.shape[0] % group:
        return (
            f"{node.op_type} '{node.name}' has {channels} output channels "
            f"(group={group}), the BatchNorm {affine.factor.size}"
        )
    if transpose:  # weight [C_in, C_out/group, k...]: axis 1 counts channels within a group
        grouped = weight.reshape(group, weight.shape[0] // group, *weight.shape[1:])
        scaled = _scaled(grouped, affine.factor.reshape(group, -1), (0, 2)).reshape(weight.shape)
    else:  # weight [C_out, C_in/group, k...]
        scaled = _scaled(weight, affine.factor, (0,))
    previous = bias.astype(np.float64) if bias is not None else 0.0
    _store(graph, node, 1, scaled)
    _store(graph, node, 2, (previous * affine.factor + affine.offset).astype(weight.dtype))
    _bypass(graph, bn)
    return None


def _fold_gemm(graph: ir.Graph, node: ir.Node, bn: ir.Node, affine: ChannelAffine) -> str | None:
    parameters = _weight_and_bias(node)
    if isinstance(parameters, str):
        return parameters
    weight, bias = parameters
    axis = 0 if "transB" in node.attributes and node.attributes["transB"].as_int() else 1
    if weight.ndim != 2 or weight.shape[axis] != affine.factor.size:
        return f"Gemm '{node.name}' weight {list(weight.shape)} (axis {axis}) does not match the BatchNorm"
    beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
    previous = beta * bias.astype(np.float64) if bias is not None else np.zeros(1)
    try:
        folded_bias = previous * affine.factor + affine.offset
    except ValueError:
        return f"Gemm '{node.name}' bias {list(previous.shape)} does not broadcast to the output"
    _store(graph, node, 1, _scaled(weight, affine.factor, (axis,)))
    _store(graph, node, 2, folded_bias.astype(weight.dtype))
    node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    _bypass(graph, bn)
    return None


def _fold_matmul(graph: ir.Graph, node: ir.Node, bn: ir.Node, affine: ChannelAffine) -> str | None:
    weight = _private_constant(node.inputs[1], "weight")
    if isinstance(weight, str):
        return f"MatMul '{node.name}': {weight}"
    activation, output = node.inputs[0], node.outputs[0]
    known = output.shape
    if known is None and activation is not None:
        known = activation.shape
    if weight.ndim != 2 or known is None or len(known) != 2:
        return (
            f"MatMul '{node.name}': BatchNorm's axis 1 is the weight's axis only for 2-D products"
        )
    if weight.shape[1] != affine.factor.size:
        return f"MatMul '{node.name}' has {weight.shape[1]} columns, the BatchNorm {affine.factor.size}"
    _store(graph, node, 1, _scaled(weight, affine.factor, (1,)))
    offset = _new_initializer(
        graph, f"{bn.name or 'batchnorm'}_offset", affine.offset.astype(weight.dtype)
    )
    bn.op_type = "Add"  # y = (x @ W') + offset: the BatchNorm node becomes the Add
    bn.attributes.clear()
    bn.resize_inputs(2)
    bn.replace_input_with(1, offset)
    bn.resize_outputs(1)
    return None


def _fold_conv(graph: ir.Graph, node: ir.Node, bn: ir.Node, affine: ChannelAffine) -> str | None:
    return _fold_conv_like(graph, node, bn, affine, transpose=False)


def _fold_conv_transpose(
    graph: ir.Graph, node: ir.Node, bn: ir.Node, affine: ChannelAffine
) -> str | None:
    return _fold_conv_like(graph, node, bn, affine, transpose=True)


#: Producers a BatchNorm folds into, by op type (standard domain).
FOLD_RULES: dict[str, FoldRule] = {
    "Conv": _fold_conv,
    "ConvTranspose": _fold_conv_transpose,
    "Gemm": _fold_gemm,
    "MatMul": _fold_matmul,
}
