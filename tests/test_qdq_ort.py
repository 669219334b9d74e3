"""Static INT8 for ORT CPU (spa.passes.qdq_ort): the QDQ form ONNX Runtime fuses.

Each test writes a small inline model, quantizes it with calibration feeds through
``quantize_static_model`` (``target="ort"``, the default), checks the emitted node
types and parameters, which integer kernels ORT's own optimizer forms from them
(its optimized graph, read back), and the numbers against the float model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from spa.workflows.quantize_static import quantize_static_model

CNN = """
<ir_version: 8, opset_import: ["" : 17]>
cnn (float[1, 4, 16, 16] x) => (float[1, 10] logits) {
    c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
    r1 = Relu(c1)
    p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
    c2 = Conv <pads = [1, 1, 1, 1]> (p1, W2, B2)
    c3 = Conv <pads = [1, 1, 1, 1]> (p1, W3, B3)
    s = Add(c2, c3)
    r2 = Relu(s)
    g = GlobalAveragePool(r2)
    f = Flatten(g)
    logits = Gemm <transB = 1> (f, W4, B4)
}
"""


def _cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(3)

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    model = onnx.parser.parse_model(CNN)
    weights = {
        "W1": normal(16, 4, 3, 3, scale=0.3), "B1": normal(16, scale=0.1),
        "W2": normal(16, 16, 3, 3, scale=0.1), "B2": normal(16, scale=0.1),
        "W3": normal(16, 16, 3, 3, scale=0.1), "B3": normal(16, scale=0.1),
        "W4": normal(10, 16, scale=0.5), "B4": normal(10, scale=0.1),
    }  # fmt: skip
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model)
    return model


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-0.5, 1.5, (1, 4, 16, 16)).astype(np.float32)} for _ in range(count)]


def _session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if optimized is not None:  # EXTENDED: the QDQ fusions, without hardware-specific layouts
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _quantized(tmp_path: Path) -> tuple[Path, Path, onnx.ModelProto]:
    source, output = tmp_path / "cnn.onnx", tmp_path / "cnn-int8.onnx"
    onnx.save(_cnn(), str(source))
    result = quantize_static_model(source, output, calib=_feeds(16, 0), allow_slower=True)
    assert result.verification is not None and result.cosine is not None
    return source, output, onnx.load(str(output))


def test_every_quantized_op_reads_dq_inputs_and_writes_a_q_output(tmp_path: Path) -> None:
    _, _, model = _quantized(tmp_path)
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def producer_type(name: str) -> str:
        node = producers.get(name)
        return node.op_type if node is not None else "initializer/input"

    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert [producer_type(name) for name in node.input] == ["DequantizeLinear"] * 3
            bias_dq = producers[node.input[2]]
            assert inits[bias_dq.input[0]].dtype == np.int32  # as ORT's QDQ Conv/Gemm need
            weight_dq = producers[node.input[1]]
            weight = inits[weight_dq.input[0]]
            assert weight.dtype == np.int8 and np.abs(weight).max() <= 63  # reduce_range
            assert inits[weight_dq.input[2]].dtype == np.int8  # explicit zero point
            # bias scale = input scale * per-channel weight scale
            input_scale = inits[producers[node.input[0]].input[1]]
            np.testing.assert_allclose(
                inits[bias_dq.input[1]], input_scale * inits[weight_dq.input[1]], rtol=1e-6
            )
        if node.op_type in ("MaxPool", "Add", "GlobalAveragePool", "Flatten"):
            assert producer_type(node.input[0]) == "DequantizeLinear", node.op_type
    consumers = {name: node for node in model.graph.node for name in node.input}
    for node in model.graph.node:
        if node.op_type in ("Conv", "MaxPool", "Add", "GlobalAveragePool", "Flatten"):
            after = consumers[node.output[0]]
            # a Conv/Add output goes through the Relu absorbed into its pair
            if after.op_type == "Relu":
                after = consumers[after.output[0]]
            assert after.op_type == "QuantizeLinear", node.op_type
    # the Gemm's output is the graph output: it stays float (QGemm outputs float)
    assert producers["logits"].op_type == "Gemm"


def test_relu_outputs_use_zero_point_zero_and_data_movement_shares_parameters(
    tmp_path: Path,
) -> None:
    _, _, model = _quantized(tmp_path)
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pairs = {node.input[0]: node for node in model.graph.node if node.op_type == "QuantizeLinear"}
    for name in ("r1", "r2"):  # after a Relu: UINT8 with zero point 0, scale amax / 255
        zero = inits[pairs[name].input[2]]
        assert zero.dtype == np.uint8 and int(zero) == 0
    # x is calibrated in [-0.5, 1.5]: an asymmetric range, zero point 255 * 0.5 / 2
    x_zero, x_scale = int(inits[pairs["x"].input[2]]), float(inits[pairs["x"].input[1]])
    assert abs(x_zero - 64) <= 2 and 1.9 / 255 < x_scale < 2.0 / 255
    # MaxPool's output pair repeats its input's parameters, so ORT drops the pair
    maxpool_in = producers[next(n for n in model.graph.node if n.op_type == "MaxPool").input[0]]
    assert float(inits[pairs["p1"].input[1]]) == float(inits[maxpool_in.input[1]])
    assert int(inits[pairs["p1"].input[2]]) == int(inits[maxpool_in.input[2]])


def test_ort_fuses_the_form_into_integer_kernels(tmp_path: Path) -> None:
    _, output, _ = _quantized(tmp_path)
    optimized = tmp_path / "optimized.onnx"
    _session(output, optimized)
    ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    assert ops.count("QLinearConv") == 3
    assert "QLinearAdd" in ops and "QGemm" in ops and "QLinearGlobalAveragePool" in ops
    assert not {"Conv", "Gemm", "Add", "Relu"} & set(ops)  # nothing left in float


def test_the_form_agrees_with_the_float_model(tmp_path: Path) -> None:
    source, output, _ = _quantized(tmp_path)
    dense, quantized = _session(source), _session(output)
    cosines, agree = [], 0
    for feed in _feeds(16, 100):  # not the calibration feeds
        a, b = dense.run(None, feed)[0].ravel(), quantized.run(None, feed)[0].ravel()
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        agree += int(a.argmax() == b.argmax())
    assert min(cosines) >= 0.99
    assert agree >= 14


def test_tensorrt_target_keeps_inputs_only(tmp_path: Path) -> None:
    source, output = tmp_path / "cnn.onnx", tmp_path / "trt.onnx"
    onnx.save(_cnn(), str(source))
    quantize_static_model(source, output, calib=_feeds(8, 0), target="tensorrt", verify=False)
    model = onnx.load(str(output))
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    # TensorRT's placement: float bias, pairs on layer inputs (and the residual
    # shortcut c3), none on a layer's own output or after a Relu
    assert all(node.input[2] not in producers for node in convs)
    quantized = {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    assert quantized == {"x", "p1", "c3", "f"}


DEPTHWISE = """
<ir_version: 8, opset_import: ["" : 17]>
dw (float[1, 8, 12, 12] x) => (float[1, 16, 12, 12] y) {
    d = Conv <group = 8, pads = [1, 1, 1, 1]> (x, Wd, Bd)
    h = HardSwish(d)
    y = Conv (h, Wp, Bp)
}
"""


def test_light_convs_stay_float_with_a_reason(tmp_path: Path) -> None:
    """A depthwise Conv (9 multiply-adds per output) stays float; the pointwise Conv
    after it (8 per output here too) as well, and the command says why."""
    rng = np.random.default_rng(4)
    model = onnx.parser.parse_model(DEPTHWISE)
    weights = {
        "Wd": rng.standard_normal((8, 1, 3, 3)), "Bd": rng.standard_normal(8),
        "Wp": rng.standard_normal((16, 8, 1, 1)), "Bp": rng.standard_normal(16),
    }  # fmt: skip
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    source = tmp_path / "dw.onnx"
    onnx.save(model, str(source))
    feeds = [{"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32)} for _ in range(4)]
    result = quantize_static_model(source, tmp_path / "q.onnx", calib=feeds, verify=False, allow_slower=True)
    reasons = [d["reason"] for d in result.decisions if d["op_type"] == "Conv"]
    assert [d["action"] for d in result.decisions if d["op_type"] == "Conv"] == ["float", "float"]
    assert "depthwise/grouped Conv with 9 multiply-adds" in reasons[0]
    assert reasons[1].startswith("Conv with 8 multiply-adds per output element (< 32)")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert not {"QuantizeLinear", "DequantizeLinear"} & ops


def test_a_heavy_conv_after_a_depthwise_one_is_quantized(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    model = onnx.parser.parse_model(DEPTHWISE)
    weights = {
        "Wd": rng.standard_normal((8, 1, 3, 3)), "Bd": rng.standard_normal(8),
        "Wp": rng.standard_normal((16, 8, 3, 3)) * 0.2, "Bp": rng.standard_normal(16),
    }  # fmt: skip
    model.graph.node[2].attribute.append(onnx.helper.make_attribute("pads", [1, 1, 1, 1]))
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    source = tmp_path / "dw.onnx"
    onnx.save(model, str(source))
    feeds = [{"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32)} for _ in range(4)]
    result = quantize_static_model(source, tmp_path / "q.onnx", calib=feeds, allow_slower=True)
    convs = [d for d in result.decisions if d["op_type"] == "Conv"]
    assert [d["action"] for d in convs] == ["float", "quantized"]
    assert "9 multiply-adds per output element" in convs[0]["reason"]
    assert result.cosine is not None and result.cosine >= 0.99
