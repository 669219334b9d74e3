"""Cleanup passes on inline ONNX-text models.

Each test checks, in order: the pass's statistics, the structure left (op
types), the numbers against ONNX Runtime on seeded inputs (original vs
rewritten, explicit tolerances), then ``onnx.checker``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import spa.passes.constant_folding as constant_folding
from spa.model_io import load_model
from spa.pass_manager import run_passes
from spa.workflows.recipes import build_passes, get_pass_class, load_recipe
from tests.analysis_helpers import model_from_text

HEADER = '<ir_version: 9, opset_import: ["" : 17]>'

#: Tolerances for rewrites that change float arithmetic (BatchNorm folding).
FOLD_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
#: Structural rewrites (removing no-ops, dead code) must not change a bit.
EXACT = {"rtol": 0.0, "atol": 0.0}


def run_pass(
    proto: onnx.ModelProto, name: str, **options: Any
) -> tuple[onnx.ModelProto, dict[str, int | float]]:
    model = ir.serde.deserialize_model(proto)
    (record,) = run_passes(model, [get_pass_class(name)(**options)])
    return ir.serde.serialize_model(model), record.statistics


def outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options).run(None, feeds)


def assert_same_numbers(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    tolerance: dict[str, float],
) -> None:
    """Numbers against ONNX Runtime, then the checker (the last two checks)."""
    for want, got in zip(outputs(before, feeds), outputs(after, feeds), strict=True):
        assert want.dtype == got.dtype and want.shape == got.shape
        np.testing.assert_allclose(got, want, **tolerance)
    onnx.checker.check_model(after, full_check=True)


def ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    (tensor,) = (t for t in proto.graph.initializer if t.name == name)
    return numpy_helper.to_array(tensor)


def seeded(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def batchnorm(channels: int, suffix: str = "") -> dict[str, tuple[int, ...]]:
    return {f"{name}{suffix}": (channels,) for name in ("s", "o", "m", "var")}


# --------------------------------------------------------------------- fold-batchnorm

CONV_CASES = {
    "with-bias": ("c = Conv (x, w, b)", {"w": (6, 4, 3, 3), "b": (6,)}, 6, 3),
    "no-bias": ("c = Conv (x, w)", {"w": (6, 4, 3, 3)}, 6, 3),
    "grouped": ("c = Conv <group = 2> (x, w, b)", {"w": (6, 2, 3, 3), "b": (6,)}, 6, 3),
    "depthwise": ("c = Conv <group = 4> (x, w)", {"w": (8, 1, 3, 3)}, 8, 3),
    "conv-transpose": ("c = ConvTranspose (x, w, b)", {"w": (4, 6, 3, 3), "b": (6,)}, 6, 7),
    "conv-transpose-grouped": ("c = ConvTranspose <group = 2> (x, w)", {"w": (4, 3, 3, 3)}, 6, 7),
}


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_batchnorm_folds_into_conv(case: tuple[str, dict, int, int]) -> None:
    conv, weights, channels, size = case
    text = f"""{HEADER}
    g (float[N, 4, 5, 5] x) => (float[N, {channels}, {size}, {size}] y) {{
        {conv}
        y = BatchNormalization <epsilon = 0.001> (c, s, o, m, var)
    }}"""
    proto = model_from_text(text, {**weights, **batchnorm(channels)})
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 1, "batchnorms_skipped": 0}
    assert ops(after) == [ops(proto)[0]]
    assert after.graph.output[0].name == "y" and after.graph.node[0].output[0] == "y"
    assert_same_numbers(proto, after, {"x": seeded((2, 4, 5, 5))}, FOLD_TOLERANCE)


def test_batchnorm_folds_into_gemm_and_matmul() -> None:
    text = f"""{HEADER}
    g (float[N, 8] x) => (float[N, 6] y, float[N, 6] z, float[N, 6] u) {{
        a = Gemm <transB = 1> (x, wg, bg)
        y = BatchNormalization (a, s, o, m, var)
        b = MatMul (x, wm)
        z = BatchNormalization (b, s2, o2, m2, var2)
        c = Gemm (x, wt)
        u = BatchNormalization (c, s3, o3, m3, var3)
    }}"""
    weights = {"wg": (6, 8), "bg": (6,), "wm": (8, 6), "wt": (8, 6), **batchnorm(6)}
    proto = model_from_text(text, {**weights, **batchnorm(6, "2"), **batchnorm(6, "3")})
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 3, "batchnorms_skipped": 0}
    assert sorted(ops(after)) == ["Add", "Gemm", "Gemm", "MatMul"]
    assert_same_numbers(proto, after, {"x": seeded((3, 8), seed=1)}, FOLD_TOLERANCE)


def test_batchnorm_folds_into_gemm_with_alpha_beta_and_a_broadcast_bias() -> None:
    text = f"""{HEADER}
    g (float[N, 8] x) => (float[N, 6] y) {{
        a = Gemm <alpha = 0.5, beta = 2.0> (x, w, bias)
        y = BatchNormalization (a, s, o, m, var)
    }}"""
    proto = model_from_text(text, {"w": (8, 6), "bias": (1, 6), **batchnorm(6)})
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 1, "batchnorms_skipped": 0}
    assert ops(after) == ["Gemm"]
    assert_same_numbers(proto, after, {"x": seeded((3, 8), seed=2)}, FOLD_TOLERANCE)


def test_batchnorm_folds_into_weights_held_by_constant_nodes() -> None:
    text = f"""{HEADER}
    g (float[N, 4, 5, 5] x) => (float[N, 6, 3, 3] y) {{
        c = Conv (x, w, b)
        y = BatchNormalization (c, s, o, m, var)
    }}"""
    proto = model_from_text(text, {"w": (6, 4, 3, 3), "b": (6,), **batchnorm(6)})
    for name in ("w", "b"):  # move the weights into Constant nodes
        (tensor,) = (t for t in proto.graph.initializer if t.name == name)
        proto.graph.initializer.remove(tensor)
        proto.graph.node.insert(0, onnx.helper.make_node("Constant", [], [name], value=tensor))
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats["batchnorms_folded"] == 1
    assert "BatchNormalization" not in ops(after)
    assert_same_numbers(proto, after, {"x": seeded((2, 4, 5, 5))}, FOLD_TOLERANCE)


def test_batchnorm_keeps_the_weight_dtype() -> None:
    text = f"""{HEADER}
    g (float16[N, 4, 5, 5] x) => (float16[N, 6, 3, 3] y) {{
        c = Conv (x, w)
        y = BatchNormalization (c, s, o, m, var)
    }}"""
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(3)
    arrays = {"w": rng.standard_normal((6, 4, 3, 3)), "s": rng.standard_normal(6)}
    arrays |= {"o": rng.standard_normal(6), "m": rng.standard_normal(6)}
    arrays["var"] = np.abs(rng.standard_normal(6)) + 0.5
    for name, array in arrays.items():
        tensor = numpy_helper.from_array(array.astype(np.float16), name)
        proto.graph.initializer.append(tensor)
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats["batchnorms_folded"] == 1
    assert initializer(after, "w").dtype == np.float16
    feeds = {"x": seeded((2, 4, 5, 5)).astype(np.float16)}
    assert_same_numbers(proto, after, feeds, {"rtol": 1e-2, "atol": 1e-2})


def test_batchnorm_not_folded_when_conv_output_has_two_consumers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = f"""{HEADER}
    g (float[N, 4, 5, 5] x) => (float[N, 6, 3, 3] y, float[N, 6, 3, 3] r) {{
        c = Conv (x, w)
        y = BatchNormalization (c, s, o, m, var)
        r = Relu (c)
    }}"""
    proto = model_from_text(text, {"w": (6, 4, 3, 3), **batchnorm(6)})
    with caplog.at_level(logging.DEBUG, logger="spa.passes.batchnorm"):
        after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 0, "batchnorms_skipped": 1}
    assert ops(after) == ["Conv", "BatchNormalization", "Relu"]
    assert "other consumers" in caplog.text
    assert_same_numbers(proto, after, {"x": seeded((2, 4, 5, 5))}, EXACT)


def test_batchnorm_not_folded_into_shared_weights(caplog: pytest.LogCaptureFixture) -> None:
    text = f"""{HEADER}
    g (float[N, 4, 5, 5] x) => (float[N, 6, 3, 3] z) {{
        d = Conv (x, w)
        e = Conv (x, w)
        f = BatchNormalization (d, s, o, m, var)
        z = Add (f, e)
    }}"""
    proto = model_from_text(text, {"w": (6, 4, 3, 3), **batchnorm(6)})
    with caplog.at_level(logging.DEBUG, logger="spa.passes.batchnorm"):
        after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 0, "batchnorms_skipped": 1}
    assert ops(after).count("BatchNormalization") == 1
    assert "shared" in caplog.text
    assert_same_numbers(proto, after, {"x": seeded((2, 4, 5, 5))}, EXACT)


def test_batchnorm_after_nothing_foldable_is_left_alone() -> None:
    text = f"""{HEADER}
    g (float[N, 6, 3, 3] x) => (float[N, 6, 3, 3] y, float[N, 6, 3, 3] z) {{
        r = Relu (x)
        y = BatchNormalization (r, s, o, m, var)
        z = BatchNormalization (x, s, o, m, var)
    }}"""
    proto = model_from_text(text, batchnorm(6))
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 0, "batchnorms_skipped": 2}
    assert ops(after) == ops(proto)
    assert_same_numbers(proto, after, {"x": seeded((2, 6, 3, 3))}, EXACT)


# --------------------------------------------------------------------- fold-constants


def test_constant_folding_of_a_shape_chain_and_the_cap() -> None:
    text = f"""{HEADER}
    g (float[2, 3, 4] x) => (float[2, 12] y, float[64, 64] big) {{
        s = Shape (x)
        i = Constant <value = int64[1] {{0}}> ()
        n = Gather <axis = 0> (s, i)
        minus = Constant <value = int64[1] {{-1}}> ()
        t = Concat <axis = 0> (n, minus)
        y = Reshape (x, t)
        ones = Constant <value = int64[2] {{64, 64}}> ()
        filled = ConstantOfShape <value = float[1] {{1.0}}> (ones)
        big = Relu (filled)
    }}"""
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "fold-constants", max_output_elements=1000)
    assert stats["constants_folded"] == 3 and stats["too_large"] == 1
    assert "Shape" not in ops(after) and "Gather" not in ops(after)
    assert "Concat" not in ops(after) and "Reshape" in ops(after)
    assert "ConstantOfShape" in ops(after)  # 4096 elements > the cap
    feeds = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}
    assert_same_numbers(proto, after, feeds, EXACT)


def test_constant_folding_reads_static_dims_of_a_symbolic_shape() -> None:
    text = f"""{HEADER}
    g (float[N, 3, 4] x) => (float[N, 12] y) {{
        s = Shape (x)
        i = Constant <value = int64[2] {{1, 2}}> ()
        d = Gather <axis = 0> (s, i)
        p = ReduceProd <keepdims = 1> (d)
        minus = Constant <value = int64[1] {{-1}}> ()
        t = Concat <axis = 0> (minus, p)
        y = Reshape (x, t)
    }}"""
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "fold-constants")
    assert stats["constants_folded"] == 3  # Gather, ReduceProd, Concat; Shape stays
    assert "Gather" not in ops(after) and "Concat" not in ops(after)
    feeds = {"x": np.arange(60, dtype=np.float32).reshape(5, 3, 4)}
    assert_same_numbers(proto, after, feeds, EXACT)


def test_folding_cap_is_checked_before_evaluating(monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"""{HEADER}
    g (float[2] x) => (float[1024, 1024] big, float[100, 4] tiled, float[1000] r, float[2] y) {{
        shape = Constant <value = int64[2] {{1024, 1024}}> ()
        filled = ConstantOfShape <value = float[1] {{1.0}}> (shape)
        big = Relu (filled)
        row = Constant <value = float[1, 4] {{1.0, 2.0, 3.0, 4.0}}> ()
        reps = Constant <value = int64[2] {{100, 1}}> ()
        rows = Tile (row, reps)
        tiled = Relu (rows)
        start = Constant <value = float {{0.0}}> ()
        limit = Constant <value = float {{1000.0}}> ()
        delta = Constant <value = float {{1.0}}> ()
        ramp = Range (start, limit, delta)
        r = Relu (ramp)
        one = Constant <value = float[2] {{1.0, 2.0}}> ()
        two = Add (one, one)
        y = Mul (x, two)
    }}"""
    evaluated: list[str] = []
    real = constant_folding.evaluate_node

    def spy(node: ir.Node, arrays: list[np.ndarray | None], opset: int) -> Any:
        evaluated.append(node.op_type)
        return real(node, arrays, opset)

    monkeypatch.setattr(constant_folding, "evaluate_node", spy)
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "fold-constants", max_output_elements=100)
    assert stats["constants_folded"] == 1 and stats["too_large"] == 3
    assert evaluated == ["Add"]  # never materialised the large results
    assert_same_numbers(proto, after, {"x": np.ones(2, dtype=np.float32)}, EXACT)


def test_constant_folding_skips_random_custom_and_sequence_ops() -> None:
    text = """<ir_version: 9, opset_import: ["" : 17, "custom.domain" : 1]>
    g (float[2] x) => (float[2] y, float[2] r, float[2] c) {
        one = Constant <value = float[2] {1.0, 2.0}> ()
        seq = SequenceConstruct (one, one)
        picked = SequenceAt (seq, zero)
        y = Add (x, picked)
        noise = RandomUniformLike (one)
        r = Add (x, noise)
        custom = custom.domain.Thing (one)
        c = Mul (x, one)
    }"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    after, stats = run_pass(proto, "fold-constants")
    assert stats["constants_folded"] == 0
    assert ops(after) == ops(proto)


