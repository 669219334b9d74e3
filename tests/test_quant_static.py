"""quantize-static (INT8/FP8 QDQ) on inline ONNX-text models and zoo models:
placement -> structure -> numbers in ORT CPU -> onnx.checker; calibration
statistics on hand-made data; the CLI's warnings, report and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from spa.calibration import AbsHistogram, collect_ranges, entropy_threshold, percentile_threshold
from spa.errors import UserError
from spa.pass_manager import PassRecord, run_passes
from spa.passes.quantize_static import QuantizeStaticPass
from spa.quant.static import (
    FP8_MAX,
    INT8_MAX,
    RANDOM_CALIBRATION,
    dequantize_weight,
    quantize_weight,
)
from spa.workflows.run import feeds_calibrator

RESIDUAL = """
<ir_version: 8, opset_import: ["" : 17]>
block (float[1, 8, 6, 6] X) => (float[1, 8, 6, 6] Y) {
    A = Conv <pads = [1, 1, 1, 1]> (X, W1, B1)
    R = Relu(A)
    C = Conv <pads = [1, 1, 1, 1]> (R, W2, B2)
    S = Add(C, X)
    Y = Relu(S)
}
"""

ATTENTION = """
<ir_version: 8, opset_import: ["" : 17]>
attention (float[2, 4, 16] X) => (float[2, 4, 16] Y) {
    N = LayerNormalization <axis = -1> (X, G, Bn)
    Q = MatMul(N, Wq)
    K = MatMul(N, Wk)
    Kt = Transpose <perm = [0, 2, 1]> (K)
    S = MatMul(Q, Kt)
    P = Softmax <axis = -1> (S)
    V = MatMul(N, Wv)
    O = MatMul(P, V)
    Proj = MatMul(O, Wo)
    Pb = Add(Proj, Bo)
    Y = Add(Pb, X)
}
"""

GEMM = """
<ir_version: 10, opset_import: ["" : 21]>
gemm (float[3, 16] X) => (float[3, 8] Y) {
    H = Gemm <transB = 1> (X, Wt, Bt)
    Y = MatMul(H, Wm)
}
"""

SHARED = """
<ir_version: 8, opset_import: ["" : 17]>
shared (float[3, 8] X, int64[2] I) => (float[3, 8] Y, float[2, 8] E) {
    H = MatMul(X, W)
    V = Identity(W)
    Z = MatMul(H, V)
    Y = MatMul(Z, W)
    E = Gather(W, I)
}
"""

TIED = """
<ir_version: 8, opset_import: ["" : 17]>
tied (float[3, 8] X) => (float[3, 8] Y) {
    Wt = Transpose <perm = [1, 0]> (W)
    Y = MatMul(X, Wt)
}
"""

HALF = """
<ir_version: 8, opset_import: ["" : 17]>
half (float16[3, 16] X) => (float16[3, 8] Y) {
    H = MatMul(X, W)
    Y = Relu(H)
}
"""

INTEGER = """
<ir_version: 10, opset_import: ["" : 21]>
integer (int32[3, 4] X) => (int32[3, 2] Y) {
    Y = MatMul(X, W)
}
"""


def _model(text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model)
    return model


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _residual(opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    text = RESIDUAL.replace('["" : 17]', f'["" : {opset}]').replace("ir_version: 8", "ir_version: 10")
    return _model(text, {
        "W1": _normal(rng, 8, 8, 3, 3, scale=0.2), "B1": _normal(rng, 8, scale=0.1),
        "W2": _normal(rng, 8, 8, 3, 3, scale=0.2), "B2": _normal(rng, 8, scale=0.1),
    })  # fmt: skip


def _attention() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    weights = {name: _normal(rng, 16, 16, scale=0.25) for name in ("Wq", "Wk", "Wv", "Wo")}
    weights.update(G=np.ones(16, np.float32), Bn=np.zeros(16, np.float32))
    weights["Bo"] = _normal(rng, 16, scale=0.1)
    return _model(ATTENTION, weights)


def _gemm() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    return _model(GEMM, {
        "Wt": _normal(rng, 12, 16), "Bt": _normal(rng, 12), "Wm": _normal(rng, 12, 8),
    })  # fmt: skip


def _feeds(model: onnx.ModelProto, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    from spa.verify import input_specs, make_feeds

    specs = input_specs(model)
    return [make_feeds(specs, seed=seed + index) for index in range(count)]


def _quantize(
    proto: onnx.ModelProto, calib: list[dict[str, np.ndarray]] | None = None, **options: object
) -> tuple[ir.Model, QuantizeStaticPass]:
    model = ir.serde.deserialize_model(proto)
    quantizer = QuantizeStaticPass(**options)  # type: ignore[arg-type]
    _calibrated(model, quantizer, calib if calib is not None else _feeds(proto, 4, 100))
    return model, quantizer


def _calibrated(
    model: ir.Model, quantizer: QuantizeStaticPass, calib: list[dict[str, np.ndarray]] | None
) -> PassRecord:
    """Run the pass as the pipeline does: ranges measured on ``calib`` (None: random)."""
    (record,) = run_passes(model, [quantizer], calibrator=feeds_calibrator(calib))
    return record


def _run(model: ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray], basic: bool = False) -> np.ndarray:
    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
    options = ort.SessionOptions()
    if basic:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ops(model: ir.Model, op_type: str) -> list[ir.Node]:
    return [node for node in model.graph if node.op_type == op_type]


def _decision(quantizer: QuantizeStaticPass, op_type: str, action: str) -> list:
    return [d for d in quantizer.decisions if d.op_type == op_type and d.action == action]


# --- placement ---------------------------------------------------------------------------


def test_residual_block_shares_one_pair_for_the_shortcut_and_the_conv_input() -> None:
    proto = _residual()
    model, quantizer = _quantize(proto)
    assert quantizer.decisions and len(_decision(quantizer, "Conv", "quantized")) == 2
    quantizes = _ops(model, "QuantizeLinear")
    assert sorted(node.inputs[0].name for node in quantizes) == ["R", "X"]  # X once, for Conv and Add
    add = _ops(model, "Add")[0]
    assert add.inputs[0].name == "C"  # the conv branch stays float: the Add fuses into that Conv
    assert add.inputs[1].producer().op_type == "DequantizeLinear"
    assert add.inputs[1].producer().inputs[0].producer().inputs[0].name == "X"
    residual = _decision(quantizer, "Add", "quantized")[0]
    assert residual.inputs == ("X",) and "shortcut 'X'" in residual.reason
    conv_weights = [node for node in _ops(model, "DequantizeLinear") if node.inputs[0].const_value is not None]
    assert len(conv_weights) == 2
    assert all(node.attributes.get_int("axis") == 0 for node in conv_weights)
    assert all(node.inputs[0].const_value.dtype == ir.DataType.INT8 for node in conv_weights)
    assert {"W1", "W2"}.isdisjoint(model.graph.initializers)  # float weights are gone
    relu = _decision(quantizer, "Relu", "float")
    assert len(relu) == 2 and relu[0].reason.startswith("not a quantization point")
    feeds = _feeds(proto, 1, 7)[0]
    assert _cosine(_run(model, feeds), _run(proto, feeds)) >= 0.999
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def test_attention_leaves_norms_softmax_and_activation_matmuls_float() -> None:
    proto = _attention()
    model, quantizer = _quantize(proto)
    assert sorted(node.inputs[0].name for node in _ops(model, "QuantizeLinear")) == ["N", "O"]
    assert len(_decision(quantizer, "MatMul", "quantized")) == 4
    two_activations = _decision(quantizer, "MatMul", "float")
    assert len(two_activations) == 2 and all("two activations" in d.reason for d in two_activations)
    assert "quantize_norms" in _decision(quantizer, "LayerNormalization", "float")[0].reason
    assert "quantize_norms" in _decision(quantizer, "Softmax", "float")[0].reason
    bias, residual = _decision(quantizer, "Add", "float")
    assert "bias" in bias.reason
    assert "residual stream stays float" in residual.reason  # after a MatMul, not a Conv
    n_uses = [node for node in model.graph if any(v is not None and v.name == "N" for v in node.inputs)]
    assert [node.op_type for node in n_uses] == ["QuantizeLinear"]  # one pair, three MatMuls
    feeds = _feeds(proto, 1, 7)[0]
    assert _cosine(_run(model, feeds), _run(proto, feeds)) >= 0.999
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def test_attention_options_add_pairs_on_norms_and_activation_matmuls() -> None:
    proto = _attention()
    model, quantizer = _quantize(
        proto, quantize_norms=True, quantize_bmm=True, quantize_residual_matmul=True
    )
    names = sorted(node.inputs[0].name for node in _ops(model, "QuantizeLinear"))
    assert names == ["Kt", "N", "O", "P", "Q", "S", "V", "X"]  # X shared by LayerNorm and the Add
    assert _decision(quantizer, "LayerNormalization", "quantized")
    residual = _decision(quantizer, "Add", "quantized")[0]
    assert residual.inputs == ("X",) and "MatMul" in residual.reason  # Proj -> bias Add is fused
    assert len(_decision(quantizer, "MatMul", "quantized")) == 6
    feeds = _feeds(proto, 1, 7)[0]
    assert _cosine(_run(model, feeds), _run(proto, feeds)) >= 0.99


# --- weights -----------------------------------------------------------------------------


def test_per_channel_int8_scales_are_exact() -> None:
    weight = np.array([[1.0, -2.0, 0.0], [-4.0, 0.5, 0.0]], dtype=np.float32)
    q, scale = quantize_weight(weight, 1, "int8")
    expected = np.array([4.0 / 127, 2.0 / 127, 1.0], np.float64).astype(np.float32)
    np.testing.assert_array_equal(scale, expected)  # an all-zero channel gets scale 1
    np.testing.assert_array_equal(q, np.array([[32, -127, 0], [-127, 32, 0]], np.int8))
    q, scale = quantize_weight(weight, 0, "int8")
    np.testing.assert_array_equal(scale, np.array([2.0 / 127, 4.0 / 127]).astype(np.float32))
    np.testing.assert_array_equal(q[:, 0], [64, -127])  # 63.5 rounds half to even


def test_gemm_and_matmul_weights_use_the_output_channel_axis() -> None:
    proto = _gemm()
    model, quantizer = _quantize(proto)
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dequantizes = {node.outputs[0].name: node for node in _ops(model, "DequantizeLinear")}
    gemm = dequantizes["Wt_dequantized"]
    assert gemm.attributes.get_int("axis") == 0  # transB = 1: B is [N, K]
    np.testing.assert_array_equal(
        gemm.inputs[1].const_value.numpy(), np.abs(arrays["Wt"]).max(axis=1) / np.float32(INT8_MAX)
    )
    matmul = dequantizes["Wm_dequantized"]
    assert matmul.attributes.get_int("axis") == 1  # MatMul B is [K, N]
    np.testing.assert_array_equal(
        matmul.inputs[1].const_value.numpy(), np.abs(arrays["Wm"]).max(axis=0) / np.float32(INT8_MAX)
    )
    decisions = _decision(quantizer, "Gemm", "quantized") + _decision(quantizer, "MatMul", "quantized")
    assert [d.axis for d in decisions] == [0, 1]
    assert all(d.bytes_after < d.bytes_before / 2 for d in decisions)  # int8 + per-channel scales


def test_shared_weight_is_quantized_once_and_float_users_keep_it() -> None:
    rng = np.random.default_rng(4)
    proto = _model(SHARED, {"W": _normal(rng, 8, 8, scale=0.3)})
    model, quantizer = _quantize(proto, calib=_feeds(proto, 16, 100))
    weight_dqs = [n for n in _ops(model, "DequantizeLinear") if n.inputs[0].const_value is not None]
    assert len(weight_dqs) == 1
    readers = sorted(use.node.op_type for use in weight_dqs[0].outputs[0].uses())
    assert readers == ["MatMul", "MatMul", "MatMul"]  # the one behind Identity too
    assert not _ops(model, "Identity")  # the copy nothing reads any more is gone
    gather = _ops(model, "Gather")[0]
    assert gather.inputs[0].name == "W" and "W" in model.graph.initializers
    decisions = _decision(quantizer, "MatMul", "quantized")
    assert [d.bytes_after > 0 for d in decisions] == [True, False, False]  # later ones reuse it
    feeds = {"X": _normal(rng, 3, 8), "I": np.array([1, 5], np.int64)}
    got, want = _run(model, feeds), _run(proto, feeds)
    # three chained per-tensor INT8 layers: 0.9960 here (16 calibration samples; 0.9904 with 4)
    assert _cosine(got, want) >= 0.99


def test_weight_computed_from_constants_is_skipped_with_the_fix() -> None:
    proto = _model(TIED, {"W": _normal(np.random.default_rng(5), 8, 8)})
    model, quantizer = _quantize(proto)
    (decision,) = _decision(quantizer, "MatMul", "skipped")
    assert "computed by Transpose from constants" in decision.reason
    assert "fold constants" in decision.reason
    assert not _ops(model, "QuantizeLinear")  # nothing else to quantize: the model is unchanged


def test_matmul_output_matches_a_numpy_fake_quant_reference() -> None:
    proto = _gemm()
    calib = _feeds(proto, 4, 100)
    model, _ = _quantize(proto, calib=calib)
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    x = _feeds(proto, 1, 9)[0]["X"]
    amax_x = max(np.abs(feed["X"]).max() for feed in calib)
    scale_x = np.float32(amax_x / INT8_MAX)
    x_dq = np.clip(np.rint(x / scale_x), -128, 127).astype(np.float32) * scale_x
    q, s = quantize_weight(arrays["Wt"], 0, "int8")
    h = x_dq @ dequantize_weight(q, s, 0).T + arrays["Bt"]
    # H is read before the second MatMul's Q/DQ pair: the first MatMul alone is checked
    exposed = ir.serde.serialize_model(model)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info("H", onnx.TensorProto.FLOAT, None))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(["H"], {"X": x})[0]
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-5)


def test_fp8_weights_match_the_numpy_reference_and_run_in_ort() -> None:
    proto = _residual(opset=21)
    model, quantizer = _quantize(proto, activations="fp8")
    assert quantizer.weights == "fp8"
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = next(n for n in _ops(model, "DequantizeLinear") if n.outputs[0].name == "W1_dequantized")
    stored = node.inputs[0].const_value
    assert stored.dtype == ir.DataType.FLOAT8E4M3FN
    q, scale = quantize_weight(arrays["W1"], 0, "fp8")
    np.testing.assert_array_equal(stored.numpy().astype(np.float32), q.astype(np.float32))
    np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), scale)
    assert np.abs(q.astype(np.float32)).max() == FP8_MAX  # each channel's amax maps to 448
    zero_points = [n.inputs[2].const_value.dtype for n in _ops(model, "QuantizeLinear")]
    assert set(zero_points) == {ir.DataType.FLOAT8E4M3FN}
    # ORT's dequantized weight equals the NumPy reference exactly
    exposed = ir.serde.serialize_model(model)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info("W1_dequantized", onnx.TensorProto.FLOAT, None))
    feeds = _feeds(proto, 1, 7)[0]
    import onnxruntime as ort

    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(["W1_dequantized"], feeds)[0], dequantize_weight(q, scale, 0))
    assert _cosine(_run(model, feeds, basic=True), _run(proto, feeds)) >= 0.99
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


# --- calibration statistics --------------------------------------------------------------


def test_percentile_is_exact_on_a_one_value_per_bin_histogram() -> None:
    histogram = AbsHistogram(bins=2048)
    histogram.add((np.arange(2048) + 0.5) / 2048 * 8.0)  # bin centres of [0, 8)
    assert histogram.counts.tolist() == [1] * 2048
    width = histogram.width
    assert percentile_threshold(histogram, 50.0) == pytest.approx(1024 * width, rel=1e-12)
    assert percentile_threshold(histogram, 100.0) == histogram.amax
    assert percentile_threshold(histogram, 0.1) == pytest.approx(3 * width, rel=1e-12)  # 2.048 -> 3rd bin


def test_percentile_agrees_with_numpy_within_one_bin() -> None:
    values = np.random.default_rng(0).standard_normal(200_000)
    histogram = AbsHistogram()
    for chunk in np.array_split(values, 7):  # streamed: the range doubles as batches grow
        histogram.add(chunk)
    for percentile in (90.0, 99.0, 99.99):
        expected = np.percentile(np.abs(values), percentile)
        assert abs(percentile_threshold(histogram, percentile) - expected) <= histogram.width


def test_histogram_doubling_keeps_exact_counts() -> None:
    rng = np.random.default_rng(3)
    # dyadic values off every bin edge, so float rounding cannot move one across an edge
    first = np.append(rng.integers(0, 512, 1000) / 512 + 1 / 1024, 1.0)
    second = rng.integers(0, 5 * 512, 1000) / 512 + 1 / 1024
    streamed = AbsHistogram(bins=64)
    streamed.add(first)
    streamed.add(second)
    assert streamed.top == 8.0  # 2.0 (above 1.0) doubled twice to hold 5.0
    direct, _ = np.histogram(np.concatenate([first, second]), bins=64, range=(0.0, 8.0))
    np.testing.assert_array_equal(streamed.counts, direct)


def test_entropy_threshold_clips_outliers_and_keeps_uniform_ranges() -> None:
    rng = np.random.default_rng(0)
    gaussian = AbsHistogram()
    gaussian.add(np.concatenate([rng.standard_normal(1_000_000), [60.0, -60.0, 55.0]]))
    threshold = entropy_threshold(gaussian)
    assert gaussian.amax == 60.0
    assert 2.5 < threshold < 12.0  # a few sigma, far below the outliers
    uniform = AbsHistogram()
    uniform.add(rng.uniform(-1.0, 1.0, 1_000_000))
    assert entropy_threshold(uniform) >= 0.9


def test_collect_ranges_reads_intermediate_values_in_ort() -> None:
    proto = _residual()
    feeds = _feeds(proto, 3, 0)
    ranges = collect_ranges(proto, ["X", "R"], feeds, method="minmax")
    assert ranges.samples == 3
    assert ranges.amax["X"] == max(float(np.abs(f["X"]).max()) for f in feeds)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info("R", onnx.TensorProto.FLOAT, None))
    import onnxruntime as ort

    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = max(float(session.run(["R"], f)[0].max()) for f in feeds)
    assert ranges.amax["R"] == pytest.approx(expected, rel=1e-7)
    for method in ("percentile", "entropy"):
        clipped = collect_ranges(proto, ["R"], feeds, method=method, percentile=99.0)
        assert 0 < clipped.amax["R"] <= expected


# --- library: without data, bad input ----------------------------------------------------


def test_without_calibration_data_ranges_are_random_and_labelled(caplog) -> None:
    model = ir.serde.deserialize_model(_residual())
    quantizer = QuantizeStaticPass()
    with caplog.at_level("WARNING"):
        _calibrated(model, quantizer, None)
    assert quantizer.calibration == RANDOM_CALIBRATION
    assert quantizer.calibration_samples == 8
    assert "NO CALIBRATION DATA" in caplog.text


def test_already_quantized_model_is_skipped_with_reasons() -> None:
    model, _ = _quantize(_residual())
    again = QuantizeStaticPass()
    record = _calibrated(model, again, _feeds(_residual(), 2, 0))
    assert not record.modified
    skipped = [d for d in again.decisions if d.action == "skipped"]
    assert {d.op_type for d in skipped} >= {"Conv", "QuantizeLinear", "DequantizeLinear"}
    assert all("already quantized" in d.reason for d in skipped)


def test_integer_model_is_a_one_line_error() -> None:
    rng = np.random.default_rng(0)
    proto = _model(INTEGER, {"W": rng.integers(-3, 3, (4, 2)).astype(np.int32)})
    with pytest.raises(UserError, match="needs a float model"):
        QuantizeStaticPass(activations="fp8")(ir.serde.deserialize_model(proto))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"activations": "int4"}, "--activations int4"),
        ({"activations": "int8", "weights": "fp8"}, "both inputs in one type"),
        ({"calib_method": "mse"}, "--calib-method mse"),
        ({"percentile": 0.0}, "--percentile 0.0"),
    ],
)
def test_bad_options_are_user_errors(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        QuantizeStaticPass(**options)


def test_recipe_names_the_pass_with_options(tmp_path: Path) -> None:
    from spa.pass_manager import run_passes
    from spa.workflows.recipes import build_passes, load_recipe

    recipe = tmp_path / "int8.yaml"
    recipe.write_text(
        "passes:\n  - name: quantize-static\n    options: {activations: int8, calib_method: percentile, percentile: 99.9}\n"
    )
    passes = build_passes(load_recipe(str(recipe)))
    model = ir.serde.deserialize_model(_attention())
    run_passes(model, passes, calibrator=feeds_calibrator(None))  # as spa optimize does
    assert _ops(model, "QuantizeLinear")
    assert passes[0].options()["calib_method"] == "percentile"


# --- zoo: accuracy of real architectures -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "method"),
    [("tv-resnet18", "int8", "minmax"), ("tv-resnet18", "fp8", "minmax"), ("hf-bert", "int8", "percentile")],
)
def test_zoo_models_keep_cosine(name: str, kind: str, method: str, tmp_path: Path) -> None:
    from spa import zoo
    from spa.workflows.quantize_static import quantize_static_model

    proto = zoo.load(name)
    source = tmp_path / "model.onnx"
    onnx.save(proto, str(source))
    calib = _feeds(proto, 8, 1000)  # seeds apart from the verification feed (seed 0)
    result = quantize_static_model(
        source, tmp_path / "q.onnx", activations=kind, calib=calib, calib_method=method,
        allow_slower=True,  # checks the placement; the latency guard has its own tests
    )
    assert result.passed and result.cosine is not None and result.cosine >= 0.99, result.cosine
    assert result.calibration_samples == 6 and result.calibration != RANDOM_CALIBRATION  # 2 held out
    assert result.mac_coverage > 0.95
    assert result.bytes_after < result.bytes_before * 0.5
    onnx.checker.check_model(str(tmp_path / "q.onnx"), full_check=True)


# --- CLI ---------------------------------------------------------------------------------


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def residual_path(tmp_path: Path) -> Path:
    path = tmp_path / "residual.onnx"
    onnx.save(_residual(), str(path))
    return path


def test_cli_without_calib_warns_loudly_and_reports(run_cli, residual_path: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    out = tmp_path / "q.onnx"
    result = run_cli("quantize", residual_path, "-o", out, "--activations", "int8", "--report", report, "--allow-slower")
    assert result.exit_code == 0, result.output
    assert "WARNING: NO CALIBRATION DATA" in result.stderr
    data = json.loads(report.read_text())
    assert data["calibration"] == RANDOM_CALIBRATION
    assert data["calibration_method"] == "minmax" and data["calibration_samples"] == 8  # random
    actions = {(d["op_type"], d["action"]) for d in data["decisions"]}
    assert {("Conv", "quantized"), ("Add", "quantized"), ("Relu", "float")} <= actions
    assert all(d["reason"] for d in data["decisions"] if d["action"] != "quantized")
    assert data["mac_coverage"] == 1.0 and data["bytes_after"] < data["bytes_before"]
    assert "PASSED | quantize static int8 (minmax)" in result.output


def test_cli_with_calib_has_no_warning(run_cli, residual_path: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, X=np.stack([f["X"] for f in _feeds(_residual(), 5, 50)]))
    report = tmp_path / "report.json"
    result = run_cli(
        "quantize", residual_path, "-o", tmp_path / "q.onnx", "--activations", "fp8",
        "--calib", calib, "--calib-method", "entropy", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.stderr
    data = json.loads(report.read_text())
    assert data["calibration_samples"] == 4 and data["calibration"].endswith("(entropy)")  # 1 held out
    assert data["options"]["weights"] == "fp8"


def test_cli_already_quantized_model_is_nothing_to_do(run_cli, residual_path: Path, tmp_path: Path) -> None:
    first = tmp_path / "q.onnx"
    assert run_cli("quantize", residual_path, "-o", first, "--activations", "int8", "--allow-slower").exit_code == 0
    result = run_cli("quantize", first, "-o", tmp_path / "qq.onnx", "--activations", "int8")
    assert result.exit_code == 0, result.output
    assert "already quantized" in result.output and "NOTHING TO DO" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--activations", "int8", "--weights", "int4"], "--weights int4 is weight-only"),
        (["--activations", "fp8", "--weights", "int8"], "both inputs in one type"),
        (["--activations", "int8", "--block", "64"], "--block is a weight-only option"),
        (["--activations", "int8", "--method", "gptq"], "--method is a weight-only option"),
        (["--weights", "fp8"], "--weights fp8 is static QDQ only"),
        (["--calib-method", "entropy"], "--calib-method needs --activations"),
        (["--activations", "int8", "--calib", "missing.npz"], "no such file"),
    ],
)
def test_cli_bad_option_mixes_are_one_line_errors(
    run_cli, residual_path: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = run_cli("quantize", residual_path, "-o", tmp_path / "q.onnx", *arguments)
    assert result.exit_code == 1
    assert message in _one_error_line(result)
    assert not (tmp_path / "q.onnx").exists()


def test_cli_fp8_on_an_integer_model_is_a_one_line_error(run_cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "integer.onnx"
    onnx.save(_model(INTEGER, {"W": rng.integers(-3, 3, (4, 2)).astype(np.int32)}), str(path))
    result = run_cli("quantize", path, "-o", tmp_path / "q.onnx", "--activations", "fp8")
    assert result.exit_code == 1
    assert "needs a float model" in _one_error_line(result)
    assert not (tmp_path / "q.onnx").exists()


def test_float16_model_gets_opset19_and_float16_scales(tmp_path: Path) -> None:
    from spa.workflows.quantize_static import quantize_static_model

    proto = _model(HALF, {"W": _normal(np.random.default_rng(6), 16, 8).astype(np.float16)})
    with pytest.raises(UserError, match="reads FLOAT16 only from opset 19"):
        QuantizeStaticPass()(ir.serde.deserialize_model(proto))
    source = tmp_path / "half.onnx"
    onnx.save(proto, str(source))
    result = quantize_static_model(source, tmp_path / "q.onnx", calib=_feeds(proto, 4, 3), allow_slower=True)
    assert result.cosine is not None and result.cosine >= 0.99
    stored = onnx.load(str(tmp_path / "q.onnx"))
    assert stored.opset_import[0].version == 19  # converted only as far as needed
    scales = {t.name: t.data_type for t in stored.graph.initializer if t.name.endswith("_scale")}
    assert set(scales.values()) == {onnx.TensorProto.FLOAT16}


def test_opset21_int8_matmul_bias_loads_at_ort_default_level(tmp_path: Path) -> None:
    """ORT 1.32 rejected the INT8 (zero point 0) form of this opset-21 model at its
    default optimisation level; --target ort (UINT8, zero point 128) loads and runs
    there, and equals the TensorRT form (checked at BASIC) value for value."""
    import onnxruntime as ort

    from spa.workflows.quantize_static import quantize_static_model

    proto = _attention()
    proto.opset_import[0].version = 21
    proto.ir_version = 10
    source = tmp_path / "attention21.onnx"
    onnx.save(proto, str(source))
    calib = _feeds(proto, 4, 9)
    result = quantize_static_model(source, tmp_path / "q.onnx", calib=calib, allow_slower=True)
    assert result.verification_optimization == "all"  # ORT's default level
    assert result.cosine is not None and result.cosine >= 0.99
    stored = onnx.load(str(tmp_path / "q.onnx"))
    types = {t.name: t.data_type for t in stored.graph.initializer}
    activation_zero_points = {
        types[node.input[2]] for node in stored.graph.node if node.op_type == "QuantizeLinear"
    }
    assert activation_zero_points == {onnx.TensorProto.UINT8}
    trt = quantize_static_model(source, tmp_path / "trt.onnx", calib=calib, target="tensorrt")
    assert trt.verification_optimization == "basic"
    with pytest.raises(Exception, match="output_dtype"):  # the ORT 1.32 failure this avoids
        ort.InferenceSession(str(tmp_path / "trt.onnx"), providers=["CPUExecutionProvider"])
    feeds = _feeds(proto, 1, 33)[0]
    # ORT's fused INT8 kernels at the default level round differently from the QDQ
    # graph (docs/quantization.md): checked against the float model, as spa verifies
    assert _cosine(_run(stored, feeds), _run(proto, feeds)) >= 0.99


def test_fp8_output_is_stored_as_float8(tmp_path: Path, residual_path: Path) -> None:
    from spa.workflows.quantize_static import quantize_static_model

    result = quantize_static_model(residual_path, tmp_path / "q.onnx", activations="fp8", calib=_feeds(_residual(), 4, 9))
    stored = onnx.load(str(tmp_path / "q.onnx"))
    types = {t.name: t.data_type for t in stored.graph.initializer}
    assert types["W1_quantized"] == onnx.TensorProto.FLOAT8E4M3FN
    assert result.cosine is not None and result.cosine >= 0.99


CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
convbn (float[1, 4, 12, 12] x) => (float[1, 8, 12, 12] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, W, B)
    n = BatchNormalization (c, gamma, beta, mean, var)
    y = Relu(n)
}
"""


