"""``spa optimize --max-drop``: the search over candidates (spa.workflows.search),
its decisions against the measured figures it records, and its flags; and the
dynamic INT8 pass it uses (passes/quantize_dynamic.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from spa.model_io import load_model
from spa.ort import create_session
from spa.passes import QuantizeDynamicPass
from spa.workflows.search import (
    CandidateResult,
    choose,
    decide,
    optimize_search,
    parse_max_drop,
    parse_time_budget,
    speedup_margin,
)
from tests.search_fixtures import calib, mlp  # noqa: F401 (pytest fixtures)


def test_dynamic_int8_matches_float_within_tolerance(mlp: Path, tmp_path: Path) -> None:
    model = load_model(mlp)
    result = QuantizeDynamicPass()(model)
    assert result.statistics["nodes_quantized"] == 2  # the MatMul and the Gemm
    ops = [node.op_type for node in model.graph]
    assert ops.count("DynamicQuantizeMatMul") == 2 and "MatMul" not in ops and "Gemm" not in ops
    from spa.model_io import save_model

    out = save_model(model, tmp_path / "dyn.onnx")
    onnx.checker.check_model(str(out))
    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    expected = create_session(mlp).run(None, {"X": x})[0]
    actual = create_session(out).run(None, {"X": x})[0]
    relative = np.abs(actual - expected).max() / np.abs(expected).max()
    assert relative < 0.03  # 7-bit weights, 8-bit activations
    assert (actual.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_dynamic_int8_skips_small_weights_with_a_reason(mlp: Path) -> None:
    model = load_model(mlp)
    quantizer = QuantizeDynamicPass(min_elements=10_000)
    assert not quantizer(model).modified
    assert all("< 10000 elements" in d.reason for d in quantizer.decisions)


def test_dynamic_int8_lstm_matches_float_within_tolerance(tmp_path: Path) -> None:
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        rnn (float[8, 2, 16] X) => (float[8, 1, 2, 32] Y, float[1, 2, 32] Yh, float[1, 2, 32] Yc) {
            Y, Yh, Yc = LSTM<hidden_size: int = 32>(X, W, R, B)
        }
        """
    )
    rng = np.random.default_rng(4)
    for name, shape in (("W", (1, 128, 16)), ("R", (1, 128, 32)), ("B", (1, 256))):
        array = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        model.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    source = tmp_path / "lstm.onnx"
    onnx.save(model, str(source))
    loaded = load_model(source)
    assert QuantizeDynamicPass()(loaded).statistics["nodes_quantized"] == 1
    assert [node.op_type for node in loaded.graph] == ["DynamicQuantizeLSTM"]
    from spa.model_io import save_model

    out = save_model(loaded, tmp_path / "dyn.onnx")
    onnx.checker.check_model(str(out))
    x = {"X": rng.standard_normal((8, 2, 16)).astype(np.float32)}
    expected = create_session(source).run(None, x)
    actual = create_session(out).run(None, x)
    for want, got in zip(expected, actual, strict=True):  # Y, Y_h, Y_c, names and shapes kept
        assert got.shape == want.shape
        assert np.abs(got - want).max() / np.abs(want).max() < 0.05


def _row(name: str, loss: float | None, speedup: float | None, size: int = 100) -> CandidateResult:
    return CandidateResult(name, [name], quality_loss=loss, speedup=speedup, bytes=size)


def test_a_slower_candidate_is_rejected_unless_allowed() -> None:
    slower = _row("slow", 0.0, 0.8)
    assert decide(slower, 0.01, allow_slower=False) == (False, "slower than the input (0.800x)")
    assert decide(slower, 0.01, allow_slower=True)[0]
    assert not decide(_row("lossy", 0.02, 2.0), 0.01, False)[0]
    assert not decide(_row("unmeasured", None, None), 0.01, False)[0]