# --------------------------------------------------------------------- remove-identity


def test_identity_feeding_a_graph_output_and_inference_dropout() -> None:
    text = f"""{HEADER}
    g (float[N, 4] x) => (float[N, 4] y, float[N, 4] x2) {{
        a = Relu (x)
        d = Dropout (a)
        y = Identity (d)
        x2 = Identity (x)
    }}"""
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "remove-identity")
    assert stats == {"nodes_removed": 2}
    assert ops(after) == ["Relu", "Identity"]  # input -> output Identity must stay
    assert [o.name for o in after.graph.output] == ["y", "x2"]
    assert after.graph.node[0].output[0] == "y"
    feeds = {"x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}
    assert_same_numbers(proto, after, feeds, EXACT)


def test_two_outputs_copied_from_one_value_stay_two_outputs() -> None:
    """onnx-ir's identity elimination renamed the shared value twice: outputs [y2, y2]."""
    text = f"""{HEADER}
    g (float[2] x) => (float[2] y1, float[2] y2) {{
        a = Relu (x)
        y1 = Identity (a)
        y2 = Identity (a)
    }}"""
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "remove-identity")
    assert stats == {"nodes_removed": 1}
    assert ops(after) == ["Relu", "Identity"]
    assert [o.name for o in after.graph.output] == ["y1", "y2"]
    assert_same_numbers(proto, after, {"x": np.array([-1.0, 2.0], np.float32)}, EXACT)
    onnx.checker.check_model(after, full_check=True)


