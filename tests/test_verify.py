"""Seeded feeds, tolerance policies and model-vs-model verification in ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from spa.errors import UserError
from spa.verify import (
    AllClose,
    CosineMaxAbs,
    Exact,
    input_specs,
    make_feeds,
    parse_shape_option,
    verify_models,
)
from spa.verify.tolerance import error_statistics
from tests.conftest import mlp_model

TOKEN_MODEL = """
<ir_version: 9, opset_import: ["" : 17]>
lm (int64[batch, seq] ids, bool[batch, seq] mask) => (float[batch, seq, 4] out) {
    out = Gather(table, ids)
}
"""


def token_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(TOKEN_MODEL)
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    model.graph.initializer.append(numpy_helper.from_array(table, "table"))
    return model


def test_feeds_are_seeded_and_respect_dims() -> None:
    specs = input_specs(mlp_model())
    first = make_feeds(specs, seed=3, dims={"N": 5})
    again = make_feeds(specs, seed=3, dims={"N": 5})
    other = make_feeds(specs, seed=4, dims={"N": 5})
    assert first["X"].shape == (5, 8) and first["X"].dtype == np.float32
    np.testing.assert_array_equal(first["X"], again["X"])
    assert not np.array_equal(first["X"], other["X"])


def test_token_ids_stay_inside_the_embedding_table() -> None:
    specs = input_specs(token_model())
    feeds = make_feeds(specs, seed=0, shapes={"ids": (2, 50)})
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].shape == (2, 50)
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() <= 9
    assert feeds["mask"].dtype == np.bool_ and feeds["mask"].shape == (1, 1)
    ranged = make_feeds(specs, seed=0, dims={"seq": 7}, int_ranges={"ids": (4, 5)})
    assert set(np.unique(ranged["ids"])) == {4}


def test_shape_override_must_match_static_dims() -> None:
    specs = input_specs(mlp_model())
    with pytest.raises(UserError, match="does not match"):
        make_feeds(specs, shapes={"X": (2, 9)})
    with pytest.raises(UserError, match="unknown input"):
        make_feeds(specs, shapes={"nope": (2, 8)})
    assert parse_shape_option("gpu_0/data:1x3x224x224") == ("gpu_0/data", (1, 3, 224, 224))
    with pytest.raises(UserError, match="INPUT:1x3x224x224"):
        parse_shape_option("X=1,3")


def test_error_statistics_by_hand() -> None:
    reference = np.array([1.0, -4.0, 2.0])
    candidate = np.array([1.0, -4.5, 2.0])
    max_abs, max_rel, cosine = error_statistics(reference, candidate)
    assert max_abs == pytest.approx(0.5)
    assert max_rel == pytest.approx(0.5 / 4.0)
    expected_cos = (1 + 18 + 4) / (np.sqrt(21) * np.sqrt(1 + 20.25 + 4))
    assert cosine == pytest.approx(expected_cos)
    nan_one_side = error_statistics(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    assert nan_one_side[0] == float("inf")
    assert error_statistics(np.array([np.inf, 1.0]), np.array([np.inf, 1.0]))[0] == 0.0


def test_policies() -> None:
    reference = np.array([1.0, 2.0, 4.0], dtype=np.float32)
    close = reference + np.float32(1e-6)
    assert Exact().check("y", reference, reference.copy()).passed
    assert not Exact().check("y", reference, close).passed
    assert AllClose(rtol=1e-5).check("y", reference, close).passed
    assert not AllClose(rtol=1e-8).check("y", reference, close).passed
    assert AllClose(rtol=0.0, atol=1e-5).check("y", reference, close).passed
    assert CosineMaxAbs(min_cosine=0.9999).check("y", reference, close).passed
    assert not CosineMaxAbs(min_cosine=0.99).check("y", reference, -reference).passed
    mismatch = AllClose().check("y", reference, reference[:2])
    assert not mismatch.passed and "shape" in mismatch.line()


def test_verify_models_passes_and_fails(tmp_path: Path) -> None:
    same_a, same_b, other = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    onnx.save(mlp_model(seed=0), str(same_a))
    onnx.save(mlp_model(seed=0), str(same_b))
    onnx.save(mlp_model(seed=1), str(other))
    good = verify_models(same_a, same_b, policy=Exact(), samples=2, dims={"N": 4})
    assert good.passed and good.max_abs_diff == 0.0 and good.samples == 2
    assert good.render().startswith("PASSED | output Y | max|Δ| 0")
    bad = verify_models(same_a, other, policy=AllClose(rtol=1e-5))
    assert not bad.passed and bad.max_rel_diff > 1e-2
    assert bad.as_dict()["outputs"][0]["name"] == "Y"


def test_one_session_per_model_whatever_the_samples(monkeypatch, tmp_path: Path) -> None:
    # Creating an ORT session grows faster than the graph (growth 1.7 per step
    # in the initializer count, models/results/scaling.md): verification must
    # build one per model, never one per sample or output.
    import onnxruntime as ort

    created: list[object] = []
    real_init = ort.InferenceSession.__init__

    def counting_init(self, *args, **kwargs) -> None:
        created.append(args[0] if args else kwargs.get("path_or_bytes"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "__init__", counting_init)
    reference, candidate = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(mlp_model(seed=0), str(reference))
    onnx.save(mlp_model(seed=0), str(candidate))
    result = verify_models(reference, candidate, policy=Exact(), samples=5, dims={"N": 3})
    assert result.passed and result.samples == 5
    assert len(created) == 2


def test_missing_onnxruntime_is_a_one_line_install_hint(monkeypatch, tmp_path: Path) -> None:
    import sys

    from spa.verify import create_session

    path = tmp_path / "m.onnx"
    onnx.save(mlp_model(), str(path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'spa\[cpu\]'"):
        create_session(path)


def _classifier(scale: float, folder: Path, external: bool = False) -> Path:
    """logits = 1000 * X @ W (softmax saturates to one-hot), probs = Softmax(logits)."""
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        c (float[N, 8] X) => (float[N, 5] P) {
            L = MatMul(X, W)
            P = Softmax(L)
        }
        """
    )
    w = 1000 * np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(w * np.float32(scale), "W"))
    folder.mkdir(exist_ok=True)
    path = folder / "c.onnx"
    onnx.save(model, str(path), save_as_external_data=external, size_threshold=0, location="c.data")
    return path


