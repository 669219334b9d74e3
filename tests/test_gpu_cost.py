"""The TensorRT cost model (spa.stats.gpu_cost): calibration, formats, fusion."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from spa.stats.gpu_cost import H200, estimate_latency

#: cuBLAS FP16 GEMV on one H200 (M = 1), microseconds: the plugins/bench run of 2026-12-04.
MEASURED_US = {(4096, 4096): 12.159, (4096, 11008): 25.57, (5120, 13824): 36.583,
               (8192, 8192): 34.917, (8192, 28672): 108.856}  # fmt: skip


def _gemv(k: int, n: int) -> onnx.ModelProto:
    """x [1, K] @ W [K, N] with W a graph input: the bytes of an FP16 weight, no 180 MB file."""
    return onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, {k}] x, float[{k}, {n}] w) => (float[1, {n}] y) {{ y = MatMul(x, w) }}
    """)


@pytest.mark.parametrize(("k", "n"), sorted(MEASURED_US))
def test_gemv_estimate_is_within_15_percent_of_the_measured_h200(k: int, n: int) -> None:
    estimate = estimate_latency(_gemv(k, n))
    assert len(estimate.kernels) == 1 and estimate.kernels[0].math == "fp16"
    assert estimate.seconds * 1e6 == pytest.approx(MEASURED_US[(k, n)], rel=0.15)


MLP = """
<ir_version: 9, opset_import: ["" : 21]>
mlp (float[64, 256] x) => (float[64, 256] y) {{
  {body}
}}
"""


def _mlp(body: str, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(MLP.format(body=body))
    for name, array in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    return model


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": rng.standard_normal((256, 1024)).astype(np.float32),
            "w2": rng.standard_normal((1024, 256)).astype(np.float32)}  # fmt: skip


DENSE = "h = MatMul(x, w1)\n a = Relu(h)\n y = MatMul(a, w2)"


def test_pointwise_ops_fuse_and_formats_cost_less() -> None:
    dense = estimate_latency(_mlp(DENSE, _weights()))
    assert [k.op_type for k in dense.kernels] == ["MatMul", "MatMul"]  # Relu fused
    # 2:4 along the input channels: sparse tensor cores, half the weight bytes
    sparse_weights = _weights()
    for name in ("w1", "w2"):
        groups = sparse_weights[name].T.reshape(-1, 4).copy()
        groups[:, 2:] = 0
        sparse_weights[name] = groups.reshape(sparse_weights[name].T.shape).T.copy()
    sparse = estimate_latency(_mlp(DENSE, sparse_weights))
    assert all(k.sparse for k in sparse.kernels) and sparse.seconds < dense.seconds
    # INT8 QDQ on weights and activations: INT8 math, one byte per weight
    q = {"w1q": np.zeros((256, 1024), np.int8), "w2q": np.zeros((1024, 256), np.int8),
         "s": np.array(0.1, np.float32), "zp": np.array(0, np.int8)}  # fmt: skip
    qdq = """xq = QuantizeLinear(x, s, zp)
     xd = DequantizeLinear(xq, s, zp)
     w1d = DequantizeLinear(w1q, s, zp)
     h = MatMul(xd, w1d)
     a = Relu(h)
     aq = QuantizeLinear(a, s, zp)
     ad = DequantizeLinear(aq, s, zp)
     w2d = DequantizeLinear(w2q, s, zp)
     y = MatMul(ad, w2d)"""
    int8 = estimate_latency(_mlp(qdq, q))
    assert [k.math for k in int8.kernels] == ["int8", "int8"]
    assert int8.seconds < dense.seconds
    # weight-only INT8: fewer bytes, FP16 math
    weight_only = qdq.replace("xd = DequantizeLinear(xq, s, zp)", "xd = Identity(x)").replace(
        "ad = DequantizeLinear(aq, s, zp)", "ad = Identity(a)"
    )
    w8 = estimate_latency(_mlp(weight_only, q))
    assert [k.math for k in w8.kernels] == ["fp16", "fp16"]
    assert int8.seconds <= w8.seconds < dense.seconds


def test_fewer_channels_cost_less_and_softmax_is_a_kernel() -> None:
    pruned = {"w1": _weights()["w1"][:, :768], "w2": _weights()["w2"][:768]}
    assert (
        estimate_latency(_mlp(DENSE, pruned)).seconds
        < estimate_latency(_mlp(DENSE, _weights())).seconds
    )
    softmax = estimate_latency(
        _mlp(DENSE.replace("y = MatMul(a, w2)", "b = MatMul(a, w2)\n y = Softmax(b)"), _weights())
    )
    assert [k.op_type for k in softmax.kernels] == ["MatMul", "MatMul", "Softmax"]
    assert softmax.kernels[-1].seconds == pytest.approx(
        H200.overhead_s + 2 * 64 * 256 * 2 / H200.bandwidth
    )


def test_sample_shapes_set_dynamic_dims() -> None:
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 512] x) => (float[N, 512] y) { y = MatMul(x, w) }
    """)
    model.graph.initializer.append(numpy_helper.from_array(np.ones((512, 512), np.float32), "w"))
    one, many = estimate_latency(model), estimate_latency(model, {"x": (4096, 512)})
    assert many.kernels[0].flops == 4096 * one.kernels[0].flops


def test_spa_2_to_4_output_is_seen_as_sparse(tmp_path) -> None:
    """What ``spa sparsify`` writes (Gemm with transB, Conv, MatMul) is what the model
    counts as sparse: the pattern runs along each op's reduction axis."""
    from spa.workflows.sparsify import sparsify_model

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 8, 6, 6] x) => (float[1, 16] y) {
      c = Conv<pads=[1, 1, 1, 1]>(x, wc)
      r = Relu(c)
      f = Flatten(r)
      h = Gemm<transB=1>(f, wg)
      y = MatMul(h, wm)
    }
    """
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(text)
    for name, shape in {"wc": (16, 8, 3, 3), "wg": (32, 576), "wm": (32, 16)}.items():
        model.graph.initializer.append(
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    source, output = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save(model, str(source))
    sparsify_model(source, output, keep_float=(), verify=False)
    dense, sparse = estimate_latency(model), estimate_latency(onnx.load(str(output)))
    assert [k.sparse for k in dense.kernels] == [False, False, False]
    assert [k.sparse for k in sparse.kernels] == [True, True, True]


def test_only_known_small_shape_arithmetic_is_free() -> None:
    """An LSTM whose unused Y is omitted and whose Y_h is small, and a reduction over a
    large tensor, are kernels; ops that read and write only small values are folded."""
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[160, 1, 256] x) => (float[1, 1, 256] h, float[1] m, int64[1] n) {
        y, h = LSTM<hidden_size: int = 256>(x, w, r)
        m = ReduceMean<keepdims: int = 0>(x)
        s = Shape(x)
        n = Gather<axis: int = 0>(s, i)
    }
    """)
    model.graph.node[0].output[0] = ""  # Y dropped, as a cleanup leaves an unused optional output
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((1, 1024, 256)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((1, 1024, 256)).astype(np.float32), "r"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "i"),
    ])  # fmt: skip
    estimate = estimate_latency(model)
    assert [k.op_type for k in estimate.kernels] == ["LSTM", "ReduceMean"]
