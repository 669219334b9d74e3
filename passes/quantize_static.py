"""Static INT8/FP8 QDQ quantization placed for TensorRT's explicit-quantization fusions.

:class:`QuantizeStaticPass` (``quantize-static``) calibrates per-tensor
activation ranges in ONNX Runtime and rewrites the main graph to standard QDQ.
Placement follows NVIDIA's TensorRT guide "Working with Quantized Types"
(Q/DQ layer-placement recommendations): quantize the *inputs* of weighted
layers, not their outputs, and let TensorRT fuse what follows:

* ``Conv``/``ConvTranspose``/``MatMul``/``Gemm``: a ``QuantizeLinear ->
  DequantizeLinear`` pair on the activation input; the weight becomes a
  pre-quantized INT8/FLOAT8E4M3FN initializer + per-channel scale feeding
  ``DequantizeLinear`` (axis = output channel: Conv 0, ConvTranspose 1 when
  group = 1, MatMul ``[K, N]`` last axis, Gemm 0 with ``transB = 1`` else 1).
  Biases stay float.
* Residual ``Add`` of two activations where one input comes from a quantized
  Conv (directly or through a constant bias ``Add``) and has no other use: a
  Q/DQ pair on the *other* (shortcut) input, so TensorRT can fuse the Add into
  that convolution (the guide's ResNet recommendation). After a MatMul/Gemm
  the residual stream stays float unless ``quantize_residual_matmul``
  (per-tensor INT8 there took zoo ViT-tiny from cosine 0.999 to 0.975). Other
  Adds stay float.
* ``MatMul`` of two activations (attention ``QK^T``, ``PV``): float unless
  ``quantize_bmm``, which puts Q/DQ on both inputs.
* ``LayerNormalization``/``Softmax``/``Resize`` and the other normalisations:
  float unless ``quantize_norms``, which puts Q/DQ on their data input.
* One Q/DQ pair per tensor, shared by every consumer that wants it; other
  consumers keep reading the float tensor.

With ``target="ort"`` and INT8 the placement is extended to the form ONNX
Runtime's CPU fuses into integer kernels (:mod:`spa.passes.qdq_ort`): pairs on
layer outputs too (after an absorbed Relu), INT32 biases, UINT8 activations
with zero point 0 where a tensor cannot be negative, 7-bit weights, and the
pooling/elementwise/data-movement ops ORT runs on integers quantized wherever
their inputs are; the TensorRT residual and norm rules above do not apply.

Skipped, with a reason in :attr:`QuantizeStaticPass.decisions`: layers that
are already quantized (an input comes from DequantizeLinear; QLinear*/
MatMulNBits/MatMulInteger nodes), activations that are not float, weights that
are not constant float initializers, a weight shared at conflicting channel
axes, tensors whose calibrated range is not finite. Every other node is listed
as left in float with its reason. Only the main graph is rewritten.

The pass runs no inference: it asks the pipeline for the ranges of the values
it will quantize (:meth:`QuantizeStaticPass.calibration_request`), which
:mod:`spa.workflows.run` measures on the user's calibration data, or on
seeded random inputs with a loud warning (:attr:`QuantizeStaticPass.calibration`
says which).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from spa.calibration import (
    CALIBRATION_METHODS,
    CalibrationRequest,
    CalibrationResult,
    RangeStatistics,
)
from spa.errors import UserError
from spa.pass_manager import SpaPass, SpaPassResult, register_pass
from spa.passes.qdq_ort import ORT_OPS, OrtForm, data_inputs, light_conv
from spa.quant.ir_format import add_initializer, default_opset, op_key, remove_initializer_if_unused
from spa.quant.static import KINDS, RANDOM_CALIBRATION, activation_scale, quantize_weight

__all__ = [
    "ORT_ZERO_POINT",
    "STATIC_TARGETS",
    "QuantizeStaticPass",
    "StaticDecision",
    "check_static_options",
    "required_opset",
]

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_ELEMENT_FLOATS = {
    onnx.TensorProto.FLOAT: ir.DataType.FLOAT,
    onnx.TensorProto.FLOAT16: ir.DataType.FLOAT16,
    onnx.TensorProto.BFLOAT16: ir.DataType.BFLOAT16,
}
#: Targets of the activation format. ``ort`` stores INT8 activations as UINT8 with
#: zero point 128 (same values): ONNX Runtime's x86 CPU rewrites INT8 activation
#: Q/DQ to that form itself (QDQS8ToU8Transformer), and at opset 21 that rewrite
#: combined with its MatMul+Add->Gemm fusion made a QuantizeLinear whose
#: output_dtype disagrees with its zero point: an opset-21 model with a 3-D MatMul
#: and bias failed to load at ORT 1.32's default optimisation level.
STATIC_TARGETS = ("tensorrt", "ort")
ORT_ZERO_POINT = 128
WEIGHTED = {("", "Conv"), ("", "ConvTranspose"), ("", "MatMul"), ("", "Gemm")}
NORMS = {
    ("", "LayerNormalization"), ("", "Softmax"), ("", "LogSoftmax"), ("", "Resize"),
    ("", "BatchNormalization"), ("", "InstanceNormalization"), ("", "GroupNormalization"),
    ("", "RMSNormalization"), ("", "LpNormalization"),
    ("com.microsoft", "SkipLayerNormalization"), ("com.microsoft", "SimplifiedLayerNormalization"),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"),
}  # fmt: skip
QUANTIZED_OPS = {
    ("", "QuantizeLinear"), ("", "DequantizeLinear"), ("", "QLinearConv"), ("", "QLinearMatMul"),
    ("", "MatMulInteger"), ("", "ConvInteger"), ("", "DynamicQuantizeLinear"),
    ("com.microsoft", "MatMulNBits"), ("com.microsoft", "QLinearAdd"),
    ("com.microsoft", "DynamicQuantizeMatMul"), ("com.microsoft", "MatMulIntegerToFloat"),
}  # fmt: skip
_CONVS = ("Conv", "ConvTranspose")


def required_opset(kind: str, half: bool = False) -> int:
    """Per-channel DequantizeLinear needs opset 13; FLOAT8 types and float16/bfloat16
    inputs to QuantizeLinear (``half``) need 19."""
    return 19 if kind == "fp8" or half else 13


def check_static_options(
    activations: str, weights: str | None, calib_method: str, percentile: float
) -> None:
    """One-line :class:`UserError` for options static quantization cannot honour."""
    if activations not in KINDS:
        raise UserError(f"--activations {activations}: choose one of {', '.join(KINDS)}")
    if weights is not None and weights != activations:
        raise UserError(
            f"--weights {weights} with --activations {activations}: TensorRT's fused "
            f"INT8/FP8 layers need both inputs in one type; use --weights {activations} or drop --weights"
        )
    if calib_method not in CALIBRATION_METHODS:
        raise UserError(
            f"--calib-method {calib_method}: choose one of {', '.join(CALIBRATION_METHODS)}"
        )
    if not 0.0 < percentile <= 100.0:
        raise UserError(f"--percentile {percentile}: give a value in (0, 100], e.g. 99.99")


@dataclasses.dataclass(frozen=True)
class StaticDecision:
    """What happened to one node: ``action`` is ``quantized``, ``float`` or ``skipped``.

    ``inputs`` names the tensors read through a Q/DQ pair; ``weight``/``axis`` the
    weight stored quantized (``axis`` -1 = per-tensor).
    """

    node: str
    op_type: str
    action: str
    reason: str = ""
    inputs: tuple[str, ...] = ()
    weight: str = ""
    axis: int = -1
    bytes_before: int = 0
    bytes_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["inputs"] = list(self.inputs)
        return data


@dataclasses.dataclass
class _Plan:
    """One node's intended rewrite, before calibration."""

    node: ir.Node
    activations: list[int]  # input indices that get a Q/DQ pair
    weight_index: int = -1
    weight_axis: int | None = None
    weight_source: ir.Value | None = None  # the initializer, behind any Identity nodes
    reason: str = ""


