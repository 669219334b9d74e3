"""Quality on held-out real data (spa.verify.quality) in every command, separate
from the exactness verdict; and a plugged-in task metric (--eval)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest

from spa.calibration import load_calibration, model_inputs
from spa.errors import UserError
from spa.verify.quality import OutputKinds, load_metric, measure_quality
from spa.workflows.run import split_holdout
from tests.conftest import mlp_model


def _calib(tmp_path: Path, samples: int) -> Path:
    path = tmp_path / "calib.npz"
    data = np.random.default_rng(5).standard_normal((samples, 4, 8)).astype(np.float32)
    np.savez(path, X=data)
    return path


def test_identical_models_agree_and_a_negated_one_does_not(mlp_path: Path, tmp_path: Path) -> None:
    negated = mlp_model()
    negated.graph.node[-1].op_type = "Neg"  # Y = -H3
    negated_path = tmp_path / "neg.onnx"
    onnx.save(negated, str(negated_path))
    feeds = [{"X": np.random.default_rng(s).standard_normal((16, 8)).astype(np.float32)} for s in range(3)]
    same = measure_quality(mlp_path, mlp_path, feeds)
    assert same.samples == 3 and same.cosine == pytest.approx(1.0)
    assert same.top1_agreement == 1.0
    flipped = measure_quality(mlp_path, negated_path, feeds)
    assert flipped.cosine == pytest.approx(-1.0)
    assert flipped.top1_agreement is not None and flipped.top1_agreement < 0.2  # argmax -> argmin


DETECTOR = """
<ir_version: 9, opset_import: ["" : 17]>
det (float[1, 4, 50] x) => (float[1, 6, 50] y) {
  box = Mul (x, big)
  s = Slice (x, starts, ends, axes)
  t = Mul (s, k)
  p = Sigmoid (t)
  y = Concat <axis = 1> (box, p)
}
"""


def _detector(path: Path, k: float) -> Path:
    """A YOLO-style head [batch, 4 + classes, anchors]: 4 box rows of up to ~900
    next to 2 rows of class scores in (0, 1) that ``k`` shapes."""
    proto = onnx.parser.parse_model(DETECTOR)
    for name, value in (("big", np.float32(300.0)), ("k", np.float32(k)), ("starts", np.array([0], np.int64)),
                        ("ends", np.array([2], np.int64)), ("axes", np.array([1], np.int64))):  # fmt: skip
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    onnx.save(proto, str(path))
    return path


def test_a_detectors_class_scores_count_once_per_feature(tmp_path: Path) -> None:
    """Flipping the class scores of a detector (every detection lost) leaves the
    flattened cosine at ~1, ruled by the box coordinates; the feature cosine (per
    row of [batch, 4 + classes, anchors], averaged) sees it, top-1 agreement is
    not measured (the last axis holds anchors, not classes), and the search's
    quality loss is far past a 1% budget."""
    from spa.workflows.search import quality_loss

    dense, flipped = _detector(tmp_path / "d.onnx", 3.0), _detector(tmp_path / "f.onnx", -3.0)
    feeds = [{"x": np.random.default_rng(s).standard_normal((1, 4, 50)).astype(np.float32)} for s in range(4)]
    same = measure_quality(dense, dense, feeds)
    assert same.feature_cosine == pytest.approx(1.0) and same.top1_agreement is None
    quality = measure_quality(dense, flipped, feeds)
    (output,) = quality.outputs
    assert output.cosine > 0.999 and output.feature_axis == 1 and output.top1_agreement is None
    assert output.feature_cosine is not None and output.feature_cosine < 0.95
    loss, measure = quality_loss(quality, None, None)
    assert loss == pytest.approx(1.0 - output.feature_cosine) and loss > 0.05
    assert "feature cosine" in measure and "feature cos" in quality.line()


def test_a_decomposed_softmax_is_class_scores_by_its_values(tmp_path: Path) -> None:
    """Exp / ReduceSum (a JAX export's softmax): no Softmax node, but rows that sum
    to 1, so top-1 agreement is measured."""
    proto = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        soft (float[1, 6] x) => (float[1, 6] y) {
          e = Exp (x)
          total = ReduceSum <keepdims = 1> (e, axes)
          y = Div (e, total)
        }
        """)  # fmt: skip
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    path = tmp_path / "soft.onnx"
    onnx.save(proto, str(path))
    feeds = [{"x": np.random.default_rng(s).standard_normal((1, 6)).astype(np.float32)} for s in range(3)]
    assert measure_quality(path, path, feeds).top1_agreement == 1.0


