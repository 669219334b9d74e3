"""Attention found from the graph alone: heads behind Reshape/Transpose, fused
QKV behind Split, GQA behind Unsqueeze/Expand/Reshape. Whole heads (and KV
groups) are pruned; shape constants are rewritten; outputs match the masked
model."""

from __future__ import annotations

import numpy as np
import onnx

from spa.analysis.index_maps import Lookup
from tests.analysis_helpers import analysis_of, group_with, mask_equivalence, model_from_text

HEADER = '<ir_version: 9, opset_import: ["" : 17]>'

FUSED_QKV = f"""{HEADER}
g (float[N, 4, 8] x) => (float[N, 4, 8] y) {{
    qkv = MatMul (x, wqkv)
    q, k, v = Split <axis = 2> (qkv, sizes)
    q4 = Reshape (q, heads)
    k4 = Reshape (k, heads)
    v4 = Reshape (v, heads)
    qh = Transpose <perm = [0, 2, 1, 3]> (q4)
    kt = Transpose <perm = [0, 2, 3, 1]> (k4)
    vh = Transpose <perm = [0, 2, 1, 3]> (v4)
    s = MatMul (qh, kt)
    p = Softmax <axis = -1> (s)
    o = MatMul (p, vh)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    om = Reshape (ot, merged)
    y = MatMul (om, wo)
}}"""

GQA = f"""{HEADER}
g (float[N, 3, 8] x) => (float[N, 3, 8] y) {{
    q = MatMul (x, wq)
    k = MatMul (x, wk)
    v = MatMul (x, wv)
    q4 = Reshape (q, qshape)
    k4 = Reshape (k, kvshape)
    v4 = Reshape (v, kvshape)
    qh = Transpose <perm = [0, 2, 1, 3]> (q4)
    kh = Transpose <perm = [0, 2, 1, 3]> (k4)
    vh = Transpose <perm = [0, 2, 1, 3]> (v4)
    k5 = Unsqueeze (kh, two)
    v5 = Unsqueeze (vh, two)
    ke = Expand (k5, repeat)
    ve = Expand (v5, repeat)
    kq = Reshape (ke, qheads)
    vq = Reshape (ve, qheads)
    kt = Transpose <perm = [0, 1, 3, 2]> (kq)
    s = MatMul (qh, kt)
    p = Softmax <axis = -1> (s)
    o = MatMul (p, vq)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    om = Reshape (ot, merged)
    y = MatMul (om, wo)
}}"""


def fused_qkv_model() -> onnx.ModelProto:
    constants = {
        "sizes": np.array([8, 8, 8]),
        "heads": np.array([0, 4, 2, 4]),
        "merged": np.array([0, 4, 8]),
    }
    return model_from_text(FUSED_QKV, {"wqkv": (8, 24), "wo": (8, 8)}, constants=constants)


def gqa_model() -> onnx.ModelProto:
    constants = {
        "qshape": np.array([0, 3, 4, 2]),
        "kvshape": np.array([0, 3, 2, 2]),
        "two": np.array([2]),
        "repeat": np.array([1, 1, 2, 1, 1]),
        "qheads": np.array([0, 4, 3, 2]),
        "merged": np.array([0, 3, 8]),
    }
    weights = {"wq": (8, 8), "wk": (8, 4), "wv": (8, 4), "wo": (8, 8)}
    return model_from_text(GQA, weights, constants=constants)


def test_fused_qkv_heads_form_one_group() -> None:
    _, analysis = analysis_of(fused_qkv_model())
    group = group_with(analysis, "wqkv", 1)
    assert group.prunable and group.size == 2  # two heads
    by_space = {m.space: m for m in group.members}
    qkv_columns = by_space[("wqkv", 1)].index_map.forward(np.array([1]))
    assert qkv_columns.tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]
    assert by_space[("wo", 0)].index_map.forward(np.array([0])).tolist() == [0, 1, 2, 3]
    # head_dim is an inner axis of the head split: frozen, with the reason recorded
    assert not group_with(analysis, "q4", 3).prunable


