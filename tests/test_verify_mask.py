"""Mask equivalence (spa.verify.mask) on outputs of bounded activations.

A detector head ends in a Sigmoid; on random inputs its logits sit near -17
and every output is ~1e-8, below the absolute precision of ONNX Runtime's
Sigmoid (~1.2e-7). Comparing those values relatively failed exact prunes
(PP-OCRv4 det: cos 0.75); the check now compares such an output up to the op's
resolution and compares its pre-activation as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from spa.analysis import analyze, prepare
from spa.model_io import load_model, save_model
from spa.passes.prune import apply_plan
from spa.pruning.plan import make_plan
from spa.verify import AllClose
from spa.verify.mask import bounded_outputs, verify_masked
from tests.analysis_helpers import model_from_text

HEAD = """
<ir_version: 8, opset_import: ["" : 17]>
head (float[1, 3, 16, 16] x) => (float[1, 1, 16, 16] y) {
  h = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
  r = Relu (h)
  z = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, w2, b2)
  y = Sigmoid (z)
}
"""


def _head(bias: float):
    rng = np.random.default_rng(1)
    w2 = (0.02 * rng.standard_normal((1, 64, 3, 3))).astype(np.float32)
    constants = {"w2": w2, "b2": np.array([bias], np.float32)}
    return model_from_text(HEAD, {"w1": (64, 3, 3, 3), "b1": (64,)}, constants=constants)


def _prune_and_verify(tmp_path: Path, bias: float, corrupt: bool = False):
    proto = _head(bias)
    model = prepare(ir.serde.deserialize_model(proto))
    analysis = analyze(model)
    plan = make_plan(model, analysis, ratio=0.5, criterion="random", seed=0)
    reference = prepare(ir.serde.deserialize_model(proto))
    apply_plan(model, analysis, plan)
    if corrupt:  # a wrong rewrite: one kept input channel of the head scaled
        weight = model.graph.initializers["w2"]
        array = weight.const_value.numpy().copy()
        array[:, 0] *= 1.5
        weight.const_value = ir.Tensor(array, name="w2")
    output = save_model(model, tmp_path / "pruned.onnx")
    return verify_masked(reference, output, analysis, plan, AllClose(rtol=1e-4), samples=4)


def test_bounded_outputs_name_the_pre_activation() -> None:
    model = prepare(ir.serde.deserialize_model(_head(-17.0)))
    (name, (source, resolution)), = bounded_outputs(model).items()
    assert (name, source) == ("y", "z")
    assert 1e-6 < resolution < 1e-5


def test_saturated_sigmoid_output_passes_mask_equivalence(tmp_path: Path) -> None:
    result = _prune_and_verify(tmp_path, bias=-17.0)
    checks = {check.name: check for check in result.checks}
    # the saturated output differs relatively (ORT's Sigmoid noise) but within resolution
    assert checks["y"].max_rel_diff > 1e-2 and checks["y"].max_abs_diff < 2e-6
    assert "within the output op's resolution" in checks["y"].line()
    # the pre-activation carries the check and agrees tightly
    assert checks["z"].passed and checks["z"].max_rel_diff < 1e-5
    assert result.passed


def test_saturated_output_still_catches_a_wrong_rewrite(tmp_path: Path) -> None:
    result = _prune_and_verify(tmp_path, bias=-17.0, corrupt=True)
    checks = {check.name: check for check in result.checks}
    assert checks["y"].passed  # the output alone cannot tell
    assert not checks["z"].passed and checks["z"].max_rel_diff > 1e-3
    assert not result.passed


def test_pruned_model_file_is_left_unchanged(tmp_path: Path) -> None:
    _prune_and_verify(tmp_path, bias=-2.0)
    outputs = [value.name for value in load_model(tmp_path / "pruned.onnx").graph.outputs]
    assert outputs == ["y"]


# ConViT's gated positional self-attention: two gates folded from one parameter,
# sigmoid(g) and 1 - sigmoid(g), mix the patch and positional attention per head,
# and the mix is renormalised by its own sum. A removed head's gates are zero in
# the masked reference, so its attention is 0 / 0.
GPSA = """
<ir_version: 8, opset_import: ["" : 17]>
gpsa (float[6, 8] x, float[6, 6, 3] rel) => (float[6, 8] y) {
  q = MatMul (x, wq)
  k = MatMul (x, wk)
  v = MatMul (x, wv)
  qh = Reshape (q, heads)
  kh = Reshape (k, heads)
  vh = Reshape (v, heads)
  qt = Transpose <perm = [1, 0, 2]> (qh)
  kt = Transpose <perm = [1, 2, 0]> (kh)
  vt = Transpose <perm = [1, 0, 2]> (vh)
  scores = MatMul (qt, kt)
  patch = Softmax <axis = -1> (scores)
  pm = MatMul (rel, wp)
  pb = Add (pm, bp)
  pt = Transpose <perm = [2, 0, 1]> (pb)
  pos = Softmax <axis = -1> (pt)
  gate = Sigmoid (g)
  one = Constant <value = float {1.0}> ()
  rest = Sub (one, gate)
  a1 = Mul (rest, patch)
  a2 = Mul (gate, pos)
  attn = Add (a1, a2)
  total = ReduceSum <keepdims = 1> (attn, last)
  normed = Div (attn, total)
  ctx = MatMul (normed, vt)
  ct = Transpose <perm = [1, 0, 2]> (ctx)
  merged = Reshape (ct, flat)
  y = MatMul (merged, wo)
}
"""


def test_a_head_renormalised_by_its_own_sum_passes_mask_equivalence(tmp_path: Path) -> None:
    from spa.workflows.prune import prune_model

    weights = {"wq": (8, 8), "wk": (8, 8), "wv": (8, 8), "wp": (3, 2), "bp": (2,), "g": (2, 1, 1), "wo": (8, 8)}
    shapes = {"heads": np.array([6, 2, 4]), "flat": np.array([6, 8]), "last": np.array([-1])}
    source = tmp_path / "gpsa.onnx"
    onnx.save(model_from_text(GPSA, weights, constants=shapes), str(source))
    result = prune_model(source, tmp_path / "gpsa.pruned.onnx", ratio=0.5, round_to=1, verify=True)
    assert result.verification is not None and result.verification.passed, result.verification
    assert len(result.plan.kept) == 1  # the heads, with the gates folded from g


def test_guard_zeroes_only_quotients_that_are_not_finite() -> None:
    from spa.verify.mask import guard_quotients
    from spa.verify.runner import run_model

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
      m = Mul (x, w)
      s = ReduceSum <keepdims = 1> (m, last)
      y = Div (m, s)
    }
    """
    constants = {"w": np.ones((1, 3), np.float32), "last": np.array([-1])}
    model = ir.serde.deserialize_model(model_from_text(text, {}, constants=constants))
    assert guard_quotients(model, set()) == 0
    assert guard_quotients(model, {"w"}) == 1
    assert [v.name for v in model.graph.outputs] == ["y"]
    feeds = {"x": np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)}
    out = run_model(ir.serde.serialize_model(model).SerializeToString(), feeds)["y"]
    np.testing.assert_array_equal(out, np.array([[1 / 6, 2 / 6, 3 / 6], [0, 0, 0]], np.float32))
