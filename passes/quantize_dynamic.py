"""Dynamic INT8 quantization of MatMul/Gemm weights for ONNX Runtime CPU.

:class:`QuantizeDynamicPass` (``quantize-dynamic``) rewrites

* ``MatMul(A, W)`` with ``W`` a 2-D float32 initializer, and
* ``Gemm(A, B, C)`` with constant ``B``, ``alpha = 1``, ``transA = 0`` (``transB``
  either way; ``C`` scaled by ``beta``),

into ``com.microsoft.DynamicQuantizeMatMul(A, W_q, scale, zero_point[, bias])``,
and ``LSTM`` with constant float32 ``W`` and ``R`` into
``com.microsoft.DynamicQuantizeLSTM`` (weights stored transposed as
``[directions, input, 4*hidden]`` and ``[directions, hidden, 4*hidden]`` INT8 with
one scale per direction and gate column; every other input and attribute kept):
the weight is stored as per-column symmetric INT8 (one scale per output
column, zero point 0) and ONNX Runtime quantizes the activation to UINT8 per
tensor at run time, multiplies in integers (MLAS) and rescales to float. This is
the format ORT's own ``quantize_dynamic`` produces after its graph fusions; ORT
CPU runs it with integer kernels, which is where it is faster than float.

``reduce_range`` (default on) keeps weights in [-64, 63]: on x86 CPUs without
VNNI, MLAS multiplies u8 x s8 pairs with ``VPMADDUBSW``, whose 16-bit sums
saturate for full-range weights (ONNX Runtime's quantization docs recommend
reduced range there). Weights with fewer than ``min_elements`` elements stay
float (quantizing the activation costs more than the product saves).

Skipped, each with its reason in :attr:`QuantizeDynamicPass.decisions`: the
cases of :func:`spa.passes.quantize.weight_reason` (not a constant initializer,
shared, not 2-D, ...), non-float32 weights (the op's activation is float32),
and small weights; LSTMs whose ``W`` or ``R`` is not a constant 3-D float32
initializer, or that use an attribute the contrib op lacks (``layout``). Only
the main graph is rewritten.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from spa.pass_manager import SpaPassResult, register_pass
from spa.passes.quantize import (
    Candidate,
    DecidingPass,
    bias_nodes,
    input_name,
    match_gemm,
    match_matmul,
)
from spa.quant.ir_format import (
    MS_DOMAIN,
    QuantDecision,
    add_initializer,
    op_key,
    remove_initializer_if_unused,
    replace_node,
)

__all__ = ["QuantizeDynamicPass", "quantize_columns"]

logger = logging.getLogger(__name__)

_MATCHERS = {("", "MatMul"): match_matmul, ("", "Gemm"): match_gemm}


def quantize_columns(weight: np.ndarray, reduce_range: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-column symmetric INT8 of ``weight[K, N]``: (``int8[K, N]``, ``float32[N]`` scales)."""
    limit = 63.0 if reduce_range else 127.0
    peak = np.abs(weight.astype(np.float64)).max(axis=0)
    scale = np.where(peak > 0, peak / limit, 1.0)
    lowest = -64 if reduce_range else -127
    quantized = np.clip(np.rint(weight / scale), lowest, limit).astype(np.int8)
    return quantized, scale.astype(np.float32)


def _bias_input(graph: ir.Graph, candidate: Candidate, columns: int) -> ir.Value | None:
    """The Gemm bias as the op's 1-D ``bias`` input when it is a constant of N floats."""
    bias = candidate.bias
    if bias is None or bias.const_value is None:
        return None
    array = bias.const_value.numpy()
    if array.dtype != np.float32 or array.size != columns or array.ndim > 1:
        return None
    scaled = (array.reshape(columns) * np.float32(candidate.beta)).astype(np.float32)
    return add_initializer(graph, f"{bias.name}_dq_bias", ir.Tensor(scaled))