def test_fused_qkv_mask_equivalence_rewrites_split_and_shapes() -> None:
    _analysis, plan, error = mask_equivalence(fused_qkv_model(), ratio=0.5, seed=0, dims={"N": 2})
    assert list(plan.kept.values()) == [[0]] or list(plan.kept.values()) == [[1]]
    assert error <= 1e-5


def test_gqa_prunes_whole_kv_groups() -> None:
    _, analysis = analysis_of(gqa_model())
    group = group_with(analysis, "wk", 1)
    assert group is group_with(analysis, "wq", 1) is group_with(analysis, "wv", 1)
    assert group.prunable and group.size == 2  # the root is the KV-head space
    by_space = {m.space: m for m in group.members}
    assert isinstance(by_space[("wq", 1)].index_map, Lookup)
    # KV head 1 serves query heads 2 and 3 -> columns 4..7 of wq
    assert by_space[("wq", 1)].index_map.forward(np.array([1])).tolist() == [4, 5, 6, 7]
    assert by_space[("wk", 1)].index_map.forward(np.array([1])).tolist() == [2, 3]


def test_gqa_mask_equivalence() -> None:
    for seed in range(3):
        _, plan, error = mask_equivalence(gqa_model(), ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5


CONTRIB_ATTENTION = """
<ir_version: 9, opset_import: ["" : 17, "com.microsoft" : 1]>
g (float[N, 5, 8] x) => (float[N, 5, 8] y) {
    a = com.microsoft.Attention <num_heads = 2> (x, wqkv, bqkv)
    g1 = com.microsoft.BiasGelu (a, bg)
    y = MatMul (g1, wo)
}"""


def test_contrib_attention_prunes_heads_and_rewrites_num_heads() -> None:
    import onnx_ir as ir

    from spa.passes.prune import apply_plan
    from spa.pruning.plan import make_plan

    proto = model_from_text(
        CONTRIB_ATTENTION, {"wqkv": (8, 24), "bqkv": (24,), "bg": (8,), "wo": (8, 8)}
    )
    model, analysis = analysis_of(proto)
    group = group_with(analysis, "wqkv", 1)
    assert group.prunable and group.size == 2
    by_space = {m.space: m for m in group.members}
    assert by_space[("bqkv", 0)].index_map.forward(np.array([0])).tolist() == [
        0,
        1,
        2,
        3,
        8,
        9,
        10,
        11,
        16,
        17,
        18,
        19,
    ]
    plan = make_plan(model, analysis, ratio=0.5, criterion="l2")
    stats = apply_plan(model, analysis, plan)
    assert stats["heads_attributes_rewritten"] == 1
    node = next(n for n in model.graph if n.op_type == "Attention")
    assert node.attributes["num_heads"].value == 1
    assert model.graph.initializers["wqkv"].const_value.shape == (8, 12)
    _, _, error = mask_equivalence(proto, ratio=0.5, seed=0, dims={"N": 2})
    assert error <= 1e-5
    del ir


KV_CACHE = f"""{HEADER}
g (float[N, 3, 8] x, float[N, 2, P, 2] past_key) => (float[N, 3, 8] y, float[N, 2, T, 2] present_key) {{
    k = MatMul (x, wk)
    q = MatMul (x, wq)
    k4 = Reshape (k, heads)
    q4 = Reshape (q, heads)
    kh = Transpose <perm = [0, 2, 1, 3]> (k4)
    qh = Transpose <perm = [0, 2, 1, 3]> (q4)
    present_key = Concat <axis = 2> (past_key, kh)
    kt = Transpose <perm = [0, 1, 3, 2]> (present_key)
    s = MatMul (qh, kt)
    p = Softmax <axis = -1> (s)
    o = MatMul (p, present_key)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    om = Reshape (ot, merged)
    y = MatMul (om, wo)
}}"""


def test_kv_cache_heads_prune_with_consistent_past_and_present(tmp_path) -> None:
    from spa.model_io import load_proto
    from spa.workflows.prune import prune_model

    constants = {"heads": np.array([0, 3, 2, 2]), "merged": np.array([0, 3, 4])}
    proto = model_from_text(
        KV_CACHE, {"wk": (8, 4), "wq": (8, 4), "wo": (4, 8)}, constants=constants
    )
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "past_key", 1)
    assert group is group_with(analysis, "wk", 1) and group.prunable
    source = tmp_path / "kv.onnx"
    onnx.save(proto, str(source))
    result = prune_model(
        source,
        tmp_path / "small.onnx",
        ratio=0.5,
        criterion="l2",
        verify=True,
        dims={"N": 2, "P": 4},
    )
    assert result.verification is not None and result.verification.passed
    graph = load_proto(result.output).graph
    dims = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert dims["past_key"][1] == 1 and dims["present_key"][1] == 1
    assert result.statistics["graph_io_resized"] == 2


