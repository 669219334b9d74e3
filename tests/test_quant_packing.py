"""Packing formats: round trips (hypothesis), the spec vectors of docs/formats.md,
and both layouts against ONNX Runtime's kernels and ORT's own 4/8-bit quantizer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from spa.quant.blockwise import QuantizedWeight, dequantize, quantize_rtn
from spa.quant.packing import (
    MatMulNBitsArrays,
    QDQArrays,
    pack_matmulnbits,
    pack_nibbles,
    pack_qdq,
    unpack_matmulnbits,
    unpack_nibbles,
    unpack_qdq,
)

SPEC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
ONNX_TYPES = {
    "INT4": TensorProto.INT4,
    "UINT4": TensorProto.UINT4,
    "INT8": TensorProto.INT8,
    "UINT8": TensorProto.UINT8,
}


def _weights(seed: int, rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 3.0)
    return (rng.standard_normal((rows, cols)) * scale + rng.normal(0, scale)).astype(np.float32)


shapes = st.tuples(
    st.integers(0, 2**16),
    st.sampled_from([4, 8]),
    st.sampled_from([16, 32, 64, 128]),
    st.integers(1, 4),
    st.integers(1, 9),
    st.booleans(),
)


def _same(left: QuantizedWeight, right: QuantizedWeight) -> None:
    assert left.q.dtype == right.q.dtype
    np.testing.assert_array_equal(left.q, right.q)
    np.testing.assert_array_equal(left.scales, right.scales)
    assert (left.zero_points is None) == (right.zero_points is None)
    if left.zero_points is not None:
        np.testing.assert_array_equal(left.zero_points, right.zero_points)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(0, 15), min_size=1, max_size=41))
def test_nibbles_round_trip(values: list[int]) -> None:
    array = np.array(values, dtype=np.uint8)
    packed = pack_nibbles(array)
    assert packed.shape == ((len(values) + 1) // 2,)
    np.testing.assert_array_equal(unpack_nibbles(packed, len(values)), array)
    signed = (array.astype(np.int16) - 8).astype(np.int8)
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(signed), len(values), True), signed)


@settings(max_examples=60, deadline=None)
@given(case=shapes)
def test_matmulnbits_round_trip(case: tuple[int, int, int, int, int, bool]) -> None:
    seed, bits, block, blocks, cols, symmetric = case
    weight = quantize_rtn(_weights(seed, blocks * block, cols), bits, block, symmetric)
    arrays = pack_matmulnbits(weight)
    assert arrays.b.shape == (cols, blocks, block * bits // 8)
    assert arrays.scales.shape == (cols * blocks,)
    _same(unpack_matmulnbits(arrays), weight)


@settings(max_examples=40, deadline=None)
@given(case=shapes, short=st.integers(1, 15))
def test_matmulnbits_round_trip_k_not_multiple(
    case: tuple[int, int, int, int, int, bool], short: int
) -> None:
    seed, bits, block, blocks, cols, symmetric = case
    rows = blocks * block - short
    weight = quantize_rtn(_weights(seed, rows, cols), bits, block, symmetric)
    _same(unpack_matmulnbits(pack_matmulnbits(weight)), weight)


@settings(max_examples=60, deadline=None)
@given(case=shapes)
def test_qdq_round_trip(case: tuple[int, int, int, int, int, bool]) -> None:
    seed, bits, block, blocks, cols, symmetric = case
    weight = quantize_rtn(_weights(seed, blocks * block, cols), bits, block, symmetric)
    arrays = pack_qdq(weight)
    expected = ("INT" if symmetric else "UINT") + str(bits)
    assert arrays.x_type == expected
    assert arrays.x.nbytes == (blocks * block * cols * bits + 7) // 8
    _same(unpack_qdq(arrays), weight)


@settings(max_examples=80, deadline=None)
@given(case=shapes, short=st.integers(0, 15))
def test_rtn_error_at_most_half_a_step(
    case: tuple[int, int, int, int, int, bool], short: int
) -> None:
    seed, bits, block, blocks, cols, symmetric = case
    original = _weights(seed, blocks * block - short, cols)
    weight = quantize_rtn(original, bits, block, symmetric)
    steps = np.repeat(weight.scales.astype(np.float64), block, axis=0)[: original.shape[0]]
    error = np.abs(dequantize(weight).astype(np.float64) - original)
    assert np.all(error <= steps / 2 * (1 + 1e-6) + 1e-12)


def test_qdq_reads_signed_zero_points_as_shifted() -> None:
    weight = quantize_rtn(_weights(3, 64, 4), 4, 32, symmetric=True)
    arrays = pack_qdq(weight)
    zero = pack_nibbles(np.full(weight.scales.size, -3, dtype=np.int8))
    read = unpack_qdq(QDQArrays(arrays.x, arrays.scale, zero, "INT4", arrays.shape, 32))
    expected = (weight.q.astype(np.float64) + 3) * np.repeat(weight.scales, 32, axis=0)
    np.testing.assert_array_equal(dequantize(read, np.float64), expected)


# --- the spec file -------------------------------------------------------------------------


def _spec_vectors() -> list[dict[str, object]]:
    text = SPEC.read_text(encoding="utf-8")
    match = re.search(r"```json spec-vectors\n(.*?)```", text, re.S)
    assert match, "docs/formats.md lost its spec-vectors block"
    # GQSA vectors (format "gqsa") are checked by tests/test_gqsa.py
    return [v for v in json.loads(match.group(1)) if v["format"] in ("matmulnbits", "qdq")]


@pytest.mark.parametrize(
    "vector", _spec_vectors(), ids=lambda v: f"{v['format']}-{v.get('x_type', '')}"
)
def test_spec_vectors(vector: dict) -> None:
    rows, cols, block = vector["K"], vector["N"], vector["block"]
    symmetric = vector["symmetric"]
    q = np.full((rows, cols), vector.get("fill", 0), dtype=np.int8 if symmetric else np.uint8)
    for key, value in vector["q"].items():
        row, col = (int(part) for part in key.split(","))
        q[row, col] = value
    scales = np.full((rows // block, cols), vector["scale"], dtype=np.float32)
    zero = None if symmetric else np.full(scales.shape, vector["zero_point"], np.uint8)
    weight = QuantizedWeight(q, scales, zero, vector["bits"], block)
    if vector["format"] == "matmulnbits":
        b = pack_matmulnbits(weight).b
        assert [row.tobytes().hex() for row in b.reshape(cols, -1)] == vector["B_hex"]
    else:
        arrays = pack_qdq(weight)
        assert arrays.x_type == vector["x_type"]
        assert arrays.x.tobytes().hex() == vector["x_hex"]
        if "zero_point_hex" in vector:
            assert arrays.zero_point is not None
            assert arrays.zero_point.tobytes().hex() == vector["zero_point_hex"]


# --- against ONNX Runtime ------------------------------------------------------------------


def _session(model: onnx.ModelProto, optimize: bool = False) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _identity_run(arrays: MatMulNBitsArrays) -> np.ndarray:
    """What ORT's MatMulNBits computes for A = I, i.e. its dequantized weight."""
    rows, cols = arrays.k, arrays.n
    initializers = [
        numpy_helper.from_array(arrays.b, "B"),
        numpy_helper.from_array(arrays.scales, "S"),
    ]
    names = ["A", "B", "S"]
    if arrays.zero_points is not None:
        initializers.append(numpy_helper.from_array(arrays.zero_points, "Z"))
        names.append("Z")
    node = helper.make_node(
        "MatMulNBits", names, ["Y"], domain="com.microsoft",
        K=rows, N=cols, bits=arrays.bits, block_size=arrays.block,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, rows])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, cols])],
        initializers,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    return _session(model).run(None, {"A": np.eye(rows, dtype=np.float32)})[0]  # type: ignore[attr-defined]


