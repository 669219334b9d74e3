"""Transformer cases on real exports from the zoo: whole heads, KV groups and
MLP channels go, shape constants and num_heads follow, and the pruned model
matches the masked original in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from spa import zoo
from spa.verify import AllClose
from spa.workflows.prune import prune_model


def _prune(name: str, tmp_path: Path, ratio: float = 0.5):
    entry = zoo.entry(name)
    source = zoo.materialize(name, tmp_path / "model.onnx")
    result = prune_model(
        source,
        tmp_path / "pruned.onnx",
        ratio=ratio,
        criterion="l2",
        verify=True,
        policy=AllClose(rtol=1e-4),
        shapes=entry.shapes,
        int_ranges=entry.int_ranges,
    )
    assert result.verification is not None and result.verification.passed
    return onnx.load(str(source)), onnx.load(str(result.output)), result


def _matmul_weight_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    """Shapes of the constant right-hand sides of MatMuls, in graph order."""
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        dims[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in dims
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hf-llama-gqa", "hf-qwen2-gqa"])
def test_gqa_decoder_loses_kv_groups_query_heads_and_mlp(name: str, tmp_path: Path) -> None:
    before, after, result = _prune(name, tmp_path)
    # layer 0: q_proj [128, 4 heads x 32], k_proj and v_proj [128, 2 KV heads x 32],
    # o_proj [4 x 32, 128], then the SwiGLU gate/up [128, 256] and down [256, 128]
    first_layer_before = _matmul_weight_shapes(before)[:7]
    first_layer_after = _matmul_weight_shapes(after)[:7]
    assert first_layer_before == [
        (128, 128),
        (128, 64),
        (128, 64),
        (128, 128),
        (128, 256),
        (128, 256),
        (256, 128),
    ]
    assert first_layer_after == [
        (128, 64),
        (128, 32),
        (128, 32),
        (64, 128),
        (128, 128),
        (128, 128),
        (128, 128),
    ]
    assert result.report["params_after"] < 0.8 * result.report["params_before"]


@pytest.mark.slow
def test_ort_fused_bert_loses_heads_with_num_heads_rewritten(tmp_path: Path) -> None:
    before, after, result = _prune("hf-bert-ort-fused", tmp_path)
    heads_before = [
        a.i
        for n in before.graph.node
        if n.op_type == "Attention"
        for a in n.attribute
        if a.name == "num_heads"
    ]
    heads_after = [
        a.i
        for n in after.graph.node
        if n.op_type == "Attention"
        for a in n.attribute
        if a.name == "num_heads"
    ]
    assert heads_before == [4, 4] and heads_after == [2, 2]
    assert result.statistics["heads_attributes_rewritten"] == 2


@pytest.mark.slow
def test_gpt2_fused_qkv_loses_heads(tmp_path: Path) -> None:
    """GPT-2 (dynamo export): Conv1D as Gemm over [batch*seq, 128], one fused
    c_attn weight split into q, k, v, heads behind Reshape/Transpose."""
    before, after, _ = _prune("hf-gpt2-dynamo", tmp_path)
    dims_before = {t.name: tuple(t.dims) for t in before.graph.initializer}
    dims_after = {t.name: tuple(t.dims) for t in after.graph.initializer}
    name = "inner.transformer.h.0.attn.c_attn.weight"
    assert dims_before[name] == (128, 384) and dims_after[name] == (128, 192)
    assert dims_after["inner.transformer.h.0.attn.c_proj.weight"] == (64, 128)