def test_no_op_cast_reshape_and_transpose_are_removed() -> None:
    text = f"""{HEADER}
    g (float[2, 3, 4] x) => (float[2, 3, 4] y, float[4, 3, 2] z, float[2, 12] w) {{
        a = Cast <to = 1> (x)
        shape = Constant <value = int64[3] {{2, 0, -1}}> ()
        b = Reshape (a, shape)
        c = Transpose <perm = [0, 1, 2]> (b)
        y = Relu (c)
        z = Transpose <perm = [2, 1, 0]> (x)
        flat = Constant <value = int64[2] {{2, 12}}> ()
        w = Reshape (x, flat)
    }}"""
    proto = onnx.parser.parse_model(text)
    model = ir.serde.deserialize_model(proto)
    passes = [get_pass_class(name)() for name in ("infer-shapes", "remove-identity")]
    stats = run_passes(model, passes)[1].statistics  # Reshape needs its input's shape
    after = ir.serde.serialize_model(model)
    assert stats == {"nodes_removed": 3}
    assert sorted(ops(after)) == ["Constant", "Constant", "Relu", "Reshape", "Transpose"]
    feeds = {"x": seeded((2, 3, 4))}
    assert_same_numbers(proto, after, feeds, EXACT)


def test_dropout_with_a_used_mask_or_training_is_kept() -> None:
    text = f"""{HEADER}
    g (float[N, 4] x) => (float[N, 4] y, bool[N, 4] mask) {{
        y, mask = Dropout (x)
    }}"""
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "remove-identity")
    assert stats == {"nodes_removed": 0}
    assert ops(after) == ["Dropout"]