COMPUTED_TARGETS = f"""{HEADER}
g (float[N, 5, 8] x) => (float[N, 5, 8] y) {{
    q = MatMul (x, wq)
    s = Shape (q)
    b = Gather <axis = 0> (s, zero)
    t = Concat <axis = 0> (b, five, heads, four)
    h = Reshape (q, t)
    r = Relu (h)
    s2 = Shape (r)
    b2 = Gather <axis = 0> (s2, zero)
    t2 = Concat <axis = 0> (b2, five, minus_one)
    m = Reshape (r, t2)
    y = MatMul (m, wo)
}}"""


def test_run_time_targets_with_literal_heads_are_rewritten_privately() -> None:
    constants = {
        "zero": np.array([0]),
        "five": np.array([5]),
        "heads": np.array([3]),
        "four": np.array([4]),
        "minus_one": np.array([-1]),
    }
    proto = model_from_text(COMPUTED_TARGETS, {"wq": (8, 12), "wo": (12, 8)}, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "wq", 1)
    assert group.prunable and group.size == 3  # heads read through Shape/Gather/Concat
    _, plan, error = mask_equivalence(proto, ratio=0.5, seed=0, dims={"N": 2})
    assert plan.kept and error <= 1e-5


def test_pruning_a_pruned_model_again_names_new_targets_apart(tmp_path) -> None:
    """The second prune rebuilds the targets the first one rebuilt: its new
    constants must not collide with the first one's names."""
    from spa.workflows.prune import prune_model

    constants = {
        "zero": np.array([0]),
        "five": np.array([5]),
        "heads": np.array([4]),
        "four": np.array([4]),
        "minus_one": np.array([-1]),
    }
    proto = model_from_text(COMPUTED_TARGETS, {"wq": (8, 16), "wo": (16, 8)}, constants=constants)
    for index, node in enumerate(proto.graph.node):
        node.name = f"node{index}"  # exporters name nodes; the new constants follow them
    source = tmp_path / "m.onnx"
    onnx.save(proto, str(source))
    once = prune_model(source, tmp_path / "once.onnx", ratio=0.25, criterion="l2", verify=True)
    twice = prune_model(once.output, tmp_path / "twice.onnx", ratio=0.5, criterion="l2", verify=True)
    for result in (once, twice):
        assert result.verification is not None and result.verification.passed
        assert result.statistics["shape_targets_rewritten"] >= 1


# timm's and Paddle's attention: one projection reshaped to [B, N, 3, heads, dim],
# transposed to [3, B, heads, N, dim] and cut along the leading axis (Slice +
# Squeeze in Paddle's export, Split in TorchScript's unbind, Gather in others).
PACKED_QKV = f"""{HEADER}
g (float[N, 4, 8] x) => (float[N, 4, 8] y) {{
    qkv = MatMul (x, wqkv)
    qkvb = Add (qkv, bqkv)
    q5 = Reshape (qkvb, packed)
    t = Transpose <perm = [2, 0, 3, 1, 4]> (q5)
    {{select}}
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    s = MatMul (q, kt)
    p = Softmax <axis = -1> (s)
    o = MatMul (p, v)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    om = Reshape (ot, merged)
    y = MatMul (om, wo)
}}"""

