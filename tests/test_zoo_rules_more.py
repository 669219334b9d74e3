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