# --------------------------------------------------------------------- dead code, initializers


def test_dead_branches_are_removed_in_graphs_and_subgraphs() -> None:
    text = f"""{HEADER}
    g (bool cond, float[3] x) => (float[3] y) {{
        a = Relu (x)
        dead = Sigmoid (a)
        dead2 = Neg (dead)
        y = If (cond) <
            then_branch = t () => (float[3] p) {{ unused = Exp (a)
                p = Neg (a) }},
            else_branch = e () => (float[3] q) {{ q = Abs (a) }}
        >
    }}"""
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "eliminate-dead-code")
    assert stats == {"nodes_removed": 3, "initializers_removed": 0}
    assert ops(after) == ["Relu", "If"]
    assert [n.op_type for n in after.graph.node[1].attribute[0].g.node] == ["Neg"]
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "x": np.linspace(-1, 1, 3, dtype=np.float32)}
        assert_same_numbers(proto, after, feeds, EXACT)


def test_initializers_used_only_inside_a_subgraph_are_kept() -> None:
    text = """<ir_version: 9, opset_import: ["" : 17, "unused.domain" : 1, "lib" : 1]>
    g (bool c, float[3] x) => (float[3] y) {
        y = If (c) <
            then_branch = t () => (float[3] a) { a = Add (x, w) },
            else_branch = e () => (float[3] b) { b = Sub (x, w) }
        >
    }
    <domain: "lib", opset_import: ["" : 17]>
    Unused (v) => (r) { r = Neg (v) }"""
    proto = model_from_text(text, {"w": (3,), "unused": (5,)})
    inner = numpy_helper.from_array(np.ones(2, np.float32), "inner_unused")
    proto.graph.node[0].attribute[0].g.initializer.append(inner)
    after, stats = run_pass(proto, "remove-unused-initializers")
    assert stats == {"initializers_removed": 2, "functions_removed": 1, "opsets_removed": 2}
    assert [t.name for t in after.graph.initializer] == ["w"]
    assert not after.graph.node[0].attribute[0].g.initializer and not after.functions
    for cond in (True, False):
        feeds = {"c": np.array(cond), "x": np.ones(3, dtype=np.float32)}
        assert_same_numbers(proto, after, feeds, EXACT)