def _label(node: ir.Node) -> str:
    return node.name or f"{node.op_type}#{id(node)}"


def _dequantized(value: ir.Value | None) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and op_key(producer) == ("", "DequantizeLinear")


def _is_constant(value: ir.Value | None) -> bool:
    """An initializer (even one also listed as a graph input), a Constant output, or
    either through Identity nodes."""
    if value is None:
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    if producer is not None and producer.op_type == "Identity" and producer.inputs:
        return _is_constant(producer.inputs[0])
    return producer is not None and producer.op_type == "Constant"


def _identity_source(value: ir.Value) -> ir.Value:
    """``value``, or the value an Identity chain copies it from."""
    producer = value.producer()
    while producer is not None and producer.op_type == "Identity" and producer.inputs:
        source = producer.inputs[0]
        if source is None:
            break
        value, producer = source, source.producer()
    return value


def _from_constants(value: ir.Value | None, depth: int = 8) -> bool:
    """``value`` is computed only from constants (a Transpose/Reshape of a weight, say)."""
    if _is_constant(value):
        return True
    producer = value.producer() if value is not None else None
    if producer is None or depth == 0 or value is None or value.is_graph_input():
        return False
    return all(
        _from_constants(source, depth - 1) for source in producer.inputs if source is not None
    )