CASES = [
    (bits, sym, rows, block)
    for bits in (4, 8)
    for sym in (True, False)
    for rows, block in ((64, 32), (80, 32), (128, 128), (48, 16))
]


@pytest.mark.parametrize(("bits", "symmetric", "rows", "block"), CASES)
def test_matmulnbits_matches_ort_kernel(bits: int, symmetric: bool, rows: int, block: int) -> None:
    weight = quantize_rtn(_weights(rows + bits, rows, 6), bits, block, symmetric)
    np.testing.assert_array_equal(_identity_run(pack_matmulnbits(weight)), dequantize(weight))


@pytest.mark.parametrize(("bits", "symmetric", "rows", "block"), CASES)
def test_reads_ort_quantizer_output(bits: int, symmetric: bool, rows: int, block: int) -> None:
    pybind = pytest.importorskip("onnxruntime.capi._pybind_state")
    kernel = getattr(pybind, f"quantize_matmul_{bits}bits", None)
    if kernel is None:
        pytest.skip(f"this onnxruntime has no quantize_matmul_{bits}bits")
    cols, blocks = 5, -(-rows // block)
    original = _weights(rows * bits, rows, cols)
    padded = np.zeros((blocks * block, cols), np.float32)
    padded[:rows] = original
    b = np.zeros((cols, blocks, block * bits // 8), np.uint8)
    zero = np.zeros((cols, -(-blocks * bits // 8)), np.uint8)
    scales = np.zeros((cols, blocks), np.float32)
    kernel(b, padded, scales, zero, block, cols, rows, symmetric)
    arrays = MatMulNBitsArrays(
        b, scales.reshape(-1), None if symmetric else zero.reshape(-1), rows, cols, bits, block
    )
    np.testing.assert_array_equal(dequantize(unpack_matmulnbits(arrays)), _identity_run(arrays))


def _qdq_model(arrays: QDQArrays) -> onnx.ModelProto:
    rows, cols = arrays.shape
    kind = ONNX_TYPES[arrays.x_type]
    initializers = [
        helper.make_tensor("X", kind, [rows, cols], arrays.x.tobytes(), raw=True),
        numpy_helper.from_array(arrays.scale, "S"),
    ]
    names = ["X", "S"]
    if arrays.zero_point is not None:
        shape = list(arrays.scale.shape)
        initializers.append(
            helper.make_tensor("Z", kind, shape, arrays.zero_point.tobytes(), raw=True)
        )
        names.append("Z")
    nodes = [
        helper.make_node("DequantizeLinear", names, ["W"], axis=0, block_size=arrays.block),
        helper.make_node("MatMul", ["A", "W"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, rows])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, cols])],
        initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, True), (8, False)])
def test_qdq_matches_onnx_and_ort(bits: int, symmetric: bool) -> None:
    weight = quantize_rtn(_weights(bits, 64, 7), bits, 32, symmetric)
    arrays = pack_qdq(weight)
    model = _qdq_model(arrays)
    as_onnx = numpy_helper.to_array(model.graph.initializer[0]).astype(np.int16)
    np.testing.assert_array_equal(as_onnx, weight.q.astype(np.int16))
    eye = {"A": np.eye(64, dtype=np.float32)}
    exact = _session(model).run(None, eye)[0]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(exact, dequantize(weight))
    fused = _session(model, optimize=True).run(None, eye)[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        fused, dequantize(weight), rtol=0, atol=1e-5 * float(weight.scales.max()) * 16
    )


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_in_column_chunks_equals_rtn_at_once(
    monkeypatch: pytest.MonkeyPatch, symmetric: bool
) -> None:
    """Large weights are quantized a few columns at a time (bounded memory): same result."""
    from spa.quant import blockwise

    weight = np.random.default_rng(3).standard_normal((300, 501)).astype(np.float32)
    whole = blockwise.quantize_rtn(weight, 4, 128, symmetric)
    monkeypatch.setattr(blockwise, "CHUNK_ELEMENTS", 300 * 7)  # 72 chunks, the last 4 wide
    chunked = blockwise.quantize_rtn(weight, 4, 128, symmetric)
    np.testing.assert_array_equal(whole.q, chunked.q)
    np.testing.assert_array_equal(whole.scales, chunked.scales)
    if symmetric:
        assert whole.zero_points is None and chunked.zero_points is None
    else:
        np.testing.assert_array_equal(whole.zero_points, chunked.zero_points)
