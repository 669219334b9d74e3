"""Multiply-accumulate counts per op family, from inferred shapes.

:func:`count_macs` infers every value's shape at concrete input dims with
:func:`spa.stats.shape_facts.infer_shapes` (no weight bytes read or copied) and
applies one rule per op, kept in :data:`RULES` keyed by (domain, op type).

Families, with what each rule counts (bias adds and activations are not MACs):

* ``conv``: Conv, ConvInteger, QLinearConv, com.microsoft FusedConv/NhwcConv:
  ``prod(Y) * prod(W.shape[1:])`` (``C_in / group * prod(kernel)`` per output);
  ConvTranspose: ``prod(X) * prod(W.shape[1:])``.
* ``matmul``: Gemm, MatMul (batched, broadcast), MatMulInteger, QLinearMatMul,
  com.microsoft MatMulNBits/MatMulBnb4 and spa's GQSA and TensorRT plugin ops
  (``prod(A.shape[:-1]) * K * N``, the dense product's count also where the
  stored weight is sparse, as for 2:4),
  FusedMatMul, GemmFastGelu, DynamicQuantizeMatMul, ...: ``prod(Y) * K``; RNN, GRU,
  LSTM and com.microsoft DynamicQuantizeLSTM: the
  input and recurrent products of every step, gate and direction,
  ``seq * batch * (prod(W) + prod(R))`` (gates, peepholes and biases are not
  counted). Attention written out as MatMul/Softmax/MatMul (most exports)
  counts here, not under ``attention``.
* ``attention``: fused attention only: com.microsoft Attention (with its QKV
  projection), MultiHeadAttention, GroupQueryAttention and opset-23 Attention:
  ``B * heads * S_q * S_kv * (head_size_qk + head_size_v)``; ``S_kv`` is the
  past length plus the new keys (for a shared KV buffer the past length is the
  buffer size, so this is an upper bound).
* ``other``: approximate, 1 per output element for elementwise arithmetic,
  activations and normalizations, 1 per input element for reductions and
  global pooling, ``prod(Y) * prod(kernel)`` for pooling, exact for Einsum.
  Data movement (Reshape, Transpose, Gather, Concat, Cast, ...) costs 0.

A node that computes on constants only (initializers, Constant nodes and what
such nodes compute: the Cast + Mul that dequantizes stored INT8 weights) costs
0: ONNX Runtime folds it when it loads the model. A node whose shapes stay
unknown contributes 0 and is listed, with the reason, in
:attr:`MacCount.unknown`. Each subgraph body is counted once: both If
branches, one iteration of a Loop or Scan.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx

from spa.constants import RANDOM_OPS
from spa.model_io import iter_graph_protos
from spa.stats.shape_facts import (
    SPA_DOMAIN,
    SPA_MATMULS,
    Shape,
    all_nodes,
    infer_shapes,
    known_shape,
)

__all__ = ["FAMILIES", "RULES", "MacCount", "count_macs"]

logger = logging.getLogger(__name__)

FAMILIES = ("conv", "matmul", "attention", "other")

Shapes = Mapping[str, Shape]
MacRule = Callable[[onnx.NodeProto, Shapes], int | str]


@dataclasses.dataclass
class MacCount:
    """MACs per family, plus the nodes that could not be counted and why."""

    by_family: dict[str, int]
    unknown: dict[str, str]
    inference: str

    @property
    def total(self) -> int:
        return sum(self.by_family.values())


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _need(node: onnx.NodeProto, shapes: Shapes, *positions: int) -> list[tuple[int, ...]] | str:
    """Known shapes of the inputs at ``positions`` (negative: outputs ~position-1)."""
    found = []
    for position in positions:
        names = node.input if position >= 0 else node.output
        index = position if position >= 0 else -position - 1
        name = names[index] if index < len(names) else ""
        shape = known_shape(shapes, name)
        if shape is None:
            return f"shape of '{name or '(missing)'}' unknown"
        found.append(shape)
    return found


_Y = -1  # the first output, for _need


def _conv_rule(weight: int) -> MacRule:
    def rule(node: onnx.NodeProto, shapes: Shapes) -> int | str:
        found = _need(node, shapes, weight, _Y)
        if isinstance(found, str):
            return found
        w, y = found
        return math.prod(y) * math.prod(w[1:])

    return rule


def _conv_transpose(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    found = _need(node, shapes, 0, 1)
    if isinstance(found, str):
        return found
    x, w = found
    return math.prod(x) * math.prod(w[1:])


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    length = max(len(a), len(b))
    a, b = (1,) * (length - len(a)) + a, (1,) * (length - len(b)) + b
    return tuple(max(x, y) for x, y in zip(a, b, strict=True))


def _matmul_rule(a_index: int, b_index: int, trans_attr: str = "") -> MacRule:
    """MatMul-like: ``prod(batch) * M * K * N`` from A and B (NumPy semantics)."""

    def rule(node: onnx.NodeProto, shapes: Shapes) -> int | str:
        found = _need(node, shapes, a_index, b_index)
        if isinstance(found, str):
            return found
        a, b = found
        attrs = _attributes(node) if trans_attr else {}
        if len(a) >= 2 and attrs.get(trans_attr + "A"):
            a = (*a[:-2], a[-1], a[-2])
        if len(b) >= 2 and attrs.get(trans_attr + "B"):
            b = (*b[:-2], b[-1], b[-2])
        if not a or not b:
            return "MatMul on a scalar"
        k = a[-1]
        m = a[-2] if len(a) >= 2 else 1
        n = b[-1] if len(b) >= 2 else 1
        batch = _broadcast(a[:-2], b[:-2])
        return math.prod(batch) * m * k * n

    return rule


def _matmul_nbits(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    found = _need(node, shapes, 0)
    if isinstance(found, str):
        return found
    attrs = _attributes(node)
    if "K" not in attrs or "N" not in attrs:
        return f"{node.op_type} without K/N attributes"
    return math.prod(found[0][:-1]) * int(attrs["K"]) * int(attrs["N"])


def _recurrent(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    """RNN/GRU/LSTM: per time step and batch row, ``X_t W^T`` and ``H_{t-1} R^T`` for
    every direction and gate: ``seq * batch * (prod(W) + prod(R))``."""
    found = _need(node, shapes, 0, 1, 2)
    if isinstance(found, str):
        return found
    x, w, r = found
    if len(x) != 3:
        return f"{node.op_type} input of rank {len(x)}"
    seq, batch = (x[1], x[0]) if _attributes(node).get("layout", 0) else (x[0], x[1])
    return seq * batch * (math.prod(w) + math.prod(r))


def _attention_macs(batch: int, heads: int, q_len: int, kv_len: int, qk: int, v: int) -> int:
    """QK^T plus probabilities x V: ``B * heads * S_q * S_kv * (qk + v)``."""
    return batch * heads * q_len * kv_len * (qk + v)


def _past_length(shapes: Shapes, name: str, axis: int) -> int:
    shape = known_shape(shapes, name)
    return shape[axis] if shape is not None and len(shape) > axis else 0


def _contrib_attention(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    """com.microsoft Attention: input [B, S, D_in], weights [D_in, Q + K + V]."""
    found = _need(node, shapes, 0, 1)
    if isinstance(found, str):
        return found
    x, w = found
    attrs = _attributes(node)
    heads = int(attrs.get("num_heads", 1))
    sizes = attrs.get("qkv_hidden_sizes") or [w[1] // 3] * 3
    batch, seq = x[0], x[1]
    past = node.input[4] if len(node.input) > 4 else ""
    kv_len = seq + _past_length(shapes, past, 3)
    projection = batch * seq * w[0] * w[1]
    qk, v = int(sizes[1]) // heads, int(sizes[2]) // heads
    return projection + _attention_macs(batch, heads, seq, kv_len, qk, v)


def _multi_head_attention(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    """com.microsoft MultiHeadAttention: query [B, S, D], or packed QKV [B, S, N, 3, H]."""
    found = _need(node, shapes, 0)
    if isinstance(found, str):
        return found
    query = found[0]
    heads = int(_attributes(node).get("num_heads", 1))
    if len(query) == 5:
        batch, seq, _, _, head = query
        return _attention_macs(batch, heads, seq, seq, head, head)
    key = known_shape(shapes, node.input[1]) if len(node.input) > 1 else None
    value = known_shape(shapes, node.input[2]) if len(node.input) > 2 else None
    if len(query) != 3 or key is None:
        return "MultiHeadAttention layout not recognised (query rank or key shape)"
    batch, seq, hidden = query
    if len(key) == 5:  # packed KV [B, L, N, 2, H]
        kv_len, v_head = key[1], key[4]
    elif len(key) == 4:  # [B, N, L, H], past already included
        kv_len = key[2]
        v_head = value[3] if value is not None and len(value) == 4 else hidden // heads
    else:
        past = node.input[6] if len(node.input) > 6 else ""
        kv_len = key[1] + _past_length(shapes, past, 2)
        v_head = value[-1] // heads if value is not None else hidden // heads
    return _attention_macs(batch, heads, seq, kv_len, hidden // heads, v_head)


def _group_query_attention(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    """com.microsoft GroupQueryAttention: query [B, S, D] (or packed QKV), past [B, N_kv, P, H]."""
    found = _need(node, shapes, 0)
    if isinstance(found, str):
        return found
    batch, seq, width = found[0]
    attrs = _attributes(node)
    heads, kv_heads = int(attrs.get("num_heads", 1)), int(attrs.get("kv_num_heads", 1))
    packed = len(node.input) < 2 or not node.input[1]
    head = width // (heads + 2 * kv_heads) if packed else width // heads
    past = node.input[3] if len(node.input) > 3 else ""
    kv_len = _past_length(shapes, past, 2) + seq
    return _attention_macs(batch, heads, seq, kv_len, head, head)


def _onnx_attention(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    """opset-23 Attention: Q/K/V as [B, N, S, H] or [B, S, N * H] with head attributes."""
    found = _need(node, shapes, 0, 1, 2)
    if isinstance(found, str):
        return found
    query, key, value = found
    attrs = _attributes(node)
    past = node.input[4] if len(node.input) > 4 else ""
    if len(query) == 4:
        batch, heads, seq, qk = query
        kv_len, v_head = key[2], value[3]
    else:
        heads = int(attrs.get("q_num_heads", 1))
        kv_heads = int(attrs.get("kv_num_heads", 1))
        batch, seq, qk = query[0], query[1], query[2] // heads
        kv_len, v_head = key[1], value[2] // kv_heads
    kv_len += _past_length(shapes, past, 2)
    return _attention_macs(batch, heads, seq, kv_len, qk, v_head)


def _per_output_element(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    found = _need(node, shapes, _Y)
    return found if isinstance(found, str) else math.prod(found[0])


def _per_input_element(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    found = _need(node, shapes, 0)
    return found if isinstance(found, str) else math.prod(found[0])


def _pool(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    found = _need(node, shapes, _Y)
    if isinstance(found, str):
        return found
    return math.prod(found[0]) * math.prod(_attributes(node).get("kernel_shape", [1]))


def _einsum(node: onnx.NodeProto, shapes: Shapes) -> int | str:
    """Product of the sizes of every distinct index letter (one MAC per term)."""
    equation = _attributes(node).get("equation", b"")
    if isinstance(equation, bytes):
        equation = equation.decode()
    equation = equation.replace(" ", "")
    terms = equation.split("->")[0].split(",")
    if "." in equation or len(terms) != len(node.input):
        return "Einsum with an ellipsis is not counted"
    sizes: dict[str, int] = {}
    for term, name in zip(terms, node.input, strict=True):
        shape = known_shape(shapes, name)
        if shape is None or len(shape) != len(term):
            return f"shape of '{name}' unknown"
        sizes.update(zip(term, shape, strict=True))
    return math.prod(sizes.values())


_ELEMENTWISE = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Tanh",
    "Sigmoid",
    "Erf",
    "Gelu",
    "Softplus",
    "Mish",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "PRelu",
    "Sin",
    "Cos",
    "Neg",
    "Softmax",
    "LogSoftmax",
    "BatchNormalization",
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "RMSNormalization",
    "SimplifiedLayerNormalization",
    "LpNormalization",
    "MeanVarianceNormalization",
]
_CONTRIB_ELEMENTWISE = [
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "QuickGelu",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "BiasAdd",
    "BiasSoftmax",
    "RotaryEmbedding",
]
_REDUCTIONS = [
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "GlobalAveragePool",
    "GlobalLpPool",
]

_MS = "com.microsoft"

#: (domain, op type) -> (family, rule). The default domain is "".
RULES: dict[tuple[str, str], tuple[str, MacRule]] = {
    ("", "Conv"): ("conv", _conv_rule(1)),
    ("", "ConvInteger"): ("conv", _conv_rule(1)),
    ("", "QLinearConv"): ("conv", _conv_rule(3)),
    (_MS, "FusedConv"): ("conv", _conv_rule(1)),
    (_MS, "NhwcConv"): ("conv", _conv_rule(1)),
    ("", "ConvTranspose"): ("conv", _conv_transpose),
    ("", "MatMul"): ("matmul", _matmul_rule(0, 1)),
    ("", "MatMulInteger"): ("matmul", _matmul_rule(0, 1)),
    ("", "QLinearMatMul"): ("matmul", _matmul_rule(0, 3)),
    ("", "Gemm"): ("matmul", _matmul_rule(0, 1, "trans")),
    (_MS, "FusedMatMul"): ("matmul", _matmul_rule(0, 1, "trans")),
    (_MS, "GemmFastGelu"): ("matmul", _matmul_rule(0, 1)),
    (_MS, "GemmFloat8"): ("matmul", _matmul_rule(0, 1, "trans")),
    (_MS, "MatMulIntegerToFloat"): ("matmul", _matmul_rule(0, 1)),
    (_MS, "DynamicQuantizeMatMul"): ("matmul", _matmul_rule(0, 1)),
    (_MS, "MatMulNBits"): ("matmul", _matmul_nbits),
    (_MS, "MatMulBnb4"): ("matmul", _matmul_nbits),
    **{(SPA_DOMAIN, op): ("matmul", _matmul_nbits) for op in sorted(SPA_MATMULS)},
    (_MS, "Attention"): ("attention", _contrib_attention),
    (_MS, "MultiHeadAttention"): ("attention", _multi_head_attention),
    (_MS, "GroupQueryAttention"): ("attention", _group_query_attention),
    ("", "Attention"): ("attention", _onnx_attention),
    ("", "RNN"): ("matmul", _recurrent),
    ("", "GRU"): ("matmul", _recurrent),
    ("", "LSTM"): ("matmul", _recurrent),
    (_MS, "DynamicQuantizeLSTM"): ("matmul", _recurrent),
    ("", "Einsum"): ("other", _einsum),
    ("", "AveragePool"): ("other", _pool),
    ("", "MaxPool"): ("other", _pool),
    ("", "LpPool"): ("other", _pool),
    **{("", op): ("other", _per_output_element) for op in _ELEMENTWISE},
    **{(_MS, op): ("other", _per_output_element) for op in _CONTRIB_ELEMENTWISE},
    **{("", op): ("other", _per_input_element) for op in _REDUCTIONS},
}


def _constant_only(proto: onnx.ModelProto) -> list[bool]:
    """Per node, in :func:`all_nodes` order: whether every input is a constant of its own
    graph (an initializer that is not a graph input, or an output of such a node), as
    a runtime folds it at load."""
    folded: list[bool] = []
    for graph in iter_graph_protos(proto.graph):
        constants = {t.name for t in graph.initializer} - {v.name for v in graph.input}
        for node in graph.node:
            bodies = any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                for a in node.attribute
            )
            constant = node.op_type not in RANDOM_OPS and not bodies and all(
                name in constants for name in node.input if name
            )
            if constant:
                constants.update(node.output)
            folded.append(constant)
    return folded


def count_macs(
    proto: onnx.ModelProto,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | Path | None = None,
) -> MacCount:
    """MACs per family (see the module docstring) at concrete input shapes."""
    values, method = infer_shapes(proto, shapes=shapes, dims=dims, base_dir=base_dir)
    by_family = dict.fromkeys(FAMILIES, 0)
    unknown: dict[str, str] = {}
    folded = _constant_only(proto)
    for index, node in enumerate(all_nodes(proto)):
        if folded[index]:
            continue
        domain = "" if node.domain == "ai.onnx" else node.domain
        entry = RULES.get((domain, node.op_type))
        if entry is None:
            continue
        family, rule = entry
        result = rule(node, values)
        if isinstance(result, str):
            unknown[node.name or f"{node.op_type}#{index}"] = result
        else:
            by_family[family] += result
    if unknown:
        logger.info("%d nodes without MACs (shapes unknown): %s", len(unknown), unknown)
    return MacCount(by_family, unknown, method)
