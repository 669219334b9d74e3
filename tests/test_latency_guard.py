"""The latency guard of `spa quantize --target ort` (spa.workflows.latency_guard).

Which form the guard writes depends on a measurement on this machine, so the
tests check what holds whatever the machine measures: the written form agrees
with the measurements in the report, verification passed on the file actually
written, a refused static model left no file. The rewrites the guard uses are
checked exactly: the folded Cast form computes what MatMulNBits computes, and a
layer named in ``keep_float`` stays float.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from spa.errors import UserError
from spa.model_io import load_model, save_model
from spa.pass_manager import run_passes
from spa.passes.quantize import MatMulNBitsToCastPass
from spa.passes.quantize_static import QuantizeStaticPass
from spa.verify import create_session, input_specs, make_feeds
from spa.workflows.latency_guard import halving_steps
from spa.workflows.prune import prune_model
from spa.workflows.quantize import quantize_model
from spa.workflows.quantize_static import quantize_static_model
from spa.workflows.run import RunOptions, feeds_calibrator

MLP = """
<ir_version: 10, opset_import: ["" : {opset}]>
mlp (float[B, {k}] X) => (float[B, 10] Y) {{
    H = MatMul(X, W1)
    Hb = Add(H, b1)
    G = Relu(Hb)
    Y0 = Gemm <transB = 1> (G, W2, b2)
    Y = Relu(Y0)
}}
"""


def _mlp(path: Path, k: int = 72, hidden: int = 48, opset: int = 21, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(MLP.format(k=k, opset=opset))
    arrays = {
        "W1": rng.standard_normal((k, hidden)) / np.sqrt(k),
        "b1": rng.normal(0, 0.1, hidden),
        "W2": rng.standard_normal((10, hidden)) / np.sqrt(hidden),
        "b2": rng.normal(0, 0.1, 10),
    }
    for name, array in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    onnx.save(model, path)
    return path


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return create_session(str(path)).run(None, feeds)[0]


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize(
    ("opset", "k", "symmetric"),
    [(21, 72, True), (21, 64, False), (17, 72, True), (17, 64, False)],
)
def test_cast_form_computes_what_matmulnbits_computes(
    tmp_path: Path, opset: int, k: int, symmetric: bool
) -> None:
    """K = 72 pads the last block of 32 (the Cast form slices it off); opset 17 keeps
    INT4 values in 8-bit storage, opset 21 in INT4."""
    source = _mlp(tmp_path / "mlp.onnx", k=k, hidden=k, opset=opset)
    nbits = tmp_path / "nbits.onnx"
    quantize_model(source, nbits, bits=4, block=32, symmetric=symmetric, keep_float=(),
                   allow_slower=True, verify=False)  # fmt: skip
    assert "MatMulNBits" in _ops(nbits)
    model = load_model(nbits)
    result = MatMulNBitsToCastPass()(model)
    assert result.modified and result.statistics["nodes_converted"] == 2
    folded = save_model(model, tmp_path / "cast.onnx")
    ops = _ops(folded)
    assert "MatMulNBits" not in ops and {"Cast", "Mul", "Reshape", "MatMul"} <= ops
    assert ("Slice" in ops) == (k % 32 != 0)
    assert ("Sub" in ops) == (not symmetric)
    stored = {t.name: t.data_type for t in onnx.load(str(folded)).graph.initializer}
    quantized = [dtype for name, dtype in stored.items() if name.endswith("_q4")]
    wanted = {(21, True): onnx.TensorProto.INT4, (21, False): onnx.TensorProto.UINT4,
              (17, True): onnx.TensorProto.INT8, (17, False): onnx.TensorProto.UINT8}  # fmt: skip
    assert quantized and set(quantized) == {wanted[(opset, symmetric)]}
    feeds = make_feeds(input_specs(onnx.load(str(source))), seed=3, dims={"B": 5})
    np.testing.assert_allclose(_run(folded, feeds), _run(nbits, feeds), rtol=1e-5, atol=1e-5)


def test_halving_steps_keep_the_smallest_layers_float_first() -> None:
    layers = [("a", 40), ("b", 10), ("c", 30), ("d", 20), ("e", 50)]
    assert halving_steps(layers) == [frozenset("bdc"), frozenset("bdca")]
    assert halving_steps([("x", 1)]) == []
    assert halving_steps([("x", 1), ("y", 2)]) == [frozenset("x")]


def test_weight_only_guard_writes_a_form_its_measurements_justify(tmp_path: Path) -> None:
    source = _mlp(tmp_path / "mlp.onnx")
    output = tmp_path / "q.onnx"
    result = quantize_model(source, output, bits=4, block=32, keep_float=())
    guard = result.latency
    assert guard is not None and result.passed
    measured = {entry["form"]: entry["speedup"] for entry in guard["measured"]}
    assert guard["note"].startswith("latency guard on ort-cpu")
    if guard["chosen"] == "Cast":
        assert measured["Cast"] > measured["MatMulNBits"] and measured["MatMulNBits"] < 1.0
        assert "MatMulNBits" not in _ops(output)
        quantized = [d for d in result.decisions if d["action"] == "quantized"]
        assert all("latency guard" in d["reason"] for d in quantized)
    else:
        assert guard["chosen"] == "MatMulNBits" and "MatMulNBits" in _ops(output)
        assert measured["MatMulNBits"] >= 1.0 or measured["Cast"] <= measured["MatMulNBits"]
    # whatever was written is what verification checked: the dense output within int4 error
    feeds = make_feeds(input_specs(onnx.load(str(source))), seed=1, dims={"B": 3})
    reference, written = _run(source, feeds), _run(output, feeds)
    cosine = float(np.dot(reference.ravel(), written.ravel())
                   / (np.linalg.norm(reference) * np.linalg.norm(written)))  # fmt: skip
    assert cosine > 0.98


def test_allow_slower_keeps_matmulnbits_unmeasured(tmp_path: Path) -> None:
    source = _mlp(tmp_path / "mlp.onnx")
    output = tmp_path / "q.onnx"
    result = quantize_model(source, output, bits=4, block=32, keep_float=(), allow_slower=True)
    assert result.latency is None and "MatMulNBits" in _ops(output)


def test_int8_cast_form_and_other_targets_are_not_measured(tmp_path: Path) -> None:
    source = _mlp(tmp_path / "mlp.onnx")
    assert quantize_model(source, tmp_path / "w8.onnx", bits=8).latency is None
    square = _mlp(tmp_path / "square.onnx", k=64, hidden=64)
    onnx_target = quantize_model(square, tmp_path / "q.onnx", bits=4, block=16, target="onnx",
                                 keep_float=())  # fmt: skip
    assert onnx_target.latency is None


def test_static_keep_float_leaves_the_named_layer_float(tmp_path: Path) -> None:
    source = _mlp(tmp_path / "mlp.onnx")
    model = onnx.load(str(source))
    for index, node in enumerate(model.graph.node):  # n0 MatMul ... n3 Gemm
        node.name = f"n{index}"
    onnx.save(model, source)
    every = {d.node: d for d in _static_decisions(source, frozenset())}
    kept = {d.node: d for d in _static_decisions(source, frozenset({"n0"}))}
    assert every["n0"].action == "quantized"
    assert kept["n0"].action == "float" and "latency guard" in kept["n0"].reason
    assert kept["n3"].action == every["n3"].action == "quantized"


def _static_decisions(source: Path, keep: frozenset[str]) -> list:
    """The ORT static pass's decisions on ``source`` with ``keep`` left float (ranges
    measured on seeded inputs by the pipeline's calibrator)."""
    model = load_model(source)
    quantizer = QuantizeStaticPass(target="ort", keep_float=keep)
    run_passes(model, [quantizer], calibrator=feeds_calibrator(None, RunOptions()))
    return quantizer.decisions


