"""Cleanup passes on inline ONNX-text models: statistics, structure, numbers in
ONNX Runtime (explicit tolerances), then onnx.checker."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from spa.pass_manager import get_pass_class, run_passes
from spa.recipes import build_passes, load_recipe
from tests.analysis_helpers import model_from_text

HEADER = '<ir_version: 9, opset_import: ["" : 17]>'


def run_pass(proto: onnx.ModelProto, name: str, **options) -> tuple[onnx.ModelProto, dict]:
    model = ir.serde.deserialize_model(proto)
    (record,) = run_passes(model, [get_pass_class(name)(**options)])
    return ir.serde.serialize_model(model), record.statistics


def outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options).run(None, feeds)


def assert_same_numbers(before: onnx.ModelProto, after: onnx.ModelProto, feeds) -> None:
    for want, got in zip(outputs(before, feeds), outputs(after, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(after, full_check=True)


def ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


X4 = {"x": np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)}
BN = {"s": (6,), "o": (6,), "m": (6,), "var": (6,)}


@pytest.mark.parametrize(
    ("conv", "weights"),
    [
        ("c = Conv (x, w, b)", {"w": (6, 4, 3, 3), "b": (6,)}),
        ("c = Conv (x, w)", {"w": (6, 4, 3, 3)}),
        ("c = Conv <group = 2> (x, w)", {"w": (6, 2, 3, 3)}),
    ],
    ids=["with-bias", "no-bias", "grouped"],
)
def test_batchnorm_folds_into_conv(conv: str, weights: dict) -> None:
    text = f"""{HEADER}
    g (float[N, 4, 5, 5] x) => (float[N, 6, 3, 3] y) {{
        {conv}
        y = BatchNormalization (c, s, o, m, var)
    }}"""
    proto = model_from_text(text, {**weights, **BN})
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 1}
    assert ops(after) == ["Conv"]
    assert after.graph.output[0].name == "y"
    assert_same_numbers(proto, after, X4)


def test_batchnorm_folds_into_gemm_and_matmul() -> None:
    text = f"""{HEADER}
    g (float[N, 8] x) => (float[N, 6] y, float[N, 6] z) {{
        a = Gemm <transB = 1> (x, wg, bg)
        y = BatchNormalization (a, s, o, m, var)
        b = MatMul (x, wm)
        z = BatchNormalization (b, s2, o2, m2, var)
    }}"""
    weights = {
        "wg": (6, 8),
        "bg": (6,),
        "wm": (8, 6),
        **BN,
        "s2": (6,),
        "o2": (6,),
        "m2": (6,),
    }
    proto = model_from_text(text, weights)
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 2}
    assert sorted(ops(after)) == ["Add", "Gemm", "MatMul"]
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)}
    assert_same_numbers(proto, after, feeds)


def test_batchnorm_not_folded_when_conv_output_or_weight_is_shared() -> None:
    text = f"""{HEADER}
    g (float[N, 4, 5, 5] x) => (float[N, 6, 3, 3] y, float[N, 6, 3, 3] c, float[N, 6, 3, 3] z) {{
        c = Conv (x, w)
        y = BatchNormalization (c, s, o, m, var)
        d = Conv (x, w2)
        e = Conv (x, w2)
        f = BatchNormalization (d, s, o, m, var)
        z = Add (f, e)
    }}"""
    proto = model_from_text(text, {"w": (6, 4, 3, 3), "w2": (6, 4, 3, 3), **BN})
    after, stats = run_pass(proto, "fold-batchnorm")
    assert stats == {"batchnorms_folded": 0}
    assert ops(after).count("BatchNormalization") == 2


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
        big = ConstantOfShape <value = float[1] {{1.0}}> (ones)
    }}"""
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "fold-constants", max_output_elements=1000)
    assert stats["constants_folded"] >= 3
    assert "Shape" not in ops(after) and "Concat" not in ops(after)
    assert "ConstantOfShape" in ops(after)  # 4096 elements > the cap
    feeds = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}
    assert_same_numbers(proto, after, feeds)


def test_identity_feeding_a_graph_output_and_dead_branches() -> None:
    text = f"""{HEADER}
    g (float[N, 4] x) => (float[N, 4] y) {{
        a = Relu (x)
        dead = Sigmoid (a)
        dead2 = Neg (dead)
        d = Dropout (a)
        y = Identity (d)
    }}"""
    proto = onnx.parser.parse_model(text)
    after, stats = run_pass(proto, "remove-identity")
    assert stats["nodes_removed"] == 2 and after.graph.output[0].name == "y"
    after2, stats2 = run_pass(after, "eliminate-dead-code")
    assert stats2["nodes_removed"] == 2 and ops(after2) == ["Relu"]
    feeds = {"x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}
    assert_same_numbers(proto, after2, feeds)


def test_initializers_used_only_inside_a_subgraph_are_kept() -> None:
    text = f"""{HEADER}
    g (bool c, float[3] x) => (float[3] y) {{
        y = If (c) <
            then_branch = t () => (float[3] a) {{ a = Add (x, w) }},
            else_branch = e () => (float[3] b) {{ b = Sub (x, w) }}
        >
    }}"""
    proto = model_from_text(text, {"w": (3,), "unused": (5,)})
    after, stats = run_pass(proto, "remove-unused-initializers")
    assert stats["initializers_removed"] == 1
    assert [t.name for t in after.graph.initializer] == ["w"]
    feeds = {"c": np.array(True), "x": np.ones(3, dtype=np.float32)}
    assert_same_numbers(proto, after, feeds)


def test_infer_shapes_drops_stale_value_info() -> None:
    proto = onnx.parser.parse_model(f"""{HEADER}
    g (float[2, 4] x) => (float[2, 4] y) {{ a = Relu (x)
        y = Neg (a) }}""")
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info("a", 1, [9, 9]))
    after, stats = run_pass(proto, "infer-shapes")
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in after.graph.value_info
    }
    assert shapes["a"] == [2, 4] and stats["inferred"] >= 1


def test_cleanup_recipe_is_near_linear_on_a_long_chain() -> None:
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
