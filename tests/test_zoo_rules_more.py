"""Zoo exports that need the newer rules: TorchScript GQA decoders, whose
repeat_kv builds Expand/Reshape targets at run time (``kv_heads * n_rep`` and
the ``Where(Equal(t, -1), 1, t)`` expand idiom), lose KV groups, query heads
and MLP channels, and match the masked original in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_zoo_transformers import _matmul_weight_shapes, _prune


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hf-llama-gqa-ts", "hf-mistral-gqa"])
def test_torchscript_gqa_loses_kv_groups_through_repeat_kv(name: str, tmp_path: Path) -> None:
    before, after, result = _prune(name, tmp_path)
    # layer 0: q/k/v/o projections (4 query heads, 2 KV heads of 32), SwiGLU gate/up/down
    assert _matmul_weight_shapes(before)[:7] == [
        (128, 128), (128, 64), (128, 64), (128, 128), (128, 256), (128, 256), (256, 128),
    ]  # fmt: skip
    assert _matmul_weight_shapes(after)[:7] == [
        (128, 64), (128, 32), (128, 32), (64, 128), (128, 128), (128, 128), (128, 128),
    ]  # fmt: skip
    assert result.report["params_after"] < 0.8 * result.report["params_before"]


@pytest.mark.slow
def test_torchscript_gpt2_loses_heads_behind_run_time_targets(tmp_path: Path) -> None:
    """TorchScript GPT-2 flattens ``[batch, 16, C] -> [-1, C]`` (``16*batch``) around
    every Conv1D and rebuilds the shape from a Slice of Shape."""
    before, after, result = _prune("hf-gpt2", tmp_path)

    def first_layer(model) -> dict[str, tuple[int, ...]]:  # type: ignore[no-untyped-def]
        prefix = "inner.transformer.h.0."
        return {
            t.name[len(prefix) :]: tuple(t.dims)
            for t in model.graph.initializer
            if t.name.startswith(prefix) and t.name.endswith("weight") and "ln" not in t.name
        }

    assert first_layer(before) == {
        "attn.c_attn.weight": (128, 384),  # fused QKV, 4 heads of 32
        "attn.c_proj.weight": (128, 128),
        "mlp.c_fc.weight": (128, 512),
        "mlp.c_proj.weight": (512, 128),
    }
    assert first_layer(after) == {
        "attn.c_attn.weight": (128, 192),
        "attn.c_proj.weight": (64, 128),
        "mlp.c_fc.weight": (128, 256),
        "mlp.c_proj.weight": (256, 128),
    }
    assert result.report["params_after"] < 0.8 * result.report["params_before"]
