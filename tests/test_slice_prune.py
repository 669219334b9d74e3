"""Slicing combined with head and MLP pruning in one plan (slice, then prune), on
zoo decoders in ONNX Runtime: through the API (``slice_model(prune=...)``, the
prune step checked by mask equivalence against the sliced model), through
``spa slice --prune`` and through a recipe for ``spa optimize --recipe``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from spa import zoo
from spa.verify import input_specs, make_feeds
from spa.verify.runner import run_model
from spa.workflows.slice import PruneAfterSlice, slice_model
from tests.test_slice import VOCAB, _rms_model
from tests.test_slice import _feeds as text_feeds

RECIPE = """passes:
  - rotation-invariant
  - name: rotate-slice
    options: {ratio: 0.25}
  - name: prune
    options: {ratio: 0.5, criterion: wanda_sp}
"""


def _feeds(proto: onnx.ModelProto, count: int) -> list[dict[str, np.ndarray]]:
    return [make_feeds(input_specs(proto), seed=seed) for seed in range(count)]


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    model = onnx.load(str(path))
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def _runs_like(source: Path, output: Path, feed: dict[str, np.ndarray]) -> None:
    """The output runs in ORT and returns every output at the input's shape, finite."""
    expected = run_model(str(source), feed)
    got = run_model(str(output), feed)
    for name, array in expected.items():
        assert got[name].shape == array.shape and np.isfinite(got[name]).all()


@pytest.mark.slow
def test_slice_then_prune_llama_gqa_is_mask_exact_and_runs(tmp_path: Path) -> None:
    source = zoo.materialize("hf-llama-gqa", tmp_path / "llama.onnx")
    proto = onnx.load(str(source))
    feeds = _feeds(proto, 6)
    output, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = slice_model(
        source, output, ratio=0.25, calibration=feeds[1:], report_path=report,
        prune=PruneAfterSlice(0.5, criterion="wanda_sp"),
    )  # fmt: skip
    assert (result.hidden_before, result.hidden_after) == (128, 96)
    assert result.exactness is not None and result.exactness.passed
    assert result.prune_verification is not None and result.prune_verification.passed
    assert result.prune_verification.max_rel_diff < 1e-4
    data = json.loads(report.read_text())
    assert data["prune"]["groups_pruned"] > 0
    # the prune step starts from the sliced model and ends at the output
    assert data["prune"]["params_after"] == data["slice"]["params_after"]
    assert data["prune"]["params_after"] < data["prune"]["params_before"]
    assert data["prune"]["params_before"] < data["slice"]["params_before"]
    assert result.verdict_line.startswith("PASSED | slice+prune | hidden 128 → 96 | groups")
    # every reader of the stream has 96 input rows; MLP and head widths shrank too
    shapes = _weight_shapes(output)
    mlp = [s for n, s in shapes.items() if len(s) == 2 and 96 in s and max(s) < 4 * 128]
    assert mlp and all(min(s) <= 96 for s in mlp)
    _runs_like(source, output, feeds[0])


@pytest.mark.slow
def test_slice_prune_recipe_through_optimize_on_gpt2(run_cli, tmp_path: Path) -> None:
    """GPT-2: LayerNorm, fused QKV Gemm, tied head — sliced, then heads and MLP pruned."""
    source = zoo.materialize("hf-gpt2", tmp_path / "gpt2.onnx")
    proto = onnx.load(str(source))
    feeds = _feeds(proto, 5)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{k: np.stack([feed[k] for feed in feeds[1:]]) for k in feeds[0]})
    recipe = tmp_path / "slice_prune.yaml"
    recipe.write_text(RECIPE)
    output, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = run_cli(
        "optimize", source, "-o", output, "--recipe", recipe, "--calib", calib, "--no-verify",
        "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    passes = {p["name"]: p["statistics"] for p in json.loads(report.read_text())["passes"]}
    assert passes["rotate-slice"]["hidden_before"] == 128
    assert passes["rotate-slice"]["hidden_after"] == 96
    assert passes["prune"]["groups_pruned"] > 0 and passes["prune"]["params_removed"] > 0
    _runs_like(source, output, feeds[0])


def test_slice_command_with_prune_checks_the_prune_by_masks(run_cli, tmp_path: Path) -> None:
    model, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    proto = _rms_model(seed=4)
    onnx.save(proto, str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, ids=np.stack([feed["ids"] for feed in text_feeds(proto, 8, seed=30)]))
    result = run_cli(
        "slice", model, "-o", out, "--ratio", "0.25", "--round-to", "4", "--calib", calib,
        "--prune", "0.5", "--criterion", "l2", "--int-range", f"ids:0:{VOCAB}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "prune (mask equivalence against the sliced model):" in result.output
    assert "slice+prune | hidden 16 → 12 | groups 1/" in result.output
    # hidden 16 -> 12 and MLP 20 -> 10: up and gate 12 x 10, down 10 x 12, table and head 24 x 12
    matrices = sorted(s for s in _weight_shapes(out).values() if len(s) == 2)
    assert matrices == [(10, 12), (12, 10), (12, 10), (12, 24), (24, 12)]


def test_slice_command_refuses_a_prune_share_outside_zero_one(run_cli, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(_rms_model(seed=4), str(model))
    result = run_cli("slice", model, "-o", tmp_path / "s.onnx", "--prune", "1.5")
    assert result.exit_code == 1 and "--prune 1.5: give a share in [0, 1)" in result.output
    assert not (tmp_path / "s.onnx").exists()


def test_prune_step_inside_a_recipe_is_checked_by_masks(run_cli, tmp_path: Path) -> None:
    """The recipe's final output is compared with the input by cosine (slicing is
    lossy); its prune step is also checked on its own output by mask equivalence."""
    source = zoo.materialize("hf-gpt2", tmp_path / "gpt2.onnx")
    feeds = _feeds(onnx.load(str(source)), 5)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{k: np.stack([feed[k] for feed in feeds[1:]]) for k in feeds[0]})
    recipe = tmp_path / "slice_prune.yaml"
    recipe.write_text(RECIPE)
    report = tmp_path / "r.json"
    result = run_cli(
        "optimize", source, "-o", tmp_path / "out.onnx", "--recipe", recipe, "--calib", calib,
        "--cosine", "0.1", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "recipe prune steps: mask equivalence max rel" in result.output
    (check,) = json.loads(report.read_text())["recipe_prune_checks"]
    assert check["passed"] and check["max_rel_diff"] < 1e-4
