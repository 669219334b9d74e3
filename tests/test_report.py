"""spa.stats.report and spa.stats.macs: hand-computed MACs, params, comparisons, the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa.stats.report import (
    ModelStats,
    build_report,
    compare,
    compute_stats,
    measure_latency,
    render_comparison,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]


def parse(text: str, weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for name, array in (weights or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    return model


def zeros(*shape: int, dtype: type = np.float32) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def test_grouped_strided_padded_conv() -> None:
    # Y = [1, 16, 5, 5] ((10 + 2 - 3) // 2 + 1 = 5); each output: C_in/group * 3 * 3 = 36.
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 8, 10, 10] X) => (float[1, 16, 5, 5] Y) {
            Y = Conv<group = 2, strides = [2, 2], pads = [1, 1, 1, 1], kernel_shape = [3, 3]>(X, W, B)
        }""",
        {"W": zeros(16, 4, 3, 3), "B": zeros(16)},
    )
    stats = compute_stats(model)
    assert stats.macs_by_family == {"conv": 16 * 25 * 36, "matmul": 0, "attention": 0, "other": 0}
    assert stats.params == 16 * 4 * 9 + 16
    assert stats.macs_unknown == {}


def test_shapes_no_inference_resolves_are_measured_in_onnxruntime() -> None:
    # Window attention pads its input to a multiple of the window, computing the pads from
    # the input's shape (here with Mod, which neither ONNX nor ORT's symbolic inference
    # folds): the Conv after the Pad had no shape, so no MACs. Measured: 12x12 padded,
    # 3x3 valid Conv -> 10x10 outputs x 8 channels x 27 MACs each.
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 3, 10, 10] X) => (float[1, 8, h, w] Y) {
            shape = Shape<start = 2>(X)
            rest = Mod<fmod = 0>(shape, four)
            short = Sub(four, rest)
            extra = Mod<fmod = 0>(short, four)
            pads = Concat<axis = 0>(zeros4, zeros2, extra)
            padded = Pad(X, pads)
            Y = Conv<kernel_shape = [3, 3]>(padded, W)
        }""",
        {"W": zeros(8, 3, 3, 3), "four": np.array([4, 4], np.int64),
         "zeros4": np.zeros(4, np.int64), "zeros2": np.zeros(2, np.int64)},
    )  # fmt: skip
    stats = compute_stats(model)
    assert stats.macs_by_family["conv"] == 8 * 10 * 10 * 27
    assert stats.macs_unknown == {}


def test_conv_transpose() -> None:
    # Every input element (4 * 5 * 5 = 100) meets C_out/group * 3 * 3 = 27 weights.
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 4, 5, 5] X) => (float[1, 3, 11, 11] Y) {
            Y = ConvTranspose<strides = [2, 2]>(X, W)
        }""",
        {"W": zeros(4, 3, 3, 3)},
    )
    assert compute_stats(model).macs_by_family["conv"] == 2700


def test_gemm_with_transposed_b() -> None:
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float[5, 7] A) => (float[5, 3] Y) {
            Y = Gemm<transB = 1>(A, B, C)
        }""",
        {"B": zeros(3, 7), "C": zeros(3)},
    )
    assert compute_stats(model).macs_by_family["matmul"] == 5 * 7 * 3


def test_arithmetic_on_constants_only_costs_nothing() -> None:
    """Dequantizing stored INT8 weights (Cast + Mul on initializers) is folded by ORT at load:
    0 MACs; the same Mul on an activation, and a weight overridable as a graph input, count."""
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float[5, 7] A, float[3] S2) => (float[5, 3] Y, float[5, 7] Z) {
            Wf = Cast<to = 1>(Wq)
            W = Mul(Wf, S)
            Y = MatMul(A, W)
            Z = Mul(A, A)
            T = Mul(S2, S2)
        }""",
        {"Wq": zeros(7, 3, dtype=np.int8), "S": zeros(3)},
    )
    stats = compute_stats(model)
    assert stats.macs_by_family["matmul"] == 5 * 7 * 3
    assert stats.macs_by_family["other"] == 5 * 7 + 3  # Z = A * A, T = S2 * S2 (an input)


