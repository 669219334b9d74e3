"""Table-driven tests for Einsum, DepthToSpace/SpaceToDepth and Q/DQ rules:
groups and index maps, barriers with reasons, and mask equivalence of random
50% plans in ONNX Runtime (relative error <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from spa.analysis.rules.ops import parse_einsum
from tests.analysis_helpers import analysis_of, group_with, mask_equivalence, model_from_text

HEADER = '<ir_version: 10, opset_import: ["" : 21]>'

EINSUM = (
    f"""{HEADER}
    g (float[N, 5, 4] x) => (float[N, 5, 3] y) {{
        a = Einsum <equation = "bsi,ih->bsh"> (x, w1)
        r = Relu (a)
        y = Einsum <equation = "bsh , ho -> bso"> (r, w2)
    }}""",
    {"w1": (4, 6), "w2": (6, 3)},
    {},
)

EINSUM_TWO_ACTIVATIONS = (  # contraction between two activations (attention scores)
    f"""{HEADER}
    g (float[N, 5, 4] x) => (float[N, 5, 3] y) {{
        q = MatMul (x, wq)
        k = MatMul (x, wk)
        s = Einsum <equation = "bqd,bkd->bqk"> (q, k)
        p = Softmax <axis = -1> (s)
        v = MatMul (x, wv)
        o = Einsum <equation = "bqk,bkd->bqd"> (p, v)
        y = MatMul (o, wo)
    }}""",
    {"wq": (4, 6), "wk": (4, 6), "wv": (4, 8), "wo": (8, 3)},
    {},
)

DEPTH_TO_SPACE = {
    mode: (
        f"""{HEADER}
        g (float[N, 2, 3, 3] x) => (float[N, 3, 6, 6] y) {{
            a = Conv (x, w1, b1)
            d = DepthToSpace <blocksize = 2, mode = "{mode}"> (a)
            r = Relu (d)
            y = Conv (r, w2)
        }}""",
        {"w1": (16, 2, 1, 1), "b1": (16,), "w2": (3, 4, 1, 1)},
        {},
    )
    for mode in ("DCR", "CRD")
}

SPACE_TO_DEPTH = (
    f"""{HEADER}
    g (float[N, 2, 4, 4] x) => (float[N, 3, 2, 2] y) {{
        a = Conv (x, w1)
        d = SpaceToDepth <blocksize = 2> (a)
        y = Conv (d, w2)
    }}""",
    {"w1": (4, 2, 1, 1), "w2": (3, 16, 1, 1)},
    {},
)

QDQ_PER_CHANNEL_ACTIVATION = (
    f"""{HEADER}
    g (float[N, 4] x) => (float[N, 3] y) {{
        a = MatMul (x, w1)
        q = QuantizeLinear <axis = 1> (a, var_s, zp)
        d = DequantizeLinear <axis = 1> (q, var_s2, zp2)
        y = MatMul (d, w2)
    }}""",
    {"w1": (4, 6), "var_s": (6,), "var_s2": (6,), "w2": (6, 3)},
    {"zp": np.arange(6, dtype=np.uint8) + 120, "zp2": np.arange(6, dtype=np.uint8) + 120},
)

QDQ_PER_TENSOR = (
    f"""{HEADER}
    g (float[N, 4] x) => (float[N, 3] y) {{
        a = MatMul (x, w1)
        q = QuantizeLinear (a, s, zp)
        d = DequantizeLinear (q, s, zp)
        y = MatMul (d, w2)
    }}""",
    {"w1": (4, 6), "w2": (6, 3)},
    {"s": np.array(0.05, dtype=np.float32), "zp": np.array(128, dtype=np.uint8)},
)

DQ_WEIGHT_PER_CHANNEL = (
    f"""{HEADER}
    g (float[N, 4] x) => (float[N, 3] y) {{
        w = DequantizeLinear <axis = 1> (wq, var_s, wzp)
        a = MatMul (x, w)
        r = Relu (a)
        y = MatMul (r, w2)
    }}""",
    {"var_s": (6,), "w2": (6, 3)},
    {
        "wq": np.random.default_rng(3).integers(-100, 100, (4, 6)).astype(np.int8),
        "wzp": np.arange(6, dtype=np.int8) - 3,
    },
)

DQ_WEIGHT_BLOCKED = (  # blocks along K (axis 0): N (axis 1) is sliced, K is frozen
    f"""{HEADER}
    g (float[N, 4] x) => (float[N, 3] y) {{
        w = DequantizeLinear <axis = 0, block_size = 2> (wq, var_s, wzp)
        a = MatMul (x, w)
        r = Relu (a)
        y = MatMul (r, w2)
    }}""",
    {"var_s": (2, 6), "w2": (6, 3)},
    {
        "wq": np.random.default_rng(4).integers(-100, 100, (4, 6)).astype(np.int8),
        "wzp": np.random.default_rng(5).integers(-3, 3, (2, 6)).astype(np.int8),
    },
)

GROUPED_CONV = (
    f"""{HEADER}
    g (float[N, 4, 6, 6] x) => (float[N, 2, 6, 6] y) {{
        a = Conv (x, w1, b1)
        b = Conv <group = 2, pads = [1, 1, 1, 1]> (a, wg, bg)
        r = Relu (b)
        y = Conv (r, w2)
    }}""",
    {"w1": (8, 4, 1, 1), "b1": (8,), "wg": (6, 4, 3, 3), "bg": (6,), "w2": (2, 6, 1, 1)},
    {},
)

DEPTHWISE_MULTIPLIER = (  # each input channel owns 2 outputs; group follows the inputs
    f"""{HEADER}
    g (float[N, 4, 6, 6] x) => (float[N, 2, 6, 6] y) {{
        a = Conv (x, w1)
        d = Conv <group = 8, pads = [1, 1, 1, 1]> (a, wd, bd)
        y = Conv (d, w2)
    }}""",
    {"w1": (8, 4, 1, 1), "wd": (16, 1, 3, 3), "bd": (16,), "w2": (2, 16, 1, 1)},
    {},
)

SHUFFLE_BETWEEN_GROUPED_CONVS = (  # ShuffleNet v1 unit: 2 groups of 4, shuffled
    f"""{HEADER}
    g (float[N, 4, 4, 4] x) => (float[N, 6, 4, 4] y) {{
        a = Conv <group = 2> (x, w1, b1)
        r = Relu (a)
        s5 = Reshape (r, split)
        t = Transpose <perm = [0, 2, 1, 3, 4]> (s5)
        s = Reshape (t, merged)
        d = Conv <group = 8, pads = [1, 1, 1, 1]> (s, wd)
        y = Conv <group = 2> (d, w2)
    }}""",
    {"w1": (8, 2, 1, 1), "b1": (8,), "wd": (8, 1, 3, 3), "w2": (6, 4, 1, 1)},
    {"split": np.array([0, 2, 4, 4, 4]), "merged": np.array([0, 8, 4, 4])},
)

BIDIRECTIONAL_LSTM_ZERO_STATE = (  # PyTorch's export: computed zero states, merged directions
    f"""{HEADER}
    g (float[5, N, 3] x) => (float[5, N, 2] y) {{
        a = MatMul (x, w_in)
        shape = Shape (x)
        batch = Gather <axis = 0> (shape, one)
        batch1 = Unsqueeze (batch, zero)
        state_shape = Concat <axis = 0> (two, batch1, six)
        state = ConstantOfShape (state_shape)
        seq, last_h, last_c = LSTM <hidden_size = 6, direction = "bidirectional"> (
            a, w, r, b, "", state, state)
        t = Transpose <perm = [0, 2, 1, 3]> (seq)
        merged = Reshape (t, target)
        y = MatMul (merged, w_out)
    }}""",
    {"w_in": (3, 4), "w": (2, 24, 4), "r": (2, 24, 6), "b": (2, 48), "w_out": (12, 2)},
    {
        "one": np.array(1),
        "zero": np.array([0]),
        "two": np.array([2]),
        "six": np.array([6]),
        "target": np.array([0, 0, -1]),
    },
)

SIZE_ONE_AXIS_RESHAPE = (  # LeViT's head: [B, 1, C] -> [B, C] -> BatchNorm -> [B, 1, C]
    f"""{HEADER}
    g (float[N, 1, 4] x) => (float[N, 1, 3] y) {{
        a = MatMul (x, w1)
        f = Reshape (a, flat)
        n = BatchNormalization (f, s1, o1, m1, var1)
        u = Reshape (n, back)
        y = MatMul (u, w2)
    }}""",
    {"w1": (4, 6), "s1": (6,), "o1": (6,), "m1": (6,), "var1": (6,), "w2": (6, 3)},
    {"flat": np.array([-1, 6]), "back": np.array([-1, 1, 6])},
)

FRAME_STACKING = (  # Magika / speech subsampling: 4 frames of C channels stacked into 4C
    f"""{HEADER}
    g (float[N, 16, 3] x) => (float[N, 4, 2] y) {{
        a = MatMul (x, w1)
        b = Add (a, b1)
        r = Relu (b)
        s = Reshape (r, stacked)
        y = MatMul (s, w2)
    }}""",
    {"w1": (3, 6), "b1": (6,), "w2": (24, 2)},
    {"stacked": np.array([-1, 4, 24])},
)

FRAME_UNSTACKING = (  # the inverse: 4C channels split back into 4 frames of C
    f"""{HEADER}
    g (float[N, 4, 3] x) => (float[N, 16, 2] y) {{
        a = MatMul (x, w1)
        r = Relu (a)
        s = Reshape (r, frames)
        y = MatMul (s, w2)
    }}""",
    {"w1": (3, 24), "w2": (6, 2)},
    {"frames": np.array([-1, 16, 6])},
)

CRNN_VIEW = (  # PyTorch CRNN: conv features viewed as [W, N, C * H] by dims read at run time
    f"""{HEADER}
    g (float[N, 3, 4, W] x) => (float[W, N, 5] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        r = Relu (a)
        t = Transpose <perm = [3, 0, 1, 2]> (r)
        shape = Shape (t)
        d0 = Gather <axis = 0> (shape, zero)
        d1 = Gather <axis = 0> (shape, one)
        d2 = Gather <axis = 0> (shape, two)
        d3 = Gather <axis = 0> (shape, three)
        merged = Mul (d2, d3)
        u0 = Unsqueeze (d0, axes)
        u1 = Unsqueeze (d1, axes)
        u2 = Unsqueeze (merged, axes)
        target = Concat <axis = 0> (u0, u1, u2)
        v = Reshape (t, target)
        y = MatMul (v, w2)
    }}""",
    {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (32, 5)},
    {
        "zero": np.array(0),
        "one": np.array(1),
        "two": np.array(2),
        "three": np.array(3),
        "axes": np.array([0]),
    },
)

GROUPED_CONV_TRANSPOSE = (
    f"""{HEADER}
    g (float[N, 4, 3, 3] x) => (float[N, 2, 6, 6] y) {{
        a = Conv (x, w1)
        t = ConvTranspose <group = 2, strides = [2, 2]> (a, wt, bt)
        r = Relu (t)
        y = Conv (r, w2)
    }}""",
    {"w1": (8, 4, 1, 1), "wt": (8, 3, 2, 2), "bt": (6,), "w2": (2, 6, 1, 1)},
    {},
)

DEPTHWISE_CONV_TRANSPOSE = (
    f"""{HEADER}
    g (float[N, 4, 3, 3] x) => (float[N, 2, 6, 6] y) {{
        a = Conv (x, w1)
        t = ConvTranspose <group = 8, strides = [2, 2]> (a, wt, bt)
        y = Conv (t, w2)
    }}""",
    {"w1": (8, 4, 1, 1), "wt": (8, 2, 2, 2), "bt": (16,), "w2": (2, 16, 1, 1)},
    {},
)

CASES = {
    "grouped-conv-transpose-input": (GROUPED_CONV_TRANSPOSE, "w1", 0, 4),
    "grouped-conv-transpose-output": (GROUPED_CONV_TRANSPOSE, "w2", 1, 3),
    "depthwise-conv-transpose": (DEPTHWISE_CONV_TRANSPOSE, "w1", 0, 8),
    "size-one-axis-reshape": (SIZE_ONE_AXIS_RESHAPE, "w1", 1, 6),
    "bidirectional-lstm-zero-state": (BIDIRECTIONAL_LSTM_ZERO_STATE, "r", 2, 6),
    "channel-shuffle": (SHUFFLE_BETWEEN_GROUPED_CONVS, "w1", 0, 2),
    "frame-stacking": (FRAME_STACKING, "w1", 1, 6),
    "crnn-view-of-two-dims": (CRNN_VIEW, "w1", 0, 8),
    "frame-unstacking": (FRAME_UNSTACKING, "w2", 0, 6),
    "grouped-conv-input": (GROUPED_CONV, "w1", 0, 4),
    "grouped-conv-output": (GROUPED_CONV, "w2", 1, 3),
    "depthwise-multiplier": (DEPTHWISE_MULTIPLIER, "w1", 0, 8),
    "einsum": (EINSUM, "w1", 1, 6),
    "einsum-two-activations": (EINSUM_TWO_ACTIVATIONS, "wv", 1, 8),
    "depth-to-space-dcr": (DEPTH_TO_SPACE["DCR"], "w2", 1, 4),
    "depth-to-space-crd": (DEPTH_TO_SPACE["CRD"], "w2", 1, 4),
    "space-to-depth": (SPACE_TO_DEPTH, "w1", 0, 4),
    "qdq-per-channel": (QDQ_PER_CHANNEL_ACTIVATION, "w1", 1, 6),
    "qdq-per-tensor": (QDQ_PER_TENSOR, "w1", 1, 6),
    "dq-weight-per-channel": (DQ_WEIGHT_PER_CHANNEL, "w2", 0, 6),
    "dq-weight-blocked": (DQ_WEIGHT_BLOCKED, "w2", 0, 6),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_group_is_prunable(case) -> None:
    (text, weights, constants), value, axis, size = case
    _, analysis = analysis_of(model_from_text(text, weights, constants=constants))
    group = group_with(analysis, value, axis)
    assert group.prunable, group.frozen_reasons
    assert group.size == size


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("seed", [0, 1])
def test_mask_equivalence(case, seed: int) -> None:
    (text, weights, constants), *_ = case
    proto = model_from_text(text, weights, constants=constants)
    _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
    assert plan.kept
    assert error <= 1e-5


def test_grouped_and_depthwise_group_attributes_after_pruning() -> None:
    from spa.passes.prune import apply_plan
    from spa.pruning.plan import make_plan

    cases = (
        (GROUPED_CONV, 2),
        (DEPTHWISE_MULTIPLIER, 4),
        (GROUPED_CONV_TRANSPOSE, 2),
        (DEPTHWISE_CONV_TRANSPOSE, 4),
    )
    for case, expected in cases:
        model, analysis = analysis_of(model_from_text(*case[:2], constants=case[2]))
        plan = make_plan(model, analysis, ratio=0.5, criterion="random", seed=0)
        apply_plan(model, analysis, plan)
        groups = [n.attributes["group"].value for n in model.graph if "group" in n.attributes]
        assert groups == [expected]


def test_shuffle_keeps_positions_uniform_in_both_grouped_convs() -> None:
    case = SHUFFLE_BETWEEN_GROUPED_CONVS
    _, analysis = analysis_of(model_from_text(*case[:2], constants=case[2]))
    group = group_with(analysis, "w1", 0)
    assert group is group_with(analysis, "w2", 1) and group.size == 2
    by_space = {member.space: member for member in group.members}
    kept_rows = by_space[("w1", 0)].index_map.forward(np.array([0])).tolist()
    kept_columns = by_space[("w2", 1)].index_map.forward(np.array([0])).tolist()
    # within-group positions {0, 2} of conv 1 become shuffled channels 0, 1, 4, 5,
    # i.e. positions {0, 1} of each group of conv 2
    assert kept_rows == [0, 2, 4, 6] and kept_columns == [0, 1]


def test_bidirectional_merge_maps_hidden_units_of_both_directions() -> None:
    case = BIDIRECTIONAL_LSTM_ZERO_STATE
    _, analysis = analysis_of(model_from_text(*case[:2], constants=case[2]))
    group = group_with(analysis, "r", 2)
    assert group is group_with(analysis, "w_out", 0) and group is group_with(analysis, "state", 2)
    by_space = {member.space: member for member in group.members}
    assert by_space[("w_out", 0)].index_map.forward(np.array([1])).tolist() == [1, 7]


def test_frame_stacking_maps_each_channel_into_every_frame() -> None:
    """[N, 16, C] -> [N, 4, 4C]: channel c is feature c + C*k of each of the 4 stacked
    frames; the inverse split takes feature c of C from every frame's c + C*k."""
    _, analysis = analysis_of(model_from_text(*FRAME_STACKING[:2], constants=FRAME_STACKING[2]))
    group = group_with(analysis, "w1", 1)
    assert group is group_with(analysis, "w2", 0) and group is group_with(analysis, "b1", 0)
    by_space = {member.space: member for member in group.members}
    assert by_space[("w2", 0)].index_map.forward(np.array([1])).tolist() == [1, 7, 13, 19]
    _, analysis = analysis_of(model_from_text(*FRAME_UNSTACKING[:2], constants=FRAME_UNSTACKING[2]))
    group = group_with(analysis, "w2", 0)
    assert group is group_with(analysis, "w1", 1)
    by_space = {member.space: member for member in group.members}
    assert by_space[("w1", 1)].index_map.forward(np.array([1])).tolist() == [1, 7, 13, 19]


