"""Architectures the zoo found the analyzer missing (issue 15, "hidden architectures").

Each case is the smallest graph that reproduced the miss, written in ONNX text:
GroupNorm(1, C) exported as Reshape -> InstanceNormalization -> Reshape; a
Resize whose constant ``sizes`` lists the channel count (an attention gate
pooled and upsampled back before a Mul, a bilinear segmentation head);
GridSample (RAFT); a state initialised by an Expand of a scalar (Mamba); a
spatial-gating unit (gMLP). models/README.md gives the zoo model of each.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.analysis_helpers import analysis_of, group_with, mask_equivalence, model_from_text

# GroupNorm(G, 32) as torch exports it: fold the channels into G groups, normalise
# each group over everything it holds, unfold, then the per-channel affine.
_GROUP_NORM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w1)
    r = Reshape (a, fold)
    n = InstanceNormalization <epsilon = 0.00001> (r, ones, zeros)
    u = Reshape (n, unfold)
    s = Mul (u, gamma)
    b = Add (s, beta)
    y = Conv (b, w2)
}
"""


def _group_norm(groups: int):
    return model_from_text(
        _GROUP_NORM,
        {"w1": (32, 8, 3, 3), "gamma": (32, 1, 1), "beta": (32, 1, 1), "w2": (8, 32, 1, 1)},
        constants={
            "fold": np.array([1, groups, -1], np.int64),
            "unfold": np.array([1, 32, 6, 6], np.int64),
            "ones": np.ones(groups, np.float32),
            "zeros": np.zeros(groups, np.float32),
        },
    )


def test_group_norm_with_one_group_freezes_its_channels_with_reason() -> None:
    _, analysis = analysis_of(_group_norm(1))
    group = group_with(analysis, "a", 1)
    assert group.frozen
    assert any(r.startswith("InstanceNormalization") and "normalises over axis 2" in r
               for r in group.frozen_reasons), group.frozen_reasons


def test_group_norm_with_one_group_passes_mask_equivalence() -> None:
    _, _, error = mask_equivalence(_group_norm(1))
    assert error <= 1e-5


# GhostNet-v2's DFC attention: the gate is pooled, convolved, upsampled to the
# branch's size by a Resize with constant sizes, then multiplies the branch.
_GATE = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w1)
    p = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (a)
    c = Conv (p, wg)
    s = Sigmoid (c)
    r = Resize <mode = "MODE"> (s, , , sizes)
    m = Mul (a, r)
    y = Conv (m, w2)
}
"""


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_sizes_listing_channels_are_rewritten(mode: str) -> None:
    proto = model_from_text(
        _GATE.replace("MODE", mode),
        {"w1": (16, 4, 3, 3), "wg": (16, 16, 1, 1), "w2": (4, 16, 1, 1)},
        constants={"sizes": np.array([1, 16, 8, 8], np.int64)},
    )
    analysis, plan, error = mask_equivalence(proto)  # loads the pruned model in ORT
    group = group_with(analysis, "r", 1)
    assert not group.frozen and group_with(analysis, "a", 1) is group
    assert 0 < len(plan.kept[group.id]) < 16
    assert error <= 1e-5


def test_resize_axes_listing_the_channel_axis_is_a_barrier() -> None:
    text = _GATE.replace("MODE", "nearest").replace(
        '<mode = "nearest">', '<mode = "nearest", axes = [1, 2, 3]>')
    proto = model_from_text(
        text,
        {"w1": (16, 4, 3, 3), "wg": (16, 16, 1, 1), "w2": (4, 16, 1, 1)},
        constants={"sizes": np.array([16, 8, 8], np.int64)},
    )
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "r", 1)
    assert any("lists axis 1 in its axes attribute" in r for r in group.frozen_reasons)
    _, _, error = mask_equivalence(proto)
    assert error <= 1e-5


# RAFT samples feature maps at flow-displaced points: channels pass through.
_GRID_SAMPLE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 8, 8] x, float[1, 6, 6, 2] grid) => (float[1, 4, 6, 6] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w1)
    s = GridSample <align_corners = 0> (a, grid)
    y = Conv (s, w2)
}
"""


def test_grid_sample_passes_channels_through() -> None:
    proto = model_from_text(_GRID_SAMPLE, {"w1": (16, 4, 3, 3), "w2": (4, 16, 1, 1)})
    analysis, plan, error = mask_equivalence(proto)
    group = group_with(analysis, "s", 1)
    assert group is group_with(analysis, "a", 1) and not group.frozen
    assert 0 < len(plan.kept[group.id]) < 16
    assert error <= 1e-5


