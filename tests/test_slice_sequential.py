"""Sequential slicing: each norm's basis measured on the already-sliced model.

The measurement runs at full width: a model sliced with per-norm bases
``Q_g'`` (``D x D'``) computes the same function as the unsliced model whose
groups are rotated by the projections ``P_g = Q_g' Q_g'^T``. That identity is
what makes the sequential rounds measure the sliced model's signals, so it is
tested first, on inline models and a zoo decoder with a parallel residual.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from spa import zoo
from spa.calibration import CalibrationRequest, CalibrationResult
from spa.errors import UserError
from spa.pass_manager import run_passes
from spa.passes.slice import (
    RotateSlicePass,
    RotationInvariantPass,
    kept_channels,
    random_rotation,
    residual_stream_or_error,
)
from spa.passes.slice_rewrite import norm_groups, rotate
from spa.verify.runner import run_model
from spa.workflows.run import feeds_calibrator
from spa.workflows.slice import slice_model
from tests.test_slice import HIDDEN, TOLERANCE, _feeds, _ln_model, _rms_model, _zoo_feeds


def _invariant(proto: onnx.ModelProto) -> ir.Model:
    model = ir.serde.deserialize_model(proto)
    run_passes(model, [RotationInvariantPass()])
    return model


def _outputs(model: ir.Model, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_model(ir.serde.serialize_model(model).SerializeToString(), feed)


@pytest.mark.parametrize(
    ("name", "kept_share"), [("rmsnorm", 0.75), ("layernorm", 0.5), ("hf-phi", 0.75)]
)
def test_sliced_model_equals_its_full_width_projection(name: str, kept_share: float) -> None:
    proto = {"rmsnorm": _rms_model, "layernorm": _ln_model}.get(name, lambda: zoo.load(name))()
    feed = _zoo_feeds(name, proto, 0) if name.startswith("hf-") else _feeds(proto, 1)[0]
    sliced, projected = _invariant(proto), _invariant(proto)
    stream = residual_stream_or_error(sliced)
    groups = norm_groups(stream)
    hidden = stream.hidden
    kept = int(hidden * kept_share)
    bases = [random_rotation(hidden, seed=g)[:, :kept] for g in range(max(groups) + 1)]
    rotate(sliced, stream, bases, groups)
    rotate(projected, residual_stream_or_error(projected), [q @ q.T for q in bases], groups)
    expected, got = _outputs(sliced, feed), _outputs(projected, feed)
    for output, array in expected.items():
        error = np.abs(array - got[output]).max() / np.abs(array).max()
        assert error < TOLERANCE, f"{output}: {error}"


def test_sequential_measures_one_group_per_round_on_the_sliced_model() -> None:
    proto = _rms_model(seed=3)
    feeds = _feeds(proto, 6, seed=50)
    rounds: list[tuple[tuple[str, ...], bool]] = []
    measure = feeds_calibrator(feeds)

    def calibrator(model: ir.Model, request: CalibrationRequest) -> CalibrationResult:
        rounds.append((request.hessians, request.model is not None))
        return measure(model, request)

    results = {}
    for sequential in (False, True):
        model = ir.serde.deserialize_model(proto)
        rounds.clear()
        slicer = RotateSlicePass(ratio=0.25, round_to=4, bases="per-norm", sequential=sequential)
        records = run_passes(model, [RotationInvariantPass(), slicer], calibrator=calibrator)
        assert records[1].statistics["hidden_after"] == kept_channels(HIDDEN, 0.25, 4)
        results[sequential] = (list(rounds), records[1].details["eigenvalues"], model)
    plain_rounds, plain_values, _ = results[False]
    seq_rounds, seq_values, seq_model = results[True]
    assert len(plain_rounds) == 1 and len(plain_rounds[0][0]) == 2  # both norms at once
    # one round per norm: the first on the model itself, the second on a variant
    assert [(len(names), variant) for names, variant in seq_rounds] == [(1, False), (1, True)]
    np.testing.assert_allclose(seq_values[0], plain_values[0], rtol=1e-9)
    # the final norm sees the stream after the first group's slice: its spectrum changed
    assert not np.allclose(seq_values[1], plain_values[1], rtol=1e-3)
    out = _outputs(seq_model, feeds[0])["logits"]
    assert out.shape[-1] == 24 and np.isfinite(out).all()


def test_sequential_needs_per_norm_bases() -> None:
    with pytest.raises(UserError, match="--bases per-norm"):
        RotateSlicePass(ratio=0.25, sequential=True)
    with pytest.raises(UserError, match="--bases per-norm"):
        RotateSlicePass(ratio=0.25, bases="per-norm", rotation="random", sequential=True)


def test_sequential_rounds_read_external_weights(tmp_path: Path) -> None:
    """The rounds measure copies of the model: weights kept in an external-data file
    must still be read from the input's folder (the copy lost it: FileNotFoundError)."""
    proto = _rms_model(seed=5)
    folder = tmp_path / "in"
    folder.mkdir()
    onnx.save(proto, str(folder / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.bin", size_threshold=1024)  # fmt: skip
    result = slice_model(
        folder / "m.onnx", tmp_path / "s.onnx", ratio=0.25, round_to=4, bases="per-norm",
        sequential=True, calibration=_feeds(proto, 6, seed=60), exactness=False,
    )  # fmt: skip
    assert (result.hidden_before, result.hidden_after) == (HIDDEN, 12)