def test_shape_slices_count_negative_bounds_from_the_end() -> None:
    """``Shape <start = -2, end = -1>`` of a rank-4 value is its axis 2 (it was read as
    axis 3: ``-2 % (rank + 1)``), ``Shape <start = -1>`` its last axis, ``Shape <end = -2>``
    its first two; bounds past either end are clamped."""
    import onnx_ir as ir

    from spa.analysis import prepare
    from spa.analysis.rules.registry import RuleContext
    from spa.analysis.shape_exprs import CopiedDim, evaluate_target

    text = f"""{HEADER}
    g (float[N, 2, 5, 4] k) => (int64[1] seq, int64[1] dim, int64[2] lead, int64[4] wide) {{
        seq = Shape <start = -2, end = -1> (k)
        dim = Shape <start = -1> (k)
        lead = Shape <end = -2> (k)
        wide = Shape <start = -9, end = 9> (k)
    }}"""
    model = prepare(ir.serde.deserialize_model(model_from_text(text, {})))
    values = {v.name: v for node in model.graph for v in node.outputs}
    context = RuleContext()
    assert evaluate_target(values["seq"], context) == [CopiedDim("k", 2, 5)]
    assert evaluate_target(values["dim"], context) == [CopiedDim("k", 3, 4)]
    assert [e.axis for e in evaluate_target(values["lead"], context)] == [0, 1]
    assert [e.axis for e in evaluate_target(values["wide"], context)] == [0, 1, 2, 3]