@pytest.mark.parametrize("external", [False, True])
def test_saturated_softmax_outputs_are_also_compared_before_the_softmax(
    tmp_path: Path, external: bool
) -> None:
    reference = _classifier(1.0, tmp_path / "a", external)
    candidate = _classifier(1.01, tmp_path / "b", external)  # logits 1% off, same one-hot
    result = verify_models(reference, candidate, samples=2)
    by_name = {check.name: check for check in result.checks}
    assert by_name["P"].passed and by_name["P"].max_abs_diff == 0  # saturated: proves nothing
    assert not by_name["P (pre-softmax)"].passed and not result.passed
    assert by_name["P (pre-softmax)"].max_rel_diff == pytest.approx(0.01, rel=1e-3)
    same = verify_models(reference, reference)
    assert same.passed and [c.name for c in same.checks] == ["P", "P (pre-softmax)"]


def _saturated_detector(path: Path, bias: float, scale: float = 1.0) -> Path:
    """A text detector's head on random inputs: Sigmoid of logits near -13, so every
    output value is about 1e-6 (no text anywhere)."""
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4, 16] x) => (float[4, 8] y) {
        h = MatMul(x, w)
        logits = Add(h, b)
        y = Sigmoid(logits)
    }
    """)
    weight = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32) * 0.01 * scale
    model.graph.initializer.extend([
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.full(8, bias, np.float32), "b"),
    ])  # fmt: skip
    onnx.save(model, str(path))
    return path


def test_a_saturated_sigmoid_output_is_judged_at_the_sigmoids_precision(tmp_path: Path) -> None:
    """PP-OCRv5's detector after a cleanup whose logits agree to 3e-7: its Sigmoid map
    (values near 1e-6) differed by 9e-8, "rel 0.05", and `spa optimize` failed."""
    reference = _saturated_detector(tmp_path / "a.onnx", bias=-13.5)
    rounding = _saturated_detector(tmp_path / "b.onnx", bias=-13.5, scale=1.0001)
    result = verify_models(reference, rounding)  # default policy: rtol 1e-5
    (check,) = result.checks
    assert check.max_rel_diff > 1e-5 and check.passed, check.line()
    assert "within the output op's resolution" in check.line()
    shifted = _saturated_detector(tmp_path / "c.onnx", bias=-10.0)  # a real change: 30x the values
    assert not verify_models(reference, shifted).passed


def test_a_candidate_reading_inputs_the_reference_lacks_is_one_line(tmp_path: Path) -> None:
    reference = _saturated_detector(tmp_path / "a.onnx", bias=0.0)
    model = onnx.load(str(reference))
    model.graph.input[0].name = "image"
    model.graph.node[0].input[0] = "image"
    onnx.save(model, str(tmp_path / "b.onnx"))
    with pytest.raises(UserError, match=r"reads input\(s\) \['image'\] that .*a.onnx does not have"):
        verify_models(reference, tmp_path / "b.onnx")


def test_a_softmax_behind_an_identity_is_compared_before_the_softmax(tmp_path: Path) -> None:
    """Paddle's and skl2onnx's classifiers end in Softmax -> Identity -> output: their
    saturated probabilities had no logits check and no Softmax resolution."""
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4, 16] x) => (float[4, 8] P) {
        h = MatMul(x, w)
        s = Softmax(h)
        P = Identity(s)
    }
    """)
    weight = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32) * 30
    paths = []
    for name, factor in (("a.onnx", 1.0), ("b.onnx", 1.01)):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.initializer.append(numpy_helper.from_array(weight * factor, "w"))
        onnx.save(copy, str(tmp_path / name))
        paths.append(tmp_path / name)
    result = verify_models(*paths)
    by_name = {check.name: check for check in result.checks}
    assert by_name["P (pre-softmax)"].max_rel_diff == pytest.approx(0.01, rel=1e-3)
    assert not result.passed  # logits 1% off: caught before the saturated Softmax
    assert verify_models(paths[0], paths[0]).passed
