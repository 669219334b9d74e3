"""Per-channel statistics correction after pruning (spa.pruning.correction,
spa.passes.correct_statistics): the corrected layer's output statistics match
the dense model's on the calibration samples, mask equivalence still checks
the prune itself, and the CLI reports each corrected layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from spa.calibration import collect_channel_statistics
from spa.verify.runner import run_model
from spa.workflows.prune import prune_model
from tests.test_sensitivity import _chain, _feeds


def _stats(path: Path, value: str, feeds: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    stats = collect_channel_statistics(onnx.load(str(path)), {value: 1}, feeds)[value]
    return stats.mean, np.sqrt(stats.variance)


def _held_out_error(dense: Path, pruned: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    error = energy = 0.0
    for feed in feeds:
        want = run_model(str(dense), feed)["y"].astype(np.float64)
        got = run_model(str(pruned), feed)["y"].astype(np.float64)
        error += float(((got - want) ** 2).sum())
        energy += float((want**2).sum())
    return error / energy


def test_corrected_layer_matches_the_dense_statistics(tmp_path: Path) -> None:
    dense = tmp_path / "m.onnx"
    onnx.save(_chain(), str(dense))
    feeds = _feeds(8)
    out = tmp_path / "c.onnx"
    result = prune_model(dense, out, ratio=0.4, criterion="l2", round_to=1, calibration=feeds, holdout=0.0,
                         verify=True, correct_statistics=1)  # fmt: skip
    assert result.verification is not None and result.verification.passed  # the prune is exact
    layers = {row["value"] for row in result.report["correction"]}
    assert "b" in layers  # conv2 reads the pruned channels of conv1
    kept = [np.asarray(k) for g, k in result.plan.kept.items() if result.plan.sizes[g] == 32]
    mean_d, std_d = _stats(dense, "b", feeds)
    mean_c, std_c = _stats(out, "b", feeds)
    if kept:  # conv2's own output channels may be pruned too
        mean_d, std_d = mean_d[kept[0]], std_d[kept[0]]
    # conv2's inputs are untouched by the correction, so one round matches exactly
    # where the clip (spread ratio within [1/4, 4]) does not bind
    ratio = std_d / np.maximum(std_c, 1e-12)
    free = (ratio > 0.26) & (ratio < 3.9)
    assert free.sum() >= len(free) // 2
    np.testing.assert_allclose(mean_c[free], mean_d[free], rtol=0, atol=1e-4 * np.abs(mean_d).max())
    np.testing.assert_allclose(std_c[free], std_d[free], rtol=1e-4, atol=0)


def test_rounds_reduce_the_held_out_error_on_the_seeded_chain(tmp_path: Path) -> None:
    dense = tmp_path / "m.onnx"
    onnx.save(_chain(), str(dense))
    feeds = _feeds(16)
    errors = []
    for rounds in (0, 1, 2):
        out = tmp_path / f"r{rounds}.onnx"
        prune_model(dense, out, ratio=0.4, criterion="l2", round_to=1, calibration=feeds[:12], holdout=0.0,
                    correct_statistics=rounds)  # fmt: skip
        errors.append(_held_out_error(dense, out, feeds[12:]))
    assert errors[2] < errors[1] < errors[0]  # each round fits the model the last one left


def test_cli_correct_statistics(run_cli, tmp_path: Path) -> None:
    model = tmp_path / "chain.onnx"
    onnx.save(_chain(), str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.stack([feed["x"] for feed in _feeds(8)]))
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    result = run_cli("prune", model, "-o", out, "--ratio", "0.3", "--criterion", "l2", "--round-to", "1",
                     "--correct-statistics", "2", "--calib", calib, "--verify",
                     "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["verify"]["passed"] is True
    assert {row["round"] for row in data["correction"]} == {1, 2}
    assert "correct-statistics" in result.output


def test_optimize_checks_the_prune_and_the_recipe_around_the_correction(
    run_cli, tmp_path: Path
) -> None:
    model = tmp_path / "chain.onnx"
    onnx.save(_chain(), str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.stack([feed["x"] for feed in _feeds(8)]))
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = run_cli("optimize", model, "-o", out, "--prune", "0.3", "--criterion", "l2",
                     "--correct-statistics", "1", "--calib", calib, "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["prune"]["verify"]["passed"] is True  # mask equivalence of the prune alone
    assert data["verification"]["passed"] is True  # the recipe against the corrected model