def test_a_channel_count_read_as_data_freezes_its_axis() -> None:
    """RAFT's correlation divides by sqrt(C), C read by Shape at run time: pruning C
    would change the divisor, so the Cast that turns the size into data freezes that
    axis (a readable view of it, which made the group prunable, hid this)."""
    text = f"""{HEADER}
    g (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w1)
        shape = Shape (a)
        channels = Gather <axis = 0> (shape, one)
        size = Cast <to = 1> (channels)
        root = Sqrt (size)
        b = Conv (a, w2)
        y = Div (b, root)
    }}"""
    model = model_from_text(text, {"w1": (8, 3, 3, 3), "w2": (2, 8, 1, 1)}, constants={"one": np.array(1)})
    _, analysis = analysis_of(model)
    group = group_with(analysis, "w1", 0)
    assert not group.prunable
    assert any("reads the size of axis 1 of 'a' as data" in r for r in group.frozen_reasons)


def test_torchscript_shape_arithmetic_is_read() -> None:
    """``kv_heads * n_rep`` and the expand idiom ``Where(Equal(t, -1), 1, t)``."""
    import onnx_ir as ir

    from spa.analysis import prepare
    from spa.analysis.rules.registry import RuleContext
    from spa.analysis.shape_exprs import CopiedDim, evaluate_target, resolve_target

    text = f"""{HEADER}
    g (float[N, 2, 5, 4] k) => (int64[3] product, int64[4] expanded, int64[1] last) {{
        shape = Shape (k)
        last = Slice (shape, minus, big)
        heads = Gather <axis = 0> (shape, one)
        times = Mul (heads, two)
        times1 = Unsqueeze (times, zero)
        product = Concat <axis = 0> (first, times1, minus)
        t = Concat <axis = 0> (first, minus, five, four)
        length = Shape (t)
        ones = ConstantOfShape <value = int64[1] {{1}}> (length)
        negative = Mul (ones, minus)
        equal = Equal (t, negative)
        expanded = Where (equal, ones, t)
    }}"""
    constants = {
        "one": np.array(1),
        "two": np.array(2),
        "zero": np.array([0]),
        "first": np.array([0]),
        "minus": np.array([-1]),
        "five": np.array([5]),
        "four": np.array([4]),
        "big": np.array([2**63 - 1]),
    }
    model = prepare(ir.serde.deserialize_model(model_from_text(text, {}, constants=constants)))
    values = {v.name: v for node in model.graph for v in node.outputs}
    context = RuleContext()
    product = evaluate_target(values["product"], context)
    assert product == [0, CopiedDim("k", 1, 2, factor=2), -1]
    assert resolve_target(product, (None, 4, 5, 4)) == [None, 4, 20]
    assert evaluate_target(values["expanded"], context) == [0, 1, 5, 4]
    # TorchScript GPT-2: [batch, 16, C] -> [-1, C] with C read by Shape -> Slice[-1:]
    assert resolve_target([-1, CopiedDim("k", 3, 4)], (None, 16, 4)) == [None, 4]
    assert evaluate_target(values["last"], context) == [CopiedDim("k", 3, 4)]