def test_batched_broadcast_matmul_and_symbolic_overrides() -> None:
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 3, 4, 5] A, float[N, 5, 6] C) => (float[N, 3, 4, 6] Y, float[N, 4, 6] Z) {
            Y = MatMul(A, B)
            Z = MatMul(D, C)
        }""",
        {"B": zeros(5, 6), "D": zeros(4, 5)},
    )
    # N defaults to 1: 3*4*5*6 + 4*5*6.
    assert compute_stats(model).macs_by_family["matmul"] == 360 + 120
    assert compute_stats(model, dims={"N": 2}).macs_by_family["matmul"] == 2 * 480
    stats = compute_stats(model, shapes={"A": (4, 3, 4, 5)}, dims={"N": 3})
    assert stats.macs_by_family["matmul"] == 4 * 360 + 3 * 120
    assert stats.input_shapes == {"A": [4, 3, 4, 5], "C": [3, 5, 6]}


def test_matmul_nbits_through_onnxruntime_shape_inference() -> None:
    # onnx cannot infer MatMulNBits' output; ORT's symbolic inference fills it in,
    # so the Add after it is counted too (1 per output element: 4 * 32).
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[1, S, 64] A) => (float[1, S, 32] Y) {
            H = com.microsoft.MatMulNBits<K = 64, N = 32, bits = 4, block_size = 32>(A, Q, Sc)
            Y = Add(H, H)
        }""",
        {"Q": zeros(32, 2, 16, dtype=np.uint8), "Sc": zeros(64)},
    )
    stats = compute_stats(model, shapes={"A": (1, 4, 64)})
    assert stats.macs_by_family["matmul"] == 4 * 64 * 32
    assert stats.macs_by_family["other"] == 4 * 32
    assert stats.shape_inference == "onnx + onnxruntime symbolic"


def test_fused_attention_ops() -> None:
    mha = parse(
        """<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[1, 4, 8] Q, float[1, 6, 8] K, float[1, 6, 8] V) => (float[1, 4, 8] Y) {
            Y = com.microsoft.MultiHeadAttention<num_heads = 2>(Q, K, V)
        }"""
    )
    # B * heads * S_q * S_kv * (qk_head + v_head) = 1 * 2 * 4 * 6 * (4 + 4)
    assert compute_stats(mha).macs_by_family["attention"] == 384
    standard = parse(
        """<ir_version: 11, opset_import: ["" : 23]>
        g (float[1, 2, 4, 8] Q, float[1, 2, 6, 8] K, float[1, 2, 6, 8] V) => (float[1, 2, 4, 8] Y) {
            Y = Attention(Q, K, V)
        }"""
    )
    assert compute_stats(standard).macs_by_family["attention"] == 1 * 2 * 4 * 6 * 16


def test_contrib_attention_and_group_query_attention() -> None:
    contrib = parse(
        """<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[1, 4, 16] X) => (float[1, 4, 16] Y) {
            Y = com.microsoft.Attention<num_heads = 2>(X, W, B)
        }""",
        {"W": zeros(16, 48), "B": zeros(48)},
    )
    # QKV projection 4 * 16 * 48, then 2 heads of 8: 1 * 2 * 4 * 4 * (8 + 8).
    assert compute_stats(contrib).macs_by_family["attention"] == 3072 + 512
    gqa = parse(
        """<ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
        g (float[1, 4, 64] Q, float[1, 4, 32] K, float[1, 4, 32] V, float[1, 2, P, 16] PK,
           float[1, 2, P, 16] PV, int32[1] L, int32[1] T) => (float[1, 4, 64] Y) {
            Y, PKo, PVo = com.microsoft.GroupQueryAttention<num_heads = 4, kv_num_heads = 2>(
                Q, K, V, PK, PV, L, T)
        }"""
    )
    # 4 query heads of 16 attend to past 6 + new 4 keys: 1 * 4 * 4 * 10 * (16 + 16).
    assert compute_stats(gqa, dims={"P": 6}).macs_by_family["attention"] == 5120


