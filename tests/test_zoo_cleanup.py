"""`spa optimize --recipe cleanup` over every zoo model.

Each output must pass onnx.checker, run in ONNX Runtime, and match its input
with relative error (max|Δ| / max|reference|) <= 1e-5 on seeded inputs.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from spa import zoo
from spa.verify import AllClose
from spa.workflows.optimize import optimize

ENTRIES = zoo.entries()


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
