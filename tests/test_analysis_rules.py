"""Table-driven rule tests on inline ONNX-text models: groups, barriers with
reasons, and mask equivalence of a random 50% plan in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from spa.analysis.index_maps import Lookup
from tests.analysis_helpers import analysis_of, group_with, mask_equivalence, model_from_text

HEADER = '<ir_version: 9, opset_import: ["" : 17, "custom.domain" : 1]>'

CONV_BN = (
    f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
        c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        n1 = BatchNormalization (c1, s1, o1, m1, var1)
        r1 = Relu (n1)
        y = Conv (r1, w2)
    }}""",
    {
        "w1": (6, 3, 3, 3),
        "b1": (6,),
        "s1": (6,),
        "o1": (6,),
        "m1": (6,),
        "var1": (6,),
        "w2": (4, 6, 1, 1),
    },
)

RESIDUAL = (
    f"""{HEADER}
    g (float[N, 4, 6, 6] x) => (float[N, 2, 6, 6] y) {{
        a = Conv (x, wa)
        b = Conv (x, wb)
        s = Add (a, b)
        t = Mul (s, scale)
        y = Conv (t, wc)
    }}""",
    {"wa": (8, 4, 1, 1), "wb": (8, 4, 1, 1), "scale": (8, 1, 1), "wc": (2, 8, 1, 1)},
)

DEPTHWISE = (
    f"""{HEADER}
    g (float[N, 2, 6, 6] x) => (float[N, 3, 6, 6] y) {{
        a = Conv (x, w1)
        d = Conv <group = 8, pads = [1, 1, 1, 1]> (a, wd, bd)
        y = Conv (d, w2)
    }}""",
    {"w1": (8, 2, 1, 1), "wd": (8, 1, 3, 3), "bd": (8,), "w2": (3, 8, 1, 1)},
)

CONCAT_FLATTEN_GEMM = (
    f"""{HEADER}
    g (float[N, 2, 4, 4] x) => (float[N, 5] y) {{
        a = Conv (x, wa)
        b = Conv (x, wb)
        c = Concat <axis = 1> (a, b)
        p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
        f = Flatten <axis = 1> (p)
        y = Gemm <transB = 1> (f, wg, bg)
    }}""",
    {"wa": (3, 2, 1, 1), "wb": (5, 2, 1, 1), "wg": (5, 32), "bg": (5,)},
)

MLP_HEADS = (
    f"""{HEADER}
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) {{
        q = MatMul (x, wq)
        h = Reshape (q, shape4)
        t = Transpose <perm = [0, 2, 1, 3]> (h)
        r = Relu (t)
        u = Transpose <perm = [0, 2, 1, 3]> (r)
        m = Reshape (u, shape3)
        y = MatMul (m, wo)
    }}""",
    {"wq": (8, 12), "wo": (12, 8)},
)


def _heads_model():
    text, weights = MLP_HEADS
    shapes = {"shape4": np.array([0, 5, 3, 4]), "shape3": np.array([0, 5, 12])}
    return model_from_text(text, weights, constants=shapes)


def test_conv_bn_relu_conv_group() -> None:
    _model, analysis = analysis_of(model_from_text(*CONV_BN))
    group = group_with(analysis, "w1", 0)
    spaces = {member.space for member in group.members}
    assert {("w1", 0), ("b1", 0), ("s1", 0), ("var1", 0), ("w2", 1), ("c1", 1), ("r1", 1)} <= spaces
    assert group.prunable and group.size == 6
    assert not group_with(analysis, "w2", 0).prunable  # feeds the graph output
    assert "graph output 'y'" in group_with(analysis, "w2", 0).frozen_reasons


def test_residual_add_couples_both_branches() -> None:
    _, analysis = analysis_of(model_from_text(*RESIDUAL))
    group = group_with(analysis, "wa", 0)
    assert group is group_with(analysis, "wb", 0) is group_with(analysis, "scale", 0)
    assert group.prunable


def test_depthwise_conv_follows_its_input() -> None:
    _, analysis = analysis_of(model_from_text(*DEPTHWISE))
    group = group_with(analysis, "w1", 0)
    assert group is group_with(analysis, "wd", 0) is group_with(analysis, "w2", 1)


