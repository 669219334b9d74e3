"""quantize-weights and the MatMulNBits <-> QDQ conversions on inline ONNX-text models:
rewrite count -> structure -> numbers in ORT CPU -> onnx.checker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from spa.errors import UserError
from spa.model_io import load_model, save_model
from spa.passes.quantize import (
    MatMulNBitsToQDQPass,
    QDQToMatMulNBitsPass,
    QuantizeWeightsPass,
)
from spa.quant.blockwise import dequantize
from spa.quant.ir_format import read_dequantize, read_matmulnbits
from spa.verify import create_session, run_model

MLP = """
<ir_version: 10, opset_import: ["" : 21]>
mlp (float[B, 64] X) => (float[B, 32] Y) {
    H0 = MatMul(X, W1)
    H1 = Relu(H0)
    Y = Gemm <transB = 1, beta = 0.5>(H1, W2, C2)
}
"""


def _model(
    text: str, weights: dict[str, tuple[int, ...]], seed: int = 0, check: bool = True
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(text)
    for name, shape in weights.items():
        array = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    if check:
        onnx.checker.check_model(model)
    return model


def _mlp(seed: int = 0) -> onnx.ModelProto:
    return _model(MLP, {"W1": (64, 96), "W2": (32, 96), "C2": (32,)}, seed)


def _run(
    model: ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False
) -> np.ndarray:
    """Run in ORT CPU; without ``optimize`` ORT runs the graph's own ops (no fusions)."""
    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
    if optimize:
        return run_model(create_session(proto.SerializeToString()), feeds)["Y"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return run_model(session, feeds)["Y"]


def _reference(model: onnx.ModelProto, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The MLP computed in numpy with the given (dequantized) weights."""
    c2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "C2"))
    hidden = np.maximum(x @ weights["W1"], 0)
    return hidden @ weights["W2"] + 0.5 * c2


def _cast_form_weight(mul: ir.Node) -> np.ndarray:
    """``Mul(Cast(q) [- zero point], scale)``, the --target ort INT8 form, in NumPy."""
    def const(value: ir.Value | None) -> np.ndarray:
        assert value is not None and value.const_value is not None
        return value.const_value.numpy()

    source = mul.inputs[0].producer()
    zero = np.float32(0)
    if source.op_type == "Sub":
        zero = const(source.inputs[1])
        source = source.inputs[0].producer()
    assert source.op_type == "Cast"
    return ((const(source.inputs[0]).astype(np.float32) - zero) * const(mul.inputs[1])).astype(np.float32)


def _quantized_weights(model: ir.Model) -> dict[str, np.ndarray]:
    found = {}
    for node in model.graph:
        if node.op_type == "Mul" and node.inputs[0].producer() is not None:
            weight = _cast_form_weight(node)
            found["W1" if weight.shape == (64, 96) else "W2"] = weight
            continue
        if node.op_type == "MatMulNBits":
            weight, reason = read_matmulnbits(node)
        elif node.op_type == "DequantizeLinear":
            weight, reason = read_dequantize(node)
        else:
            continue
        assert weight is not None, reason
        key = "W1" if weight.shape == (64, 96) else "W2"
        found[key] = dequantize(weight)
    return found


@pytest.mark.parametrize(
    ("target", "bits", "symmetric"),
    [("ort", 4, True), ("ort", 4, False), ("ort", 8, True), ("ort", 8, False),
     ("onnx", 4, True), ("onnx", 4, False), ("onnx", 8, True), ("onnx", 8, False),
     ("tensorrt", 4, True)],
)  # fmt: skip
def test_each_target_runs_and_matches_dequantized_reference(
    target: str, bits: int, symmetric: bool
) -> None:
    proto = _mlp()
    model = ir.serde.deserialize_model(proto)
    quantizer = QuantizeWeightsPass(bits, 32, symmetric, "rtn", target)
    result = quantizer(model)
    assert result.statistics["nodes_quantized"] == 2
    assert result.statistics["bytes_after"] < result.statistics["bytes_before"]
    ops = [node.op_type for node in model.graph]
    # ORT INT8: Cast+Mul constants ORT folds at load (its 8-bit MatMulNBits was slower)
    expected_core = "DequantizeLinear" if target != "ort" else "Cast" if bits == 8 else "MatMulNBits"
    assert ops.count(expected_core) == 2 and "Gemm" not in ops
    assert not {"W1", "W2"} & set(model.graph.initializers)
    serialized = ir.serde.serialize_model(model)
    onnx.checker.check_model(serialized)
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    actual = _run(model, {"X": x})
    reference = _reference(proto, _quantized_weights(model), x)
    np.testing.assert_allclose(actual, reference, rtol=0, atol=2e-5)
    # ORT's default optimizations may fuse DequantizeLinear -> MatMul into MatMulNBits
    # with int8 activations (accuracy level 4): a looser but explicit bound.
    optimized = _run(model, {"X": x}, optimize=True)
    np.testing.assert_allclose(optimized, reference, rtol=0, atol=0.05)
    originals = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    exact = _reference(proto, {"W1": originals["W1"], "W2": originals["W2"].T}, x)
    cosine = float(
        np.dot(actual.ravel(), exact.ravel()) / np.linalg.norm(actual) / np.linalg.norm(exact)
    )
    assert cosine >= (0.9999 if bits == 8 else 0.99)


def test_tensorrt_form_is_symmetric_int4_without_zero_point() -> None:
    model = ir.serde.deserialize_model(_mlp())
    QuantizeWeightsPass(4, 32, True, "rtn", "tensorrt")(model)
    for node in model.graph:
        if node.op_type == "DequantizeLinear":
            assert len(node.inputs) == 2
            x = node.inputs[0]
            assert x is not None and x.const_value is not None
            assert x.const_value.dtype == ir.DataType.INT4
            assert node.attributes.get_int("block_size") == 32


def test_tensorrt_rejects_asymmetric_and_int8() -> None:
    with pytest.raises(UserError, match="symmetric INT4"):
        QuantizeWeightsPass(8, 32, True, "rtn", "tensorrt")
    with pytest.raises(UserError, match="symmetric INT4"):
        QuantizeWeightsPass(4, 32, False, "rtn", "tensorrt")
    with pytest.raises(UserError, match="power of two"):
        QuantizeWeightsPass(4, 48, True, "rtn", "ort")


def _decisions(text: str, weights: dict[str, tuple[int, ...]], **options: object) -> dict[str, str]:
    model = ir.serde.deserialize_model(_model(text, weights))
    quantizer = QuantizeWeightsPass(**options)  # type: ignore[arg-type,unused-ignore]
    quantizer(model)
    onnx.checker.check_model(ir.serde.serialize_model(model))
    return {d.node: (d.action + ": " + d.reason) for d in quantizer.decisions}


def test_k_not_multiple_of_block_skipped_for_qdq_but_padded_for_ort() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[B, 40] X) => (float[B, 8] Y) { Y = MatMul <name="mm">(X, W) }
    """
    text = text.replace('MatMul <name="mm">', "MatMul")
    weights: dict[str, tuple[int, ...]] = {"W": (40, 8)}
    skipped = _decisions(text, weights, bits=4, block=32, target="onnx")
    (reason,) = skipped.values()
    assert reason.startswith("skipped: K=40 is not a multiple of block 32")
    model = ir.serde.deserialize_model(_model(text, weights))
    QuantizeWeightsPass(4, 32, True, "rtn", "ort")(model)
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    (weight,) = _quantized_weights_any(model)
    np.testing.assert_allclose(_run(model, {"X": x}), x @ weight, rtol=0, atol=1e-5)


def _quantized_weights_any(model: ir.Model) -> list[np.ndarray]:
    weights = []
    for node in model.graph:
        if node.op_type == "MatMulNBits":
            weight, reason = read_matmulnbits(node)
            assert weight is not None, reason
            weights.append(dequantize(weight))
    return weights


BAD = """
<ir_version: 10, opset_import: ["" : 21]>
bad (float[B, 64] X, float[64, 16] Wdyn) => (float[B, 16] Y1, float[B, 16] Y2, float[B, 16] Y3, int32[B, 16] Y4, float[B, 16] Y5) {
    Y1 = MatMul(X, Wshared)
    Y2 = MatMul(X, Wshared)
    Y3 = MatMul(X, Wdyn)
    Xi = Cast <to = 6>(X)
    Y4 = MatMul(Xi, Wint)
    Wd = DequantizeLinear <axis = 0, block_size = 32>(Wq, Ws)
    Y5 = MatMul(X, Wd)
}
"""


def test_bad_inputs_are_skipped_with_reasons() -> None:
    proto = _model(BAD, {"Wshared": (64, 16)}, check=False)
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(rng.integers(-3, 3, (64, 16)).astype(np.int32), "Wint"),
            numpy_helper.from_array(rng.integers(-100, 100, (64, 16)).astype(np.int8), "Wq"),
            numpy_helper.from_array(np.full((2, 16), 0.01, np.float32), "Ws"),
        ]
    )
    onnx.checker.check_model(proto)
    model = ir.serde.deserialize_model(proto)
    quantizer = QuantizeWeightsPass(4, 32, True, "rtn", "ort")
    result = quantizer(model)
    assert result.statistics == {
        "nodes_quantized": 0,
        "nodes_skipped": 5,
        "bytes_before": 0,
        "bytes_after": 0,
    }
    assert not result.modified
    reasons = " | ".join(d.reason for d in quantizer.decisions)
    assert reasons.count("shared by 2 nodes") == 2
    assert "graph input" in reasons
    assert "INT32 (integer weight" in reasons
    assert "already quantized (weight comes from DequantizeLinear" in reasons


