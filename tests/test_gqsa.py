"""GQSA: BSR packing round trips (hypothesis), the docs/formats.md (c) spec vectors, the
reference lowering against the NumPy reference (exact), the two-stage optimisation, the
passes on inline ONNX-text models (ORT CPU), skips with reasons, and ``spa sparsify``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from spa.errors import UserError
from spa.passes.gqsa import GQSAPass, GQSAToReferencePass, ReferenceToGQSAPass
from spa.quant.gqsa import (
    GROUP_SIZES,
    GQSAArrays,
    GroupSparseWeight,
    dequantize_gqsa,
    gqsa_quantize,
    layer_error,
    pack_gqsa,
    unpack_gqsa,
)
from spa.quant.gqsa_ir import gqsa_node, read_gqsa

SPEC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"

MLP = """
<ir_version: 10, opset_import: ["" : 21]>
mlp (float[B, 64] X) => (float[B, 32] Y) {
    H0 = MatMul(X, W1)
    H1 = Relu(H0)
    Y = Gemm <transB = 1, beta = 0.5>(H1, W2, C2)
}
"""


def _model(text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model)
    return model


def _mlp(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    weights = {
        "W1": (rng.standard_normal((64, 96)) / 8).astype(np.float32),
        "W2": (rng.standard_normal((32, 96)) / 10).astype(np.float32),
        "C2": rng.standard_normal(32).astype(np.float32),
    }
    return _model(MLP, weights), weights


def _session(proto: onnx.ModelProto, optimize: bool = False) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _run(model: ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray], **kw: bool) -> list:
    proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
    return _session(proto, **kw).run(None, feeds)  # type: ignore[attr-defined]


def _correlated(rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, 6)) @ rng.standard_normal((6, k))
    return base + 0.1 * rng.standard_normal((rows, k))


# --- packing ------------------------------------------------------------------------------


@st.composite
def _sparse_weights(draw: st.DrawFn) -> GroupSparseWeight:
    group = draw(st.sampled_from(GROUP_SIZES))
    bits = draw(st.sampled_from([4, 8]))
    blocks, cols = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    limit = 2 ** (bits - 1) - 1
    kept = rng.random((blocks, cols)) < draw(st.floats(0.0, 1.0))  # rows may be empty
    q = rng.integers(-limit, limit + 1, (blocks * group, cols)).astype(np.int8)
    q *= np.repeat(kept, group, axis=0).astype(np.int8)
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    scales = (rng.random((blocks, cols)) + 0.01).astype(dtype) * kept
    return GroupSparseWeight(q, scales.astype(dtype), kept, group, bits)


@settings(max_examples=60, deadline=None)
@given(_sparse_weights())
def test_pack_unpack_round_trip(weight: GroupSparseWeight) -> None:
    arrays = pack_gqsa(weight)
    nnz = int(weight.kept.sum())
    assert arrays.values.shape == (nnz, weight.group * weight.bits // 8)
    assert arrays.row_ptr[0] == 0 and arrays.row_ptr[-1] == nnz
    for column in range(arrays.n):
        row = arrays.col_idx[arrays.row_ptr[column] : arrays.row_ptr[column + 1]]
        assert np.all(np.diff(row) > 0)
    back = unpack_gqsa(arrays)
    assert np.array_equal(back.q, weight.q) and np.array_equal(back.kept, weight.kept)
    assert np.array_equal(back.scales, weight.scales) and back.scales.dtype == weight.scales.dtype
    assert np.array_equal(dequantize_gqsa(arrays), weight.dequantize())


def _gqsa_vectors() -> list[dict]:
    match = re.search(r"```json spec-vectors\n(.*?)```", SPEC.read_text(encoding="utf-8"), re.S)
    assert match, "docs/formats.md lost its spec-vectors block"
    vectors = [v for v in json.loads(match.group(1)) if v["format"] == "gqsa"]
    assert vectors, "docs/formats.md has no gqsa spec vector"
    return vectors


@pytest.mark.parametrize("vector", _gqsa_vectors())
def test_spec_vectors(vector: dict) -> None:
    rows, cols, group = vector["K"], vector["N"], vector["group_size"]
    q = np.zeros((rows, cols), np.int8)
    for key, value in vector["q"].items():
        row, col = (int(part) for part in key.split(","))
        q[row, col] = value
    kept = np.zeros((rows // group, cols), bool)
    scales = np.zeros((rows // group, cols), np.float32)
    for key, scale in vector["kept_scales"].items():
        block, col = (int(part) for part in key.split(","))
        kept[block, col], scales[block, col] = True, scale
    arrays = pack_gqsa(GroupSparseWeight(q, scales, kept, group, vector["bits"]))
    assert [row.tobytes().hex() for row in arrays.values] == vector["values_hex"]
    assert arrays.col_idx.tolist() == vector["col_idx"]
    assert arrays.row_ptr.tolist() == vector["row_ptr"]
    assert arrays.scales.tolist() == vector["scales"]


# --- the reference lowering is exact -------------------------------------------------------


def _plugin_model(arrays: GQSAArrays, float_type: int) -> ir.Model:
    """One spa.GroupSparseQuantMatMul fed by A, lowered, with W[K, N] as a second output."""
    graph_proto = onnx.helper.make_graph(
        [],
        "g",
        [onnx.helper.make_tensor_value_info("A", float_type, ["B", arrays.k])],
        [],
    )
    model = ir.serde.deserialize_model(
        onnx.helper.make_model(graph_proto, opset_imports=[onnx.helper.make_opsetid("", 21)])
    )
    graph = model.graph
    inputs = []
    for name, array in zip(
        ("values", "col_idx", "row_ptr", "scales"),
        (arrays.values, arrays.col_idx, arrays.row_ptr, arrays.scales),
        strict=True,
    ):
        value = ir.Value(name=name, const_value=ir.Tensor(array, name=name))
        graph.register_initializer(value)
        inputs.append(value)
    node = gqsa_node(graph.inputs[0], inputs, arrays, "layer")
    node.outputs[0].name = "Y"
    node.outputs[0].type = ir.TensorType(ir.DataType(float_type))
    node.outputs[0].shape = ir.Shape(["B", arrays.n])
    graph.append(node)
    graph.outputs.append(node.outputs[0])
    model.opset_imports["spa"] = 1
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("group", "bits"), [(16, 4), (8, 4), (32, 8)])
def test_reference_lowering_matches_numpy_exactly(dtype: type, group: int, bits: int) -> None:
    rng = np.random.default_rng(group + bits)
    rows, cols, limit = group * 5, 7, 2 ** (bits - 1) - 1
    kept = rng.random((rows // group, cols)) < 0.5
    kept[:, 3] = False  # an empty BSR row
    kept[:, 5] = True  # a full one: rows are unbalanced
    q = rng.integers(-limit, limit + 1, (rows, cols)).astype(np.int8)
    q *= np.repeat(kept, group, axis=0).astype(np.int8)
    scales = ((rng.random(kept.shape) + 0.1) * kept).astype(dtype)
    arrays = pack_gqsa(GroupSparseWeight(q, scales, kept, group, bits))
    model = _plugin_model(arrays, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    assert GQSAToReferencePass()(model).statistics["nodes_converted"] == 1
    weight_value = next(n for n in model.graph if n.name == "gqsa_ref/layer/weight_kn").outputs[0]
    weight_value.name = "W"
    weight_value.type = ir.TensorType(ir.DataType.from_numpy(np.dtype(dtype)))
    weight_value.shape = ir.Shape([rows, cols])
    model.graph.outputs.append(weight_value)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    x = rng.standard_normal((3, rows)).astype(dtype)
    expected = dequantize_gqsa(arrays)
    for optimize in (False, True):
        y, weight = _run(proto, {"A": x}, optimize=optimize)
        assert weight.dtype == dtype and np.array_equal(weight, expected)
        reference = x.astype(np.float64) @ expected.astype(np.float64)
        tolerance = 1e-4 if dtype == np.float32 else 2e-2
        np.testing.assert_allclose(y, reference, rtol=tolerance, atol=tolerance)


# --- the two stages ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("calibrated", [False, True])
def test_scale_refinement_never_increases_layer_error(seed: int, calibrated: bool) -> None:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((64, 12)).astype(np.float32)
    x = _correlated(512, 64, seed)
    hessian = 2 * x.T @ x / len(x) if calibrated else None
    frozen = gqsa_quantize(weight, hessian, group=16, refine=False)
    refined = gqsa_quantize(weight, hessian, group=16)
    assert np.array_equal(frozen.q, refined.q) and np.array_equal(frozen.kept, refined.kept)
    before = layer_error(hessian, weight, frozen.dequantize())
    after = layer_error(hessian, weight, refined.dequantize())
    assert after <= before * (1 + 1e-9)
    assert after < before  # and on these weights it helps


def test_selection_is_balanced_and_calibration_lowers_output_error() -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((128, 16)).astype(np.float32)
    x = _correlated(1024, 128, 4)
    hessian = 2 * x.T @ x / len(x)
    free = gqsa_quantize(weight, None, group=16, sparsity=0.5)
    calibrated = gqsa_quantize(weight, hessian, group=16, sparsity=0.5)
    for result in (free, calibrated):
        assert np.all(result.kept.sum(axis=0) == 4)
        assert np.all(result.q[np.repeat(~result.kept, 16, axis=0)] == 0)
        assert np.abs(result.q).max() <= 7
    assert layer_error(hessian, weight, calibrated.dequantize()) < 0.5 * layer_error(
        hessian, weight, free.dequantize()
    )


# --- the passes ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["reference", "plugin"])
def test_gqsa_pass_end_to_end_matches_numpy(form: str) -> None:
    proto, weights = _mlp()
    model = ir.serde.deserialize_model(proto)
    spa_pass = GQSAPass(group=16, sparsity=0.5, form=form)
    result = spa_pass(model)
    assert result.statistics["nodes_quantized"] == 2
    assert result.statistics["bytes_after"] < result.statistics["bytes_before"] / 5
    ops = [node.op_type for node in model.graph]
    assert "Gemm" not in ops and not {"W1", "W2", "C2"} & set(model.graph.initializers)
    dequantized = []
    for node in model.graph:
        if node.op_type == "GroupSparseQuantMatMul":
            arrays, reason = read_gqsa(node)
            assert arrays is not None, reason
            dequantized.append(dequantize_gqsa(arrays))
    if form == "plugin":
        assert ops.count("GroupSparseQuantMatMul") == 2 and model.opset_imports["spa"] == 1
        assert GQSAToReferencePass()(model).statistics["nodes_converted"] == 2
        assert "spa" not in model.opset_imports
    else:
        assert ReferenceToGQSAPass()(model).statistics["nodes_converted"] == 2
        for node in model.graph:
            if node.op_type == "GroupSparseQuantMatMul":
                arrays, _ = read_gqsa(node)
                assert arrays is not None
                dequantized.append(dequantize_gqsa(arrays))
        GQSAToReferencePass()(model)
    w1, w2 = dequantized[:2]
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    serialized = ir.serde.serialize_model(model)
    onnx.checker.check_model(serialized)
    (actual,) = _run(serialized, {"X": x})
    expected = np.maximum(x @ w1, 0) @ w2 + 0.5 * weights["C2"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    exact = np.maximum(x @ weights["W1"], 0) @ weights["W2"].T + 0.5 * weights["C2"]
    cosine = np.dot(actual.ravel(), exact.ravel()) / np.linalg.norm(actual) / np.linalg.norm(exact)
    assert cosine > 0.6  # 50% of the groups removed from random weights


def test_form_round_trip_keeps_every_byte() -> None:
    proto, _ = _mlp()
    model = ir.serde.deserialize_model(proto)
    GQSAPass(form="plugin")(model)
    before = {name: v.const_value.numpy().copy() for name, v in model.graph.initializers.items()}
    GQSAToReferencePass()(model)
    ReferenceToGQSAPass()(model)
    after = {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[name], after[name]) for name in before)
    assert [n.op_type for n in model.graph] == ["GroupSparseQuantMatMul", "Relu",
                                                "GroupSparseQuantMatMul", "Add"]  # fmt: skip


SKIPS = """
<ir_version: 10, opset_import: ["" : 21, "com.microsoft" : 1]>
skips (float[B, 40] X, float[B, 32] V, int32[B, 32] I) => (float[B, 8] P, float[B, 8] Q,
        int32[B, 8] J, float[B, 8] R, float[B, 8] S, float[B, 8] T) {
    P = MatMul(X, WK)
    Q = MatMul(V, WS)
    Q2 = MatMul(V, WS)
    J = MatMul(I, WI)
    WD = DequantizeLinear(WQ, SQ)
    R = MatMul(V, WD)
    S = com.microsoft.MatMulNBits <K = 32, N = 8, bits = 4, block_size = 32>(V, NB, NS)
    T = MatMul(V, WOK)
}
"""


def test_bad_weights_are_skipped_with_reasons() -> None:
    rng = np.random.default_rng(0)
    weights = {
        "WK": rng.standard_normal((40, 8)).astype(np.float32),  # K=40 not a multiple of 16
        "WS": rng.standard_normal((32, 8)).astype(np.float32),
        "WI": rng.integers(-3, 3, (32, 8)).astype(np.int32),
        "WQ": rng.integers(-3, 3, (32, 8)).astype(np.int8),
        "SQ": np.array(0.1, np.float32),
        "NB": rng.integers(0, 255, (8, 1, 16)).astype(np.uint8),
        "NS": np.ones(8, np.float32),
        "WOK": rng.standard_normal((32, 8)).astype(np.float32),
    }
    model = ir.serde.deserialize_model(_model(SKIPS, weights))
    spa_pass = GQSAPass(group=16)
    assert spa_pass(model).statistics == {
        "nodes_quantized": 1, "nodes_skipped": 6,
        "bytes_before": 32 * 8 * 4, "bytes_after": 8 * 8 + 8 * 4 + 9 * 4 + 8 * 4,
    }  # fmt: skip
    reasons = {d.weight: d.reason for d in spa_pass.decisions if d.action == "skipped"}
    assert "not a multiple of the group size 16" in reasons["WK"]
    assert "shared by 2 nodes" in reasons["WS"]
    assert "INT32" in reasons["WI"] and "already quantized" in reasons["WI"]
    assert "DequantizeLinear" in reasons["WD"] and "already quantized" in reasons["WD"]
    assert "already quantized (com.microsoft.MatMulNBits)" in reasons["NB"]
    for name in ("WK", "WS", "WI", "WQ", "NB"):
        assert np.array_equal(model.graph.initializers[name].const_value.numpy(), weights[name])
    feeds = {
        "X": rng.standard_normal((2, 40)).astype(np.float32),
        "V": rng.standard_normal((2, 32)).astype(np.float32),
        "I": rng.integers(-3, 3, (2, 32)).astype(np.int32),
    }
    assert len(_run(model, feeds)) == 6


def test_nodes_with_the_same_name_get_distinct_lowerings() -> None:
    text = """<ir_version: 10, opset_import: ["" : 21]>
    g (float[B, 32] X) => (float[B, 8] Y, float[B, 8] Z) {
        Y = MatMul(X, W1)
        Z = MatMul(X, W2)
    }"""
    rng = np.random.default_rng(0)
    weights = {n: rng.standard_normal((32, 8)).astype(np.float32) for n in ("W1", "W2")}
    proto = onnx.parser.parse_model(text)
    for node in proto.graph.node:
        node.name = "same"
    for name, array in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    model = ir.serde.deserialize_model(proto)
    GQSAPass(group=8)(model)
    assert ReferenceToGQSAPass()(model).statistics == {"nodes_converted": 2, "nodes_skipped": 0}
    assert sorted(node.name or "" for node in model.graph) == ["same", "same_1"]


def test_bfloat16_weights_are_skipped() -> None:
    import ml_dtypes

    weight = np.ones((32, 8), ml_dtypes.bfloat16)
    text = """<ir_version: 10, opset_import: ["" : 21]>
    g (bfloat16[B, 32] X) => (bfloat16[B, 8] Y) { Y = MatMul(X, W) }"""
    model = ir.serde.deserialize_model(_model(text, {"W": weight}))
    spa_pass = GQSAPass()
    assert spa_pass(model).statistics["nodes_skipped"] == 1
    assert "is bfloat16; GQSA scales take the activation type" in spa_pass.decisions[0].reason


def test_reference_form_needs_opset_18() -> None:
    old = MLP.replace('"" : 21', '"" : 17')
    _, weights = _mlp()
    model = ir.serde.deserialize_model(_model(old, {**weights}))
    spa_pass = GQSAPass(form="reference")
    assert spa_pass(model).statistics["nodes_quantized"] == 0
    assert all("opset 17 < 18" in d.reason for d in spa_pass.decisions)


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="group size 12"):
        GQSAPass(group=12)
    with pytest.raises(UserError, match=r"sparsity 1\.0"):
        GQSAPass(sparsity=1.0)
    with pytest.raises(UserError, match="bits=8"):
        GQSAPass(bits=8, form="plugin")


# --- the command ---------------------------------------------------------------------------


def test_sparsify_gqsa_cli_plugin_and_reference(run_cli, tmp_path: Path) -> None:
    proto, _ = _mlp()
    source = tmp_path / "mlp.onnx"
    onnx.save(proto, str(source))
    x = _correlated(64, 64, 2).astype(np.float32).reshape(16, 4, 64)
    np.savez(tmp_path / "calib.npz", X=x)
    report = tmp_path / "report.json"
    plugin = run_cli(
        "sparsify", source, "-o", tmp_path / "plugin.onnx", "--pattern", "gqsa", "--form",
        "plugin", "--calib", tmp_path / "calib.npz", "--report", report, "--verify-cosine", "0.5",
    )  # fmt: skip
    assert plugin.exit_code == 0, plugin.output
    assert "PASSED | sparsify gqsa g16 50% int4 -> plugin" in plugin.output
    data = json.loads(report.read_text())
    assert data["calibration"] == "hessians for 2 activations"
    assert data["mac_coverage"] == 1.0 and data["bytes_after"] < data["bytes_before"] / 3
    assert 0.5 <= data["sparsity"] < 0.6
    written = onnx.load(str(tmp_path / "plugin.onnx"))
    assert {o.domain: o.version for o in written.opset_import}["spa"] == 1
    reference = run_cli(
        "sparsify", source, "-o", tmp_path / "ref.onnx", "--pattern", "gqsa", "--group", "32",
        "--sparsity", "0.25", "--verify-cosine", "0.7",
    )  # fmt: skip
    assert reference.exit_code == 0, reference.output
    assert "data-free" in reference.output and "gqsa g32 25% int4 -> reference" in reference.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pattern", "gqsa", "--group", "12"], "group size 12: choose one of 8, 16, 32, 64"),
        (["--pattern", "gqsa", "--sparsity", "1.5"], "sparsity 1.5"),
        (["--pattern", "gqsa", "--bits", "8", "--form", "plugin"], "bits=8"),
        (["--pattern", "gqsa", "--method", "sparsegpt"], "--method applies to --pattern 2:4"),
        (["--calib", "absent.npz"], "no such file or folder"),
    ],
)
def test_sparsify_gqsa_bad_options_one_line_exit_1(
    run_cli, tmp_path: Path, args: list[str], message: str
) -> None:
    proto, _ = _mlp()
    source = tmp_path / "mlp.onnx"
    onnx.save(proto, str(source))
    result = run_cli("sparsify", source, "-o", tmp_path / "out.onnx", *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "out.onnx").exists()


def test_sparsify_converts_old_opsets_for_the_reference_form(tmp_path: Path) -> None:
    from spa.workflows.sparsify import sparsify_model

    _, weights = _mlp()
    source = tmp_path / "old.onnx"
    onnx.save(_model(MLP.replace('"" : 21', '"" : 13'), weights), str(source))
    result = sparsify_model(source, tmp_path / "out.onnx", pattern="gqsa", min_cosine=0.5)
    assert result.rewritten == 2 and result.passed
    written = onnx.load(str(tmp_path / "out.onnx"))
    assert {o.domain: o.version for o in written.opset_import}[""] == 21


@pytest.mark.parametrize("form", ["reference", "plugin"])
def test_gqsa_and_quantize_verify_exactly_against_decoded_weights_of_a_transposed_gemm(
    tmp_path: Path, form: str
) -> None:
    """The decoded reference holds each weight in its own layout: the Gemm's
    ``W2[32, 96]`` (transB) is the transpose of the ``W[K, N]`` the formats store."""
    from spa.workflows.quantize import quantize_model
    from spa.workflows.sparsify import sparsify_model

    model, _ = _mlp()
    source = tmp_path / "mlp.onnx"
    onnx.save(model, str(source))
    sparse = sparsify_model(source, tmp_path / "gqsa.onnx", pattern="gqsa", form=form)
    quantized = quantize_model(source, tmp_path / "w4.onnx", bits=4, block=32, keep_float=())
    for result in (sparse, quantized):
        assert result.statistics["nodes_quantized"] == 2
        assert result.verification is not None and result.verification.passed
        assert result.verification.max_rel_diff <= 1e-4
        assert result.drift is not None and result.cosine is not None and result.cosine < 0.9999