def test_grouped_conv_prunes_the_same_positions_in_every_group() -> None:
    text = f"""{HEADER}
    g (float[N, 4, 6, 6] x) => (float[N, 2, 6, 6] y) {{
        a = Conv (x, w1)
        b = Conv <group = 2> (a, wg)
        y = Conv (b, w2)
    }}"""
    _, analysis = analysis_of(
        model_from_text(text, {"w1": (8, 4, 1, 1), "wg": (8, 4, 1, 1), "w2": (2, 8, 1, 1)})
    )
    group = group_with(analysis, "w1", 0)
    assert group.prunable and group.root == ("wg", 1) and group.size == 4
    by_space = {member.space: member for member in group.members}
    assert by_space[("w1", 0)].index_map.forward(np.array([1])).tolist() == [1, 5]
    assert group_with(analysis, "w2", 1).size == 4  # output position within a group


def test_concat_offsets_and_flatten_blocks() -> None:
    _, analysis = analysis_of(model_from_text(*CONCAT_FLATTEN_GEMM))
    group = group_with(analysis, "wa", 0)
    assert group is group_with(analysis, "wb", 0) is group_with(analysis, "wg", 1)
    assert group.size == 8 and group.root == ("c", 1)
    by_space = {member.space: member for member in group.members}
    # concat channel 3 is channel 0 of b; flattened features 4 per channel (2x2 pool output)
    assert by_space[("wb", 0)].index_map.forward(np.array([3])).tolist() == [0]
    assert by_space[("wg", 1)].index_map.forward(np.array([1])).tolist() == [4, 5, 6, 7]
    assert isinstance(by_space[("wg", 1)].index_map, Lookup)


def test_unknown_custom_op_is_a_barrier_not_an_error() -> None:
    text = f"""{HEADER}
    g (float[N, 4] x) => (float[N, 3] y) {{
        a = MatMul (x, w1)
        b = custom.domain.Mystery (a)
        y = MatMul (b, w2)
    }}"""
    _, analysis = analysis_of(model_from_text(text, {"w1": (4, 6), "w2": (6, 3)}))
    group = group_with(analysis, "w1", 1)
    assert not group.prunable
    assert any("custom.domain::Mystery has no rule" in r for r in group.frozen_reasons)


def test_softmax_axis_is_frozen() -> None:
    text = f"""{HEADER}
    g (float[N, 4] x) => (float[N, 3] y) {{
        a = MatMul (x, w1)
        s = Softmax <axis = -1> (a)
        y = MatMul (s, w2)
    }}"""
    _, analysis = analysis_of(model_from_text(text, {"w1": (4, 6), "w2": (6, 3)}))
    assert any("normalises over axis 1" in r for r in group_with(analysis, "w1", 1).frozen_reasons)


def test_heads_split_by_reshape_prune_whole_heads() -> None:
    _, analysis = analysis_of(_heads_model())
    group = group_with(analysis, "wq", 1)
    assert group.prunable and group.size == 3  # 3 heads of 4
    by_space = {member.space: member for member in group.members}
    assert by_space[("wq", 1)].index_map.forward(np.array([1])).tolist() == [4, 5, 6, 7]
    assert group_with(analysis, "wq", 1) is not group_with(analysis, "x", 2)