def test_for_latency_a_candidate_within_timing_noise_of_the_input_is_no_gain() -> None:
    """An unchanged cleanup measured 0.999x and a no-op format 1.016x on a real
    detector: noise, which must not decide that a lossy candidate is "faster"."""
    noise, margin = _row("noise", 0.005, 1.016), speedup_margin("latency", "ort-cpu")
    assert margin == 0.03
    assert decide(noise, 0.01, False, margin) == (
        False, "no faster than the input within timing noise (1.016x < 1.03x)"
    )  # fmt: skip
    assert decide(noise, 0.01, False, speedup_margin("size", "ort-cpu"))[0]  # not slower: a size gain
    assert speedup_margin("latency", "tensorrt") == 0.0  # the cost model's estimates carry no noise
    assert decide(noise, 0.01, True, margin)[0]  # --allow-slower: the user takes it
    assert decide(_row("faster", 0.005, 1.05), 0.01, False, margin)[0]


def test_choose_follows_the_objective() -> None:
    rows = [_row("fast", 0.0, 1.5, 300), _row("small", 0.0, 1.1, 100), _row("no", 0.5, 3.0, 10)]
    for row in rows:
        row.accepted, row.reason = decide(row, 0.01, False)
    assert choose(rows, "latency").name == "fast"  # type: ignore[union-attr]
    assert choose(rows, "size").name == "small"  # type: ignore[union-attr]
    assert choose([_row("slow", 0.0, 0.9)], "latency") is None


def test_pruning_ladder_stops_at_the_first_break_then_bisects() -> None:
    from spa.workflows.search import _ladder

    def tried(within: set[float]) -> list[float]:
        passed: list[float] = []
        shares = []
        for share in _ladder(passed):
            shares.append(share)
            if share in within:
                passed.append(share)
        return shares

    assert tried(set()) == [0.125, 0.0625]
    assert tried({0.125}) == [0.125, 0.25, 0.1875]
    assert tried({0.125, 0.25}) == [0.125, 0.25, 0.5, 0.375]
    assert tried({0.125, 0.25, 0.5}) == [0.125, 0.25, 0.5]


def test_parsers_give_one_line_errors() -> None:
    assert parse_max_drop("1%") == pytest.approx(0.01)
    assert parse_max_drop("0.02") == pytest.approx(0.02)
    assert parse_time_budget("10m") == 600 and parse_time_budget("90") == 90
    from spa.errors import UserError

    for bad in ("5", "abc", "-1%", "100%"):
        with pytest.raises(UserError, match="give a share like 1%"):
            parse_max_drop(bad)
    with pytest.raises(UserError, match="write a duration"):
        parse_time_budget("soon")


def _check_decisions(search: dict) -> None:
    """Every decision recorded agrees with the rule applied to the recorded figures."""
    for row in search["candidates"]:
        measured = row["quality_loss"] is not None and row["speedup"] is not None
        if not measured:
            assert not row["accepted"]
            continue
        within = row["quality_loss"] <= search["max_drop"]
        floor = 1.0 + speedup_margin(search["objective"], search["target"])  # the timing-noise band
        not_slower = row["speedup"] >= floor and (
            row["confirmed_speedup"] is None or row["confirmed_speedup"] >= 1.0
        )
        exact = all(check["passed"] for check in row["checks"].values())
        assert row["accepted"] == (within and exact and (not_slower or search["allow_slower"])), row
        if within and exact and not not_slower and not search["allow_slower"]:
            assert not row["accepted"] and ("slower" in row["reason"] or "noise" in row["reason"])