def test_recurrent_layers() -> None:
    # Per step, batch row, direction and gate: hidden * (input + hidden) MACs.
    lstm = parse(
        """<ir_version: 9, opset_import: ["" : 14]>
        g (float[5, 2, 3] X) => (float[5, 2, 2, 4] Y) {
            Y = LSTM<hidden_size = 4, direction = "bidirectional">(X, W, R)
        }""",
        {"W": zeros(2, 16, 3), "R": zeros(2, 16, 4)},
    )
    stats = compute_stats(lstm)
    assert stats.macs_by_family["matmul"] == 5 * 2 * 2 * 4 * 4 * (3 + 4)
    assert stats.macs_unknown == {}
    # layout = 1: X is [batch, seq, input].
    gru = parse(
        """<ir_version: 9, opset_import: ["" : 14]>
        g (float[2, 6, 3] X) => (float[2, 6, 1, 5] Y) {
            Y = GRU<hidden_size = 5, layout = 1, linear_before_reset = 1>(X, W, R)
        }""",
        {"W": zeros(1, 15, 3), "R": zeros(1, 15, 5)},
    )
    assert compute_stats(gru).macs_by_family["matmul"] == 6 * 2 * 3 * 5 * (3 + 5)
    rnn = parse(
        """<ir_version: 9, opset_import: ["" : 14]>
        g (float[7, 1, 8] X) => (float[7, 1, 1, 6] Y) {
            Y = RNN<hidden_size = 6>(X, W, R)
        }""",
        {"W": zeros(1, 6, 8), "R": zeros(1, 6, 6)},
    )
    assert compute_stats(rnn).macs_by_family["matmul"] == 7 * 1 * 6 * (8 + 6)


def test_dynamic_int8_layers_count_the_macs_of_the_float_model() -> None:
    """spa's int8-dynamic writes com.microsoft DynamicQuantizeLSTM and DynamicQuantizeMatMul,
    which neither ONNX nor ORT's symbolic inference knows: every layer after the first
    one lost its shapes and its MACs (a dynamic-INT8 speaker encoder read 0 MACs, MiniLM
    14%). Shape stand-ins carry the shapes past them; the counts equal the float model's."""
    import onnx_ir as ir

    from spa.pass_manager import run_passes
    from spa.passes.quantize_dynamic import QuantizeDynamicPass

    rng = np.random.default_rng(0)
    float_model = parse(
        """<ir_version: 9, opset_import: ["" : 17]>
        g (float[seq, 2, 16] X) => (float[seq, 2, 24] Z) {
            Y, Yh, Yc = LSTM<hidden_size = 32, direction = "bidirectional">(X, W, R)
            T = Transpose<perm = [0, 2, 1, 3]>(Y)
            F = Reshape(T, shape)
            H = MatMul(F, A)
            G = Relu(H)
            Z = MatMul(G, B)
        }""",
        {"W": rng.standard_normal((2, 128, 16)).astype(np.float32),
         "R": rng.standard_normal((2, 128, 32)).astype(np.float32),
         "shape": np.array([0, 0, 64], np.int64),
         "A": rng.standard_normal((64, 48)).astype(np.float32),
         "B": rng.standard_normal((48, 24)).astype(np.float32)},
    )  # fmt: skip
    model = ir.serde.deserialize_model(float_model)
    run_passes(model, [QuantizeDynamicPass()])
    quantized = ir.serde.serialize_model(model)
    ops = {node.op_type for node in quantized.graph.node}
    assert {"DynamicQuantizeLSTM", "DynamicQuantizeMatMul"} <= ops and "MatMul" not in ops
    expected = compute_stats(float_model, dims={"seq": 5})
    stats = compute_stats(quantized, dims={"seq": 5})
    assert expected.total_macs == 5 * 2 * (2 * 128 * (16 + 32) + 64 * 48 + 48 * 24)
    assert stats.macs_unknown == {} and stats.total_macs == expected.total_macs


def test_resnet50_from_the_zoo(tmp_path: Path) -> None:
    from spa import zoo

    stats = compute_stats(zoo.materialize("onnx-resnet50", tmp_path / "r50.onnx"))
    assert stats.params == 25_610_153  # with BatchNorm running statistics; its 2 shape constants are no parameters
    assert stats.macs_by_family["conv"] == 4_087_136_256  # the quoted "4.1 GMACs"
    assert stats.macs_by_family["matmul"] == 2048 * 1000
    assert stats.macs_unknown == {}