PACKED_SELECT = {
    "slice": """
    q1 = Slice (t, zero, one, zero)
    k1 = Slice (t, one, two, zero)
    v1 = Slice (t, two, three, zero)
    q = Squeeze (q1, zero)
    k = Squeeze (k1, zero)
    v = Squeeze (v1, zero)""",
    "split": """
    q1, k1, v1 = Split <axis = 0> (t, ones)
    q = Squeeze (q1, zero)
    k = Squeeze (k1, zero)
    v = Squeeze (v1, zero)""",
    "gather": """
    q = Gather <axis = 0> (t, s0)
    k = Gather <axis = 0> (t, s1)
    v = Gather <axis = 0> (t, s2)""",
}


def packed_qkv_model(select: str) -> onnx.ModelProto:
    constants = {
        "packed": np.array([0, -1, 3, 4, 2]),
        "merged": np.array([0, 4, 8]),
        "zero": np.array([0]),
        "one": np.array([1]),
        "two": np.array([2]),
        "three": np.array([3]),
        "ones": np.array([1, 1, 1]),
        "s0": np.array(0),
        "s1": np.array(1),
        "s2": np.array(2),
    }
    text = PACKED_QKV.replace("{select}", PACKED_SELECT[select])
    weights = {"wqkv": (8, 24), "bqkv": (24,), "wo": (8, 8)}
    return model_from_text(text, weights, constants=constants)


def test_packed_qkv_heads_form_one_group() -> None:
    for select in PACKED_SELECT:
        _, analysis = analysis_of(packed_qkv_model(select))
        group = group_with(analysis, "wqkv", 1)
        assert group.prunable and group.size == 4, select  # four heads
        by_space = {m.space: m for m in group.members}
        # head 1 of q, k and v: columns 2-3, 10-11, 18-19 of the projection
        columns = by_space[("wqkv", 1)].index_map.forward(np.array([1])).tolist()
        assert columns == [2, 3, 10, 11, 18, 19], select
        assert by_space[("bqkv", 0)].index_map.forward(np.array([1])).tolist() == columns
        assert by_space[("wo", 0)].index_map.forward(np.array([1])).tolist() == [2, 3]


def test_packed_qkv_mask_equivalence() -> None:
    for select in PACKED_SELECT:
        for seed in range(2):
            _, plan, error = mask_equivalence(
                packed_qkv_model(select), ratio=0.5, seed=seed, dims={"N": 2}
            )
            assert [len(kept) for kept in plan.kept.values()] == [2], select
            assert error <= 1e-5, select


# torch.export's attention (F.scaled_dot_product_attention at opset < 23) transposes
# K with batch and heads merged: [B, H, S, D] -> [-1, S, D] -> [B*H, D, S] -> back to
# [B, H, D, S] with the leading dims read from K's own shape.
MERGED_TRANSPOSE = f"""{HEADER}
g (float[N, 4, 8] x) => (float[N, 4, 8] y) {{
    q = MatMul (x, wq)
    k = MatMul (x, wk)
    v = MatMul (x, wv)
    q4 = Reshape (q, heads)
    k4 = Reshape (k, heads)
    v4 = Reshape (v, heads)
    qh = Transpose <perm = [0, 2, 1, 3]> (q4)
    kh = Transpose <perm = [0, 2, 1, 3]> (k4)
    vh = Transpose <perm = [0, 2, 1, 3]> (v4)
    lead = Shape <end = -2> (kh)
    seq = Shape <start = -2, end = -1> (kh)
    dim = Shape <start = -1> (kh)
    flat_target = Concat <axis = 0> (minus_one, seq, dim)
    kf = Reshape (kh, flat_target)
    kft = Transpose <perm = [0, 2, 1]> (kf)
    back_target = Concat <axis = 0> (lead, dim, seq)
    kt = Reshape (kft, back_target)
    s = MatMul (qh, kt)
    p = Softmax <axis = -1> (s)
    o = MatMul (p, vh)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    om = Reshape (ot, merged)
    y = MatMul (om, wo)
}}"""


