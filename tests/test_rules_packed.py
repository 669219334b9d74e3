"""Packed projections taken apart by Slice: ``torch.chunk`` with bounds computed
from the axis's own size (TorchScript's export of a SwiGLU ``gate, up =
x.chunk(2, -1)``, Phi-3's MLP) and constant windows inside the axis (the ``k`` of
Phi-3's ``qkv[..., q:q + kv]``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.analysis_helpers import analysis_of, group_with, mask_equivalence, model_from_text

HEADER = '<ir_version: 9, opset_import: ["" : 17]>'

# TorchScript's chunk(2, dim=-1): ends ((dim + 1) / 2) * (i + 1), starts the previous end
CHUNKED_SWIGLU = f"""{HEADER}
g (float[N, S, 8] x) => (float[N, S, 8] y) {{
    a = MatMul (x, w_up)
    s = Shape (a)
    d = Gather <axis = 0> (s, last)
    d1 = Add (d, one)
    half = Div (d1, two)
    e0 = Mul (half, one)
    e1 = Mul (half, two)
    gate = Slice (a, zero, e0, last)
    up = Slice (a, e0, e1, last)
    sg = Sigmoid (gate)
    act = Mul (gate, sg)
    h = Mul (act, up)
    y = MatMul (h, w_down)
}}"""
INTS = {"zero": np.array([0]), "one": np.array([1]), "two": np.array([2]), "three": np.array([3]),
        "last": np.array([-1])}  # fmt: skip


def test_a_chunk_with_computed_bounds_prunes_both_halves_alike() -> None:
    proto = model_from_text(CHUNKED_SWIGLU, {"w_up": (8, 32), "w_down": (16, 8)}, constants=INTS)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w_up", 1)
    assert group.prunable and group is group_with(analysis, "w_down", 0)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2, "S": 3})
        assert plan.kept and error <= 1e-5


def test_computed_bounds_that_are_no_chunk_stay_frozen() -> None:
    # the end is dim - 3: not a share of the axis, so no channel map follows it
    text = CHUNKED_SWIGLU.replace("e0 = Mul (half, one)", "e0 = Sub (d, three)").replace(
        "up = Slice (a, e0, e1, last)", "up = Slice (a, zero, e0, last)"
    ).replace("h = Mul (act, up)", "h = Add (act, up)")
    proto = model_from_text(text, {"w_up": (8, 32), "w_down": (29, 8)}, constants=INTS)
    _, analysis = analysis_of(proto)
    assert not group_with(analysis, "w_up", 1).prunable


PACKED_QKV = f"""{HEADER}
g (float[N, S, 8] x) => (float[N, S, 8] y) {{
    qkv = MatMul (x, w_qkv)
    q = Slice (qkv, s0, e0, last)
    k = Slice (qkv, s1, e1, last)
    v = Slice (qkv, s2, e2, last)
    yq = MatMul (q, wq)
    rk = Relu (k)
    yk = MatMul (rk, wk)
    yv = MatMul (v, wv)
    t = Add (yq, yk)
    y = Add (t, yv)
}}"""


@pytest.mark.parametrize(
    "bounds",
    [((0, 6), (6, 9), (9, 12)), ((0, 6), (-6, -3), (-3, 2**62)), ((0, -6), (6, -3), (9, 12))],
    ids=["positive", "negative-from-the-end", "negative-ends"],
)
def test_a_window_inside_a_packed_axis_prunes(bounds: tuple[tuple[int, int], ...]) -> None:
    constants = dict(INTS)
    for i, (start, end) in enumerate(bounds):
        constants[f"s{i}"], constants[f"e{i}"] = np.array([start]), np.array([end])
    weights = {"w_qkv": (8, 12), "wq": (6, 8), "wk": (3, 8), "wv": (3, 8)}
    proto = model_from_text(PACKED_QKV, weights, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w_qkv", 1)
    assert group.prunable and group is group_with(analysis, "wk", 0)
    for seed in range(4):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2, "S": 3})
        assert plan.kept and error <= 1e-5


# A weight standardised in the graph (BiT's and NFNet's StdConv): w1 from w_raw and eps
STANDARDISE = """
    mean = ReduceMean <axes = [1, 2, 3], keepdims = 1> (w_raw)
    centred = Sub (w_raw, mean)
    square = Mul (centred, centred)
    var = ReduceMean <axes = [1, 2, 3], keepdims = 1> (square)
    shifted = Add (var, eps)
    std = Sqrt (shifted)
    w1 = Div (centred, std)"""

# the reductions run over constants only, so the chain folds to a plain weight before
# the analysis
STANDARDISED_CONV = f"""{HEADER}
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{{STANDARDISE}
    c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r = Relu (c1)
    y = Conv (r, w2)
}}"""


def test_a_weight_standardised_in_the_graph_is_folded_and_prunes() -> None:
    proto = model_from_text(STANDARDISED_CONV, {"w_raw": (6, 3, 3, 3), "b1": (6,), "w2": (4, 6, 1, 1)},
                            constants={"eps": np.array([1e-5], dtype=np.float32)})  # fmt: skip
    model, analysis = analysis_of(proto)
    assert "ReduceMean" not in {node.op_type for node in model.graph}
    group = group_with(analysis, "w2", 1)
    assert group.prunable and group is group_with(analysis, "b1", 0)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5


# torch.export's StdConv: the weight viewed as [1, O, -1] (a layout op on the raw
# weight, which starts the chain), standardised, viewed back
VIEWED_STANDARDISED_CONV = f"""{HEADER}
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
    rows = Reshape (w_raw, to_rows)
    mean = ReduceMean <axes = [2], keepdims = 1> (rows)
    centred = Sub (rows, mean)
    w1 = Reshape (centred, to_conv)
    c1 = Conv <pads = [1, 1, 1, 1]> (x, w1)
    r = Relu (c1)
    y = Conv (r, w2)
}}"""


def test_a_weight_viewed_before_its_standardisation_is_folded_and_prunes() -> None:
    constants = {"to_rows": np.array([1, 6, -1]), "to_conv": np.array([6, 3, 3, 3])}
    proto = model_from_text(VIEWED_STANDARDISED_CONV, {"w_raw": (6, 3, 3, 3), "w2": (4, 6, 1, 1)}, constants=constants)
    model, analysis = analysis_of(proto)
    assert not {"ReduceMean", "Reshape"} & {node.op_type for node in model.graph}
    assert group_with(analysis, "w2", 1).prunable
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5


def test_equal_gains_an_exporter_shared_do_not_tie_their_layers() -> None:
    # torch.export stores equal constants once: two GroupNorm-style gains of ones,
    # [C, 1, 1], read by two unrelated layers
    text = f"""{HEADER}
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
        c1 = Conv (x, w1)
        g1 = Mul (c1, gain)
        r1 = Relu (g1)
        c2 = Conv (r1, w2)
        g2 = Mul (c2, gain)
        r2 = Relu (g2)
        y = Conv (r2, w3)
    }}"""
    weights = {"w1": (8, 3, 1, 1), "w2": (8, 8, 1, 1), "w3": (4, 8, 1, 1)}
    proto = model_from_text(text, weights, constants={"gain": np.ones((8, 1, 1), np.float32)})
    _, analysis = analysis_of(proto)
    first, second = group_with(analysis, "w1", 0), group_with(analysis, "w2", 0)
    assert first.prunable and second.prunable and first is not second
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5


def test_a_shared_weight_behind_an_identity_is_not_copied() -> None:
    # TorchScript's alias of a tied weight (more than the 64 elements an alias copies
    # freely): no computation follows, so nothing folds
    text = f"""{HEADER}
    g (float[N, 16] x) => (float[N, 16] y) {{
        w_alias = Identity (w)
        h = MatMul (x, w)
        y = MatMul (h, w_alias)
    }}"""
    model, _ = analysis_of(model_from_text(text, {"w": (16, 16)}))
    assert "Identity" in {node.op_type for node in model.graph}


# GroupNorm(4, 8) as TorchScript exports it: the channels folded into 4 groups for an
# InstanceNormalization, then the input's shape restored
GROUP_NORM = f"""{HEADER}
g (float[N, 3, 6, 6] x) => (float[N, 5, 6, 6] y) {{
    c = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    grouped = Reshape (c, to_groups)
    normed = InstanceNormalization <epsilon = 1e-5> (grouped, ones, zeros)
    shape = Shape (c)
    back = Reshape (normed, shape)
    scaled = Mul (back, gamma)
    shifted = Add (scaled, beta)
    r = Relu (shifted)
    y = Conv (r, w2)
}}"""


@pytest.mark.parametrize("spatial", ["6, 6", "H, W"], ids=["static", "run-time"])
def test_group_norm_prunes_whole_groups(spatial: str) -> None:
    # run-time H, W: the grouped axis is [N, 4, 2*H*W], its product unknown
    weights = {"w1": (8, 3, 3, 3), "b1": (8,), "gamma": (8, 1, 1), "beta": (8, 1, 1), "w2": (5, 8, 1, 1)}
    constants = {"to_groups": np.array([0, 4, -1]), "ones": np.ones(4, np.float32),
                 "zeros": np.zeros(4, np.float32)}  # fmt: skip
    proto = model_from_text(GROUP_NORM.replace("6, 6", spatial), weights, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w1", 0)
    assert group.prunable and group.size == 4  # the groups, each two channels
    assert group is group_with(analysis, "w2", 1) is group_with(analysis, "gamma", 0)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2, "H": 5, "W": 7})
        assert plan.kept and error <= 1e-5


# fairseq-style attention (BLOOM; older exports of BART, Marian, Whisper): batch and heads
# merged into one run-time axis, x.view(bsz * heads, seq, dim), and the batch read back
# as merged // heads
MERGED_HEADS = f"""{HEADER}
g (float[B, S, 8] x) => (float[B, S, 8] y) {{
    shape = Shape (x)
    batch = Gather <axis = 0> (shape, zero)
    merged = Mul (batch, two)
    target = Concat <axis = 0> (merged, minus_one, four)
    q = MatMul (x, wq)
    k = MatMul (x, wk)
    v = MatMul (x, wv)
    q4 = Reshape (q, split)
    k4 = Reshape (k, split)
    v4 = Reshape (v, split)
    qt = Transpose <perm = [0, 2, 1, 3]> (q4)
    kt = Transpose <perm = [0, 2, 1, 3]> (k4)
    vt = Transpose <perm = [0, 2, 1, 3]> (v4)
    qm = Reshape (qt, target)
    km = Reshape (kt, target)
    vm = Reshape (vt, target)
    kmt = Transpose <perm = [0, 2, 1]> (km)
    scores = MatMul (qm, kmt)
    scaled = Mul (scores, half)
    probs = Softmax <axis = -1> (scaled)
    context = MatMul (probs, vm)
    context_shape = Shape (context)
    rows = Gather <axis = 0> (context_shape, zero)
    back_batch = Div (rows, two)
    back_target = Concat <axis = 0> (back_batch, two, minus_one, four)
    back = Reshape (context, back_target)
    bt = Transpose <perm = [0, 2, 1, 3]> (back)
    flat = Reshape (bt, join)
    y = MatMul (flat, wo)
}}"""


def test_heads_merged_with_a_run_time_batch_prune() -> None:
    constants = {**INTS, "minus_one": np.array([-1]), "four": np.array([4]), "split": np.array([0, 0, 2, 4]),
                 "join": np.array([0, 0, 8]), "half": np.array(0.5, np.float32)}  # fmt: skip
    weights = {"wq": (8, 8), "wk": (8, 8), "wv": (8, 8), "wo": (8, 8)}
    proto = model_from_text(MERGED_HEADS, weights, constants=constants)
    _, analysis = analysis_of(proto)
    heads = group_with(analysis, "qt", 1)
    assert heads.prunable and heads is group_with(analysis, "back", 1) is group_with(analysis, "vt", 1)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"B": 3, "S": 5})
        assert len(plan.kept.get(heads.id, [0, 1])) == 1 and error <= 1e-5  # one of the two heads


def test_scalar_arithmetic_on_constants_stays_in_the_graph() -> None:
    # DINOv2 computes its position-embedding scale from constants; a single number is
    # no weight (and ONNX's shape inference and the reference evaluator disagree on
    # its rank), so it is not folded
    text = f"""{HEADER}
    g (float[N, 4] x) => (float[N, 4] y) {{
        p = Pow (base, exponent)
        y = Mul (x, p)
    }}"""
    constants = {"base": np.array(2.0, np.float32), "exponent": np.array([0.5], np.float32)}
    model, _ = analysis_of(model_from_text(text, {}, constants=constants))
    assert "Pow" in {node.op_type for node in model.graph}


def test_group_norm_groups_of_two_channels_round_by_channels() -> None:
    # 32 groups of 2 channels: --round-to auto keeps multiples of 8 groups (16 channels);
    # counted as units, 25 % of 32 groups rounded up to a multiple of 16 kept all of them
    from spa.pruning.plan import make_plan

    weights = {"w1": (64, 3, 3, 3), "b1": (64,), "gamma": (64, 1, 1), "beta": (64, 1, 1), "w2": (5, 64, 1, 1)}
    constants = {"to_groups": np.array([0, 32, -1]), "ones": np.ones(32, np.float32),
                 "zeros": np.zeros(32, np.float32)}  # fmt: skip
    model, analysis = analysis_of(model_from_text(GROUP_NORM, weights, constants=constants))
    group = group_with(analysis, "w1", 0)
    plan = make_plan(model, analysis, ratio=0.25, criterion="l1", round_to=0)
    assert group.size == 32 and len(plan.kept[group.id]) == 24  # 48 of 64 channels


# torch.export writes a table lookup ``table[index]`` (a relative-position bias) as
# GatherND over the rows: the columns pass through
GATHER_ND = f"""{HEADER}
g (float[5, 8] x) => (float[3, 4] y) {{
    h = MatMul (x, w1)
    picked = GatherND (h, rows)
    r = Relu (picked)
    y = MatMul (r, w2)
}}"""


def test_gather_nd_passes_the_unindexed_axes() -> None:
    proto = model_from_text(GATHER_ND, {"w1": (8, 6), "w2": (6, 4)}, constants={"rows": np.array([[4], [0], [2]])})
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w1", 1)
    assert group.prunable and group is group_with(analysis, "w2", 0)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, int_ranges={"end": (2, 3)})
        assert plan.kept and error <= 1e-5


# torch.export bounds a sequence length by a table's size, min(2048, seq), and reads it
# back into the target that merges the heads (GPT-Neo)
MIN_BOUNDED_TARGET = f"""{HEADER}
g (float[B, S, 8] x) => (float[B, S, 4] y) {{
    shape = Shape (x)
    batch = Gather (shape, zero)
    seq = Gather (shape, one)
    bounded = Min (seq, limit)
    split = Concat <axis = 0> (batch, bounded, two, four)
    merged = Concat <axis = 0> (batch, bounded, eight)
    h = MatMul (x, w1)
    heads = Reshape (h, split)
    t = Transpose <perm = [0, 2, 1, 3]> (heads)
    a = Relu (t)
    back = Transpose <perm = [0, 2, 1, 3]> (a)
    joined = Reshape (back, merged)
    y = MatMul (joined, w2)
}}"""


def test_a_target_bounded_by_min_prunes_its_heads() -> None:
    constants = {name: np.array([value]) for name, value in
                 {"zero": 0, "one": 1, "limit": 2048, "two": 2, "four": 4, "eight": 8}.items()}  # fmt: skip
    proto = model_from_text(MIN_BOUNDED_TARGET, {"w1": (8, 8), "w2": (8, 4)}, constants=constants)
    _, analysis = analysis_of(proto)
    assert group_with(analysis, "w2", 0).prunable
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"B": 2, "S": 3})
        assert plan.kept and error <= 1e-5


# EfficientViT's cascaded group attention (TorchScript, static batch): a head reads
# x.chunk(4, dim=1), whose ends are computed (here a run-time input), so ONNX leaves
# every dim of the Slice unknown; its projection is viewed as (B, -1, H, W) with B,
# H and W read from x. ORT's symbolic inference, which spa asks only for models
# under 256 MB with weights in memory, named the Slice's batch afresh on the real
# export, not 1; without it the batch stayed unknown. Either way the view could not
# be told to keep the channels.
CASCADED_HEAD = f"""{HEADER}
g (float[1, 8, 4, 4] x, int64[1] end) => (float[1, 8, 4, 4] y) {{
    s = Shape (x)
    chunk = Slice (x, zero, end, one)
    qkv = Conv (chunk, w_qkv)
    b = Gather <axis = 0> (s, zero_scalar)
    h = Gather <axis = 0> (s, two_scalar)
    w = Gather <axis = 0> (s, three_scalar)
    bu = Unsqueeze (b, zero)
    hu = Unsqueeze (h, zero)
    wu = Unsqueeze (w, zero)
    target = Concat <axis = 0> (bu, minus_one, hu, wu)
    viewed = Reshape (qkv, target)
    r = Relu (viewed)
    y = Conv (r, w_out)
}}"""


def test_a_view_after_a_chunk_with_computed_bounds_keeps_its_channels(monkeypatch) -> None:
    import spa.analysis

    monkeypatch.setattr(spa.analysis, "_worth_symbolic", lambda model: False)  # a large model's path
    constants = {**INTS, "minus_one": np.array([-1]), "zero_scalar": np.array(0),
                 "two_scalar": np.array(2), "three_scalar": np.array(3)}  # fmt: skip
    proto = model_from_text(CASCADED_HEAD, {"w_qkv": (12, 2, 1, 1), "w_out": (8, 12, 1, 1)}, constants=constants)
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "w_qkv", 0)
    assert group.prunable and group is group_with(analysis, "w_out", 1)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, int_ranges={"end": (2, 3)})
        assert plan.kept and error <= 1e-5


# How TorchScript turns F.pad's (left, right, top, bottom) `given` into ONNX pads:
# zeros appended for the leading axes, pairs reversed and transposed
TORCH_PAD_ORDER = """
    both = Concat <axis = 0> (given, zeros)
    pairs = Reshape (both, rows)
    flipped = Slice (pairs, minus_one, past_start, zero, minus_one)
    swapped = Transpose <perm = [1, 0]> (flipped)
    flat = Reshape (swapped, minus_one)"""
PAD_CONSTANTS = {**INTS, "rows": np.array([-1, 2]), "minus_one": np.array([-1]),
                 "past_start": np.array([-(2**63) + 1])}  # fmt: skip

# TorchScript's F.pad(x, (0, 1, 0, 1)) (HGNetV2's stem): the pads computed from
# constants by ConstantOfShape, Concat, Reshape, a reversing Slice, Transpose and Cast
TORCHSCRIPT_PAD = f"""{HEADER}
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
    a = Conv <pads = [1, 1, 1, 1]> (x, w1)
    zeros = ConstantOfShape <value = int64[1] {{0}}> (four){TORCH_PAD_ORDER}
    pads = Cast <to = 7> (flat)
    p = Pad (a, pads)
    y = Conv <kernel_shape = [2, 2]> (p, w2)
}}"""


def test_pads_computed_from_constants_fold_and_the_channels_prune() -> None:
    constants = {**PAD_CONSTANTS, "four": np.array([4]), "given": np.array([0, 1, 0, 1])}
    proto = model_from_text(TORCHSCRIPT_PAD, {"w1": (16, 3, 3, 3), "w2": (4, 16, 2, 2)}, constants=constants)
    model, analysis = analysis_of(proto)
    assert not any(node.op_type in ("ConstantOfShape", "Cast") for node in model.graph)
    group = group_with(analysis, "w1", 0)
    assert group.prunable and group is group_with(analysis, "w2", 1)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        assert plan.kept and error <= 1e-5


# DaViT's stem (TorchScript) pads its input to a multiple of the stride: the pad
# computed from scalars, (4 - 10 % 4) % 4, and F.pad's zeros for the axes it leaves
# counted from the Shape of the pads given
SCALAR_PAD = f"""{HEADER}
g (float[N, 3, 10, 10] x) => (float[N, 4, 3, 3] y) {{
    left = Mod (size, stride)
    short = Sub (stride, left)
    pad = Mod (short, stride)
    end = Unsqueeze (pad, zero)
    given = Concat <axis = 0> (zero, end, zero, end)
    count = Shape (given)
    rest = Sub (eight, count)
    zeros = ConstantOfShape <value = int64[1] {{0}}> (rest){TORCH_PAD_ORDER}
    p = Pad (x, flat)
    a = Conv <strides = [4, 4], kernel_shape = [4, 4]> (p, w1)
    r = Relu (a)
    y = Conv (r, w2)
}}"""


def test_pads_from_scalar_arithmetic_fold_as_scalars() -> None:
    constants = {**PAD_CONSTANTS, "size": np.array(10), "stride": np.array(4), "eight": np.array([8])}
    proto = model_from_text(SCALAR_PAD, {"w1": (16, 3, 4, 4), "w2": (4, 16, 1, 1)}, constants=constants)
    model, analysis = analysis_of(proto)
    pads = next(node.inputs[1] for node in model.graph if node.op_type == "Pad")
    assert pads is not None and pads.const_value is not None
    assert pads.const_value.numpy().tolist() == [0, 0, 0, 0, 0, 0, 2, 2]  # the scalars stayed 0-d
    assert group_with(analysis, "w1", 0).prunable
    _, plan, error = mask_equivalence(proto, ratio=0.5, dims={"N": 2})
    assert plan.kept and error <= 1e-5


# FocalNet's modulation: one convolution writes the query, the context and one gate
# per focal level; each gate is a single channel that scales every context channel
FOCAL_GATES = f"""{HEADER}
g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {{
    f = Conv (x, wf, bf)
    q, ctx, gates = Split <axis = 1> (f, sizes)
    c1 = Conv <group = 8, pads = [1, 1, 1, 1]> (ctx, wd)
    a1 = Relu (c1)
    g0 = Slice (gates, zero, one, one)
    m0 = Mul (a1, g0)
    pooled = GlobalAveragePool (a1)
    g1 = Slice (gates, one, two, one)
    m1 = Mul (pooled, g1)
    both = Add (m0, m1)
    h = Conv (both, wh)
    mod = Mul (q, h)
    y = Conv (mod, wp)
}}"""


def test_one_channel_gates_split_from_a_layer_keep_their_channel() -> None:
    weights = {"wf": (18, 4, 1, 1), "bf": (18,), "wd": (8, 1, 3, 3), "wh": (8, 8, 1, 1), "wp": (4, 8, 1, 1)}
    proto = model_from_text(FOCAL_GATES, weights, constants={**INTS, "sizes": np.array([8, 8, 2])})
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "wf", 0)
    assert group.prunable and group is group_with(analysis, "g0", 1)
    for seed in range(3):
        _, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed, dims={"N": 2})
        kept = set(plan.kept[group.id])
        assert {16, 17} <= kept and len(kept) < 18 and error <= 1e-5  # both gates stay
