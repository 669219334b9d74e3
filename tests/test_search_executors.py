"""The search's executors (spa.workflows.executor): local processes and a local Ray
instance with 2 workers give the same search as this process, for the same seed.

The comparison uses ``--target tensorrt``, whose latency is spa's cost model (an
estimate, the same number every run): with ORT CPU timings, the plan itself would
follow the noise of the machine (which candidates are tried depends on speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spa.workflows.executor import LocalExecutor, RayExecutor, make_executor
from spa.workflows.search import optimize_search
from tests.search_fixtures import calib, mlp  # noqa: F401 (pytest fixtures)

SAME = ("name", "steps", "quality_loss", "metric_after", "speedup", "bytes", "params", "macs",
        "checks", "accepted")  # fmt: skip


def _search(mlp: Path, calib: Path, out: Path, executor=None) -> list[dict]:
    result = optimize_search(mlp, out, calibration=calib, max_drop=0.05, target="tensorrt",
                             metric="tests.search_metric:mlp_accuracy", executor=executor)  # fmt: skip
    rows = result.report["search"]["candidates"]
    assert len(rows) >= 5 and any(row["accepted"] for row in rows)
    return [{key: row[key] for key in SAME} for row in rows]


def test_local_processes_give_the_same_search(mlp: Path, calib: Path, tmp_path: Path) -> None:
    here = _search(mlp, calib, tmp_path / "a.onnx")
    pool = LocalExecutor(2)
    try:
        assert _search(mlp, calib, tmp_path / "b.onnx", pool) == here
    finally:
        pool.close()
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_a_local_ray_instance_with_two_workers_gives_the_same_search(
    mlp: Path, calib: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray", reason="Ray is in the dev extra: pip install -e '.[cpu,dev]'")
    here = _search(mlp, calib, tmp_path / "a.onnx")
    executor = RayExecutor("local", workers=2)
    try:
        assert "Ray (local, 2 CPUs)" == executor.description
        assert _search(mlp, calib, tmp_path / "b.onnx", executor) == here
    finally:
        executor.close()
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_executor_flags_through_the_cli(run_cli, mlp: Path, calib: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = run_cli("optimize", mlp, "-o", tmp_path / "o.onnx", "--calib", calib, "--max-drop",
                     "5%", "--target", "tensorrt", "--workers", "2", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["search"]["executor"] == "2 local processes"
    for flags, message in (
        (["--workers", "2"], "--workers only applies to the search; add --max-drop"),
        (["--ray", "auto"], "--ray only applies to the search; add --max-drop"),
        (["--max-drop", "1%", "--workers", "0"], "--workers 0: give at least 1"),
    ):
        out = tmp_path / "x.onnx"
        failed = run_cli("optimize", mlp, "-o", out, "--calib", calib, *flags)
        assert failed.exit_code == 1, failed.output
        assert message in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_without_ray_the_flag_is_a_one_line_install_hint(monkeypatch) -> None:
    import sys

    from spa.errors import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # import now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'spa\[ray\]'"):
        make_executor(ray="auto")