def test_static_guard_writes_a_model_not_slower_or_refuses_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    source = _mlp(tmp_path / "mlp.onnx", k=256, hidden=256)
    output = tmp_path / "s.onnx"
    try:
        result = quantize_static_model(source, output, holdout=0.0)
    except UserError as error:
        assert "measured slower than the input on ort-cpu" in str(error)
        assert "--allow-slower" in str(error)
        assert not output.exists() and not (tmp_path / "s.onnx.data").exists()
        return
    guard = result.latency
    assert guard is not None and result.passed and output.exists()
    chosen = next(entry for entry in guard["measured"] if entry["form"] == guard["chosen"])
    assert chosen["speedup"] >= 1.0
    assert all(entry["speedup"] < 1.0 for entry in guard["measured"][:-1])


def test_cli_allow_slower_and_the_report_line(run_cli, tmp_path: Path) -> None:
    source = _mlp(tmp_path / "mlp.onnx")
    report = tmp_path / "r.json"
    result = run_cli("quantize", source, "-o", tmp_path / "q.onnx", "--block", "32",
                     "--all-layers", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "latency guard on ort-cpu" in result.output
    assert json.loads(report.read_text())["latency"]["chosen"] in ("Cast", "MatMulNBits")
    kept = run_cli("quantize", source, "-o", tmp_path / "k.onnx", "--block", "32",
                   "--all-layers", "--allow-slower")  # fmt: skip
    assert kept.exit_code == 0, kept.output
    assert "latency guard" not in kept.output and "MatMulNBits" in _ops(tmp_path / "k.onnx")


CNN = """
<ir_version: 10, opset_import: ["" : 21]>
cnn (float[1, 16, 40, 40] X) => (float[1, 64, 40, 40] Y) {
    A = Conv <pads = [1, 1, 1, 1]> (X, W1, b1)
    B = Relu(A)
    C = Conv <pads = [1, 1, 1, 1]> (B, W2, b2)
    Y = Relu(C)
}
"""


def _cnn(path: Path) -> Path:
    rng = np.random.default_rng(3)
    model = onnx.parser.parse_model(CNN)
    shapes = {"W1": (64, 16, 3, 3), "b1": (64,), "W2": (64, 64, 3, 3), "b2": (64,)}
    for name, shape in shapes.items():
        array = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.save(model, path)
    return path


def test_prune_guard_writes_only_what_its_measurements_justify(run_cli, tmp_path: Path) -> None:
    """spa prune --target ort: 64 -> 58 channels (exact counts, off ORT's NCHWc blocks) is
    refused when its median ratio is below 0.97 and written otherwise, whatever this
    machine measures; --allow-slower writes it with the measurements in the report."""
    source, out, report = _cnn(tmp_path / "cnn.onnx"), tmp_path / "p.onnx", tmp_path / "r.json"
    flags = ["--ratio", "0.1", "--round-to", "1", "--target", "ort", "--verify"]
    result = run_cli("prune", source, "-o", out, *flags, "--report", report)
    if result.exit_code == 1:
        assert "of its input on ort-cpu" in result.stderr and "--allow-slower" in result.stderr
        assert not out.exists() and not report.exists()
        result = run_cli("prune", source, "-o", out, *flags, "--report", report, "--allow-slower")
        assert result.exit_code == 0, result.output
    assert result.exit_code == 0, result.output
    guard = json.loads(report.read_text())["latency"]
    ratios = sorted(entry["speedup"] for entry in guard["measured"])
    median = ratios[len(ratios) // 2]
    assert len(ratios) == (1 if ratios[0] >= 1.0 else 3)
    assert "--allow-slower" in result.output if median < 0.97 else "--allow-slower" not in result.output
    assert guard["chosen"] == "pruned" and f"{median:.2f}x on ort-cpu" in result.output
    assert onnx.load(str(out)).graph.initializer[0].dims[0] == 58


def test_prune_measures_nothing_without_target_or_when_nothing_is_pruned(
    run_cli, tmp_path: Path
) -> None:
    source, report = _cnn(tmp_path / "cnn.onnx"), tmp_path / "r.json"
    plain = run_cli("prune", source, "-o", tmp_path / "a.onnx", "--ratio", "0.1", "--report", report)
    assert plain.exit_code == 0, plain.output
    assert json.loads(report.read_text())["latency"] is None and "ort-cpu" not in plain.output
    # --round-to auto keeps 64 at ratio 0.1: nothing pruned, nothing to time
    kept = run_cli("prune", source, "-o", tmp_path / "b.onnx", "--ratio", "0.1", "--target", "ort",
                   "--report", report)  # fmt: skip
    assert kept.exit_code == 0 and "nothing pruned" in kept.output, kept.output
    assert json.loads(report.read_text())["latency"] is None
    with pytest.raises(UserError, match="--target tensorrt"):
        prune_model(source, tmp_path / "c.onnx", target="tensorrt")