def test_search_through_the_cli_respects_budget_and_never_slower(
    run_cli, mlp: Path, calib: Path, tmp_path: Path
) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = run_cli("optimize", mlp, "-o", out, "--calib", calib, "--max-drop", "1%",
                     "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    search = json.loads(report.read_text())["search"]
    names = [row["name"] for row in search["candidates"]]
    assert names[0] == "cleanup" and "int8-dynamic" in names and "prune 12.5%" in names
    _check_decisions(search)
    assert search["quality_measure"].startswith("1 - top-1 agreement")
    assert search["resolution_note"] is None and "note: top-1" not in result.output  # 128 rows: 0.78%
    chosen = next((row for row in search["candidates"] if row["name"] == search["chosen"]), None)
    if chosen is None:  # nothing won: the output is the input, byte for byte
        assert out.read_bytes() == mlp.read_bytes()
        assert "wrote a copy of the input" in result.output.splitlines()[-1]
    else:
        assert chosen["accepted"] and chosen["quality_loss"] <= 0.01
        assert chosen["speedup"] >= 1.0 and chosen["confirmed_speedup"] >= 1.0
        assert result.output.splitlines()[-1].startswith(f"OPTIMIZED | {chosen['name']} |")
        x = np.load(calib)["X"][-1]  # a held-out sample
        expected = create_session(mlp).run(None, {"X": x})[0]
        actual = create_session(out).run(None, {"X": x})[0]
        assert (actual.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_a_budget_finer_than_one_held_out_row_says_so(
    run_cli, mlp: Path, calib: Path, tmp_path: Path
) -> None:
    """4 held-out samples of 32 rows: one changed prediction is 0.78% of the top-1
    agreement, coarser than a 0.5% budget; the search says so and how to fix it."""
    report = tmp_path / "report.json"
    result = run_cli("optimize", mlp, "-o", tmp_path / "o.onnx", "--calib", calib, "--max-drop",
                     "0.5%", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    note = json.loads(report.read_text())["search"]["resolution_note"]
    assert note.startswith("top-1 agreement of 'Y' is counted on 128 held-out rows: one changed prediction is 0.78%")
    assert f"note: {note}" in result.output and "--eval" in note


def test_tensorrt_target_ranks_trt_formats_by_the_cost_model(
    run_cli, mlp: Path, calib: Path, tmp_path: Path
) -> None:
    """--target tensorrt: the candidates are TensorRT's formats (INT8 QDQ, 2:4), their
    latency is the cost model's estimate and says so; quality is measured as ever."""
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = run_cli("optimize", mlp, "-o", out, "--calib", calib, "--max-drop", "5%",
                     "--target", "tensorrt", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    search = json.loads(report.read_text())["search"]
    rows = {row["name"]: row for row in search["candidates"]}
    assert {"int8-qdq", "sparse-2:4"} <= set(rows) and "int8-dynamic" not in rows
    for name in ("int8-qdq", "sparse-2:4"):
        assert "estimated by spa's TensorRT cost model" in rows[name]["latency_line"]
        assert rows[name]["speedup"] > 1.0  # fewer bytes and faster math than FP16
    assert rows["cleanup"]["speedup"] == pytest.approx(1.0, abs=0.05)
    _check_decisions(search)


def _deep_mlp(path: Path) -> Path:
    """X[N,128] -> three MatMuls (128x256, 256x256, 256x10) with Relus, seeded weights."""
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        deep (float[N, 128] X) => (float[N, 10] Y) {
            H0 = MatMul(X, W0)
            H1 = Relu(H0)
            H2 = MatMul(H1, W1)
            H3 = Relu(H2)
            Y = MatMul(H3, W2)
        }
        """
    )
    rng = np.random.default_rng(11)
    for name, shape in (("W0", (128, 256)), ("W1", (256, 256)), ("W2", (256, 10))):
        array = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        model.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    onnx.save(model, str(path))
    return path


def test_tensorrt_target_tries_int4_weight_only_that_becomes_spas_plugin(tmp_path: Path) -> None:
    """--target tensorrt also tries w4-qdq: GPTQ INT4 weight-only in block DequantizeLinear
    (opset 21), ranked by the cost model, quality measured in ORT; the same file is what
    int4-to-plugin turns into spa's w4a16 TensorRT plugin."""
    from spa.passes.plugins import Int4ToPluginPass
    from spa.workflows.search_space import BuildContext, Candidate, Step, build_candidate

    model = _deep_mlp(tmp_path / "deep.onnx")
    samples_file = tmp_path / "calib.npz"
    np.savez(samples_file, X=np.random.default_rng(5).standard_normal((16, 32, 128)).astype(np.float32))
    report = tmp_path / "report.json"
    result = optimize_search(model, tmp_path / "out.onnx", calibration=samples_file, max_drop=0.05,
                             target="tensorrt", report_path=report)  # fmt: skip
    rows = {row["name"]: row for row in result.report["search"]["candidates"]}
    row = rows["w4-qdq"]
    assert "estimated by spa's TensorRT cost model" in row["latency_line"]
    assert row["speedup"] > 1.0 and row["quality_loss"] is not None  # a quarter of W1's bytes
    _check_decisions(result.report["search"])

    samples = [{"X": x} for x in np.load(samples_file)["X"]]
    path = build_candidate(Candidate("w4-qdq", (Step("w4-qdq"),)), model, tmp_path, BuildContext(samples), {})
    built = load_model(path)
    assert built.opset_imports[""] >= 21
    dequantized = [node for node in built.graph if node.op_type == "DequantizeLinear"]
    assert len(dequantized) == 3  # under 4 weighted layers, the first and last are quantized too
    assert {node.inputs[0].const_value.dtype.name for node in dequantized} == {"INT4"}
    plugin = Int4ToPluginPass()(built)
    ops = [node.op_type for node in plugin.model.graph]
    assert ops.count("W4A16MatMul") == 2 and ops.count("MatMul") == 1  # N = 10 is no 16-column tile


def test_w4_qdq_that_quantizes_nothing_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    """No weight with K % 128 == 0: the w4-qdq step writes its input, not the input converted
    to opset 21, so the search reports 'changed nothing' instead of measuring a conversion."""
    from spa.workflows.search import same_graph
    from spa.workflows.search_space import BuildContext, Candidate, Step, build_candidate

    model = onnx.parser.parse_model("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[N, 96] X) => (float[N, 96] Y) { Y = MatMul(X, W) }
    """)
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32), "W")
    )
    source = tmp_path / "k96.onnx"
    onnx.save(model, str(source))
    samples = [{"X": x} for x in np.random.default_rng(1).standard_normal((4, 8, 96)).astype(np.float32)]
    path = build_candidate(Candidate("w4-qdq", (Step("w4-qdq"),)), source, tmp_path, BuildContext(samples), {})
    assert same_graph(source, path) and load_model(path).opset_imports[""] == 17


def test_zero_budget_allow_slower_and_size_with_a_task_metric(
    run_cli, mlp: Path, calib: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    result = run_cli(
        "optimize", mlp, "-o", tmp_path / "out.onnx", "--calib", calib, "--max-drop", "0",
        "--allow-slower", "--objective", "size", "--eval", "tests.search_metric:mlp_accuracy",
        "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    search = json.loads(report.read_text())["search"]
    assert search["metric_dense"] == 1.0 and search["quality_measure"] == "relative drop of the task metric"
    _check_decisions(search)
    accepted = [row for row in search["candidates"] if row["accepted"]]
    assert all(row["metric_after"] == 1.0 for row in accepted)  # a zero budget: no label changes
    assert accepted, "cleanup keeps every label, so something is accepted"
    chosen = next(row for row in accepted if row["name"] == search["chosen"])
    assert chosen["bytes"] == min(row["bytes"] for row in accepted)  # ties go to the faster one


def test_time_budget_stops_after_cleanup(mlp: Path, calib: Path, tmp_path: Path) -> None:
    result = optimize_search(mlp, tmp_path / "out.onnx", calibration=calib, max_drop=0.01,
                             time_budget_s=1e-6, allow_slower=True)  # fmt: skip
    rows = result.report["search"]["candidates"]
    assert rows[0]["name"] == "cleanup" and rows[0]["speedup"] is not None
    assert all(row["reason"] == "not measured: time budget spent" for row in rows[1:])
    assert len(rows) > 1 and (tmp_path / "out.onnx").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-drop", "5"], "--max-drop 5: give a share like 1% or 0.01"),
        (["--max-drop", "1%", "--target", "ort-cuda"], "--target ort-cuda: spa ranks candidates on ort-cpu, tensorrt only"),
        (["--max-drop", "1%", "--objective", "speed"], "--objective speed: choose one of latency, size"),
        (["--max-drop", "1%", "--time-budget", "soon"], "--time-budget soon: write a duration"),
        (["--max-drop", "1%", "--prune", "0.2"], "--prune does not combine with --max-drop"),
        (["--objective", "size"], "--objective only applies to the search; add --max-drop"),
        (["--allow-slower"], "--allow-slower only applies to the search"),
    ],
)
def test_bad_search_flags_are_one_line_errors(
    run_cli, mlp: Path, calib: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    out = tmp_path / "out.onnx"
    result = run_cli("optimize", mlp, "-o", out, "--calib", calib, *flags)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_search_without_calib_is_one_line(run_cli, mlp: Path, tmp_path: Path) -> None:
    result = run_cli("optimize", mlp, "-o", tmp_path / "o.onnx", "--max-drop", "1%")
    assert result.exit_code == 1
    assert "--max-drop needs real samples to measure quality on; give --calib DATA" in result.stderr


def test_a_rerun_with_cache_resumes_from_measured_candidates(
    run_cli, mlp: Path, calib: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    reports = [tmp_path / "first.json", tmp_path / "second.json"]
    for report in reports:
        result = run_cli("optimize", mlp, "-o", tmp_path / f"{report.stem}.onnx", "--calib", calib,
                         "--max-drop", "1%", "--cache", cache, "--report", report)  # fmt: skip
        assert result.exit_code == 0, result.output
    first, second = (json.loads(r.read_text())["search"]["candidates"] for r in reports)
    assert [row["name"] for row in first] == [row["name"] for row in second]
    for before, after in zip(first, second, strict=True):
        if before["speedup"] is None or after["reason"].startswith("slower when measured again"):
            continue  # the winner is always measured again, cache or not (timing decides)
        assert after["reason"].endswith("(from cache)")
        assert (after["speedup"], after["quality_loss"]) == (before["speedup"], before["quality_loss"])
    other = run_cli("optimize", mlp, "-o", tmp_path / "o.onnx", "--calib", calib, "--max-drop",
                    "1%", "--cache", cache, "--round-to", "4", "--report", reports[0])  # fmt: skip
    assert other.exit_code == 0
    rows = json.loads(reports[0].read_text())["search"]["candidates"]
    assert not any("from cache" in row["reason"] for row in rows[1:] if "prune" in row["name"])


CONV_FEATURES = """
<ir_version: 8, opset_import: ["" : 18]>
cnn (float[1, 8, 16, 16] X) => (float[1, 16] Y) {
    a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (X, w1)
    b = Relu(a)
    c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (b, w2)
    Y = ReduceMean <keepdims = 0> (c, axes)
}
"""


def test_a_format_that_changes_nothing_is_not_measured(run_cli, tmp_path: Path) -> None:
    """Dynamic INT8 has no weight to take in a convolutional network: on a real detector
    (YOLOv8n) it and MatMulNBits (before weight-only INT4 took Conv) were measured, found
    1.02x by noise, and the search wrote "OPTIMIZED | w4-nbits" for an unchanged model."""
    model = onnx.parser.parse_model(CONV_FEATURES)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (16, 8, 3, 3)), ("w2", (16, 16, 3, 3))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.2).astype(np.float32), name))  # fmt: skip
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    source, data, report = tmp_path / "cnn.onnx", tmp_path / "calib.npz", tmp_path / "report.json"
    onnx.save(model, str(source))
    np.savez(data, X=rng.standard_normal((12, 1, 8, 16, 16)).astype(np.float32))
    result = run_cli("optimize", source, "-o", tmp_path / "out.onnx", "--calib", data,
                     "--max-drop", "1%", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(report.read_text())["search"]["candidates"]}
    assert rows["int8-dynamic"]["reason"].startswith("changed nothing: int8-dynamic found no weight")
    assert rows["int8-dynamic"]["speedup"] is None and not rows["int8-dynamic"]["accepted"]
    for name in ("w4-nbits", "w8-nbits"):  # weight-only INT4/INT8 do take convolutions
        assert rows[name]["speedup"] is not None, rows[name]
    assert "changed nothing: int8-dynamic" in result.output


def test_a_model_without_weights_is_left_unchanged_with_the_reason(run_cli, tmp_path: Path) -> None:
    """A model with no weight spa rewrites (here elementwise ops; a scikit-learn tree
    ensemble exported by skl2onnx is one TreeEnsembleClassifier node): the OBS pruning
    candidates said "criterion obs needs --calib DATA" although --calib was given, and
    the verdict blamed the quality budget."""
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        plain (float[N, 64] X) => (float[N, 64] Y) {
          r = Relu (X)
          Y = Mul (r, r)
        }
        """)  # fmt: skip
    source, data = tmp_path / "plain.onnx", tmp_path / "calib.npz"
    onnx.save(model, str(source))
    np.savez(data, X=np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32))
    result = run_cli("optimize", source, "-o", tmp_path / "out.onnx", "--calib", data, "--max-drop", "1%")
    assert result.exit_code == 0, result.output
    assert "needs --calib" not in result.output
    assert "changed nothing: prune 12.5% found no weight" in result.output
    assert "UNCHANGED | nothing here that spa rewrites" in result.output


CACHE_STEP_MLP = """
<ir_version: 9, opset_import: ["" : 17]>
step (float[N, S, 16] X, float[N, P, 16] past_key) => (float[N, T, 8] Y, float[N, T, 16] present) {
  h = MatMul (X, w1)
  a = Relu (h)
  m = MatMul (a, w2)
  x2 = Add (X, m)
  k = MatMul (x2, wk)
  present = Concat <axis = 1> (past_key, k)
  Y = MatMul (present, wo)
}
"""


def test_search_candidates_keep_the_models_inputs_and_outputs(run_cli, tmp_path: Path) -> None:
    """A decoder step's KV cache may shrink with its heads under `spa prune` (--prunable-io),
    but the search measures each candidate on the user's samples, cut to the input's shapes:
    a candidate that pruned the cache "could not be built" (ONNX Runtime: invalid dimensions
    for past_key), seen at 37.5-50 % on a transformers decoder exported with its cache. Its
    candidates now prune only what leaves the interface whole, and the output drops in."""
    model = onnx.parser.parse_model(CACHE_STEP_MLP)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (16, 64)), ("w2", (64, 16)), ("wk", (16, 16)), ("wo", (16, 8))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name))  # fmt: skip
    source, data, report = tmp_path / "step.onnx", tmp_path / "calib.npz", tmp_path / "report.json"
    onnx.save(model, str(source))
    np.savez(data, X=rng.standard_normal((16, 4, 16)).astype(np.float32),
             past_key=rng.standard_normal((16, 6, 16)).astype(np.float32))  # fmt: skip
    output = tmp_path / "out.onnx"
    result = run_cli("optimize", source, "-o", output, "--calib", data, "--max-drop", "50%",
                     "--allow-slower", "--allocation", "uniform", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["search"]["candidates"]
    prunes = [row for row in rows if row["name"].startswith("prune")]
    assert prunes and not any("could not be built" in row["reason"] for row in rows), rows
    assert any(row["macs"] is not None and row["quality_loss"] is not None for row in prunes)
    pruned = onnx.load(str(output))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*pruned.graph.input, *pruned.graph.output)}  # fmt: skip
    assert dims["past_key"] == ["N", "P", 16] and dims["present"][-1] == 16, dims
