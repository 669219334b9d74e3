"""spa.graph_outputs: the one finder of the node behind a graph output and of
the logits behind a Softmax output (spa verify and the sensitivity measurement),
of the outputs that hold class scores and of an output's feature axis (quality
on held-out data, the sensitivity measurement)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper

from spa.graph_outputs import (
    class_score_outputs,
    declared_shapes,
    feature_axis,
    output_producer,
    softmax_inputs,
)

MODEL = """
<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
outputs (float[1, 4] x) => (float[1, 4] p, float[1, 4] q, float[1, 4] r, float[1, 4] c, float[1, 4] s, float[1, 4] x2) {
  h = Relu (x)
  p = Softmax <axis = -1> (h)
  s1 = LogSoftmax <axis = -1> (h)
  i1 = Identity (s1)
  q = Identity (i1)
  r = Relu (h)
  c1 = custom.Softmax (h)
  c = Identity (c1)
  s = Softmax <axis = -1> (x)
  x2 = Identity (x)
}
"""


def test_softmax_outputs_are_found_through_identity_in_output_order() -> None:
    proto = onnx.parser.parse_model(MODEL)
    # a custom-domain Softmax and a Relu are not softmaxes; logits that are a graph input are kept
    assert list(softmax_inputs(proto).items()) == [("p", "h"), ("q", "h"), ("s", "x")]
    producers = {out: node for node in proto.graph.node for out in node.output}
    assert output_producer(producers, "q").op_type == "LogSoftmax"  # type: ignore[union-attr]
    assert output_producer(producers, "x2") is None  # an Identity of a graph input
    assert output_producer(producers, "x") is None


HEADS = """
<ir_version: 8, opset_import: ["" : 17]>
heads (float[2, 3, 8] x, float[2, 8] v, float[1, 4, 6, 6] f) =>
      (float[2, 3, 8] soft, float[2, 3, 8] soft1, float[2, 3, 5] lin, float[2, 3, 5] multi,
       float[2, 6, 8] det, float[2, 3, 8] norm, float[1, 5] pooled, float[2, 8] emb) {
  soft = Softmax <axis = -1> (x)
  soft1 = Softmax <axis = 1> (x)
  m = MatMul (x, w)
  lin = Add (m, bias)
  t = Div (m, temperature)
  multi = Sigmoid (t)
  box = Mul (x, big)
  s3 = Sigmoid (x)
  det = Concat <axis = 1> (box, s3)
  norm = LayerNormalization <axis = -1> (x, gamma)
  c = Conv (f, k)
  g = GlobalAveragePool (c)
  pooled = Flatten (g)
  emb = Div (v, v)
}
"""


def test_class_scores_are_softmax_over_the_last_axis_or_a_classifier_head() -> None:
    proto = onnx.parser.parse_model(HEADS)
    arrays = {"w": (8, 5), "bias": (5,), "temperature": (), "big": (), "gamma": (8,), "k": (5, 4, 1, 1)}
    for name, shape in arrays.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(shape, np.float32), name))
    # a softmax over another axis, a detector's concatenated boxes and scores, a
    # normalised embedding, an elementwise op of two variables: not class scores
    assert class_score_outputs(proto) == {"soft": None, "lin": None, "multi": None, "pooled": None}


OCR_HEAD = """
<ir_version: 8, opset_import: ["" : 17]>
ocr (float[6, 8] x) => (float[1, seqlen] scores, float[2, 3, 8] soft3, float[6, 2, 4] hidden) {
  g = Gemm <transB = 1> (x, w, b)
  scores = Reshape (g, shape)
  s = Softmax <axis = -1> (x)
  soft3 = Reshape (s, shape)
  hidden = Reshape (x, shape2)
}
"""


def test_a_products_scores_regrouped_by_a_reshape_are_class_scores_of_its_width() -> None:
    # an OCR export: Gemm scores reshaped to [T, batch, -1], the output declared [1, seqlen]
    proto = onnx.parser.parse_model(OCR_HEAD)
    arrays = {"w": np.ones((5, 8), np.float32), "b": np.ones(5, np.float32),
              "shape": np.array([6, 1, -1]), "shape2": np.array([6, 2, 4])}  # fmt: skip
    for name, array in arrays.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    # the Gemm's N = 5 columns (transB: the weight's rows); a reshaped softmax or input is not
    assert class_score_outputs(proto) == {"scores": 5}


def test_the_feature_axis_is_the_declared_fixed_one_of_axis_1_and_the_last() -> None:
    assert feature_axis((1, 22, 2100), (None, 22, None)) == 1  # [batch, 4 + classes, anchors]
    assert feature_axis((1, 16, 384), (None, None, 384)) == 2  # [batch, tokens, hidden]
    assert feature_axis((1, 25200, 85), (1, 25200, 85)) == 2  # both fixed: the shorter
    assert feature_axis((1, 22, 2100)) == 1  # no declared shape: the shorter
    assert feature_axis((1, 1, 64, 64), (1, 1, None, None)) is None  # one probability map
    assert feature_axis((1, 16, 16), (None, None, None)) is None  # nothing fixed
    assert feature_axis((4, 10)) is None  # rank 2: one cosine
    proto = onnx.parser.parse_model(HEADS)
    assert declared_shapes(proto)["det"] == (2, 6, 8)