def _ocr_head(path: Path, weight: np.ndarray) -> Path:
    """Gemm scores reshaped to [T, 1, classes] under a declared [1, seqlen] (an OCR export)."""
    proto = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        ocr (float[12, 8] x) => (float[1, seqlen] y) {
          g = Gemm <transB = 1> (x, w)
          y = Reshape (g, shape)
        }
        """)  # fmt: skip
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(weight, "w"),
                                    onnx.numpy_helper.from_array(np.array([12, 1, -1]), "shape")])  # fmt: skip
    onnx.save(proto, str(path))
    return path


def test_an_ocr_heads_regrouped_scores_are_measured_by_top1_per_step(tmp_path: Path) -> None:
    """A small change to the weights keeps the cosine above 0.99 and changes a
    decision at some time steps: top-1 agreement over [T, 1, classes] sees it."""
    weight = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    dense = _ocr_head(tmp_path / "d.onnx", weight)
    changed = weight.copy()
    changed[0] += 0.1 * np.abs(changed).max()  # class 0 wins a few more steps
    nudged = _ocr_head(tmp_path / "n.onnx", changed)
    feeds = [{"x": np.random.default_rng(s).standard_normal((12, 8)).astype(np.float32)} for s in range(4)]
    (output,) = measure_quality(dense, nudged, feeds).outputs
    assert output.cosine > 0.99 and output.top1_agreement is not None and output.top1_agreement < 0.95
    # a caller that read the reference's outputs once (the search) gets the same figures
    kinds = OutputKinds.of(dense)
    assert kinds.classes == {"y": 6} and kinds.declared == {"y": (1, None)}
    assert measure_quality(dense, nudged, feeds, kinds=kinds).outputs == [output]
    assert measure_quality(dense, dense, feeds).top1_agreement == 1.0


def test_split_keeps_a_quarter_for_quality_and_says_when_it_cannot(tmp_path: Path) -> None:
    model = ir.serde.deserialize_model(mlp_model())
    calibration, holdout, note = split_holdout(_calib(tmp_path, 8), model, 0.25)
    assert calibration is not None and (len(calibration), len(holdout), note) == (6, 2, "")
    _, holdout, note = split_holdout(_calib(tmp_path, 3), model, 0.25)
    assert holdout == [] and "3 calibration samples (< 4)" in note
    _, holdout, note = split_holdout(_calib(tmp_path, 8), model, 0.0)
    assert holdout == [] and "--holdout 0" in note
    assert split_holdout(None, model, 0.25)[2] == "quality not measured: no real data (give --calib)"
    with pytest.raises(UserError, match=r"--holdout 1\.0"):
        split_holdout(_calib(tmp_path, 8), model, 1.0)


def test_samples_stacked_along_the_batch_axis_are_one_feed_each(
    run_cli, mlp_path: Path, tmp_path: Path
) -> None:
    """X is [N, 8]: an (8, 8) array is 8 samples of batch 1, as (8, 1, 8) is
    (the form users save most: images (N, 3, H, W) for [batch, 3, H, W])."""
    rows = np.random.default_rng(6).standard_normal((8, 8)).astype(np.float32)
    stacked, per_sample = tmp_path / "stacked.npz", tmp_path / "per_sample.npz"
    np.savez(stacked, X=rows)
    np.savez(per_sample, X=rows[:, None, :])
    model = ir.serde.deserialize_model(mlp_model())
    assert model_inputs(model) == {"X": 2} == model_inputs(mlp_model())
    a, held_a, _ = split_holdout(stacked, model, 0.25)
    b, held_b, _ = split_holdout(per_sample, model, 0.25)
    assert a is not None and b is not None and (len(a), len(held_a)) == (6, 2)
    for x, y in zip(a + held_a, b + held_b, strict=True):
        assert x["X"].shape == (1, 8) and np.array_equal(x["X"], y["X"])
    report = tmp_path / "report.json"
    result = run_cli(
        "prune", mlp_path, "-o", tmp_path / "o.onnx", "--ratio", "0.25", "--criterion", "flap",
        "--allocation", "sensitivity", "--calib", stacked, "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "(2 held out)" in result.output.strip().splitlines()[-1]
    assert json.loads(report.read_text())["quality"]["samples"] == 2
    # a fixed leading dim is not a batch axis: (8, 8) stays 8 samples of shape (8,)
    fixed = onnx.parser.parse_model(
        '<ir_version: 9, opset_import: ["" : 17]> g (float[4, 8] X) => (float[4, 8] Y) { Y = Relu(X) }'
    )
    assert model_inputs(fixed) == {"X": None}
    assert next(iter(load_calibration(stacked, model_inputs(fixed))))["X"].shape == (8,)


@pytest.mark.parametrize(
    "command",
    [
        ["quantize", "--weights", "int8", "--block", "16", "--method", "gptq"],
        ["quantize", "--activations", "int8", "--allow-slower"],
        ["prune", "--ratio", "0.25", "--criterion", "flap"],
        ["sparsify", "--pattern", "2:4", "--method", "sparsegpt", "--cosine", "0.3"],
        ["optimize", "--prune", "0.25", "--criterion", "wanda_sp", "--cosine", "0.5"],
    ],
)
def test_every_command_reports_quality_on_held_out_calibration_samples(
    run_cli, mlp_path: Path, tmp_path: Path, command: list[str]
) -> None:
    report = tmp_path / "report.json"
    result = run_cli(
        command[0], mlp_path, "-o", tmp_path / "o.onnx", *command[1:],
        "--calib", _calib(tmp_path, 8), "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    verdict = result.output.strip().splitlines()[-1]
    assert "quality top-1" in verdict and "(2 held out)" in verdict
    quality = json.loads(report.read_text())["quality"]
    assert quality["samples"] == 2
    assert 0.0 <= quality["top1_agreement"] <= 1.0 and -1.0 <= quality["cosine"] <= 1.0


def test_without_real_data_the_verdict_says_quality_was_not_measured(
    run_cli, mlp_path: Path, tmp_path: Path
) -> None:
    result = run_cli("quantize", mlp_path, "-o", tmp_path / "o.onnx", "--weights", "int8")
    assert result.exit_code == 0, result.output
    assert "quality not measured: no real data (give --calib)" in result.output.splitlines()[-1]


def test_a_task_metric_is_reported_for_input_and_output(
    run_cli, mlp_path: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    result = run_cli(
        "quantize", mlp_path, "-o", tmp_path / "o.onnx", "--weights", "int8", "--block", "16",
        "--eval", "tests.quality_metric:mlp_accuracy", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    quality = json.loads(report.read_text())["quality"]
    assert quality["metric"] == "tests.quality_metric:mlp_accuracy"
    assert quality["metric_before"] == 1.0  # labels come from the dense model
    assert 0.8 <= quality["metric_after"] <= 1.0
    assert "tests.quality_metric:mlp_accuracy 1 ->" in result.output.splitlines()[-1]


def test_a_bad_metric_spec_is_one_line(run_cli, mlp_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="write it as module:function"):
        load_metric("nocolon")
    result = run_cli(
        "quantize", mlp_path, "-o", tmp_path / "o.onnx", "--eval", "tests.quality_metric:absent"
    )
    assert result.exit_code == 1
    assert "has no function 'absent'" in result.stderr
    assert not (tmp_path / "o.onnx").exists()  # refused before any work
