"""`spa optimize --recipe cleanup` over every zoo model but two.

Each output must pass onnx.checker, run in ONNX Runtime, and match its input
with relative error (max|Δ| / max|reference|) <= 1e-5 on seeded inputs.
VGG-19 and ZFNet-512 (the ONNX model zoo's, 548 and 333 MB) are left to
onnx-alexnet, the same Conv/ReLU/pool stack and Gemm head at 233 MB: the
three took 3.7 of the suite's CPU minutes, nearly all of it copying weights.
test_zoo_prune and test_zoo_registry still run all three.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from spa import zoo
from spa.verify import AllClose
from spa.workflows.optimize import optimize

#: Covered by onnx-alexnet (see the module docstring).
SAME_AS_ALEXNET = {"onnx-vgg19", "onnx-zfnet512"}
ENTRIES = [entry for entry in zoo.entries() if entry.name not in SAME_AS_ALEXNET]


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_cleanup_preserves_outputs(entry: zoo.ZooEntry, tmp_path: Path) -> None:
    source = zoo.materialize(entry.name, tmp_path / "model.onnx")
    shapes, ranges = entry.shapes, entry.int_ranges
    result = optimize(
        source,
        tmp_path / "clean.onnx",
        recipe="cleanup",
        policy=AllClose(rtol=1e-5),
        shapes=shapes,
        int_ranges=ranges,
    )
    assert result.verification is not None
    assert result.verification.passed, result.verification.render()
    onnx.checker.check_model(str(result.output))
    nodes_before = result.records[0].nodes_before
    nodes_after = result.records[-1].nodes_after
    assert nodes_after <= nodes_before, "cleanup must never grow the graph"
