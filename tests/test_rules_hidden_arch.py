"""Architectures the zoo found the analyzer missing (issue 15, "hidden architectures").

Each case is the smallest graph that reproduced the miss, written in ONNX text:
GroupNorm(1, C) exported as Reshape -> InstanceNormalization -> Reshape.
"""

from __future__ import annotations

import numpy as np

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
