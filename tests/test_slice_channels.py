"""Hidden-size pruning without rotation (``rotate-slice`` with ``rotation="none"``),
the baseline beside slicing, checked against its own reference.

Dropping hidden channels changes every norm's statistic: it averages over
``D'`` channels instead of ``D``. The pass corrects it as slicing does (readers
``* sqrt(D / D')``, eps ``* D / D'``), which makes each norm compute
``x' / sqrt(||x'||^2 / D + eps)``: exactly what the unpruned (invariant) model
computes when the dropped channels are zero in every writer. That masked model,
made here by zeroing the writers' columns at full width, is the reference; for
LayerNorm the mean is handled by centring the writers first (exact), so the
reference is the centred model masked.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from spa.analysis.residual import find_residual_stream
from spa.pass_manager import run_passes
from spa.passes.slice import RotateSlicePass, RotationInvariantPass, channel_selection
from spa.passes.slice_rewrite import rotate
from spa.verify.runner import run_model
from spa.workflows.run import feeds_calibrator
from tests.test_slice import HIDDEN, _feeds, _ln_model, _rms_model


def _outputs(model: ir.Model, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_model(ir.serde.serialize_model(model).SerializeToString(), feed)


@pytest.mark.parametrize("build", [_rms_model, _ln_model], ids=["rmsnorm", "layernorm"])
def test_pruned_hidden_channels_match_the_masked_reference(build) -> None:
    proto = build(seed=7)
    feeds = _feeds(proto, 6, seed=50)
    pruned = ir.serde.deserialize_model(proto)
    records = run_passes(
        pruned, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, rotation="none", round_to=4)],
        calibrator=feeds_calibrator(feeds[2:]),
    )  # fmt: skip
    assert records[1].statistics["hidden_after"] == 12
    # the reference: the invariant model at full width, dropped channels zeroed in every writer
    reference = ir.serde.deserialize_model(proto)
    run_passes(reference, [RotationInvariantPass()])
    stream = find_residual_stream(reference)
    energies = records[1].details["eigenvalues"][0]  # per-channel energies
    assert energies == sorted(energies, reverse=True)
    kept = set(records[1].details["channel_order"][0][:12])
    mask = np.diag([1.0 if c in kept else 0.0 for c in range(HIDDEN)])
    rotate(reference, stream, [mask])
    for feed in feeds[:2]:
        expected, got = _outputs(reference, feed), _outputs(pruned, feed)
        for name, array in expected.items():
            assert np.abs(got[name] - array).max() <= 1e-5 * np.abs(array).max() + 1e-6


def test_channel_selection_orders_by_trace_normalised_energy() -> None:
    first = np.diag([1.0, 4.0, 2.0, 3.0])
    second = np.diag([10.0, 0.0, 30.0, 0.0])  # trace 40: weighs the same as the first (10)
    basis, energies = channel_selection([first, second])
    assert np.argmax(basis, axis=0).tolist() == [2, 1, 0, 3]
    np.testing.assert_allclose(energies, [0.95, 0.4, 0.35, 0.3])