# --------------------------------------------------------------------- shapes and order


def test_infer_shapes_drops_stale_value_info() -> None:
    proto = onnx.parser.parse_model(f"""{HEADER}
    g (float[2, 4] x) => (float[2, 4] y) {{ a = Relu (x)
        y = Neg (a) }}""")
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info("a", 1, [9, 9]))
    after, stats = run_pass(proto, "infer-shapes")
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in after.graph.value_info
    }
    assert stats == {"shapes_cleared": 1, "shapes_inferred": 1, "shapes_restored": 0}
    assert shapes["a"] == [2, 4]
    onnx.checker.check_model(after, full_check=True)


def test_infer_shapes_does_not_read_external_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = f"""{HEADER}
    g (float[N, 64] x) => (float[N, 32] y) {{ a = MatMul (x, w)
        y = Relu (a) }}"""
    proto = model_from_text(text, {"w": (64, 32)})
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="model.data")
    model = load_model(path)
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)

    def refuse(tensor: ir.ExternalTensor) -> None:
        raise AssertionError(f"infer-shapes read the weight {tensor.name}")

    monkeypatch.setattr(ir.ExternalTensor, "_load", refuse)
    (record,) = run_passes(model, [get_pass_class("infer-shapes")()])
    assert record.statistics["shapes_inferred"] == 1
    assert model.graph.node(0).outputs[0].shape == ir.Shape(["N", 32])