def merged_transpose_model() -> onnx.ModelProto:
    constants = {
        "heads": np.array([0, 4, 4, 2]),
        "merged": np.array([0, 4, 8]),
        "minus_one": np.array([-1]),
    }
    weights = {"wq": (8, 8), "wk": (8, 8), "wv": (8, 8), "wo": (8, 8)}
    return model_from_text(MERGED_TRANSPOSE, weights, constants=constants)


def test_heads_pass_through_a_merged_batch_transpose() -> None:
    _, analysis = analysis_of(merged_transpose_model())
    group = group_with(analysis, "wk", 1)
    assert group is group_with(analysis, "wq", 1) is group_with(analysis, "wv", 1)
    assert group.prunable and group.size == 4  # four heads
    for seed in range(3):
        _, plan, error = mask_equivalence(
            merged_transpose_model(), ratio=0.5, seed=seed, dims={"N": 2}
        )
        assert [len(kept) for kept in plan.kept.values()] == [2]
        assert error <= 1e-5


# torch.export's repeat_kv behind a KV cache: the Expand target holds the total
# length as a run-time sum, Shape(past)[2] + Shape(x)[1].
GQA_CACHE_SUM = f"""{HEADER}
g (float[N, S, 8] x, float[N, 2, P, 2] past_key) => (float[N, S, 8] y, float[N, 2, T, 2] present_key) {{
    q = MatMul (x, wq)
    k = MatMul (x, wk)
    q4 = Reshape (q, qshape)
    k4 = Reshape (k, kvshape)
    qh = Transpose <perm = [0, 2, 1, 3]> (q4)
    kh = Transpose <perm = [0, 2, 1, 3]> (k4)
    present_key = Concat <axis = 2> (past_key, kh)
    k5 = Unsqueeze (present_key, two)
    batch = Shape <start = 0, end = 1> (x)
    past = Shape <start = 2, end = 3> (past_key)
    seq = Shape <start = 1, end = 2> (x)
    total = Add (past, seq)
    target = Concat <axis = 0> (batch, kv, rep, total, dim)
    ke = Expand (k5, target)
    merged_target = Concat <axis = 0> (batch, heads, total, dim)
    kq = Reshape (ke, merged_target)
    kt = Transpose <perm = [0, 1, 3, 2]> (kq)
    s = MatMul (qh, kt)
    p = Softmax <axis = -1> (s)
    o = MatMul (p, kq)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    om = Reshape (ot, merged)
    y = MatMul (om, wo)
}}"""


def test_gqa_expand_with_a_summed_cache_length_prunes_kv_heads(tmp_path) -> None:
    from spa.model_io import load_proto
    from spa.workflows.prune import prune_model

    constants = {
        "qshape": np.array([0, 0, 4, 2]),
        "kvshape": np.array([0, 0, 2, 2]),
        "two": np.array([2]),
        "kv": np.array([2]),
        "rep": np.array([2]),
        "dim": np.array([2]),
        "heads": np.array([4]),
        "merged": np.array([0, 0, 8]),
    }
    weights = {"wq": (8, 8), "wk": (8, 4), "wo": (8, 8)}
    proto = model_from_text(GQA_CACHE_SUM, weights, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "wk", 1)
    assert group is group_with(analysis, "wq", 1) is group_with(analysis, "past_key", 1)
    assert group.prunable and group.size == 2  # KV heads
    source = tmp_path / "gqa.onnx"
    onnx.save(proto, str(source))
    for seed in range(2):
        result = prune_model(
            source,
            tmp_path / f"small{seed}.onnx",
            ratio=0.5,
            criterion="random",
            seed=seed,
            verify=True,
            dims={"N": 2, "S": 3, "P": 4},
        )
        assert result.verification is not None and result.verification.passed
        graph = load_proto(result.output).graph
        past = next(v for v in graph.input if v.name == "past_key")
        assert past.type.tensor_type.shape.dim[1].dim_value == 1  # one KV head kept
        # the rebuilt Expand target still reads the total length at run time
        assert result.statistics["shape_targets_rewritten"] >= 1
