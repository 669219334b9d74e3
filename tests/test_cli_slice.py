"""``spa slice`` through click's CliRunner, and ``slice_model`` with calibration feeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from spa import zoo
from spa.calibration import calibration_shapes
from spa.verify.feeds import InputSpec, dims_from_shapes
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


def test_slice_says_when_it_unties_a_head_from_the_embedding_table(run_cli, tmp_path: Path) -> None:
    """A head that reads the token embedding table (GPT-2, Gemma, Llama 3.2 exported by
    torch.export keep the tie) gets its own copy: the sliced file can be larger than its
    input (the dynamo GPT-2 of the zoo: -6 % of params where untied exports lose 25 %), and
    the verdict says why."""
    model, out, report = tmp_path / "m.onnx", tmp_path / "s.onnx", tmp_path / "r.json"
    onnx.save(_ln_model(seed=4), str(model))
    result = run_cli("slice", model, "-o", out, "--ratio", "0.25", "--round-to", "4", "--report", report,
                     "--int-range", f"ids:0:{VOCAB}")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "the head read the embedding table: it has its own copy now (384 params before slicing)" in result.output
    assert json.loads(report.read_text())["slice"]["untied_params"] == VOCAB * HIDDEN


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


def _kv_calibration(path: Path, entry: zoo.ZooEntry, samples: int) -> None:
    rng = np.random.default_rng(7)
    arrays = {}
    for spec in entry.inputs:
        if spec.low is not None:
            arrays[spec.name] = rng.integers(spec.low, spec.high, (samples, *spec.shape))
        else:
            arrays[spec.name] = rng.standard_normal((samples, *spec.shape)).astype(np.float32)
    np.savez(path, **arrays)


def test_kv_cache_decoder_takes_its_dims_from_calibration(run_cli, tmp_path: Path) -> None:
    """A decoder step needs total = past + seq: with --calib and no --dim, the seeded
    verification inputs take the calibration samples' sizes; without either, the
    dims probe finds one dim as the sum of two others and says so (with all dims
    at 1 ONNX Runtime rejects the model)."""
    entry = zoo.entry("hf-llama-kv")
    model = zoo.materialize(entry.name, tmp_path / "kv.onnx")
    calib = tmp_path / "calib.npz"
    _kv_calibration(calib, entry, samples=4)
    result = run_cli("slice", model, "-o", tmp_path / "s.onnx", "--calib", calib, "--verify",
                     "--cosine", "0.5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "PASSED | output present.1.value" in result.output and "hidden 128 → 96" in result.output
    probed = run_cli("quantize", model, "-o", tmp_path / "q.onnx", "--weights", "int8")
    assert probed.exit_code == 0, probed.output
    assert "seeded inputs use --dim past=3 --dim seq=4 --dim total=7" in probed.output
    done = run_cli("quantize", model, "-o", tmp_path / "q2.onnx", "--weights", "int8",
                   "--dim", "seq=4", "--dim", "past=8", "--dim", "total=12")  # fmt: skip
    assert done.exit_code == 0 and "does not run with" not in done.output, done.output


def test_calibration_shapes_and_dims(tmp_path: Path) -> None:
    specs = [InputSpec("ids", np.dtype(np.int64), ("batch", "seq")),
             InputSpec("mask", np.dtype(np.int64), ("batch", "total")),
             InputSpec("past", np.dtype(np.float32), ("batch", 2, "past", 8)),
             InputSpec("other", np.dtype(np.float32), ("batch", "seq"))]  # fmt: skip
    arrays = {"ids": np.zeros((5, 1, 4), np.int64), "mask": np.ones((5, 1, 12), np.int64),
              "past": np.zeros((5, 1, 2, 8, 8), np.float32), "other": np.zeros((5, 1, 6))}  # fmt: skip
    np.savez(tmp_path / "c.npz", **arrays)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    for source in (tmp_path / "c.npz", folder):
        shapes = calibration_shapes(source, ["ids", "mask", "past", "other", "absent"])
        assert shapes == {"ids": (1, 4), "mask": (1, 12), "past": (1, 2, 8, 8), "other": (1, 6)}
    # 'seq' is 4 for ids and 6 for other: left out rather than guessed
    assert dims_from_shapes(specs, shapes) == {"batch": 1, "total": 12, "past": 8}
    assert calibration_shapes(tmp_path / "missing.npz", ["ids"]) == {}