def test_batchnorm_is_folded_before_static_quantization(tmp_path: Path) -> None:
    """A BatchNorm after a Conv whose weight comes from DequantizeLinear stays unfused in
    ORT; spa folds it first, so the quantized weight carries it and no BatchNorm is left."""
    from spa.workflows.quantize_static import quantize_static_model

    rng = np.random.default_rng(5)
    proto = _model(CONV_BN, {
        "W": _normal(rng, 8, 4, 3, 3), "B": _normal(rng, 8),
        "gamma": rng.uniform(0.5, 2.0, 8).astype(np.float32), "beta": _normal(rng, 8),
        "mean": _normal(rng, 8), "var": rng.uniform(0.5, 2.0, 8).astype(np.float32),
    })  # fmt: skip
    source = tmp_path / "convbn.onnx"
    onnx.save(proto, str(source))
    result = quantize_static_model(source, tmp_path / "q.onnx", calib=_feeds(proto, 8, 3), allow_slower=True)
    output = onnx.load(str(tmp_path / "q.onnx"))
    ops = [node.op_type for node in output.graph.node]
    # activation, weight and (ORT form) the INT32 bias; y is a graph output: no output pair
    assert "BatchNormalization" not in ops and ops.count("DequantizeLinear") == 3
    assert result.statistics["nodes_quantized"] == 1
    assert result.cosine is not None and result.cosine >= 0.99
