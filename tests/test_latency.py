"""spa.verify.latency: interleaved ratios of two real ORT sessions (no timing assertions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import mlp_model

from spa.verify.latency import compare_latency


def test_compare_latency_measures_both_models_interleaved(tmp_path: Path) -> None:
    small, large = tmp_path / "small.onnx", tmp_path / "large.onnx"
    small.write_bytes(mlp_model(hidden=8).SerializeToString())
    large.write_bytes(mlp_model(hidden=64).SerializeToString())
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    result = compare_latency(small, large, [{"X": x}], min_rounds=6, max_rounds=6)
    assert result.rounds == 6 and result.threads == 1 and result.target == "ort-cpu"
    assert result.reference_ms > 0 and result.candidate_ms > 0 and result.speedup > 0
    assert result.slower == (result.speedup < 1)
    assert "ort-cpu (1 thread, 6 interleaved rounds)" in result.line()


def test_compare_latency_rejects_unknown_target_and_empty_feeds(mlp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown latency target 'tpu'"):
        compare_latency(mlp_path, mlp_path, [{}], target="tpu")
    with pytest.raises(ValueError, match="at least one feed"):
        compare_latency(mlp_path, mlp_path, [])
