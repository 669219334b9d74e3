"""Sequential reconstruction: the statistics of each stage's weight updates are
measured on the model pruned (updated and masked) up to that stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from spa.calibration import CalibrationRequest, CalibrationResult
from spa.errors import UserError
from spa.pass_manager import run_passes
from spa.passes.prune import PrunePass
from spa.workflows.prune import prune_model
from spa.workflows.run import feeds_calibrator

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
chain (float[N, 6] x) => (float[N, 4] y) {
  h1 = MatMul(x, w1)
  a1 = Relu(h1)
  h2 = MatMul(a1, w2)
  a2 = Relu(h2)
  y = MatMul(a2, w3)
}
"""


def _chain(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(CHAIN)
    for name, shape in {"w1": (6, 10), "w2": (10, 10), "w3": (10, 4)}.items():
        array = rng.standard_normal(shape).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    return model


def _feeds(count: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((16, 6)).astype(np.float32)} for _ in range(count)]


def test_each_stage_is_measured_on_the_model_pruned_up_to_it() -> None:
    feeds = _feeds(6)
    measure = feeds_calibrator(feeds)
    rounds: list[tuple[tuple[str, ...], bool]] = []
    means: dict[str, list[np.ndarray]] = {}

    def calibrator(model: ir.Model, request: CalibrationRequest) -> CalibrationResult:
        rounds.append((tuple(request.channels), request.model is not None))
        result = measure(model, request)
        for name, statistics in result.channels.items():
            means.setdefault(name, []).append(statistics.mean)
        return result

    model = ir.serde.deserialize_model(_chain())
    prune = PrunePass(0.3, "obs", bias_compensation=True, sequential=2)
    records = run_passes(model, [prune], calibrator=calibrator)
    # round 0: both layers' inputs on the dense model; round 1: the last layer's input
    # again, on the model whose first group is already pruned and updated
    assert [(len(names), variant) for names, variant in rounds] == [(2, False), (1, True)]
    (again,) = rounds[1][0]
    dense, pruned = means[again]
    assert not np.allclose(dense, pruned)
    assert records[0].details["plan"].policy["sequential_stages"] == 2


def test_sequential_prune_stays_mask_equivalent(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(_chain(3), str(source))
    results = {}
    for stages in (0, 2):
        result = prune_model(
            source, tmp_path / f"p{stages}.onnx", ratio=0.3, criterion="obs",
            bias_compensation=True, calibration=_feeds(8), verify=True, sequential_stages=stages,
        )  # fmt: skip
        assert result.verification is not None and result.verification.passed
        results[stages] = result.report["reconstruction"]
    # the same plan, but the second layer's update read other statistics
    assert results[0][0] == results[2][0]
    assert results[0][-1]["error_before"] != results[2][-1]["error_before"]


def test_sequential_needs_an_update_that_reads_statistics() -> None:
    with pytest.raises(UserError, match="--criterion obs or --bias-compensation"):
        PrunePass(0.3, "l1", sequential=2)