def test_einsum_couples_contracted_letters() -> None:
    text, weights, constants = EINSUM_TWO_ACTIVATIONS
    _, analysis = analysis_of(model_from_text(text, weights, constants=constants))
    assert group_with(analysis, "wq", 1) is group_with(analysis, "wk", 1)  # letter d
    assert group_with(analysis, "wv", 1) is group_with(analysis, "wo", 0)


@pytest.mark.parametrize(
    ("mode", "channel", "expected"),
    [("DCR", 1, [1, 5, 9, 13]), ("CRD", 1, [4, 5, 6, 7])],
)
def test_depth_to_space_maps_blocks(mode: str, channel: int, expected: list[int]) -> None:
    text, weights, constants = DEPTH_TO_SPACE[mode]
    _, analysis = analysis_of(model_from_text(text, weights, constants=constants))
    group = group_with(analysis, "w1", 0)
    by_space = {member.space: member for member in group.members}
    assert group.root == ("d", 1)
    assert by_space[("w1", 0)].index_map.forward(np.array([channel])).tolist() == expected
    assert by_space[("b1", 0)].index_map.forward(np.array([channel])).tolist() == expected


def test_blocked_dequantize_freezes_the_blocked_axis() -> None:
    text, weights, constants = DQ_WEIGHT_BLOCKED
    _, analysis = analysis_of(model_from_text(text, weights, constants=constants))
    group = group_with(analysis, "x", 1)
    assert any("quantizes axis 0 in blocks of 2" in r for r in group.frozen_reasons)
    assert group_with(analysis, "var_s", 1) is group_with(analysis, "w2", 0)