def test_params_and_bytes_by_dtype() -> None:
    model = parse(
        """<ir_version: 10, opset_import: ["" : 21]>
        g (float16[4] X) => (float16[4] Y) {
            Y = Add(X, H)
        }""",
        {"H": zeros(4, dtype=np.float16), "F": zeros(3, 3), "I": zeros(10, dtype=np.int8)},
    )
    packed = helper.make_tensor("P", TensorProto.INT4, [5], [1, 2, 3, 4, 5])
    model.graph.initializer.append(packed)
    stats = compute_stats(model)
    assert stats.params == 4 + 9 + 10 + 5
    assert stats.bytes_by_dtype == {"float32": 36, "int8": 10, "float16": 8, "int4": 3}
    assert stats.weight_bytes == 57
    assert stats.nodes_by_op == {"Add": 1}
    assert stats.macs_by_family["other"] == 4


def test_external_shape_constant_is_read_only_with_a_base_dir(tmp_path: Path) -> None:
    # Reshape's target lives in external data: onnx cannot propagate its value
    # unless the small tensor is read; the weight is never needed.
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 8] X) => (float[M, 5] Y) {
            R = Reshape(X, S)
            Y = MatMul(R, W)
        }""",
        {"S": np.array([-1, 4], np.int64), "W": zeros(4, 5)},
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    assert compute_stats(path, dims={"N": 3}).macs_by_family["matmul"] == 6 * 4 * 5
    from spa.model_io import load_proto

    without_folder = compute_stats(load_proto(path), dims={"N": 3})
    assert without_folder.macs_by_family["matmul"] == 0
    assert list(without_folder.macs_unknown.values()) == ["shape of 'R' unknown"]


def test_external_weights_are_counted_from_dims(tmp_path: Path) -> None:
    # A 2 GiB sparse data file: counting from dims is instant; reading it would not be.
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float16[2, 32768] X) => (float16[2, 32768] Y) {
            Y = MatMul(X, W)
        }"""
    )
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT16, dims=[32768, 32768])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.data"), ("offset", "0"), ("length", str(2**31))):
        weight.external_data.add(key=key, value=value)
    model.graph.initializer.append(weight)
    onnx.save(model, str(tmp_path / "big.onnx"))
    with open(tmp_path / "w.data", "wb") as stream:
        stream.truncate(2**31)
    stats = compute_stats(tmp_path / "big.onnx")
    assert stats.params == 2**30
    assert stats.bytes_by_dtype == {"float16": 2**31}
    assert stats.macs_by_family["matmul"] == 2 * 32768 * 32768


def _stats(params: int, weights: int, conv: int, matmul: int, nodes: int) -> ModelStats:
    return ModelStats(
        params=params,
        initializer_count=2,
        bytes_by_dtype={"float32": weights},
        macs_by_family={"conv": conv, "matmul": matmul, "attention": 0, "other": 0},
        node_count=nodes,
        nodes_by_op={"Conv": nodes},
        input_shapes={"x": [1, 3, 224, 224]},
        macs_unknown={},
        shape_inference="onnx",
    )


BEFORE = _stats(25_600_000, 102_400_000, 4_000_000_000, 100_000_000, 120)
AFTER = _stats(14_100_000, 56_400_000, 2_200_000_000, 100_000_000, 118)


def test_compare_ratios_and_rendering() -> None:
    comparison = compare(BEFORE, AFTER)
    assert comparison.row("params").ratio == pytest.approx(14.1 / 25.6)
    assert comparison.row("params").change_percent == pytest.approx(-44.921875)
    assert comparison.row("MACs").before == 4_100_000_000
    assert [row.metric for row in comparison.rows] == [
        "params",
        "weights",
        "MACs",
        "  conv",
        "  matmul",
        "nodes",
    ]
    assert render_comparison(comparison).splitlines() == [
        "metric      before → after",
        "params       25.6M → 14.1M     (-45%)",
        "weights   97.7 MiB → 53.8 MiB  (-45%)",
        "MACs          4.1G → 2.3G      (-44%)",
        "  conv        4.0G → 2.2G      (-45%)",
        "  matmul    100.0M → 100.0M    (=)",
        "nodes          120 → 118       (-2%)",
    ]