def test_already_matmulnbits_model_has_nothing_to_do(tmp_path: Path) -> None:
    model = ir.serde.deserialize_model(_mlp())
    QuantizeWeightsPass(4, 32, True, "rtn", "ort")(model)
    again = QuantizeWeightsPass(4, 32, True, "rtn", "ort")
    result = again(model)
    assert result.statistics["nodes_quantized"] == 0 and not result.modified
    assert {d.reason for d in again.decisions} == {"already quantized (com.microsoft.MatMulNBits)"}


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, True), (8, False)])
def test_conversions_round_trip_keep_dequantized_weights(bits: int, symmetric: bool) -> None:
    model = ir.serde.deserialize_model(_mlp())
    if bits == 8:  # --target ort writes INT8 as Cast+Mul; the 8-bit MatMulNBits comes from QDQ
        QuantizeWeightsPass(bits, 32, symmetric, "rtn", "onnx")(model)
        QDQToMatMulNBitsPass()(model)
    else:
        QuantizeWeightsPass(bits, 32, symmetric, "rtn", "ort")(model)
    original = _quantized_weights(model)
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    y_nbits = _run(model, {"X": x})
    to_qdq = MatMulNBitsToQDQPass()(model)
    assert to_qdq.statistics["nodes_converted"] == 2
    assert [n.op_type for n in model.graph].count("DequantizeLinear") == 2
    onnx.checker.check_model(ir.serde.serialize_model(model))
    as_qdq = _quantized_weights(model)
    for key in original:
        np.testing.assert_array_equal(as_qdq[key], original[key])
    np.testing.assert_allclose(_run(model, {"X": x}), y_nbits, rtol=0, atol=2e-5)
    back = QDQToMatMulNBitsPass()(model)
    assert back.statistics["nodes_converted"] == 2
    assert "DequantizeLinear" not in [n.op_type for n in model.graph]
    for key, value in _quantized_weights(model).items():
        np.testing.assert_array_equal(value, original[key])
    np.testing.assert_allclose(_run(model, {"X": x}), y_nbits, rtol=0, atol=2e-5)


