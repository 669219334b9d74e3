"""spa.graph_outputs: the one finder of the node behind a graph output and of
the logits behind a Softmax output (spa verify and the sensitivity measurement)."""

from __future__ import annotations

import onnx

from spa.graph_outputs import output_producer, softmax_inputs

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