def _constant_3d(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.producer() is not None:
        return None
    array = value.const_value.numpy()
    return array if array.dtype == np.float32 and array.ndim == 3 and len(value.uses()) == 1 else None


def _lstm_reason(node: ir.Node) -> str:
    """Why an LSTM cannot become DynamicQuantizeLSTM ('' when it can)."""
    if node.attributes.get_int("layout", 0):
        return "LSTM with layout=1 (DynamicQuantizeLSTM has no layout attribute)"
    weights = [node.inputs[i] if len(node.inputs) > i else None for i in (1, 2)]
    if any(_constant_3d(value) is None for value in weights):
        return "LSTM W/R are not single-use constant 3-D float32 initializers"
    return ""


def _quantize_gates(graph: ir.Graph, value: ir.Value, reduce_range: bool) -> tuple[ir.Value, ...]:
    """``[dirs, 4H, K]`` float -> (``int8 [dirs, K, 4H]``, scales and zero points ``[dirs, 4H]``)."""
    array = _constant_3d(value)
    assert array is not None
    parts = [quantize_columns(np.ascontiguousarray(matrix.T), reduce_range) for matrix in array]
    quantized = np.stack([part[0] for part in parts])
    scales = np.stack([part[1] for part in parts])
    base = value.name or "lstm_weight"
    return (
        add_initializer(graph, f"{base}_int8", ir.Tensor(quantized)),
        add_initializer(graph, f"{base}_scale", ir.Tensor(scales)),
        add_initializer(graph, f"{base}_zero", ir.Tensor(np.zeros(scales.shape, np.int8))),
    )


def _replace_multi(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    """Insert ``new`` before ``old`` and move every output's uses and name to it."""
    graph.insert_before(old, new)
    for old_value, new_value in zip(old.outputs, new.outputs, strict=False):
        new_value.shape, new_value.type = old_value.shape, old_value.type
        name = old_value.name
        old_value.replace_all_uses_with(new_value, replace_graph_outputs=True)
        old_value.name = None
        new_value.name = name
    graph.remove(old, safe=True)


@register_pass
class QuantizeDynamicPass(DecidingPass):
    """Dynamic INT8 MatMul/Gemm for ORT CPU (``com.microsoft.DynamicQuantizeMatMul``).

    Options: ``reduce_range`` (7-bit weights, default on; see the module
    docstring) and ``min_elements`` (smaller weights stay float). After the
    call :attr:`decisions` lists every MatMul/Gemm and what happened.
    """

    name = "quantize-dynamic"
    summary = "Dynamic INT8 MatMul/Gemm (per-column INT8 weights) for ORT CPU"
    fidelity = "lossy"

    def __init__(self, reduce_range: bool = True, min_elements: int = 1024) -> None:
        super().__init__()
        self.reduce_range, self.min_elements = reduce_range, min_elements

    def _skip(self, node: ir.Node, reason: str) -> None:
        self._decisions.append(
            QuantDecision(node.name or "", node.op_type, "skipped", reason, input_name(node, 1))
        )

    def _rewrite(self, graph: ir.Graph, candidate: Candidate) -> tuple[int, int]:
        columns = candidate.array.shape[1]
        quantized, scale = quantize_columns(candidate.array, self.reduce_range)
        base = candidate.weight.name or "weight"
        weight = add_initializer(graph, f"{base}_int8", ir.Tensor(quantized))
        scales = add_initializer(graph, f"{base}_scale", ir.Tensor(scale))
        zeros = add_initializer(graph, f"{base}_zero", ir.Tensor(np.zeros(columns, np.int8)))
        bias = _bias_input(graph, candidate, columns)
        inputs = [candidate.activation, weight, scales, zeros, *([bias] if bias else [])]
        name = candidate.node.name or base
        core = ir.node("DynamicQuantizeMatMul", inputs, domain=MS_DOMAIN, name=f"{name}_dynq")
        extra = [] if bias is not None else bias_nodes(graph, candidate, core.outputs[0])
        old_bytes = int(candidate.weight.const_value.nbytes) if candidate.weight.const_value else 0
        replace_node(graph, candidate.node, [core, *extra])
        remove_initializer_if_unused(graph, candidate.weight)
        if candidate.bias is not None and bias is not None:
            remove_initializer_if_unused(graph, candidate.bias)
        return old_bytes, quantized.nbytes + scale.nbytes + columns

    def _rewrite_lstm(self, graph: ir.Graph, node: ir.Node) -> tuple[int, int]:
        inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
        w, r = inputs[1], inputs[2]
        assert w is not None and r is not None
        old_bytes = sum(int(v.const_value.nbytes) for v in (w, r) if v.const_value is not None)
        w_q, w_scale, w_zero = _quantize_gates(graph, w, self.reduce_range)
        r_q, r_scale, r_zero = _quantize_gates(graph, r, self.reduce_range)
        new_inputs = [inputs[0], w_q, r_q, *inputs[3:8], w_scale, w_zero, r_scale, r_zero]
        new = ir.node(
            "DynamicQuantizeLSTM", new_inputs, attributes=dict(node.attributes), domain=MS_DOMAIN,
            name=f"{node.name or 'lstm'}_dynq", num_outputs=len(node.outputs),
        )  # fmt: skip
        _replace_multi(graph, node, new)
        for value in (w, r):
            remove_initializer_if_unused(graph, value)
        new_bytes = sum(
            int(v.const_value.nbytes)
            for v in (w_q, r_q, w_scale, w_zero, r_scale, r_zero)
            if v.const_value is not None
        )
        return old_bytes, new_bytes

    def _lstm(self, graph: ir.Graph, node: ir.Node) -> tuple[int, int]:
        reason = _lstm_reason(node)
        if reason:
            self._skip(node, reason)
            return 0, 0
        name, weight = node.name or "", input_name(node, 1)
        old_bytes, new_bytes = self._rewrite_lstm(graph, node)
        self._decisions.append(
            QuantDecision(name, "LSTM", "quantized", "", weight, 0, 0, old_bytes, new_bytes)
        )
        return old_bytes, new_bytes

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        graph, before, after = model.graph, 0, 0
        for node in list(graph):
            if op_key(node) == ("", "LSTM"):
                old_bytes, new_bytes = self._lstm(graph, node)
                before, after = before + old_bytes, after + new_bytes
                continue
            matcher = _MATCHERS.get(op_key(node))
            if matcher is None:
                continue
            candidate, reason = matcher(node)
            if candidate is None:
                self._skip(node, reason)
                continue
            if candidate.array.dtype != np.float32:
                self._skip(node, f"weight is {candidate.array.dtype}, the op takes float32")
                continue
            if candidate.array.size < self.min_elements:
                self._skip(node, f"weight has {candidate.array.size} < {self.min_elements} elements")
                continue
            name, op_type, weight_name = node.name or "", node.op_type, candidate.weight.name or ""
            rows, columns = candidate.array.shape
            old_bytes, new_bytes = self._rewrite(graph, candidate)
            before, after = before + old_bytes, after + new_bytes
            self._decisions.append(
                QuantDecision(
                    name, op_type, "quantized", "", weight_name, rows, columns, old_bytes, new_bytes
                )
            )
        quantized, skipped = self._tally("quantized")
        if quantized:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        statistics: dict[str, int | float] = {
            "nodes_quantized": quantized,
            "nodes_skipped": skipped,
            "bytes_before": before,
            "bytes_after": after,
        }
        return SpaPassResult(model, quantized > 0, statistics, self._details())
