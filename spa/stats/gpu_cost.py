"""A cost model of a TensorRT engine's latency on a GPU, for when no engine can be built.

spa cannot build TensorRT engines where it runs (libnvinfer is not installable
there), so ``--target tensorrt`` ranks candidates by this model instead of a
measurement, and says so. It is a roofline per kernel, calibrated on measured
H200 data, not a simulation of TensorRT's tactic choice:

* **GEMM-like nodes** (``Conv``, ``ConvTranspose``, ``MatMul``, ``Gemm``,
  ``MatMulNBits``) are one kernel each:
  ``time = overhead + max(bytes / bandwidth, 2 * MACs / peak)``. Bytes are
  the weights in the engine's format plus the activations read and written;
  ``peak`` is the tensor-core rate of the math dtype, doubled for a weight
  with a 2:4 pattern along its input channels (sparse tensor cores).
* **Formats**: a float weight runs in FP16 (2 bytes, an ``--fp16`` engine); a
  weight behind ``DequantizeLinear`` of an INT8/UINT8 (1 byte) or INT4/UINT4
  (half a byte) initializer is stored so; the math is INT8 (or FP8) when the
  activation also comes through ``DequantizeLinear`` (a QDQ pair), else FP16
  (weight-only). ``MatMulNBits`` weighs ``bits / 8`` bytes per weight plus
  its scales.
* **Pointwise ops** (activations, ``Add``/``Mul`` and friends, Q/DQ,
  ``BatchNormalization``, ``Cast``, shape-only data movement) are fused by
  TensorRT into the kernel before them and cost nothing; ops that read and
  write only values of fewer than 1024 elements (shape arithmetic) cost
  nothing, where shape inference knows those sizes (an op of unknown size, or
  one reading a large tensor such as a reduction or an LSTM, is a kernel).
* **Other ops** (softmax, normalisation, reductions, pooling, concatenation,
  resize, gathers, transposes) are memory-bound kernels:
  ``overhead + (inputs + outputs) bytes / bandwidth`` at 2 bytes per element
  (1 for 8-bit tensors).

:data:`H200`: bandwidth and overhead are the least-squares line through
cuBLAS FP16 GEMV times measured on one H200 (``plugins/bench`` run of
2026-12-04, M = 1, K x N from 4096 x 4096 to 28672 x 8192: 12.2 us for 32 MiB,
108.9 us for 448 MiB, so 4.51 TB/s and 4.7 us per kernel); the tensor-core
peaks are NVIDIA's dense H200 SXM figures (FP16 989 TFLOPS, INT8 and FP8
1979 TOPS). The model's ratio of two engines is what the search uses; its
absolute times are a rough guide.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from spa.stats.coverage import node_macs, set_input_shapes, value_shapes_and_types

__all__ = ["H200", "GpuSpec", "KernelCost", "LatencyEstimate", "estimate_latency"]


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """What the model needs of a GPU: memory bandwidth, per-kernel overhead and
    the tensor-core rates (FLOP/s) of each math dtype."""

    name: str
    bandwidth: float
    overhead_s: float
    peak: Mapping[str, float]
    source: str = ""


H200 = GpuSpec(
    name="NVIDIA H200",
    bandwidth=4.51e12,
    overhead_s=4.7e-6,
    peak={"fp16": 989e12, "int8": 1979e12, "fp8": 1979e12},
    source="bandwidth and overhead fitted to cuBLAS FP16 GEMV times measured on one H200; "
    "tensor-core peaks from NVIDIA's H200 SXM datasheet (dense)",
)

GEMM_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "MatMulNBits"})
#: Fused by TensorRT into the kernel that produces their input (no kernel of their own).
FUSED_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu",
    "Selu", "Gelu", "FastGelu", "BiasGelu", "Erf", "Softplus", "Mish", "Swish", "Add", "Sub", "Mul",
    "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Max", "Min", "Where",
    "QuantizeLinear", "DequantizeLinear", "BatchNormalization", "Cast", "Identity", "Reshape",
    "Flatten", "Squeeze", "Unsqueeze", "Shape", "Size", "Constant", "ConstantOfShape", "Dropout",
})  # fmt: skip
#: Ops whose values are all smaller than this many elements are shape arithmetic, done
#: when the engine is built.
SMALL = 1024
_EIGHT_BIT = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT8E4M3FN,
              onnx.TensorProto.FLOAT8E5M2}  # fmt: skip
_FOUR_BIT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_THROUGH = ("Transpose", "Reshape", "Identity", "Cast", "Unsqueeze", "Squeeze")


@dataclasses.dataclass(frozen=True)
class KernelCost:
    """One kernel of the estimated engine."""

    node: str
    op_type: str
    seconds: float
    bytes: float
    flops: float
    math: str
    sparse: bool = False


@dataclasses.dataclass
class LatencyEstimate:
    """The estimated engine: its kernels and their sum."""

    gpu: str
    kernels: list[KernelCost]

    @property
    def seconds(self) -> float:
        return sum(kernel.seconds for kernel in self.kernels)


def estimate_latency(
    model: onnx.ModelProto,
    sample_shapes: Mapping[str, tuple[int, ...]] | None = None,
    spec: GpuSpec = H200,
) -> LatencyEstimate:
    """Estimate ``model`` as a TensorRT engine on ``spec`` at the graph inputs'
    ``sample_shapes`` (dynamic dims not given count as 1)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    set_input_shapes(proto, sample_shapes or {})
    shapes, types = value_shapes_and_types(proto)
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    kernels = []
    for node in proto.graph.node:
        cost = _node_cost(node, shapes, initializers, producers, types, spec)
        if cost is not None:
            kernels.append(cost)
    return LatencyEstimate(spec.name, kernels)