def test_saved_model_reloads_with_packed_int4(tmp_path: Path) -> None:
    model = ir.serde.deserialize_model(_mlp())
    QuantizeWeightsPass(4, 32, False, "rtn", "onnx")(model)
    path = save_model(model, tmp_path / "q.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    loaded = load_model(path)
    weights = _quantized_weights(loaded)
    for key, value in _quantized_weights(model).items():
        np.testing.assert_array_equal(weights[key], value)


# Which layers low-bit defaults keep in float: the first layer and its siblings, every
# layer feeding no other weighted layer, never a graph input read deeper in
ROLES = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 8] x, float[N, 8] memory) => (float[N, 8] box, float[N, 8] score, float[1, 1, 4] state) {
    q = MatMul (x, wq)
    k = MatMul (x, wk)
    v = MatMul (x, wv)
    qk = Add (q, k)
    h = Add (qk, v)
    cross = MatMul (memory, wm)
    trunk_in = Add (h, cross)
    trunk = MatMul (trunk_in, wt)
    r = Relu (trunk)
    box = MatMul (r, wb)
    score = MatMul (r, ws)
    e = MatMul (r, we)
    sequence = Unsqueeze (e, one)
    seq_out, state = LSTM <hidden_size = 4> (sequence, lw, lr)
}"""


def test_first_and_last_layers_by_structure() -> None:
    from spa.passes.quantize_conv import layer_roles

    proto = onnx.parser.parse_model(ROLES)
    rng = np.random.default_rng(0)
    for name in ("wq", "wk", "wv", "wm", "wt", "wb", "ws", "we"):
        proto.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), name))
    proto.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((1, 16, 8)).astype(np.float32), "lw"),
        numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "lr"),
        numpy_helper.from_array(np.array([1]), "one"),
    ])
    model = ir.serde.deserialize_model(proto)
    roles = layer_roles(model.graph)
    by_weight = {node.inputs[1].name: roles.get(id(node), "") for node in model.graph if node.op_type == "MatMul"}
    assert by_weight == {"wq": "first", "wk": "first", "wv": "first", "wm": "", "wt": "", "wb": "last", "ws": "last",
                         "we": ""}  # an LSTM follows it  # fmt: skip
