"""Table-driven tests for fused attention and contrib rules: com.microsoft
MultiHeadAttention, GroupQueryAttention, RotaryEmbedding, FastGelu,
SkipSimplifiedLayerNormalization, MatMulNBits; opset-23 Attention and
RotaryEmbedding. Each prunes a random 50% plan, checks that the counting
attributes follow (num_heads, kv_num_heads, q_num_heads, N) and that outputs
match the masked original in ONNX Runtime (relative error <= 1e-5)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from spa.passes.prune import apply_plan
from spa.pruning.plan import make_plan
from tests.analysis_helpers import analysis_of, group_with, mask_equivalence, model_from_text

MS = '<ir_version: 10, opset_import: ["" : 21, "com.microsoft" : 1]>'
OPSET23 = '<ir_version: 11, opset_import: ["" : 23]>'

MHA = (
    f"""{MS}
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) {{
        q = MatMul (x, wq)
        k = MatMul (x, wk)
        v = MatMul (x, wv)
        o = com.microsoft.MultiHeadAttention <num_heads = 4> (q, k, v, bias)
        y = MatMul (o, wo)
    }}""",
    {"wq": (8, 8), "wk": (8, 8), "wv": (8, 8), "bias": (24,), "wo": (8, 8)},
    {},
)

GQA = (
    f"""{MS}
    g (float[2, 5, 8] x) => (float[2, 5, 8] y) {{
        q = MatMul (x, wq)
        k = MatMul (x, wk)
        v = MatMul (x, wv)
        o, pk, pv = com.microsoft.GroupQueryAttention <num_heads = 4, kv_num_heads = 2>
            (q, k, v, "", "", seqlens, total)
        y = MatMul (o, wo)
    }}""",
    {"wq": (8, 32), "wk": (8, 16), "wv": (8, 16), "wo": (32, 8)},  # head_dim 8 (ORT needs it)
    {"seqlens": np.array([4, 4], dtype=np.int32), "total": np.array(5, dtype=np.int32)},
)

ROTARY_CONTRIB = (
    f"""{MS}
    g (float[2, 5, 8] x) => (float[2, 5, 8] y) {{
        q = MatMul (x, wq)
        r = com.microsoft.RotaryEmbedding <num_heads = 4> (q, positions, cos, sin)
        y = MatMul (r, wo)
    }}""",
    {"wq": (8, 16), "cos": (5, 2), "sin": (5, 2), "wo": (16, 8)},
    {"positions": np.tile(np.arange(5, dtype=np.int64), (2, 1))},
)

FAST_GELU = (
    f"""{MS}
    g (float[N, 4] x) => (float[N, 3] y) {{
        a = MatMul (x, w1)
        f = com.microsoft.FastGelu (a, b1)
        y = MatMul (f, w2)
    }}""",
    {"w1": (4, 6), "b1": (6,), "w2": (6, 3)},
    {},
)

SKIP_SIMPLIFIED_NORM = (  # hidden normalised (frozen); the MLP after it is pruned
    f"""{MS}
    g (float[N, 5, 8] x, float[N, 5, 8] skip) => (float[N, 5, 8] y) {{
        h = com.microsoft.SkipSimplifiedLayerNormalization <epsilon = 0.00001> (x, skip, gamma)
        a = MatMul (h, w1)
        r = Relu (a)
        y = MatMul (r, w2)
    }}""",
    {"gamma": (8,), "w1": (8, 12), "w2": (12, 8)},
    {},
)

_NBITS_RNG = np.random.default_rng(7)
MATMUL_NBITS = (  # K=32, block 16 -> 2 blocks of 8 bytes per column; N=6
    f"""{MS}
    g (float[N, 4] x) => (float[N, 3] y) {{
        h = MatMul (x, w0)
        a = com.microsoft.MatMulNBits <K = 32, N = 6, bits = 4, block_size = 16> (h, wq, var_s, zp)
        r = Relu (a)
        y = MatMul (r, w2)
    }}""",
    {"w0": (4, 32), "var_s": (12,), "w2": (6, 3)},
    {
        "wq": _NBITS_RNG.integers(0, 256, (6, 2, 8)).astype(np.uint8),
        "zp": _NBITS_RNG.integers(0, 256, (6,)).astype(np.uint8),
    },
)

ATTENTION_23 = (
    f"""{OPSET23}
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) {{
        q = MatMul (x, wq)
        k = MatMul (x, wk)
        v = MatMul (x, wv)
        o = Attention <q_num_heads = 4, kv_num_heads = 2> (q, k, v)
        y = MatMul (o, wo)
    }}""",
    {"wq": (8, 16), "wk": (8, 8), "wv": (8, 8), "wo": (16, 8)},
    {},
)

ATTENTION_23_4D = (
    f"""{OPSET23}
    g (float[N, 5, 8] x) => (float[N, 5, 3] y) {{
        q = MatMul (x, wq)
        k = MatMul (x, wk)
        v = MatMul (x, wv)
        q4 = Reshape (q, qshape)
        k4 = Reshape (k, kshape)
        v4 = Reshape (v, vshape)
        qh = Transpose <perm = [0, 2, 1, 3]> (q4)
        kh = Transpose <perm = [0, 2, 1, 3]> (k4)
        vh = Transpose <perm = [0, 2, 1, 3]> (v4)
        o = Attention <is_causal = 1> (qh, kh, vh)
        ot = Transpose <perm = [0, 2, 1, 3]> (o)
        om = Reshape (ot, merged)
        y = MatMul (om, wo)
    }}""",
    {"wq": (8, 12), "wk": (8, 6), "wv": (8, 4), "wo": (8, 3)},
    {
        "qshape": np.array([0, 5, 4, 3]),
        "kshape": np.array([0, 5, 2, 3]),
        "vshape": np.array([0, 5, 2, 2]),
        "merged": np.array([0, 5, 8]),
    },
)

ROTARY_23 = (
    f"""{OPSET23}
    g (float[N, 5, 8] x) => (float[N, 5, 8] y) {{
        q = MatMul (x, wq)
        r = RotaryEmbedding <num_heads = 4> (q, cos, sin, positions)
        y = MatMul (r, wo)
    }}""",
    {"wq": (8, 16), "cos": (5, 2), "sin": (5, 2), "wo": (16, 8)},
    {"positions": np.tile(np.arange(5, dtype=np.int64), (2, 1))},
)

#: case -> (model, a member of the pruned group, its size, {attribute: size after 50%})
CASES = {
    "multi-head-attention": (MHA, ("wq", 1), 4, {"num_heads": 2}),
    "group-query-attention": (GQA, ("wk", 1), 2, {"num_heads": 2, "kv_num_heads": 1}),
    "rotary-contrib": (ROTARY_CONTRIB, ("wq", 1), 4, {"num_heads": 2}),
    "fast-gelu": (FAST_GELU, ("b1", 0), 6, {}),
    "skip-simplified-layer-norm": (SKIP_SIMPLIFIED_NORM, ("w1", 1), 12, {}),
    "matmul-nbits": (MATMUL_NBITS, ("w2", 0), 6, {"N": 3}),
    "attention-23": (ATTENTION_23, ("wk", 1), 2, {"q_num_heads": 2, "kv_num_heads": 1}),
    "attention-23-4d": (ATTENTION_23_4D, ("wv", 1), 2, {}),
    "rotary-23": (ROTARY_23, ("wq", 1), 4, {"num_heads": 2}),
}


def _proto(case) -> onnx.ModelProto:
    text, weights, constants = case
    return model_from_text(text, weights, constants=constants)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_group_and_attributes(case) -> None:
    model_case, (value, axis), size, attributes = case
    model, analysis = analysis_of(_proto(model_case))
    group = group_with(analysis, value, axis)
    assert group.prunable, group.frozen_reasons
    assert group.size == size
    plan = make_plan(model, analysis, ratio=0.5, criterion="random", seed=0)
    apply_plan(model, analysis, plan)
    found = {
        key: attr.value for node in model.graph for key, attr in node.attributes.items()
    }
    assert {key: found[key] for key in attributes} == attributes


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("seed", [0, 1])
def test_mask_equivalence(case, seed: int) -> None:
    _, plan, error = mask_equivalence(_proto(case[0]), ratio=0.5, seed=seed, dims={"N": 2})
    assert plan.kept
    assert error <= 1e-5


def test_gqa_keeps_query_heads_per_kv_head() -> None:
    _, analysis = analysis_of(_proto(GQA))
    group = group_with(analysis, "wk", 1)
    by_space = {member.space: member for member in group.members}
    # KV head 1 owns query heads 2 and 3 (columns 16..31 of wq, head_dim 8)
    assert by_space[("wq", 1)].index_map.forward(np.array([1])).tolist() == list(range(16, 32))
    assert by_space[("wk", 1)].index_map.forward(np.array([1])).tolist() == list(range(8, 16))


def test_rotary_never_splits_head_dim() -> None:
    _, analysis = analysis_of(_proto(ROTARY_CONTRIB))
    group = group_with(analysis, "wq", 1)
    by_space = {member.space: member for member in group.members}
    assert by_space[("wq", 1)].index_map.forward(np.array([2])).tolist() == [8, 9, 10, 11]


def test_rotary_without_head_count_is_a_barrier_with_reason() -> None:
    text, weights, constants = ROTARY_CONTRIB
    text = text.replace("<num_heads = 4>", "<num_heads = 0, rotary_embedding_dim = 2>")
    _, analysis = analysis_of(model_from_text(text, weights, constants=constants))
    reasons = group_with(analysis, "wq", 1).frozen_reasons
    assert any("has no head count that divides its hidden size" in r for r in reasons), reasons


def test_skip_norm_and_nbits_freeze_with_reasons() -> None:
    _, analysis = analysis_of(_proto(SKIP_SIMPLIFIED_NORM))
    reasons = group_with(analysis, "w1", 0).frozen_reasons
    assert any("SkipSimplifiedLayerNormalization" in r and "(inexact)" in r for r in reasons)
    _, analysis = analysis_of(_proto(MATMUL_NBITS))
    reasons = group_with(analysis, "w0", 1).frozen_reasons
    assert any("MatMulNBits" in r and "packs K in blocks of 16" in r for r in reasons)
