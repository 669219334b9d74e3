"""``spa slice`` through click's CliRunner, and ``slice_model`` with calibration feeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from spa.workflows.slice import slice_model
from tests.test_slice import HIDDEN, POST_NORM, VOCAB, _feeds, _ln_model, _rms_model


def test_slice_command_report_and_exactness(run_cli, tmp_path: Path) -> None:
    model, out, report = tmp_path / "m.onnx", tmp_path / "s.onnx", tmp_path / "r.json"
    proto = _rms_model(seed=4)
    onnx.save(proto, str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, ids=np.stack([feed["ids"] for feed in _feeds(proto, 4, seed=30)]))
    result = run_cli(
        "slice", model, "-o", out, "--ratio", "0.25", "--round-to", "4", "--calib", calib,
        "--report", report, "--int-range", f"ids:0:{VOCAB}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "hidden 16 → 12" in result.output and "exact rotation" in result.output
    data = json.loads(report.read_text())["slice"]
    assert data["hidden_before"] == HIDDEN and data["hidden_after"] == 12
    assert data["exactness"]["passed"] and data["exactness"]["max_rel_diff"] < 1e-4
    assert data["params_after"] < data["params_before"] and data["macs_after"] < data["macs_before"]
    assert data["calibration"] == str(calib)
    onnx.checker.check_model(onnx.load(str(out)))


def test_slice_command_refuses_post_norm_in_one_line(run_cli, tmp_path: Path) -> None:
    model = tmp_path / "post.onnx"
    proto = onnx.parser.parse_model(POST_NORM)
    rng = np.random.default_rng(0)
    shapes = {"table": (VOCAB, HIDDEN), "w1": (HIDDEN, HIDDEN), "g1": (HIDDEN,), "b1": (HIDDEN,),
              "head": (HIDDEN, VOCAB)}  # fmt: skip
    for name, shape in shapes.items():
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    onnx.save(proto, str(model))
    result = run_cli("slice", model, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 1
    assert "post-norm block" in result.output and "Traceback" not in result.output


def test_slice_model_with_feed_dicts_verifies_by_cosine(tmp_path: Path) -> None:
    proto = _ln_model(seed=5, rank=12)
    onnx.save(proto, str(tmp_path / "ln.onnx"))
    result = slice_model(
        tmp_path / "ln.onnx", tmp_path / "ln-s.onnx", ratio=0.25, round_to=4,
        calibration=_feeds(proto, 4, seed=40), verify=True, int_ranges={"ids": (0, VOCAB)},
    )  # fmt: skip
    assert (result.hidden_before, result.hidden_after) == (HIDDEN, 12)
    assert result.verification is not None and result.verification.passed
    assert result.verification.max_rel_diff < 1e-3  # a rank-12 stream loses nothing
    assert result.verdict_line.startswith("PASSED | slice | hidden 16 → 12")