@pytest.mark.parametrize(
    "case",
    [CONV_BN, RESIDUAL, DEPTHWISE, CONCAT_FLATTEN_GEMM],
    ids=["conv-bn", "residual", "depthwise", "concat-flatten-gemm"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_equivalence(case, seed: int) -> None:
    _analysis, plan, error = mask_equivalence(
        model_from_text(*case), ratio=0.5, seed=seed, dims={"N": 2}
    )
    assert plan.kept, "something must be pruned"
    assert error <= 1e-5


def test_mask_equivalence_heads_and_reshape_rewrite() -> None:
    _analysis, plan, error = mask_equivalence(_heads_model(), ratio=0.5, seed=0, dims={"N": 2})
    assert plan.kept
    assert error <= 1e-5


LSTM_MODEL = f"""{HEADER}
g (float[5, N, 3] x) => (float[5, N, 2] y) {{
    a = MatMul (x, w_in)
    seq, last = LSTM <hidden_size = 6> (a, w, r, b)
    s = Squeeze (seq, one)
    y = MatMul (s, w_out)
}}"""

GRU_MODEL = f"""{HEADER}
g (float[5, N, 3] x) => (float[5, N, 2] y) {{
    a = MatMul (x, w_in)
    seq, last = GRU <hidden_size = 6> (a, w, r, b)
    s = Squeeze (seq, one)
    y = MatMul (s, w_out)
}}"""


@pytest.mark.parametrize(("text", "gates"), [(LSTM_MODEL, 4), (GRU_MODEL, 3)], ids=["lstm", "gru"])
def test_recurrent_hidden_units_prune_exactly(text: str, gates: int) -> None:
    weights = {"w_in": (3, 4), "w": (1, gates * 6, 4), "r": (1, gates * 6, 6),
               "b": (1, 2 * gates * 6), "w_out": (6, 2)}
    proto = model_from_text(text, weights, constants={"one": np.array([1])})
    _, analysis = analysis_of(proto)
    hidden = group_with(analysis, "r", 2)
    assert hidden is group_with(analysis, "w_out", 0) and hidden.prunable and hidden.size == 6
    by_space = {m.space: m for m in hidden.members}
    # hidden unit 1 owns row 1 of every gate block of W
    assert by_space[("w", 1)].index_map.forward(np.array([1])).tolist() == [1 + 6 * g for g in range(gates)]
    assert group_with(analysis, "w_in", 1) is group_with(analysis, "w", 2)  # input features
    for seed in range(2):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5


# Paddle's SVTR flattens a height-1 feature map whose width is dynamic with a
# run-time target: [N, C, 1, W] -> Concat(Shape(x)[0:2], [-1]) = [N, C, W].
FLATTEN_DYNAMIC_WIDTH = (
    f"""{HEADER}
    g (float[N, 3, 1, W] x) => (float[N, W, 5] y) {{
        c = Conv (x, w1, b1)
        r = Relu (c)
        s = Shape (r)
        lead = Slice (s, zero, two, zero)
        target = Concat <axis = 0> (lead, minus_one)
        f = Reshape (r, target)
        t = Transpose <perm = [0, 2, 1]> (f)
        y = MatMul (t, w2)
    }}""",
    {"w1": (6, 3, 1, 1), "b1": (6,), "w2": (6, 5)},
)


def test_flatten_of_a_size_one_axis_beside_a_dynamic_one_keeps_channels() -> None:
    constants = {"zero": np.array([0]), "two": np.array([2]), "minus_one": np.array([-1])}
    proto = model_from_text(*FLATTEN_DYNAMIC_WIDTH, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w1", 0)
    assert group is group_with(analysis, "w2", 0) and group.prunable and group.size == 6
    for seed in range(2):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2, "W": 7})
        assert plan.kept and error <= 1e-5


# GhostNet's module: cat([x1, cheap(x1)])[:, :out]; with out = all channels the
# Slice lists the channel axis but keeps it whole (ends clamp at any size).
GHOST_SLICE = f"""{HEADER}
g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y) {{
    a = Conv (x, w1)
    b = Conv <group = 4, pads = [1, 1, 1, 1]> (a, wd)
    c = Concat <axis = 1> (a, b)
    s = Slice (c, zero, end, one)
    y = Conv (s, w2)
}}"""


@pytest.mark.parametrize("end", [8, 2**63 - 1, 5])
def test_a_slice_that_keeps_the_channel_axis_whole_or_from_0_prunes(end: int) -> None:
    constants = {"zero": np.array([0]), "end": np.array([end]), "one": np.array([1])}
    weights = {"w1": (4, 3, 1, 1), "wd": (4, 1, 3, 3), "w2": (4, 8 if end != 5 else 5, 1, 1)}
    proto = model_from_text(GHOST_SLICE, weights, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w1", 0)
    # end 5 cuts the axis to a window from 0: a window at one end prunes too
    assert group is group_with(analysis, "w2", 1) and group.prunable
    for seed in range(2):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5


def _window_model() -> onnx.ModelProto:
    """Swin's window attention mask: [4*B, 3, C] -> [B, 4, 3, C] (+ mask) -> back.
    Symbolic shape inference names the leading dims ``4*B`` and ``B``; read left
    to right, 3*4 == 4*3 would pair the wrong axes and lose the channels C."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((5, 4)),
        "w2": rng.standard_normal((4, 2)),
        "mask": rng.standard_normal((1, 4, 1, 1)),
    }
    constants = {"split": np.array([-1, 4, 3, 4]), "merge": np.array([-1, 3, 4])}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Reshape", ["a", "split"], ["b"]),
        helper.make_node("Add", ["b", "mask"], ["m"]),
        helper.make_node("Reshape", ["m", "merge"], ["c"]),
        helper.make_node("MatMul", ["c", "w2"], ["y"]),
    ]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "windows",
        [info("x", TensorProto.FLOAT, ["4*B", 3, 5])],
        [info("y", TensorProto.FLOAT, ["4*B", 3, 2])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
        + [numpy_helper.from_array(v, k) for k, v in constants.items()],
        value_info=[
            info("a", TensorProto.FLOAT, ["4*B", 3, 4]),
            info("b", TensorProto.FLOAT, ["B", 4, 3, 4]),
            info("m", TensorProto.FLOAT, ["B", 4, 3, 4]),
            info("c", TensorProto.FLOAT, ["4*B", 3, 4]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_batch_split_into_windows_pairs_axes_from_the_right() -> None:
    proto = _window_model()
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w1", 1)
    assert group is group_with(analysis, "w2", 0) and group.prunable and group.size == 4
    _, plan, error = mask_equivalence(proto, ratio=0.5, seed=0, dims={"4*B": 8})
    assert plan.kept and error <= 1e-5


def test_layer_norm_scale_and_bias_join_the_normalised_group() -> None:
    text = f"""{HEADER}
    g (float[N, 5, 4] x) => (float[N, 5, 3] y) {{
        a = MatMul (x, w1)
        n = LayerNormalization <axis = -1> (a, scale, bias)
        y = MatMul (n, w2)
    }}"""
    weights = {"w1": (4, 6), "scale": (6,), "bias": (6,), "w2": (6, 3)}
    _, analysis = analysis_of(model_from_text(text, weights))
    group = group_with(analysis, "scale", 0)
    assert group is group_with(analysis, "bias", 0) is group_with(analysis, "w1", 1)
    assert not group.prunable
    assert all("normalises over axis 2" in reason for reason in group.frozen_reasons)
    assert not any("does not map" in kind for kind in analysis.frozen_reason_counts())


# torch.split(x, [4, 2], dim=1) exported as two Slices (RAFT's context encoder):
# windows at either end of the channel axis follow the pruned sizes.
SPLIT_BY_SLICES = f"""{HEADER}
g (float[N, 3, 5, 5] x) => (float[N, 5, 5, 5] y) {{
    c = Conv (x, w1)
    r = Relu (c)
    a = Slice (r, zero, four, one)
    b = Slice (r, {{second}}, big, one)
    ya = Conv (a, wa)
    yb = Conv (b, wb)
    y = Add (ya, yb)
}}"""


@pytest.mark.parametrize("second", ["four", "minus_two"])
def test_slices_at_either_end_of_the_channel_axis_prune_as_windows(second: str) -> None:
    constants = {
        "zero": np.array([0]),
        "four": np.array([4]),
        "minus_two": np.array([-2]),
        "big": np.array([2**62]),
        "one": np.array([1]),
    }
    weights = {"w1": (6, 3, 1, 1), "wa": (5, 4, 1, 1), "wb": (5, 2, 1, 1)}
    proto = model_from_text(SPLIT_BY_SLICES.replace("{second}", second), weights, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w1", 0)
    assert group is group_with(analysis, "wa", 1) is group_with(analysis, "wb", 1)
    assert group.prunable and group.size == 6
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5


def test_a_slice_window_inside_the_channel_axis_prunes_from_the_kept_channels() -> None:
    # [1:4] starts inside the axis: the pruned bounds count the kept channels before it
    text = SPLIT_BY_SLICES.replace("(r, zero, four, one)", "(r, one, four, one)").replace(
        "{second}", "four"
    )
    constants = {"zero": np.array([0]), "four": np.array([4]), "big": np.array([2**62]),
                 "one": np.array([1])}  # fmt: skip
    weights = {"w1": (6, 3, 1, 1), "wa": (5, 3, 1, 1), "wb": (5, 2, 1, 1)}
    proto = model_from_text(text, weights, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w1", 0)
    assert group.prunable and group is group_with(analysis, "wa", 1)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5