def _elements(shapes: Mapping[str, tuple[int, ...]], name: str) -> int:
    shape = shapes.get(name)
    return math.prod(shape) if shape is not None else 0


def _activation_bytes(
    name: str, shapes: Mapping[str, tuple[int, ...]], types: Mapping[str, int]
) -> float:
    return _elements(shapes, name) * (1.0 if types.get(name) in _EIGHT_BIT else 2.0)


def _source(name: str, producers: Mapping[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The node a value comes from, looking through layout-only ops."""
    node = producers.get(name)
    while node is not None and node.op_type in _THROUGH and node.input:
        upstream = producers.get(node.input[0])
        if upstream is None:
            break
        node = upstream
    return node


def _weight(
    node: onnx.NodeProto,
    initializers: Mapping[str, onnx.TensorProto],
    producers: Mapping[str, onnx.NodeProto],
) -> tuple[float, bool, bool]:
    """(bytes per weight, stored quantized, 2:4 pattern) of a GEMM node's weight."""
    if node.op_type == "MatMulNBits":
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        return bits / 8.0, True, False
    name = node.input[1] if len(node.input) > 1 else ""
    tensor = initializers.get(name)
    if tensor is None:
        source = _source(name, producers)
        if source is not None and source.op_type == "DequantizeLinear":
            stored = initializers.get(source.input[0])
            if stored is not None and stored.data_type in _FOUR_BIT:
                return 0.5, True, False
            if stored is not None and stored.data_type in _EIGHT_BIT:
                return 1.0, True, _is_2_to_4(stored, node)
        return 2.0, False, False
    return 2.0, False, _is_2_to_4(tensor, node)


def _reduction_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The weight axis a GEMM sums over: a Conv's input channels (axis 1), a
    ConvTranspose's (axis 0), a Gemm's K (1 with ``transB``), a MatMul's K (-2)."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if any(a.name == "transB" and a.i for a in node.attribute) else 0
    return 0 if node.op_type == "ConvTranspose" else ndim - 2


def _is_2_to_4(tensor: onnx.TensorProto, node: onnx.NodeProto) -> bool:
    """At most 2 nonzeros in every 4 consecutive input channels (TensorRT's pattern)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return False
    try:
        array = numpy_helper.to_array(tensor)
    except Exception:  # unreadable data: treat as dense
        return False
    if array.ndim < 2:
        return False
    moved = np.moveaxis(array, _reduction_axis(node, array.ndim), -1)
    if moved.shape[-1] % 4:
        return False
    groups = (moved.reshape(-1, 4) != 0).sum(axis=1)
    return bool(groups.size) and bool((groups <= 2).all())


def _node_cost(
    node: onnx.NodeProto,
    shapes: dict[str, tuple[int, ...]],
    initializers: Mapping[str, onnx.TensorProto],
    producers: Mapping[str, onnx.NodeProto],
    types: Mapping[str, int],
    spec: GpuSpec,
) -> KernelCost | None:
    outputs = [name for name in node.output if name]  # optional outputs may be omitted ("")
    if not outputs:
        return None
    output = outputs[0]
    if node.op_type in GEMM_OPS:
        macs = node_macs(node, shapes)
        per_weight, quantized, sparse = _weight(node, initializers, producers)
        weight_name = node.input[1] if len(node.input) > 1 else ""
        weights = _weight_elements(node, weight_name, shapes)
        source = _source(node.input[0], producers)
        int8 = (
            quantized
            and per_weight >= 1.0
            and source is not None
            and source.op_type == "DequantizeLinear"
        )
        math_dtype = "int8" if int8 else "fp16"
        act = 1.0 if int8 else 2.0
        moved = weights * per_weight * (0.5 + 1 / 16 if sparse else 1.0)  # values + metadata
        moved += (_elements(shapes, node.input[0]) + _elements(shapes, output)) * act
        flops = 2.0 * macs
        rate = spec.peak[math_dtype] * (2.0 if sparse else 1.0)
        seconds = spec.overhead_s + max(moved / spec.bandwidth, flops / rate)
        return KernelCost(node.name, node.op_type, seconds, moved, flops, math_dtype, sparse)
    if node.op_type in FUSED_OPS or node.domain not in ("", "ai.onnx", "com.microsoft"):
        return None
    if _shape_arithmetic(node, outputs, shapes, initializers):
        return None
    moved = sum(_activation_bytes(name, shapes, types) for name in outputs) + sum(
        _activation_bytes(name, shapes, types)
        for name in node.input
        if name and name not in initializers
    )
    return KernelCost(
        node.name, node.op_type, spec.overhead_s + moved / spec.bandwidth, moved, 0.0, "memory"
    )


def _shape_arithmetic(
    node: onnx.NodeProto,
    outputs: list[str],
    shapes: Mapping[str, tuple[int, ...]],
    initializers: Mapping[str, onnx.TensorProto],
) -> bool:
    """Whether every value ``node`` reads and writes is known and smaller than
    :data:`SMALL` (folded when the engine is built). A value of unknown size, or a
    large input, makes it a kernel: a reduction over a large tensor, or an LSTM whose
    unused ``Y`` was dropped and whose ``Y_h`` is small."""
    for name in (*outputs, *(name for name in node.input if name)):
        tensor = initializers.get(name)
        if tensor is not None:
            size = math.prod(tensor.dims)
        elif name in shapes:
            size = _elements(shapes, name)
        else:
            return False
        if size >= SMALL:
            return False
    return True


def _weight_elements(node: onnx.NodeProto, name: str, shapes: Mapping[str, tuple[int, ...]]) -> int:
    if node.op_type == "MatMulNBits":
        k = next((a.i for a in node.attribute if a.name == "K"), 0)
        n = next((a.i for a in node.attribute if a.name == "N"), 0)
        return k * n
    return _elements(shapes, name)
