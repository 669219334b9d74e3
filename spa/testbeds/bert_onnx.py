"""A BERT encoder as ONNX, built from a ``model.safetensors`` file with NumPy and onnx only.

This is the torch-free path to the ONNX graph a user gets from exporting a Hugging Face
``BertModel`` (``torch.onnx.export`` or optimum's feature-extraction export, opset 17): inputs
``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 ``[batch, sequence]``), output
``last_hidden_state`` (float32 ``[batch, sequence, hidden]``), no pooler. The ops follow the
exporter's: ``Gather`` embeddings, ``LayerNormalization``, per layer ``MatMul`` + ``Add`` for the
query/key/value/output/FFN projections with weights stored transposed (``[in, out]``, named after
the PyTorch parameters), ``Reshape``/``Transpose`` into heads, ``Div`` by sqrt(head_dim), the
additive mask ``(1 - mask) * float32.min``, ``Softmax``, and the exact (erf) GELU. The layer
layout is that of ``transformers.models.bert.modeling_bert`` (post-LayerNorm residual blocks).

``models/export_minilm_torch.py`` exports the same model with torch and checks both graphs agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spa.errors import UserError

__all__ = ["BertConfig", "build_bert_onnx", "read_safetensors"]

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file (an 8-byte little-endian header length, a JSON header
    of ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian data)."""
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not a safetensors file; reinstall the package that ships it") from None
    base = 8 + header_len
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise UserError(f"{path}: tensor {name} has dtype {info['dtype']}, which spa cannot read")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        array = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize,
                              offset=base + start)
        tensors[name] = array.reshape(info["shape"])
    return tensors


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` the graph needs."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    layer_norm_eps: float

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        config = json.loads(path.read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise UserError(f"{path}: expected a BERT config with hidden_act 'gelu', "
                            f"got {config.get('model_type')!r} / {config.get('hidden_act')!r}")
        return cls(config["hidden_size"], config["num_hidden_layers"],
                   config["num_attention_heads"], float(config["layer_norm_eps"]))


class _Graph:
    """Collects nodes and initializers; names values after the node that makes them."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}

    def weight(self, name: str, transpose: bool = False) -> str:
        if name not in self.initializers:
            array = self.weights[name].astype(np.float32)
            self.initializers[name] = numpy_helper.from_array(
                np.ascontiguousarray(array.T if transpose else array), name)
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(value, name)
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes: Any) -> str:
        output = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attributes))
        return output

    def linear(self, x: str, prefix: str, scope: str) -> str:
        """x @ W^T + b for the PyTorch Linear ``prefix`` (weight stored as [in, out])."""
        product = self.node("MatMul", [x, self.weight(f"{prefix}.weight", transpose=True)],
                            f"{scope}/MatMul")
        return self.node("Add", [self.weight(f"{prefix}.bias"), product], f"{scope}/Add")

    def layer_norm(self, x: str, prefix: str, scope: str, eps: float) -> str:
        return self.node("LayerNormalization",
                         [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")],
                         f"{scope}/LayerNormalization", axis=-1, epsilon=eps)


def _embeddings(graph: _Graph, config: BertConfig) -> str:
    shape = graph.node("Shape", ["input_ids"], "/embeddings/Shape")
    seq = graph.node("Gather", [shape, graph.constant("const_one", np.array(1, np.int64))],
                     "/embeddings/Gather", axis=0)
    positions = graph.node("Range", [graph.constant("const_zero", np.array(0, np.int64)), seq,
                                     graph.constant("const_one", np.array(1, np.int64))],
                           "/embeddings/Range")
    positions = graph.node("Unsqueeze", [positions, graph.constant("axes_0", np.array([0], np.int64))],
                           "/embeddings/Unsqueeze")
    words = graph.node("Gather", [graph.weight("embeddings.word_embeddings.weight"), "input_ids"],
                       "/embeddings/word_embeddings/Gather")
    types = graph.node("Gather", [graph.weight("embeddings.token_type_embeddings.weight"),
                                  "token_type_ids"], "/embeddings/token_type_embeddings/Gather")
    where = graph.node("Gather", [graph.weight("embeddings.position_embeddings.weight"), positions],
                       "/embeddings/position_embeddings/Gather")
    total = graph.node("Add", [words, types], "/embeddings/Add")
    total = graph.node("Add", [total, where], "/embeddings/Add_1")
    return graph.layer_norm(total, "embeddings.LayerNorm", "/embeddings/LayerNorm",
                            config.layer_norm_eps)


def _additive_mask(graph: _Graph) -> str:
    """[batch, 1, 1, seq]: 0 where attended, float32.min where masked (as transformers does)."""
    mask = graph.node("Unsqueeze", ["attention_mask", graph.constant("axes_12", np.array([1, 2], np.int64))],
                      "/Unsqueeze")
    mask = graph.node("Cast", [mask], "/Cast", to=TensorProto.FLOAT)
    inverted = graph.node("Sub", [graph.constant("const_one_f", np.array(1.0, np.float32)), mask], "/Sub")
    lowest = graph.constant("const_min_f", np.array(np.finfo(np.float32).min, np.float32))
    return graph.node("Mul", [inverted, lowest], "/Mul")


def _attention(graph: _Graph, x: str, mask: str, layer: int, config: BertConfig) -> str:
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    prefix, scope = f"encoder.layer.{layer}.attention", f"/encoder/layer.{layer}/attention"
    split = graph.constant("shape_heads", np.array([0, 0, heads, head_dim], np.int64))
    projected = {}
    for role in ("query", "key", "value"):
        value = graph.linear(x, f"{prefix}.self.{role}", f"{scope}/self/{role}")
        value = graph.node("Reshape", [value, split], f"{scope}/self/{role}/Reshape")
        perm = [0, 2, 3, 1] if role == "key" else [0, 2, 1, 3]
        projected[role] = graph.node("Transpose", [value], f"{scope}/self/{role}/Transpose", perm=perm)
    scores = graph.node("MatMul", [projected["query"], projected["key"]], f"{scope}/self/MatMul")
    scale = graph.constant(f"const_sqrt_{head_dim}", np.array(math.sqrt(head_dim), np.float32))
    scores = graph.node("Div", [scores, scale], f"{scope}/self/Div")
    scores = graph.node("Add", [scores, mask], f"{scope}/self/Add")
    probs = graph.node("Softmax", [scores], f"{scope}/self/Softmax", axis=-1)
    context = graph.node("MatMul", [probs, projected["value"]], f"{scope}/self/MatMul_1")
    context = graph.node("Transpose", [context], f"{scope}/self/Transpose", perm=[0, 2, 1, 3])
    merge = graph.constant("shape_hidden", np.array([0, 0, config.hidden_size], np.int64))
    context = graph.node("Reshape", [context, merge], f"{scope}/self/Reshape")
    out = graph.linear(context, f"{prefix}.output.dense", f"{scope}/output/dense")
    out = graph.node("Add", [out, x], f"{scope}/output/Add")
    return graph.layer_norm(out, f"{prefix}.output.LayerNorm", f"{scope}/output/LayerNorm",
                            config.layer_norm_eps)


def _feed_forward(graph: _Graph, x: str, layer: int, config: BertConfig) -> str:
    prefix, scope = f"encoder.layer.{layer}", f"/encoder/layer.{layer}"
    hidden = graph.linear(x, f"{prefix}.intermediate.dense", f"{scope}/intermediate/dense")
    # exact GELU: x * 0.5 * (1 + erf(x / sqrt(2)))
    scaled = graph.node("Div", [hidden, graph.constant("const_sqrt2", np.array(math.sqrt(2.0), np.float32))],
                        f"{scope}/intermediate/intermediate_act_fn/Div")
    erf = graph.node("Erf", [scaled], f"{scope}/intermediate/intermediate_act_fn/Erf")
    erf = graph.node("Add", [erf, graph.constant("const_one_f", np.array(1.0, np.float32))],
                     f"{scope}/intermediate/intermediate_act_fn/Add")
    gated = graph.node("Mul", [hidden, erf], f"{scope}/intermediate/intermediate_act_fn/Mul")
    gated = graph.node("Mul", [gated, graph.constant("const_half", np.array(0.5, np.float32))],
                       f"{scope}/intermediate/intermediate_act_fn/Mul_1")
    out = graph.linear(gated, f"{prefix}.output.dense", f"{scope}/output/dense")
    out = graph.node("Add", [out, x], f"{scope}/output/Add")
    return graph.layer_norm(out, f"{prefix}.output.LayerNorm", f"{scope}/output/LayerNorm",
                            config.layer_norm_eps)


def build_bert_onnx(weights: dict[str, np.ndarray], config: BertConfig, name: str) -> onnx.ModelProto:
    """The encoder graph (opset 17) with ``weights`` keyed by PyTorch parameter names
    (``embeddings.*``, ``encoder.layer.N.*``; a ``bert.`` prefix is dropped)."""
    weights = {key.removeprefix("bert."): value for key, value in weights.items()}
    graph = _Graph(weights)
    x = _embeddings(graph, config)
    mask = _additive_mask(graph)
    for layer in range(config.num_hidden_layers):
        x = _attention(graph, x, mask, layer, config)
        x = _feed_forward(graph, x, layer, config)
    x = graph.node("Identity", [x], "/last_hidden_state")
    graph.nodes[-1].output[0] = "last_hidden_state"
    tokens = ["batch_size", "sequence_length"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, tokens)
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                           [*tokens, config.hidden_size])
    proto = helper.make_graph(graph.nodes, name, inputs, [output], list(graph.initializers.values()))
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="spa.testbeds.bert_onnx")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
