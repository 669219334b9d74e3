"""spa.ir_shapes.infer_shapes: the shapes onnx-ir's ShapeInferencePass gives, in
linear time, with the model's initializers and inputs left as they were."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from spa.ir_shapes import infer_shapes
from tests.analysis_helpers import model_from_text

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 2000] x, bool flag) => (float[N, 8] y) {
    h = MatMul(x, big)
    r = Relu(h)
    y = If(flag) <
        then_branch = a () => (float[N, 8] t) { t = MatMul(r, small) },
        else_branch = b () => (float[N, 8] e) { e = Neg(r) }
    >
}
"""


def _model() -> ir.Model:
    proto = model_from_text(TEXT, {"big": (2000, 8), "small": (8, 8)})
    return ir.serde.deserialize_model(proto)


def _shapes(model: ir.Model) -> dict[str, tuple[str, str]]:
    return {
        value.name or "": (str(value.shape), str(value.dtype))
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        for value in node.outputs
    }


def test_shapes_match_onnx_ir_and_the_model_is_left_as_it_was() -> None:
    model, reference = _model(), _model()
    big = model.graph.initializers["big"].const_value
    assert infer_shapes(model) is True
    common_passes.ShapeInferencePass()(reference)
    assert _shapes(model) == _shapes(reference)
    assert _shapes(model)["t"] == ("[N,8]", str(ir.DataType.FLOAT))  # inside the If body
    assert [v.name for v in model.graph.inputs] == ["x", "flag"]
    assert sorted(model.graph.initializers) == ["big", "small"]
    assert model.graph.initializers["big"].const_value is big  # never copied or read
    assert infer_shapes(model) is False  # nothing left to change


def test_a_model_onnx_cannot_infer_is_left_unchanged() -> None:
    model = _model()
    bad = model.graph.initializers["small"]
    bad.const_value = ir.Tensor(np.zeros((3, 3), np.float32), name="small")
    bad.shape = ir.Shape([3, 3])
    before = _shapes(model)
    assert infer_shapes(model, strict_mode=True) is False
    assert _shapes(model) == before
    onnx.checker.check_model(ir.serde.serialize_model(model))


INVENTED = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (int64[batch, seq] ids) => (float[batch, seq, 4] y) {
    shape = Shape(ids)
    one = Constant <value = int64[1] {1}> ()
    seq_len = Gather <axis = 0> (shape, one)
    zero = Constant <value = int64 {0}> ()
    step = Constant <value = int64 {1}> ()
    n = Squeeze(seq_len)
    positions = Range(zero, n, step)
    rows = Gather <axis = 0> (table, positions)
    tokens = Gather <axis = 0> (table, ids)
    y = Add(tokens, rows)
}
"""


def test_clear_inferred_shapes_keeps_only_what_the_input_declared() -> None:
    from spa.ir_shapes import clear_inferred_shapes

    proto = model_from_text(INVENTED, {"table": (16, 4)})
    model = ir.serde.deserialize_model(proto)
    infer_shapes(model)
    values = {v.name: v for node in model.graph for v in node.outputs}
    invented = values["rows"].shape  # [unk__0, 4]: inference lost the link to seq
    assert invented is not None and isinstance(invented[0], ir.SymbolicDim)
    assert invented[0].value not in ("batch", "seq")
    inferred = [name for name, value in values.items() if value.shape is not None]
    cleared = clear_inferred_shapes(model, declared={"positions"})
    assert values["rows"].shape is None and values["tokens"].shape is None
    assert values["positions"].shape is not None  # declared by the input: kept
    assert values["tokens"].dtype is not None  # types stay
    assert [str(d) for d in model.graph.outputs[0].shape] == ["batch", "seq", "4"]
    assert cleared == len(inferred) - 2  # all but 'positions' and the graph output y
