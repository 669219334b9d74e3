"""No silent no-ops: every command reports the share of params and MACs it changed
and why the rest was left (spa.stats.change), on the CLI and in --report; and
weight-only quantization of Conv (passes/quantize_conv.py), checked in ORT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

from spa.quant.channelwise import dequantize_channels, quantize_channels
from spa.stats.change import BIAS_REASON, change_share
from spa.verify import create_session, run_model

# every pruning group is frozen: the Pad pads the channel axis
PAD_FROZEN = """
<ir_version: 8, opset_import: ["" : 17]>
padded (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y)
  <int64[8] pads = {0, 1, 0, 0, 0, 1, 0, 0}> {
    c = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r = Relu(c)
    p = Pad(r, pads)
    y = Conv(p, w2)
}
"""

# a small CNN: stem Conv, depthwise Conv, pointwise Conv, pooling, Gemm head
CNN = """
<ir_version: 8, opset_import: ["" : 17]>
cnn (float[1, 3, 16, 16] x) => (float[1, 10] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w_stem, b_stem)
    ar = Relu(a)
    d = Conv <group = 16, pads = [1, 1, 1, 1]> (ar, w_dw, b_dw)
    dr = Relu(d)
    p = Conv(dr, w_pw, b_pw)
    pr = Relu(p)
    g = GlobalAveragePool(pr)
    f = Flatten(g)
    y = Gemm <transB = 1> (f, w_fc, b_fc)
}
"""

# a MatMul of two activations next to one weighted MatMul (static QDQ)
TWO_MATMULS = """
<ir_version: 8, opset_import: ["" : 17]>
mm (float[2, 8, 16] x) => (float[2, 8, 8] y) {
    h = MatMul(x, w)
    ht = Transpose <perm = [0, 2, 1]> (h)
    y = MatMul(h, ht)
}
"""


def _save(text: str, weights: dict[str, tuple[int, ...]], path: Path, seed: int = 0) -> Path:
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, shape in weights.items():
        array = rng.standard_normal(shape).astype(np.float32) * 0.3
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _cnn(path: Path) -> Path:
    return _save(CNN, {
        "w_stem": (16, 3, 3, 3), "b_stem": (16,), "w_dw": (16, 1, 3, 3), "b_dw": (16,),
        "w_pw": (32, 16, 1, 1), "b_pw": (32,), "w_fc": (10, 32), "b_fc": (10,),
    }, path)  # fmt: skip


def _feeds(shape: tuple[int, ...], seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def test_prune_with_every_group_frozen_says_nothing_changed(run_cli, tmp_path: Path) -> None:
    source = _save(PAD_FROZEN, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (4, 10, 1, 1)},
                   tmp_path / "pad.onnx")  # fmt: skip
    report = tmp_path / "report.json"
    result = run_cli("prune", source, "-o", tmp_path / "out.onnx", "--ratio", "0.5",
                     "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("NOTHING CHANGED")]
    assert len(lines) == 1 and "frozen group: Pad does not map axis 1" in lines[0]
    change = json.loads(report.read_text())["change"]
    assert change["nothing_changed"] and change["params_changed"] == 0
    assert change["left"][0]["reason"] == "frozen group: Pad does not map axis 1"
    assert change["left"][0]["macs"] == change["macs_total"] > 0


def test_prune_reports_the_changed_share(run_cli, tmp_path: Path) -> None:
    source = _cnn(tmp_path / "cnn.onnx")
    report = tmp_path / "report.json"
    result = run_cli("prune", source, "-o", tmp_path / "out.onnx", "--ratio", "0.5",
                     "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    change = json.loads(report.read_text())["change"]
    assert not change["nothing_changed"] and 0 < change["macs_share"] <= 1.0
    assert "changed: " in result.output
    # the classifier's output channels are a graph output: frozen, with that reason
    assert any(entry["reason"] == "frozen group: graph output" for entry in change["left"])


def test_weight_only_int8_covers_conv_and_matches_numpy(run_cli, tmp_path: Path) -> None:
    source = _cnn(tmp_path / "cnn.onnx")
    output = tmp_path / "w8.onnx"
    report = tmp_path / "report.json"
    result = run_cli("quantize", source, "-o", output, "--weights", "int8", "--report", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    quantized = {
        d["node"] or d["weight"]: d for d in data["decisions"] if d["action"] == "quantized"
    }
    assert sum(d["op_type"] == "Conv" for d in quantized.values()) == 3
    assert data["change"]["macs_share"] == 1.0  # every Conv and the Gemm
    # the layers' biases stay float as biases, also where a node has no name (the parser's)
    reasons = {entry["reason"] for entry in data["change"]["left"]}
    assert reasons == {BIAS_REASON}, reasons
    # structure: ORT target reads Conv weights through Cast/Mul constants, no float Conv weight
    model = onnx.load(str(output))
    stored = {t.name: t for t in model.graph.initializer}
    assert "w_stem" not in stored and stored["w_stem_q8"].data_type == onnx.TensorProto.INT8
    assert sum(node.op_type == "Cast" for node in model.graph.node) == 4  # 3 Conv + the Gemm
    assert not any(node.op_type == "MatMulNBits" for node in model.graph.node)
    # numbers: ORT equals the float model run with the NumPy-dequantized weights (the
    # Gemm's W[N, K] per output row = per column of the MatMul form's W[K, N])
    reference = onnx.load(str(source))
    for tensor in reference.graph.initializer:
        if tensor.name in ("w_stem", "w_dw", "w_pw", "w_fc"):
            array = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(
                dequantize_channels(quantize_channels(array, 8)), tensor.name))  # fmt: skip
    feeds = _feeds((1, 3, 16, 16))
    expected = run_model(create_session(reference.SerializeToString()), feeds)["y"]
    actual = run_model(create_session(output), feeds)["y"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(str(output), full_check=True)


def test_weight_only_conv_dequantize_form_is_exact_in_ort(tmp_path: Path) -> None:
    from spa.workflows.quantize import quantize_model

    source = _cnn(tmp_path / "cnn.onnx")
    for bits in (8, 4):
        result = quantize_model(source, tmp_path / f"w{bits}.onnx", bits=bits, block=16,
                                target="onnx", keep_float=())  # fmt: skip
        model = onnx.load(str(result.output))
        axes = [
            attribute.i for node in model.graph.node if node.op_type == "DequantizeLinear"
            for attribute in node.attribute if attribute.name == "axis"
        ]  # fmt: skip
        assert axes.count(0) >= 3, (bits, axes)  # per output channel on the three Conv
        reference = onnx.load(str(source))
        for tensor in reference.graph.initializer:
            if tensor.name in ("w_stem", "w_dw", "w_pw"):
                array = numpy_helper.to_array(tensor)
                tensor.CopyFrom(numpy_helper.from_array(
                    dequantize_channels(quantize_channels(array, bits)), tensor.name))  # fmt: skip
        # the Gemm alone differs (block quantized); cut the comparison at the pooled features
        feeds = _feeds((1, 3, 16, 16))
        for proto in (reference, model):
            proto.graph.output.append(onnx.helper.make_tensor_value_info("pr", 1, None))
        expected = run_model(create_session(reference.SerializeToString()), feeds)["pr"]
        actual = run_model(create_session(model.SerializeToString()), feeds)["pr"]
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_int4_keeps_depthwise_first_and_last_float_unless_asked(tmp_path: Path) -> None:
    from spa.workflows.quantize import quantize_model

    source = _cnn(tmp_path / "cnn.onnx")
    result = quantize_model(source, tmp_path / "w4.onnx", bits=4, block=16, target="onnx")
    skipped = {d["weight"]: d["reason"] for d in result.decisions if d["action"] == "skipped"}
    assert "depthwise layer kept in float" in skipped["w_dw"]
    assert "first layer kept in float" in skipped["w_stem"]
    assert "last layer kept in float" in skipped["w_fc"]
    assert result.change is not None
    reasons = [entry.reason for entry in result.change.left]
    assert any("depthwise layer kept in float" in reason for reason in reasons)
    asked = quantize_model(source, tmp_path / "w4all.onnx", bits=4, block=16, target="onnx",
                           keep_float=())  # fmt: skip
    assert asked.statistics["nodes_quantized"] == 4  # three Conv and the Gemm
    # what the default buys: the float stem, depthwise and head keep the outputs closer
    assert result.cosine is not None and asked.cosine is not None
    assert result.cosine > asked.cosine


def test_tensorrt_target_names_conv_as_not_quantizable(tmp_path: Path) -> None:
    from spa.workflows.quantize import quantize_model

    source = _cnn(tmp_path / "cnn.onnx")
    result = quantize_model(source, tmp_path / "trt.onnx", bits=4, block=16, target="tensorrt",
                            keep_float=(), verify=False)  # fmt: skip
    assert result.change is not None
    assert result.change.left[0].reason.startswith(
        "op type Conv not quantizable for --target tensorrt"
    )


def test_static_reports_activation_products_and_norm_reasons(run_cli, tmp_path: Path) -> None:
    source = _save(TWO_MATMULS, {"w": (16, 16)}, tmp_path / "mm.onnx")
    report = tmp_path / "report.json"
    result = run_cli("quantize", source, "-o", tmp_path / "q.onnx", "--activations", "int8", "--allow-slower",
                     "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    change = json.loads(report.read_text())["change"]
    assert change["params_share"] == 1.0
    left = {entry["reason"]: entry for entry in change["left"]}
    product = left["no constant weight (a product of two activations, or a computed weight)"]
    assert product["unit"] == "nodes" and product["count"] == 1
    assert 0 < change["macs_share"] < 1


def test_sparsify_reports_skipped_layers(run_cli, tmp_path: Path) -> None:
    source = _save(TWO_MATMULS.replace("float[2, 8, 16] x", "float[2, 8, 6] x"), {"w": (6, 16)},
                   tmp_path / "mm6.onnx")  # fmt: skip
    report = tmp_path / "report.json"
    result = run_cli("sparsify", source, "-o", tmp_path / "s.onnx", "--report", report)
    assert result.exit_code == 0, result.output
    assert "NOTHING CHANGED" in result.output
    change = json.loads(report.read_text())["change"]
    assert change["nothing_changed"] and "multiple of 4" in change["left"][-1]["reason"] + "".join(
        entry["reason"] for entry in change["left"]
    )


def test_optimize_twice_says_the_second_run_changed_nothing(run_cli, tmp_path: Path) -> None:
    source = _cnn(tmp_path / "cnn.onnx")
    first = run_cli("optimize", source, "-o", tmp_path / "once.onnx")
    assert first.exit_code == 0, first.output
    report = tmp_path / "report.json"
    second = run_cli("optimize", tmp_path / "once.onnx", "-o", tmp_path / "twice.onnx",
                     "--report", report)  # fmt: skip
    assert second.exit_code == 0, second.output
    assert "NOTHING CHANGED: spa optimize --recipe cleanup" in second.output
    assert json.loads(report.read_text())["change"]["nothing_changed"]


def test_change_share_counts_params_and_macs_by_reason(tmp_path: Path) -> None:
    model = onnx.load(str(_cnn(tmp_path / "cnn.onnx")))
    share = change_share(model, {"w_pw": "", "w_stem": "layer skipped: first"})
    params = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    assert share.params_total == sum(params.values())
    assert share.params_changed == params["w_pw"]
    # MACs at 16x16: stem 16*256*27, depthwise 16*256*9, pointwise 32*256*16, fc 10*32
    assert share.macs_total == 16 * 256 * 27 + 16 * 256 * 9 + 32 * 256 * 16 + 320
    assert share.macs_changed == 32 * 256 * 16
    first = next(entry for entry in share.left if entry.reason == "layer skipped: first")
    assert first.macs == 16 * 256 * 27 and first.count == 1


# a weight stored quantized: INT8 behind a DequantizeLinear, feeding a MatMul
DEQUANTIZED = """
<ir_version: 9, opset_import: ["" : 21]>
dq (float[4, 32] x) => (float[4, 16] y) {
    w = DequantizeLinear <axis = 1> (wq, scale)
    h = MatMul(x, w)
    y = MatMul(h, w2)
}
"""


def test_weights_stored_quantized_are_counted(run_cli, tmp_path: Path) -> None:
    """A model whose weight is stored quantized (the integer input of a DequantizeLinear)
    counts that weight, so its MatMul's MACs are not 'no constant weight'; a recipe that
    leaves it says so, and one that rewrites it counts it as changed."""
    model = onnx.parser.parse_model(DEQUANTIZED)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.integers(-127, 128, (32, 16)).astype(np.int8), "wq"),
        numpy_helper.from_array((rng.random(16) / 100 + 1e-3).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w2"),
    ])  # fmt: skip
    share = change_share(model, {"w2": ""})
    assert share.stored_quantized and share.params_total == 32 * 16 + 16 + 16 * 16
    assert share.macs_total == 4 * 32 * 16 + 4 * 16 * 16 and share.macs_changed == 4 * 16 * 16
    left = {entry.reason: entry for entry in share.left}
    assert "op type MatMul not handled by this command" in left  # wq: its MatMul's reason
    assert left["op type MatMul not handled by this command"].macs == 4 * 32 * 16
    assert share.headline("cmd").startswith("changed: 32.7% of params (stored quantized included)")
    assert not any(entry.unit == "nodes" for entry in share.left)  # no 'no constant weight'


def test_weights_in_folded_and_conv_block_forms_count_as_stored_quantized(tmp_path: Path) -> None:
    """spa's own weight-only outputs read their integers through Cast/Sub/Mul and, for INT4
    Conv blocks, Reshape/Transpose (or DequantizeLinear then the reshapes): every weighted
    op of such a model counts a stored weight, none reads 'no constant weight'."""
    from spa.workflows.quantize import quantize_model

    source = _cnn(tmp_path / "cnn.onnx")
    dense = change_share(onnx.load(str(source)), {})
    for bits, target in ((8, "ort"), (4, "ort"), (4, "onnx")):
        output = tmp_path / f"w{bits}-{target}.onnx"
        quantize_model(source, output, bits=bits, block=16, target=target, keep_float=(),
                       allow_slower=True)  # fmt: skip
        share = change_share(onnx.load(str(output)), {})
        assert share.stored_quantized, (bits, target)
        assert share.macs_total == dense.macs_total, (bits, target)
        assert not any(entry.unit == "nodes" for entry in share.left), (bits, target, share.left)


def test_w4_gptq_covers_conv_through_patch_hessians(tmp_path: Path) -> None:
    """INT4 Conv weights on an opset-17 model: converted to opset 21 for the INT4 tensors,
    in blocks, GPTQ on each group-1 Conv's im2col patch Hessian, RTN with its reason for
    the depthwise one; decoded exactly in ORT and closer to the float outputs than RTN on
    held-out inputs whose neighbouring pixels are correlated."""
    from spa.workflows.quantize import quantize_model

    source = _cnn(tmp_path / "cnn.onnx")

    def smooth(seed: int, count: int) -> list[dict[str, np.ndarray]]:
        coarse = np.random.default_rng(seed).standard_normal((count, 1, 3, 4, 4))
        images = np.repeat(np.repeat(coarse, 4, axis=3), 4, axis=4).astype(np.float32)
        return [{"x": image} for image in images]

    calibration, held_out = smooth(1, 16), smooth(2, 8)
    errors = {}
    for method in ("rtn", "gptq"):
        output = tmp_path / f"{method}.onnx"
        result = quantize_model(
            source, output, bits=4, block=16, method=method, keep_float=(),
            calib=calibration if method == "gptq" else None,
        )  # fmt: skip
        assert result.passed, result.verification  # decoded weights, exact in ORT
        model = onnx.load(str(output))
        assert model.opset_import[0].version == 21
        notes = {d["weight"]: d["reason"] for d in result.decisions if d["op_type"] == "Conv"}
        assert all(d["action"] == "quantized" for d in result.decisions)
        if method == "gptq":
            assert "GPTQ on the im2col patch Hessian" in notes["w_stem"]
            assert "GPTQ on the im2col patch Hessian" in notes["w_pw"]
            assert notes["w_dw"].startswith("RTN (no patch Hessian: grouped")
            assert result.calibration == "hessians for 1 activations and 2 Conv patch Hessians"
        else:
            assert notes["w_stem"] == "RTN blocks of 16, Cast+Mul folded by ORT at load"
        # INT4 blocks of 16 consecutive weights per output channel: the stem's K = 27 is
        # two blocks (the short one padded), the pointwise K = 16 one
        scales = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
        assert scales["w_stem_scales"] == (2, 1, 16) and scales["w_pw_scales"] == (1, 1, 32)
        dense, quantized = (create_session(path) for path in (source, output))
        errors[method] = sum(
            float(np.linalg.norm(run_model(dense, feeds)["y"] - run_model(quantized, feeds)["y"]))
            for feeds in held_out
        )
    assert errors["gptq"] < 0.8 * errors["rtn"], errors
