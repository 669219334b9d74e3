"""Weights the graph computes from constants alone (weight standardisation) are
folded before every command's passes, so quantization and 2:4 reach them; and
weighted layers behind a shape ONNX inference leaves open still count their MACs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from spa.stats.coverage import node_macs, value_shapes
from spa.verify import create_session
from spa.workflows.quantize import quantize_model
from spa.workflows.sparsify import sparsify_model
from tests.analysis_helpers import model_from_text
from tests.test_rules_packed import STANDARDISE

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'

# BiT's StdConv as TorchScript writes it: the statistics of the raw weight in the
# graph, epsilon a Constant node (not an initializer)
STANDARDISED = f"""{HEADER}
g (float[N, 32, 8, 8] x) => (float[N, 64, 8, 8] y) {{
    eps = Constant <value = float[1] {{1e-5}}> (){STANDARDISE}
    c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r = Relu (c1)
    y = Conv (r, w2)
}}"""


def _standardised(path: Path) -> Path:
    proto = model_from_text(STANDARDISED, {"w_raw": (64, 32, 3, 3), "b1": (64,), "w2": (64, 64, 1, 1)})
    onnx.save(proto, str(path))
    return path


def _standardised_reference(x: np.ndarray, path: Path) -> np.ndarray:
    session = create_session(str(path))
    return session.run(None, {"x": x})[0]


def test_quantize_reaches_a_weight_standardised_in_the_graph(tmp_path: Path) -> None:
    source = _standardised(tmp_path / "std.onnx")
    output = tmp_path / "std.q.onnx"
    result = quantize_model(source, output, bits=8, verify=True, keep_float=())
    quantized = {d["node"] or d["weight"] for d in result.decisions if d["action"] == "quantized"}
    assert len(quantized) == 2, result.decisions  # the standardised Conv as well as the plain one
    assert result.mac_coverage == 1.0
    assert result.verification is not None and result.verification.passed
    model = onnx.load(str(output))
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"ReduceMean", "Sqrt", "Div"}  # folded, the raw weight dropped
    assert "w_raw" not in {t.name for t in model.graph.initializer}
    x = np.random.default_rng(0).standard_normal((2, 32, 8, 8)).astype(np.float32)
    dense, out = _standardised_reference(x, source), _standardised_reference(x, output)
    cosine = float(np.dot(dense.ravel(), out.ravel()) / np.linalg.norm(dense) / np.linalg.norm(out))
    assert cosine > 0.999  # W8 of the folded weight, not of the raw one


def test_sparsify_reaches_a_weight_standardised_in_the_graph(tmp_path: Path) -> None:
    source = _standardised(tmp_path / "std.onnx")
    output = tmp_path / "std.s.onnx"
    result = sparsify_model(source, output, keep_float=())
    assert result.mac_coverage == 1.0
    model = onnx.load(str(output))
    folded = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] != "w2").input[1]
    weight = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == folded)
    rows = weight.transpose(0, 2, 3, 1).reshape(-1, 4)  # 2:4 along the input channels
    assert ((rows != 0).sum(axis=1) <= 2).all()


# timm's "same" padding (pads computed through Transpose, where ONNX's data propagation
# stops) and GroupNorm as TorchScript exports it (the shape restored from Shape(input)):
# ONNX's inference leaves the convolution after them with unknown dims
GROUP_NORM = f"""{HEADER}
g (float[1, 3, 16, 16] x) => (float[1, 32, 16, 16] y) {{
    conv = Conv (x, w1)
    pairs = Transpose <perm = [1, 0]> (pads_2x4)
    pads = Reshape (pairs, eight)
    c = Pad (conv, pads)
    grouped = Reshape (c, to_groups)
    normed = InstanceNormalization <epsilon = 1e-5> (grouped, ones, zeros)
    shape = Shape (c)
    back = Reshape (normed, shape)
    r = Relu (back)
    y = Conv <pads = [1, 1, 1, 1]> (r, w2)
}}"""


def test_macs_of_a_conv_after_a_shape_onnx_leaves_open() -> None:
    constants = {"to_groups": np.array([0, 4, -1]), "ones": np.ones(4, np.float32), "zeros": np.zeros(4, np.float32),
                 "pads_2x4": np.array([[0, 1, 0, 1], [0, 1, 0, 1]]), "eight": np.array([8])}  # fmt: skip
    proto = model_from_text(GROUP_NORM, {"w1": (16, 3, 3, 3), "w2": (32, 16, 3, 3)}, constants=constants)
    shapes = value_shapes(proto)
    second = next(node for node in proto.graph.node if node.op_type == "Conv" and node.input[1] == "w2")
    assert shapes["r"] == (1, 16, 16, 16)
    assert node_macs(second, shapes) == 32 * 16 * 16 * 16 * 9


# padding read from the data (no inference can know it): one ORT run on zeros measures
# it, feeding the weights as zeros, so never past a memory bound
DATA_PADDED = f"""{HEADER}
g (float[1, 3, 13, 13] x) => (float[1, 128, H, W] y) {{
    top = ReduceMax <keepdims = 0> (x)
    floor = Floor (top)
    amount = Cast <to = 7> (floor)
    one = Unsqueeze (amount, zero)
    pads = Concat <axis = 0> (z6, one, one)
    p = Pad (x, pads)
    y = Conv (p, w)
}}"""


def test_shapes_measured_on_zeros_only_within_the_memory_bound(monkeypatch) -> None:
    from spa.stats import shape_facts

    constants = {"zero": np.array([0]), "z6": np.zeros(6, np.int64)}
    proto = model_from_text(DATA_PADDED, {"w": (128, 3, 3, 3)}, constants=constants)  # 13.8 kB: fed as zeros
    found, method = shape_facts.infer_shapes(proto)
    assert "measured" in method and found["y"] == (1, 128, 11, 11)
    monkeypatch.setattr(shape_facts, "_MAX_MEASURED_BYTES", 8 << 10)
    found, method = shape_facts.infer_shapes(proto)
    assert "measured" not in method and shape_facts.known_shape(found, "y") is None