def test_report_key_order_and_atomic_write(tmp_path: Path) -> None:
    report = build_report(
        command="spa optimize m.onnx -o out.onnx",
        seeds={"inputs": 0},
        before=BEFORE,
        after=AFTER,
        passes=[{"name": "cleanup", "statistics": {"nodes_removed": 2}}],
        verification={"passed": True},
        latency=None,
    )
    assert list(report)[:3] == ["command", "versions", "seeds"]
    assert list(report["versions"]) == ["spa", "onnx", "onnx_ir", "onnxruntime", "numpy", "python"]
    assert report["versions"]["onnx"] == onnx.__version__
    assert report["change"]["params"] == {
        "before": 25_600_000,
        "after": 14_100_000,
        "ratio": pytest.approx(14.1 / 25.6),
    }
    assert report["before"]["total_macs"] == 4_100_000_000
    path = write_report(report, tmp_path / "report.json")
    assert os.listdir(tmp_path) == ["report.json"]  # no temp file left behind
    loaded = json.loads(path.read_text())
    assert list(loaded)[:3] == ["command", "versions", "seeds"]
    assert loaded["passes"][0]["statistics"] == {"nodes_removed": 2}


def test_write_report_serialises_numpy_and_paths(tmp_path: Path) -> None:
    path = write_report({"n": np.int64(3), "x": np.float32(0.5), "p": Path("/a")}, tmp_path / "r")
    assert json.loads(path.read_text()) == {"n": 3, "x": 0.5, "p": "/a"}


def test_measure_latency_returns_consistent_figures(tmp_path: Path) -> None:
    model = parse(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float[2, 8] X) => (float[2, 4] Y) {
            Y = MatMul(X, W)
        }""",
        {"W": np.ones((8, 4), np.float32)},
    )
    onnx.save(model, str(tmp_path / "m.onnx"))
    feeds = {"X": np.ones((2, 8), np.float32)}
    result = measure_latency(tmp_path / "m.onnx", feeds, runs=5, warmup=1)
    assert result["runs"] == 5 and result["warmup"] == 1
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"]


def test_small_llama_benchmark(tmp_path: Path) -> None:
    """The 7B benchmark at toy size: figures in its JSON match hand-computed ones."""
    out_json = tmp_path / "result.json"
    size = ["--hidden", "256", "--intermediate", "512", "--vocab", "1000", "--heads", "4"]
    command = [sys.executable, str(REPO / "benchmarks" / "llama7b_inspect.py"), "--layers", "1"]
    command += [*size, "--max-positions", "128", "--out", str(tmp_path / "m"), "--json"]
    done = subprocess.run([*command, str(out_json)], capture_output=True, text=True, cwd=REPO)
    # The verdict (exit 0 PASSED / 2 FAILED) compares wall time with the benchmark's goal:
    # a figure for the benchmark's note, not for a test on a shared machine.
    assert done.returncode in (0, 2), done.stdout + done.stderr
    assert done.stdout.split(" | ")[1].startswith("inspect llama7b-shaped (1 layers")
    result = json.loads(out_json.read_text())
    h, i, vocab = 256, 512, 1000
    linear = 4 * h * h + 3 * h * i + h * vocab  # per token
    weights = vocab * h + 2 * 128 * 32 + 4 * h * h + 3 * h * i + 3 * h + h * vocab
    assert result["weight_bytes"] == 2 * weights
    # Decomposed attention: QK^T and PV MatMuls count under matmul (seq 128, 4 heads of 64).
    assert result["stats"]["macs"]["matmul"] == 128 * linear + 2 * 4 * 128 * 128 * 64
    assert result["stats"]["macs"]["attention"] == 0
    assert "params    1.2M (1176323) in 25 initializers" in result["inspect_output"]  # int64 constants left out
    assert not (tmp_path / "m").exists()  # removed without --keep