@pytest.mark.parametrize(
    ("equation", "count", "expected"),
    [
        ("ij,jk->ik", 2, (["ij", "jk"], "ik")),
        ("ij,jk", 2, (["ij", "jk"], "ik")),  # implicit output: letters used once, sorted
        ("ba", 1, (["ba"], "ab")),
        ("ii->i", 1, "repeats a letter in 'ii' (a diagonal)"),
        ("...ij,jk->...ik", 2, "uses an ellipsis"),
        ("ij->j", 2, "has 1 terms for 2 inputs"),
    ],
)
def test_parse_einsum(equation: str, count: int, expected) -> None:
    assert parse_einsum(equation, count) == expected


def test_einsum_diagonal_is_a_barrier_with_reason() -> None:
    text = f"""{HEADER}
    g (float[N, 4] x) => (float[N, 3] y) {{
        a = MatMul (x, w1)
        s = Einsum <equation = "ij,jj->ij"> (a, m)
        y = MatMul (s, w2)
    }}"""
    proto = model_from_text(text, {"w1": (4, 6), "m": (6, 6), "w2": (6, 3)})
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w1", 1)
    assert not group.prunable
    assert any("repeats a letter in 'jj'" in r for r in group.frozen_reasons), group.frozen_reasons


def test_axis_longer_than_the_limit_is_a_barrier_not_a_table() -> None:
    # Tile repeats 8 channels 10^7 times: mapping each root channel to its 10^7
    # copies took GBs of memory (issue 15: a 4 kB model made analyze take 36 s).
    from spa.analysis.groups import AXIS_LIMIT

    proto = model_from_text(
        """<ir_version: 9, opset_import: ["" : 17]>
        g (float[1, 8] x) => (float[1, 1] y) {
            m = MatMul(x, w)
            t = Tile(m, repeats)
            r = Relu(t)
            y = ReduceSum<keepdims = 1>(r)
        }""",
        {"w": (8, 8)},
        constants={"repeats": np.array([1, 10**7], np.int64)},
    )
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "m", 1)
    assert group.frozen and "couples an axis of 80000000 channels" in group.frozen_reasons[0]
    assert not any(
        member.space[0] in ("t", "r") and member.space[1] == 1 for member in group.members
    )
    assert all(
        getattr(member.index_map, "rows", np.zeros(0)).size <= AXIS_LIMIT
        for g in analysis.groups
        for member in g.members
    )


SCALER_MLP = """
<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 1]>
agraph (float[N, 8] x) => (float[N, 4] y) {
    s = ai.onnx.ml.Scaler <offset = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], scale = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]> (x)
    h = MatMul(s, w1)
    a = Add(h, b1)
    r = Relu(a)
    y = MatMul(r, w2)
}
"""


def test_a_hidden_layer_after_an_onnx_ml_scaler_is_prunable() -> None:
    """skl2onnx's MLP pipelines start with ai.onnx.ml.Scaler, which ONNX infers no
    shape for: every later shape was unknown and no group was prunable."""
    proto = model_from_text(SCALER_MLP, {"w1": (8, 16), "b1": (16,), "w2": (16, 4)})
    _, analysis = analysis_of(proto)
    assert group_with(analysis, "r", 1).prunable
    _, _, error = mask_equivalence(proto, ratio=0.5, dims={"N": 3})
    assert error < 1e-5