def test_topological_sort_orders_an_unsorted_graph() -> None:
    proto = onnx.parser.parse_model(f"""{HEADER}
    g (float[3] x) => (float[3] y) {{ a = Relu (x)
        y = Neg (a) }}""")
    proto.graph.node.reverse()
    after, stats = run_pass(proto, "topological-sort")
    assert stats == {"nodes_moved": 2}
    assert ops(after) == ["Relu", "Neg"]
    onnx.checker.check_model(after, full_check=True)


# --------------------------------------------------------------------- the recipe


def test_cleanup_recipe_order_and_a_small_model() -> None:
    text = f"""{HEADER}
    g (float[2, 4, 5, 5] x) => (float[2, 6, 3, 3] y) {{
        i = Identity (x)
        c = Conv (i, w, b)
        n = BatchNormalization (c, s, o, m, var)
        shape = Shape (n)
        y = Reshape (n, shape)
        dead = Relu (n)
    }}"""
    proto = model_from_text(text, {"w": (6, 4, 3, 3), "b": (6,), "unused": (3,), **batchnorm(6)})
    model = ir.serde.deserialize_model(proto)
    records = run_passes(model, build_passes(load_recipe("cleanup")))
    after = ir.serde.serialize_model(model)
    folded = {r.name: r.statistics for r in records}
    assert folded["fold-batchnorm"]["batchnorms_folded"] == 1
    removed = sum(r.statistics.get("initializers_removed", 0) for r in records)
    assert removed == 6  # "unused", the BatchNorm's four, the folded Reshape target
    assert ops(after) == ["Conv"]
    assert_same_numbers(proto, after, {"x": seeded((2, 4, 5, 5))}, FOLD_TOLERANCE)


def test_cleanup_recipe_completes_on_a_long_chain() -> None:
    """Near-linear sanity check: 5000 nodes go through the whole recipe (no timing
    assertion; a quadratic pass would take minutes here)."""
    length = 5000
    nodes = "\n".join(f"v{i + 1} = {'Relu' if i % 2 else 'Identity'} (v{i})" for i in range(length))
    text = f"""{HEADER}
    g (float[2, 4] v0) => (float[2, 4] v{length}) {{
        {nodes}
    }}"""
    model = ir.serde.deserialize_model(onnx.parser.parse_model(text))
    records = run_passes(model, build_passes(load_recipe("cleanup")))
    removed = sum(r.statistics.get("nodes_removed", 0) for r in records)
    assert removed == length // 2
    assert model.graph.outputs[0].name == f"v{length}"