def _remove_dead_identities(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove the Identity chain that produced ``value`` once nothing reads it."""
    while value is not None and not value.uses() and not value.is_graph_output():
        producer = value.producer()
        if producer is None or producer.op_type != "Identity":
            return
        value = producer.inputs[0] if producer.inputs else None
        graph.remove(producer, safe=True)


def _weight_axis(node: ir.Node, rank: int) -> tuple[int | None, str]:
    """The output-channel axis of ``node``'s weight (``None`` = per-tensor) or a reason."""
    kind = op_key(node)
    if kind == ("", "Conv"):
        return 0, ""
    if kind == ("", "ConvTranspose"):
        return (1, "") if node.attributes.get_int("group", 1) == 1 else (None, "")
    if kind == ("", "Gemm"):
        return (0 if node.attributes.get_int("transB", 0) else 1), ""
    return (rank - 1 if rank >= 2 else None), ""


class _Placement:
    """Decides, node by node, which tensors get Q/DQ pairs (no rewriting)."""

    def __init__(
        self,
        graph: ir.Graph,
        dtypes: Mapping[str, ir.DataType],
        norms: bool,
        bmm: bool,
        residual_matmul: bool = False,
        ort: OrtForm | None = None,
        keep_float: frozenset[str] = frozenset(),
    ) -> None:
        self.graph, self.dtypes, self.norms, self.bmm = graph, dtypes, norms, bmm
        #: Names of weighted layers left float on request (the latency guard's choice).
        self.keep_float = keep_float
        self.residual_matmul = residual_matmul
        #: The ORT CPU form (spa.passes.qdq_ort), or None for TensorRT's placement.
        self.ort = ort
        self.plans: list[_Plan] = []
        self.decisions: dict[int, StaticDecision] = {}
        self.requests: dict[int, tuple[ir.Value, list[tuple[ir.Node, int]]]] = {}
        self.weight_axes: dict[int, int | None] = {}
        self.non_float: set[str] = set()

    def dtype(self, value: ir.Value) -> ir.DataType | None:
        return value.dtype or self.dtypes.get(value.name or "")

    def _request(self, value: ir.Value, node: ir.Node, index: int) -> None:
        entry = self.requests.setdefault(id(value), (value, []))
        if (node, index) not in entry[1]:
            entry[1].append((node, index))

    def record(self, node: ir.Node, action: str, reason: str, **extra: Any) -> None:
        self.decisions[id(node)] = StaticDecision(
            node.name or "", node.op_type, action, reason, **extra
        )

    def _activation_reason(self, value: ir.Value | None, role: str) -> str:
        if value is None:
            return f"no {role} input"
        if _dequantized(value):
            return f"already quantized ({role} '{value.name}' comes from DequantizeLinear)"
        dtype = self.dtype(value)
        if dtype is not None and dtype not in _FLOATS:
            self.non_float.add(dtype.name)
            return f"{role} '{value.name}' is {dtype.name}; only float tensors are quantized"
        return ""

    def _weight_reason(self, node: ir.Node, value: ir.Value) -> tuple[int | None, str]:
        if _dequantized(value):
            return None, f"already quantized (weight '{value.name}' comes from DequantizeLinear)"
        if value.const_value is None or value.is_graph_input():
            producer = value.producer()
            where = f"computed by {producer.op_type}" if producer is not None else "not constant"
            return None, f"weight '{value.name}' is {where}; fold constants to initializers first"
        dtype = value.const_value.dtype
        if dtype not in _FLOATS:
            return None, f"weight '{value.name}' is {dtype.name} (integer: already quantized?)"
        axis, reason = _weight_axis(node, len(value.const_value.shape))
        if reason:
            return None, reason
        if id(value) in self.weight_axes and self.weight_axes[id(value)] != axis:
            return (
                None,
                f"weight '{value.name}' is shared with another layer at channel axis "
                f"{self.weight_axes[id(value)]}, this one needs {axis}",
            )
        return axis, ""

    def weighted(self, node: ir.Node) -> None:
        if node.name and node.name in self.keep_float:
            self.record(
                node, "float",
                "kept float: with it quantized the model measured slower than the input on "
                "ort-cpu (latency guard; --allow-slower quantizes it)",
            )  # fmt: skip
            return
        activation = node.inputs[0] if node.inputs else None
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        reason = self._activation_reason(activation, "activation")
        if not reason and op_key(node) == ("", "MatMul") and not _is_constant(weight):
            producer = weight.producer() if weight is not None else None
            if weight is not None and producer is not None and _from_constants(weight):
                self.record(
                    node, "skipped",
                    f"weight '{weight.name}' is computed by {producer.op_type} from constants; "
                    "fold constants to initializers first (spa optimize --recipe cleanup)",
                )  # fmt: skip
                return
            if not self.bmm:
                self.record(
                    node, "float",
                    "MatMul of two activations (attention scores/context): left in float; "
                    "quantize_bmm (--quantize-bmm) adds Q/DQ to both inputs",
                )  # fmt: skip
                return
            reason = self._activation_reason(weight, "second activation")
            if not reason:
                self.plans.append(_Plan(node, [0, 1]))
                return
        if not reason and weight is not None:
            source = _identity_source(weight)
            axis, reason = self._weight_reason(node, source)
            if not reason:
                self.weight_axes[id(source)] = axis
                self.plans.append(_Plan(node, [0], 1, axis, weight_source=source))
                return
        self.record(node, "skipped", reason or "no weight input")

    def residual_add(self, node: ir.Node, quantized: set[int]) -> None:
        inputs = [value for value in node.inputs if value is not None]
        if len(inputs) != 2 or any(_is_constant(value) for value in inputs):
            self.record(
                node, "float",
                "Add with a constant input (bias): TensorRT fuses it into the preceding layer",
            )  # fmt: skip
            return
        layers = [(value, self._fused_layer(value, quantized)) for value in inputs]
        found = [(value, layer) for value, layer in layers if layer is not None]
        convs = [(value, layer) for value, layer in found if layer.op_type in _CONVS]
        if not found:
            self.record(
                node, "float",
                "Add without a single-use input from a quantized Conv/MatMul/Gemm to fuse into",
            )  # fmt: skip
            return
        if not convs and not self.residual_matmul:
            self.record(
                node, "float",
                f"residual Add after {found[0][1].op_type} '{found[0][1].name}': the residual "
                "stream stays float (per-tensor Q/DQ there costs transformers accuracy); "
                "quantize_residual_matmul (--quantize-residual-matmul) adds it",
            )  # fmt: skip
            return
        fused, layer = (convs or found)[0]
        shortcut = inputs[1] if fused is inputs[0] else inputs[0]
        index = list(node.inputs).index(shortcut)
        reason = self._activation_reason(shortcut, "shortcut")
        if reason:
            self.record(node, "float", reason)
            return
        self.plans.append(
            _Plan(
                node, [index],
                reason=f"residual: Q/DQ on shortcut '{shortcut.name}' so TensorRT fuses the Add "
                f"into {layer.op_type} '{layer.name}'",
            )
        )  # fmt: skip

    def _fused_layer(self, value: ir.Value, quantized: set[int]) -> ir.Node | None:
        """The quantized layer whose single-use output ``value`` is (maybe through a bias Add)."""
        producer = value.producer()
        if producer is None or len(value.uses()) != 1 or value.is_graph_output():
            return None
        if id(producer) in quantized:
            return producer
        if op_key(producer) == ("", "Add") and len(producer.inputs) == 2:
            first, second = producer.inputs
            if _is_constant(second) and first is not None:
                return self._fused_layer(first, quantized)
            if _is_constant(first) and second is not None:
                return self._fused_layer(second, quantized)
        return None

    def norm(self, node: ir.Node) -> None:
        if not self.norms:
            self.record(
                node, "float",
                f"{node.op_type} stays in float (TensorRT runs it in higher precision); "
                "quantize_norms (--quantize-norms) adds Q/DQ on its input",
            )  # fmt: skip
            return
        reason = self._activation_reason(node.inputs[0] if node.inputs else None, "input")
        if reason:
            self.record(node, "skipped", reason)
            return
        self.plans.append(_Plan(node, [0]))

    def _ort_output(self, node: ir.Node) -> None:
        """Request the output pair of ``node`` (ORT form), shared by all its readers."""
        assert self.ort is not None
        value = self.ort.output_of(node)
        if value is None:
            return
        dtype = self.dtype(value)
        if dtype is not None and dtype not in _FLOATS:
            return
        readers = [use for use in value.uses() if use.node.graph is self.graph]
        if not readers:  # nothing in the main graph reads it: no pair, no absorbed Relu
            self.ort.absorbed = {
                key: relu for key, relu in self.ort.absorbed.items() if relu.outputs[0] is not value
            }
            return
        self.ort.mark_output(node, value)
        for use in readers:  # a reader inside a subgraph (an If branch) keeps the float value
            self._request(value, use.node, use.idx)

    def run_ort(self) -> None:
        """The ORT CPU form: weighted layers as TensorRT's placement, plus output pairs
        and the ops ORT runs on integers wherever their inputs are quantized."""
        assert self.ort is not None
        ort = self.ort
        for node in self.graph:
            kind = op_key(node)
            if kind in QUANTIZED_OPS:
                self.record(node, "skipped", f"already quantized ({node.op_type})")
            elif kind in WEIGHTED and (light := light_conv(node)):
                self.record(node, "float", light)
            elif kind in WEIGHTED:
                self.weighted(node)
                if self.plans and self.plans[-1].node is node:
                    for index in self.plans[-1].activations:
                        value = node.inputs[index]
                        if value is not None:
                            ort.quantized.add(id(value))
                            self._request(value, node, index)
                    self._ort_output(node)
            elif id(node) in ort.absorbed:
                self.record(
                    node, "quantized",
                    "Relu absorbed: the output pair after it has zero point 0 (ORT removes the Relu)",
                )  # fmt: skip
            elif ort.follows(node) and node.outputs and not node.outputs[0].is_graph_output():
                plan = _Plan(node, data_inputs(node), reason="integer kernel on ORT CPU")
                self.plans.append(plan)
                for index in plan.activations:
                    value = node.inputs[index]
                    if value is not None:
                        self._request(value, node, index)
                self._ort_output(node)
            elif kind[0] == "" and kind[1] in ORT_OPS:
                self.record(
                    node, "float",
                    f"{node.op_type}: an input is not quantized (or its output is a graph "
                    "output), so an integer kernel would only add Q/DQ",
                )  # fmt: skip
            else:
                self.record(node, "float", f"{node.op_type} has no integer kernel on ORT CPU")

    def run(self) -> None:
        if self.ort is not None:
            self.run_ort()
            return
        quantized: set[int] = set()
        for node in self.graph:
            kind = op_key(node)
            if kind in QUANTIZED_OPS:
                self.record(node, "skipped", f"already quantized ({node.op_type})")
            elif kind in WEIGHTED:
                self.weighted(node)
                if self.plans and self.plans[-1].node is node:
                    quantized.add(id(node))
            elif kind in NORMS:
                self.norm(node)
            elif kind != ("", "Add"):
                self.record(
                    node, "float",
                    "not a quantization point (Q/DQ go on Conv/MatMul/Gemm inputs and "
                    "residual Adds; TensorRT propagates them through this op)",
                )  # fmt: skip
        for node in self.graph:  # second sweep: every producer's decision is known now
            if op_key(node) == ("", "Add"):
                self.residual_add(node, quantized)
        for plan in self.plans:
            for index in plan.activations:
                value = plan.node.inputs[index]
                if value is not None:
                    self._request(value, plan.node, index)


def _element_types(proto: onnx.ModelProto) -> dict[str, ir.DataType]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception as error:  # custom domains may stop inference; types stay partial
        logger.debug("shape inference failed: %s", error)
        inferred = proto
    types: dict[str, ir.DataType] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        element = info.type.tensor_type.elem_type
        if element:
            types[info.name] = ir.DataType(element)
    return types


def _scalar(value: float, dtype: ir.DataType) -> ir.Tensor:
    return ir.Tensor(np.asarray(value, dtype=dtype.numpy()))


def _zero_point(kind: str, target: str = "tensorrt") -> ir.Tensor:
    if kind == "int8" and target == "ort":  # the same values as INT8 with zero point 0
        return ir.Tensor(np.full((), ORT_ZERO_POINT, dtype=np.uint8))
    if kind == "int8":
        return ir.Tensor(np.zeros((), dtype=np.int8))
    return ir.Tensor(np.zeros((), dtype=ml_dtypes.float8_e4m3fn), dtype=ir.DataType.FLOAT8E4M3FN)


def _quantized_tensor(array: np.ndarray, kind: str) -> ir.Tensor:
    if kind == "int8":
        return ir.Tensor(np.ascontiguousarray(array))
    return ir.Tensor(np.ascontiguousarray(array), dtype=ir.DataType.FLOAT8E4M3FN)


def _range_source(placement: _Placement, value: ir.Value) -> ir.Value:
    """The value whose calibrated range sets ``value``'s pair (a data-movement output
    reuses its input's, ORT form)."""
    return placement.ort.shared.get(id(value), value) if placement.ort is not None else value


def _quantize_bias(graph: ir.Graph, node: ir.Node, input_scale: float) -> None:
    """Store a Conv/Gemm float bias as INT32 behind DequantizeLinear with scale
    ``input_scale * weight_scale`` (per output channel), as ORT's QDQ Conv/Gemm
    selectors require. A bias that is not a constant 1-D float initializer of one
    value per output channel is left float (ORT then leaves the layer unfused)."""
    if op_key(node) not in (("", "Conv"), ("", "Gemm")) or len(node.inputs) < 3:
        return
    bias, weight = node.inputs[2], node.inputs[1]
    dequantize = weight.producer() if weight is not None else None
    if bias is None or bias.const_value is None or bias.is_graph_input() or dequantize is None:
        return
    scale_input = dequantize.inputs[1]
    if scale_input is None or scale_input.const_value is None:
        return
    array = bias.const_value.numpy()
    if array.ndim != 1 or array.dtype != np.float32:
        return
    weight_scale = scale_input.const_value.numpy().astype(np.float64)
    scale = np.broadcast_to(input_scale * weight_scale, array.shape).astype(np.float32)
    if scale.shape != array.shape or not np.all(scale > 0):
        return
    bounds = np.iinfo(np.int32)
    q = np.clip(np.rint(array.astype(np.float64) / scale), bounds.min, bounds.max).astype(np.int32)
    name = bias.name or "bias"
    inputs = [
        add_initializer(graph, f"{name}_quantized", ir.Tensor(q)),
        add_initializer(graph, f"{name}_scale", ir.Tensor(scale)),
        add_initializer(graph, f"{name}_zero_point", ir.Tensor(np.zeros(q.shape, dtype=np.int32))),
    ]
    bias_node = ir.node("DequantizeLinear", inputs, {"axis": 0}, name=f"{name}_DequantizeLinear")
    bias_node.outputs[0].name = f"{name}_dequantized"
    bias_node.outputs[0].dtype = ir.DataType.FLOAT
    bias_node.outputs[0].shape = bias.shape
    graph.insert_before(node, bias_node)
    node.replace_input_with(2, bias_node.outputs[0])
    remove_initializer_if_unused(graph, bias)


@register_pass
class QuantizeStaticPass(SpaPass):
    """Static INT8/FP8 QDQ with calibrated per-tensor activations and per-channel weights.

    Options: ``activations`` (int8|fp8), ``weights`` (None = same type),
    ``calib_method`` (minmax|percentile|entropy), ``percentile``,
    ``quantize_norms``, ``quantize_bmm``, ``quantize_residual_matmul``, ``target``
    (``tensorrt``: INT8 activations with zero point 0 on layer inputs; ``ort``:
    with INT8, the full form ONNX Runtime's CPU fuses, :mod:`spa.passes.qdq_ort`;
    with FP8, the TensorRT placement). See the module docstring for
    placement; ranges come from the pipeline's calibration.
    """

    name = "quantize-static"
    summary = "Static INT8/FP8 QDQ (calibrated activations, per-channel weights) for TensorRT"
    fidelity = "lossy"

    def __init__(
        self,
        activations: str = "int8",
        weights: str | None = None,
        *,
        calib_method: str = "minmax",
        percentile: float = 99.99,
        quantize_norms: bool = False,
        quantize_bmm: bool = False,
        quantize_residual_matmul: bool = False,
        target: str = "tensorrt",
        keep_float: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.keep_float = frozenset(keep_float)
        check_static_options(activations, weights, calib_method, percentile)
        if target not in STATIC_TARGETS:
            raise UserError(f"target '{target}': choose one of {', '.join(STATIC_TARGETS)}")
        self.target = target
        self.activations, self.weights = activations, weights or activations
        self.calib_method, self.percentile = calib_method, percentile
        self.quantize_norms, self.quantize_bmm = quantize_norms, quantize_bmm
        self.quantize_residual_matmul = quantize_residual_matmul
        self._ranges: RangeStatistics | None = None
        self.calibration = ""
        self.calibration_samples = 0
        self.decisions: list[StaticDecision] = []

    def options(self) -> dict[str, Any]:
        """The constructor options (calibration results and decisions are not options)."""
        names = (
            "activations", "weights", "calib_method", "percentile",
            "quantize_norms", "quantize_bmm", "quantize_residual_matmul", "target",
        )  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def _placement(self, model: ir.Model) -> _Placement:
        proto = ir.serde.serialize_model(model)  # one copy, for element types
        placement = _Placement(
            model.graph, _element_types(proto), self.quantize_norms, self.quantize_bmm,
            self.quantize_residual_matmul, ort=OrtForm() if self.ort_form else None,
            keep_float=self.keep_float,
        )  # fmt: skip
        placement.run()
        return placement

    @property
    def ort_form(self) -> bool:
        """INT8 for ORT: the full QDQ form ORT CPU fuses (spa.passes.qdq_ort)."""
        return self.target == "ort" and self.activations == "int8"

    def use_ranges_of(self, other: QuantizeStaticPass) -> None:
        """Take ``other``'s calibrated ranges (a re-placement with more layers float
        needs a subset of them: no second calibration)."""
        self._ranges = other._ranges
        self.calibration, self.calibration_samples = other.calibration, other.calibration_samples

    def _activation_parameters(
        self, ranges: RangeStatistics, name: str, nonnegative: bool
    ) -> tuple[float, ir.Tensor]:
        """Scale and zero point of one activation pair. ORT form: UINT8 over the
        calibrated range ``[max(low, -amax), min(high, amax)]`` widened to hold 0
        (asymmetric: a HardSwish output in [-0.4, 6] gets twice the resolution of
        a symmetric range), ``[0, amax]`` with zero point 0 for a tensor that
        cannot be negative; TensorRT form: symmetric, as :func:`_zero_point`."""
        amax = ranges.amax[name]
        if not self.ort_form:
            return activation_scale(amax, self.activations), _zero_point(self.activations, self.target)
        low = 0.0 if nonnegative else max(ranges.low.get(name, -amax), -amax)
        high = min(ranges.high.get(name, amax), amax)
        low, high = min(low, 0.0), max(high, 0.0)
        if not high - low > 0 or not np.isfinite(high - low):
            return 1.0, ir.Tensor(np.zeros((), dtype=np.uint8))
        scale = (high - low) / 255.0
        zero = int(np.clip(np.rint(-low / scale), 0, 255))
        return scale, ir.Tensor(np.full((), zero, dtype=np.uint8))

    def calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        """The ranges of every value that gets a Q/DQ pair of its own."""
        placement = self._placement(model)
        names = sorted({
            _range_source(placement, v).name or "" for v, _ in placement.requests.values()
        } - {""})  # fmt: skip
        return CalibrationRequest(
            ranges=tuple(names),
            range_method=self.calib_method,
            percentile=self.percentile,
            required=True,
        )

    def use_calibration(self, result: CalibrationResult) -> None:
        self._ranges = result.ranges
        self.calibration_samples = result.ranges.samples if result.ranges else 0
        if result.source == RANDOM_CALIBRATION:
            self.calibration = RANDOM_CALIBRATION
        else:
            self.calibration = f"{result.source} ({self.calib_method})"

    def _insert_pair(
        self,
        graph: ir.Graph,
        value: ir.Value,
        consumers: list[tuple[ir.Node, int]],
        scale: float,
        dtype: ir.DataType,
        zero: ir.Tensor,
    ) -> None:
        base = value.name or "value"
        scale_value = add_initializer(graph, f"{base}_scale", _scalar(scale, dtype))
        zero_value = add_initializer(graph, f"{base}_zero_point", zero)
        quantize = ir.node(
            "QuantizeLinear", [value, scale_value, zero_value], name=f"{base}_QuantizeLinear"
        )
        dequantize = ir.node(
            "DequantizeLinear",
            [quantize.outputs[0], scale_value, zero_value],
            name=f"{base}_DequantizeLinear",
        )
        quantize.outputs[0].name = f"{base}_quantized"
        dequantize.outputs[0].name = f"{base}_dequantized"
        dequantize.outputs[0].dtype = dtype
        dequantize.outputs[0].shape = value.shape
        order = {id(node): position for position, node in enumerate(graph)}
        first = min((node for node, _ in consumers), key=lambda node: order[id(node)])
        graph.insert_before(first, [quantize, dequantize])
        for node, index in consumers:
            node.replace_input_with(index, dequantize.outputs[0])

    def _quantize_weight(
        self, graph: ir.Graph, plan: _Plan, done: dict[int, ir.Value]
    ) -> tuple[str, int, int]:
        node, index, axis, weight = (
            plan.node,
            plan.weight_index,
            plan.weight_axis,
            plan.weight_source,
        )
        assert weight is not None and weight.const_value is not None
        name = weight.name or "weight"
        previous = node.inputs[index]
        if id(weight) in done:
            node.replace_input_with(index, done[id(weight)])
            _remove_dead_identities(graph, previous)
            remove_initializer_if_unused(graph, weight)
            return name, 0, 0
        array = weight.const_value.numpy()
        q, scale = quantize_weight(array, axis, self.weights, reduce_range=self.ort_form)
        q_value = add_initializer(graph, f"{name}_quantized", _quantized_tensor(q, self.weights))
        scale_value = add_initializer(
            graph, f"{name}_scale", ir.Tensor(np.ascontiguousarray(scale))
        )
        inputs = [q_value, scale_value]
        if self.ort_form:  # ORT's QDQ selectors read the weight type from an explicit zero point
            zero = ir.Tensor(np.zeros(scale.shape, dtype=np.int8))
            inputs.append(add_initializer(graph, f"{name}_zero_point", zero))
        attributes = {"axis": axis} if axis is not None else {}
        dequantize = ir.node(
            "DequantizeLinear", inputs, attributes, name=f"{name}_DequantizeLinear"
        )
        dequantize.outputs[0].name = f"{name}_dequantized"
        dequantize.outputs[0].dtype = weight.const_value.dtype
        dequantize.outputs[0].shape = weight.shape
        graph.insert_before(node, dequantize)
        # only quantized layers read the DQ output; a float consumer (a Gather on a tied
        # embedding, say) keeps the float initializer, which then stays in the model
        node.replace_input_with(index, dequantize.outputs[0])
        done[id(weight)] = dequantize.outputs[0]
        _remove_dead_identities(graph, previous)
        remove_initializer_if_unused(graph, weight)
        return name, int(array.nbytes), int(q.nbytes + scale.nbytes)

    def call(self, model: ir.Model) -> SpaPassResult:
        opset = default_opset(model)
        if opset < required_opset(self.activations):
            raise UserError(
                f"model opset {opset} < {required_opset(self.activations)} needed for "
                f"{self.activations} QDQ; convert it first (spa quantize does)"
            )
        graph = model.graph
        placement = self._placement(model)
        self._check_float_model(placement)
        half = sorted({
            dtype.name for value, _ in placement.requests.values()
            if (dtype := placement.dtype(value)) in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
        })  # fmt: skip
        if half and opset < required_opset(self.activations, half=True):
            raise UserError(
                f"model opset {opset}: QuantizeLinear reads {'/'.join(half)} only from opset 19; "
                "convert the model first (spa quantize does)"
            )
        values = {key: value for key, (value, _) in placement.requests.items()}
        ranges = self._ranges
        if values and ranges is None:
            raise UserError(
                "quantize-static needs activation ranges: run it through `spa quantize "
                "--activations` or `spa optimize` (they calibrate), or run_passes with a calibrator"
            )
        originals = {
            id(plan.node): [plan.node.inputs[index] for index in plan.activations]
            for plan in placement.plans
        }
        bad = {
            key for key, value in values.items()
            if ranges is None
            or not np.isfinite(ranges.amax.get(_range_source(placement, value).name or "", np.nan))
        }  # fmt: skip
        scales: dict[int, float] = {}
        for key, (value, consumers) in placement.requests.items():
            if key in bad:
                continue
            dtype = placement.dtype(value) or ir.DataType.FLOAT
            assert ranges is not None
            source = _range_source(placement, value)
            scale, zero = self._activation_parameters(
                ranges, source.name or "",
                placement.ort is not None and placement.ort.is_nonnegative(source),
            )  # fmt: skip
            scales[key] = scale
            self._insert_pair(graph, value, consumers, scale, dtype, zero)
        done: dict[int, ir.Value] = {}
        before = after = 0
        for plan in placement.plans:
            node = plan.node
            read = [value for value in originals[id(node)] if value is not None]
            failed = [value for value in read if id(value) in bad]
            if failed:  # the input was never rewired: the node is untouched
                placement.record(
                    node, "skipped", f"no finite calibrated range for '{failed[0].name}'"
                )
                continue
            inputs = tuple(value.name or "" for value in read)
            weight, old, new = "", 0, 0
            if plan.weight_index >= 0:
                weight, old, new = self._quantize_weight(graph, plan, done)
                before, after = before + old, after + new
                if self.ort_form and plan.activations and id(read[0]) in scales:
                    _quantize_bias(graph, node, scales[id(read[0])])
            placement.record(
                node, "quantized", plan.reason, inputs=inputs, weight=weight,
                axis=-1 if plan.weight_axis is None else plan.weight_axis,
                bytes_before=old, bytes_after=new,
            )  # fmt: skip
        order = [placement.decisions[id(node)] for node in graph if id(node) in placement.decisions]
        self.decisions = order
        quantized = sum(1 for d in order if d.action == "quantized")
        if quantized and self.activations == "fp8":
            model.ir_version = max(model.ir_version or 0, 9)
        statistics: dict[str, int | float] = {
            "nodes_quantized": quantized,
            "nodes_skipped": sum(1 for d in order if d.action == "skipped"),
            "nodes_float": sum(1 for d in order if d.action == "float"),
            "qdq_pairs": len(placement.requests) - len(bad),
            "weights_quantized": len(done),
            "bytes_before": before,
            "bytes_after": after,
            "calibration_samples": self.calibration_samples,
        }
        details = {"decisions": list(order), "calibration": self.calibration}
        return SpaPassResult(model, quantized > 0, statistics, details)

    def _check_float_model(self, placement: _Placement) -> None:
        if placement.non_float and not placement.plans:
            raise UserError(
                f"--activations {self.activations}: no Conv/MatMul/Gemm of this model reads a "
                f"float tensor (found {', '.join(sorted(placement.non_float))}); "
                "static quantization needs a float model"
            )