# Mamba's selective scan starts its state from zeros(batch, channels, state):
# an Expand of a scalar to a run-time target whose channel entry is a literal.
_ZERO_STATE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w1)
    sh = Shape (x)
    b = Gather <axis = 0> (sh, first)
    t = Concat <axis = 0> (b, rest)
    z = Expand (zero, t)
    s = Add (a, z)
    y = Conv (s, w2)
}
"""


def test_expand_of_a_fill_to_a_readable_target_is_sliced_with_its_group() -> None:
    proto = model_from_text(
        _ZERO_STATE,
        {"w1": (16, 4, 3, 3), "w2": (4, 16, 1, 1)},
        constants={
            "first": np.array([0], np.int64),
            "rest": np.array([16, 8, 8], np.int64),
            "zero": np.array(0.5, np.float32),
        },
    )
    analysis, plan, error = mask_equivalence(proto, dims={"N": 2})
    group = group_with(analysis, "z", 1)
    assert group is group_with(analysis, "a", 1) and not group.frozen
    assert 0 < len(plan.kept[group.id]) < 16
    assert error <= 1e-5


# gMLP's spatial-gating unit, fed by the graph input: split the hidden channels in
# half, mix one half over the tokens, multiply the halves. gMLP normalises the gate
# half over its channels first; NORM is replaced to build both variants.
_SPATIAL_GATING = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 16, 8] x) => (float[1, 16, 8] y) {
    h = MatMul (x, w1)
    u, v = Split <axis = -1, num_outputs = 2> (h)
    NORM
    t = Transpose <perm = [0, 2, 1]> (n)
    p = MatMul (t, ws)
    q = Transpose <perm = [0, 2, 1]> (p)
    m = Mul (u, q)
    y = MatMul (m, w2)
}
"""


def _spatial_gating(norm: bool):
    line = "n = LayerNormalization <axis = -1> (v, lnw, lnb)" if norm else "n = Identity (v)"
    weights = {"w1": (8, 32), "ws": (16, 16), "w2": (16, 8)}
    if norm:
        weights.update({"lnw": (16,), "lnb": (16,)})
    return model_from_text(_SPATIAL_GATING.replace("NORM", line), weights)


def test_spatial_gating_halves_are_pruned_in_pairs() -> None:
    analysis, plan, error = mask_equivalence(_spatial_gating(norm=False))
    group = group_with(analysis, "h", 2)
    assert group is group_with(analysis, "u", 2) is group_with(analysis, "q", 2)
    assert not group.frozen and 0 < len(plan.kept[group.id]) < 32
    assert error <= 1e-5


def test_spatial_gating_with_a_normalised_gate_is_frozen_with_reason() -> None:
    _, analysis = analysis_of(_spatial_gating(norm=True))
    group = group_with(analysis, "h", 2)
    assert any(r.startswith("LayerNormalization") and "normalises over axis 2" in r
               for r in group.frozen_reasons), group.frozen_reasons


def test_expand_entry_copied_from_another_shape_stays_frozen() -> None:
    # The fill's channel count is read from the input x (4 channels, a graph input),
    # so slicing the fill with a's group would not change the target: frozen.
    text = _ZERO_STATE.replace("(float[N, 4, 8, 8] x)", "(float[N, 16, 8, 8] x)").replace(
        "t = Concat <axis = 0> (b, rest)", "t = Identity (sh)")
    proto = model_from_text(text, {"w1": (16, 16, 3, 3), "w2": (4, 16, 1, 1)},
                            constants={"first": np.array([0], np.int64),
                                       "rest": np.array([16, 8, 8], np.int64),
                                       "zero": np.array(0.5, np.float32)})
    _, analysis = analysis_of(proto)
    group = group_with(analysis, "z", 1)
    assert group is group_with(analysis, "a", 1) and group.frozen
    assert any("Expand" in r and "axis 1" in r for r in group.frozen_reasons), group.frozen_reasons


# Mamba's in_proj: one projection split into a branch and its gate, multiplied
# channel by channel. Root channel i and i + 16 reach the same channel of m.
_GATED_PROJECTION = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, 16, 8] x) => (float[1, 16, 8] y) {
    h = MatMul (x, w1)
    u, v = Split <axis = -1, num_outputs = 2> (h)
    s = Sigmoid (v)
    m = Mul (u, s)
    y = MatMul (m, w2)
}
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_removes_both_halves_of_a_gated_channel_together(seed: int) -> None:
    proto = model_from_text(_GATED_PROJECTION, {"w1": (8, 32), "w2": (16, 8)}, seed=seed)
    analysis, plan, error = mask_equivalence(proto, ratio=0.5, seed=seed)
    group = group_with(analysis, "h", 2)
    assert group is group_with(analysis, "m", 2) and group.size == 32
    kept = set(plan.kept[group.id])
    assert len(kept) == 16
    assert all((i in kept) == (i + 16 in kept) for i in range(16))  # 8 of m's 16 channels go
    assert error <= 1e-5