def test_infer_shapes_keeps_exporter_shapes_it_does_not_contradict() -> None:
    """Dropping an exporter's value_info that inference cannot rebuild cost ONNX Runtime
    fusions (timm-hrnet-w18-small ran 201 ops instead of 129 after cleanup); a declared
    shape that contradicts inference (stale after a rewrite) is still replaced."""
    import onnx.parser
    import onnx_ir as ir

    from spa.passes.cleanup import InferShapesPass

    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8] x, int64[2] s) => (float[N, 8] y) {
        r = Reshape(x, s)
        a = Relu(x)
        y = Add(a, x)
    }""")
    model.graph.value_info.extend([
        onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["N", "C"]),
        onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [3, 8]),  # stale
    ])  # fmt: skip
    ir_model = ir.serde.deserialize_model(model)
    InferShapesPass()(ir_model)
    values = {node.outputs[0].name: node.outputs[0] for node in ir_model.graph}
    # inference only knows the rank here (unk__0, unk__1): the exporter's names are kept
    assert values["r"].shape is not None and [str(d) for d in values["r"].shape] == ["N", "C"]
    assert values["a"].shape is not None and str(values["a"].shape[0]) == "N"  # inferred wins


# --------------------------------------------------------------------- flush-subnormals


def test_flush_subnormals_in_initializers_and_constant_nodes() -> None:
    tiny = float(np.finfo(np.float32).tiny)
    weight = seeded((4, 4))
    weight[0, :3] = [tiny / 2, -tiny / 4, 1e-45]  # three subnormals, signs kept
    weight[1, 0] = tiny  # the smallest normal number stays
    text = f"""{HEADER}
    g (float[2, 4] x) => (float[2, 4] y) {{
        c = Constant <value = float[4] {{1e-39, 1.0, 0.0, -1e-40}}> ()
        a = MatMul (x, w)
        y = Add (a, c)
    }}"""
    proto = model_from_text(text, {"w": (4, 4)})
    (tensor,) = proto.graph.initializer
    tensor.CopyFrom(numpy_helper.from_array(weight, "w"))
    after, stats = run_pass(proto, "flush-subnormals")
    assert stats == {"values_flushed": 5, "tensors_changed": 2}
    flushed = initializer(after, "w")
    assert flushed[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert np.signbit(flushed[0, :3]).tolist() == [False, True, False]
    assert flushed[1, 0] == np.float32(tiny)
    np.testing.assert_array_equal(flushed[2:], weight[2:])
    constant = numpy_helper.to_array(after.graph.node[0].attribute[0].t)
    assert constant.tolist() == [0.0, 1.0, 0.0, 0.0] and np.signbit(constant[3])
    assert_same_numbers(proto, after, {"x": seeded((2, 4), 1)}, {"rtol": 1e-6, "atol": 1e-30})
    _, stats = run_pass(after, "flush-subnormals")
    assert stats == {"values_flushed": 0, "tensors_changed": 0}


def test_flush_subnormals_leaves_float16_and_integers() -> None:
    """Float16 subnormals are normal float32 numbers on CPUs and full speed on GPUs."""
    half = numpy_helper.from_array(np.array([1e-7, 1.0, 2.0], np.float16), "h")
    integers = numpy_helper.from_array(np.array([1, 0, 5], np.int32), "i")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "h"], ["y"]),
         onnx.helper.make_node("Identity", ["i"], ["z"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [3]),
         onnx.helper.make_tensor_value_info("z", onnx.TensorProto.INT32, [3])],
        initializer=[half, integers],
    )  # fmt: skip
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    after, stats = run_pass(proto, "flush-subnormals")
    assert stats == {"values_flushed": 0, "tensors_changed": 0}
    assert initializer(after, "h")[0] == np.float16(1e-7)
