"""`spa optimize --verify` on recipes that rewrite weights by design: exact against
the decoded reference (the model the rewriting pass read, its rewritten weights
replaced by their decoded values), the drift to the float input reported and
judged only by an explicit policy; recipes without such passes verify as before."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from spa.model_io import load_model
from spa.verify import AllClose, verify_models
from spa.workflows.optimize import optimize
from spa.workflows.recipes import build_passes, load_recipe
from spa.workflows.results import verify_decoded
from spa.workflows.run import RunOptions

#: MatMul -> BatchNorm: fold-batchnorm rewrites W1 in place (same name, scaled columns),
#: so W1's decoded values only fit the model fold-batchnorm wrote, not the input.
BN_MLP = """
<ir_version: 9, opset_import: ["" : 18]>
bn_mlp (float[N, 16] X) => (float[N, 8] Y) {
    H0 = MatMul(X, W1)
    H1 = BatchNormalization(H0, gamma, beta, mean, var)
    H2 = Relu(H1)
    H3 = MatMul(H2, W2)
    Y = Identity(H3)
}
"""

#: W1 is computed from a constant (Transpose of W1t): fold-constants makes it a
#: weight named W1 that the input does not have.
TRANSPOSED_MLP = """
<ir_version: 9, opset_import: ["" : 18]>
transposed_mlp (float[N, 16] X) => (float[N, 8] Y) {
    W1 = Transpose <perm = [1, 0]> (W1t)
    H0 = MatMul(X, W1)
    H1 = Relu(H0)
    Y = MatMul(H1, W2)
}
"""


def _save(text: str, arrays: dict[str, np.ndarray], path: Path) -> Path:
    model = onnx.parser.parse_model(text)
    for name, array in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _bn_mlp(path: Path) -> Path:
    rng = np.random.default_rng(7)
    return _save(BN_MLP, {
        "W1": rng.standard_normal((16, 32)) / 4, "W2": rng.standard_normal((32, 8)) / 6,
        "gamma": rng.uniform(0.5, 2.0, 32), "beta": rng.normal(0, 0.2, 32),
        "mean": rng.normal(0, 0.2, 32), "var": rng.uniform(0.5, 2.0, 32),
    }, path)  # fmt: skip


def _recipe(path: Path, *steps: str) -> Path:
    path.write_text("passes:\n" + "".join(f"  - {step}\n" for step in steps))
    return path


QUANTIZE_8 = "{name: quantize-weights, options: {bits: 8, block: 16}}"
QUANTIZE_4 = "{name: quantize-weights, options: {bits: 4, block: 16, keep_float: []}}"
SPARSIFY = "{name: sparsify-2to4, options: {keep_float: []}}"
GQSA = "{name: gqsa, options: {group: 16, sparsity: 0.5}}"


def _verdict(output: str) -> str:
    return output.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("rewrite", "rewrites"),
    [(QUANTIZE_8, 2), (QUANTIZE_4, 2), (SPARSIFY, 2), (GQSA, 2)],
    ids=["int8", "int4", "2:4", "gqsa"],
)
def test_a_lossy_recipe_is_exact_to_its_decoded_reference(
    tmp_path: Path, rewrite: str, rewrites: int
) -> None:
    """The old check (AllClose to the input) fails every such recipe on a healthy
    model; the decoded reference is built on what fold-batchnorm wrote (the input,
    with W1's decoded values, would apply the BatchNorm twice), the passes before
    the rewrite are checked exact against the input, the cleanup after it by the
    decoded reference."""
    source, out = _bn_mlp(tmp_path / "bn.onnx"), tmp_path / "out.onnx"
    recipe = load_recipe(str(_recipe(
        tmp_path / "r.yaml", "remove-identity", "fold-batchnorm", rewrite, "eliminate-dead-code"
    )))  # fmt: skip
    passes = build_passes(recipe)
    result = optimize(source, out, recipe=recipe, passes=passes, report_path=tmp_path / "r.json")
    assert sum(record.modified for record in result.records[2:3]) == 1
    assert not verify_models(source, out, policy=AllClose()).passed  # the old check
    decoded = result.decoded
    assert decoded is not None and decoded.verification is result.verification
    assert decoded.verification is not None and decoded.verification.passed
    assert decoded.verification.max_rel_diff <= 1e-4
    assert decoded.reference == "the output of pass 2 (fold-batchnorm)"
    assert (
        decoded.prefix is not None
        and decoded.prefix.passed
        and decoded.prefix_steps == "passes 1-2"
    )
    assert decoded.drift_gate is None and decoded.cosine is not None and decoded.cosine < 0.99999
    assert decoded.passed and result.verification_note == ""
    verdict = result.verdict_line
    assert verdict.startswith(f"PASSED | {recipe.name} | params ")
    assert "| decoded weights exact (rel " in verdict and " to float (seeded inputs) |" in verdict
    assert "| passes 1-2 exact (rel " in verdict
    # the names: the same decoded weights put into the input are not what the output computes
    wrong = verify_decoded(load_model(source), source, passes[2].decoded, out, RunOptions())  # type: ignore[attr-defined]
    assert not wrong.passed
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verification"]["passed"] and report["decoded"]["drift"]["outputs"]
    assert report["decoded"]["passed"] and report["decoded"]["policy"] is None


def test_cli_verdict_renders_like_spa_quantize(run_cli, tmp_path: Path) -> None:
    source = _bn_mlp(tmp_path / "bn.onnx")
    recipe = _recipe(tmp_path / "int8.yaml", "fold-batchnorm", QUANTIZE_8)
    result = run_cli("optimize", source, "-o", tmp_path / "out.onnx", "--recipe", recipe)
    assert result.exit_code == 0, result.output
    assert "decoded reference: PASSED | output Y" in result.output
    assert "float input: output Y" in result.output and "not judged" in result.output
    assert "pass 1 before the weight rewrite: PASSED | output Y" in result.output
    verdict = _verdict(result.output)
    assert verdict.startswith("PASSED | int8 | params")
    assert "decoded weights exact (rel" in verdict and "to float (seeded inputs)" in verdict


def test_a_wrong_scale_fails_the_recipe_that_a_cosine_floor_passes(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: every int4 block scale written 1% too large. The output stays
    above cos 0.98 to the float input, so only the decoded reference sees it."""
    import spa.passes.quantize as quantize_pass

    real = quantize_pass.matmulnbits_node

    def off_by_one_percent(graph, activation, weight, base, name):  # type: ignore[no-untyped-def]
        wrong = dataclasses.replace(
            weight, scales=(weight.scales * 1.01).astype(weight.scales.dtype)
        )
        return real(graph, activation, wrong, base, name)

    monkeypatch.setattr(quantize_pass, "matmulnbits_node", off_by_one_percent)
    source, out = _bn_mlp(tmp_path / "bn.onnx"), tmp_path / "out.onnx"
    recipe = _recipe(tmp_path / "int4.yaml", "fold-batchnorm", QUANTIZE_4)
    result = run_cli("optimize", source, "-o", out, "--recipe", recipe, "--cosine", "0.98")
    assert result.exit_code == 3, result.output
    assert "nodes_quantized=2" in result.output
    assert "decoded reference: FAILED | output Y" in result.output
    assert "float input: PASSED | output Y" in result.output  # the cosine alone passes it
    verdict = _verdict(result.output)
    assert verdict.startswith("FAILED | int4") and "decoded weights MISMATCH (rel" in verdict
    assert f"output kept: {out}" in verdict


def test_cosine_floor_judges_the_drift(run_cli, tmp_path: Path) -> None:
    source = _bn_mlp(tmp_path / "bn.onnx")
    recipe = _recipe(tmp_path / "int4.yaml", QUANTIZE_4)
    args = ["optimize", source, "--recipe", recipe]
    gated = run_cli(*args, "-o", tmp_path / "gated.onnx", "--cosine", "0.9999999")
    assert gated.exit_code == 3, gated.output
    assert "float input: FAILED | output Y" in gated.output and "cos >= 1" in gated.output
    verdict = _verdict(gated.output)
    assert verdict.startswith("FAILED | int4") and "decoded weights exact" in verdict
    assert " < 1 to float (seeded inputs)" in verdict
    floor = run_cli(*args, "-o", tmp_path / "floor.onnx", "--cosine", "0.9")
    assert floor.exit_code == 0, floor.output
    assert "float input: PASSED | output Y" in floor.output and "| cos >= 0.9" in floor.output
    rtol = run_cli(*args, "-o", tmp_path / "rtol.onnx", "--rtol", "1e-5")
    assert rtol.exit_code == 3, rtol.output  # an explicit --rtol still judges the input's outputs
    assert "(needs rel <= 1e-05)" in _verdict(rtol.output)


def test_a_recipe_without_rewrites_verifies_as_before(run_cli, tmp_path: Path) -> None:
    source, out = _bn_mlp(tmp_path / "bn.onnx"), tmp_path / "out.onnx"
    result = optimize(source, out, recipe="cleanup")
    assert result.decoded is None and result.verification_note == ""
    assert result.verification is not None and result.verification.passed
    assert result.verification.checks[0].detail.startswith("rtol 1e-05 atol 0")
    assert " | max|Δ| " in result.verdict_line and "decoded" not in result.verdict_line
    cli = run_cli("optimize", source, "-o", tmp_path / "cli.onnx", "--recipe", "cleanup")
    assert cli.exit_code == 0, cli.output
    assert "PASSED | output Y | max|Δ|" in cli.output and "decoded" not in cli.output


def test_passes_in_sequence_merge_their_decoded_weights(tmp_path: Path) -> None:
    """2:4 then int8 on the same weights: the reference is the input with the
    quantized values of the sparsified weights."""
    source, out = _bn_mlp(tmp_path / "bn.onnx"), tmp_path / "out.onnx"
    recipe = _recipe(tmp_path / "r.yaml", "fold-batchnorm", SPARSIFY, "remove-identity", QUANTIZE_8)
    result = optimize(source, out, recipe=str(recipe))
    assert result.decoded is not None and result.decoded.passed, result.verdict_line
    assert result.decoded.reference == "the output of pass 1 (fold-batchnorm)"
    assert "decoded weights exact" in result.verdict_line


def test_lossy_pass_without_decoded_reference_keeps_the_old_check_and_says_why(
    run_cli, tmp_path: Path
) -> None:
    source = _bn_mlp(tmp_path / "bn.onnx")
    recipe = _recipe(
        tmp_path / "r.yaml", SPARSIFY, "{name: quantize-dynamic, options: {min_elements: 1}}"
    )
    result = run_cli(
        "optimize", source, "-o", tmp_path / "o.onnx", "--recipe", recipe, "--cosine", "0.9"
    )
    assert result.exit_code == 0, result.output
    verdict = _verdict(result.output)
    assert (
        "decoded reference not used: pass 2 (quantize-dynamic) changes the outputs after "
        "the weight rewrite of pass 1 (sparsify-2to4) and has no decoded reference" in verdict
    )
    assert "max|Δ|" in verdict and "decoded weights" not in verdict
    strict = run_cli("optimize", source, "-o", tmp_path / "s.onnx", "--recipe", recipe)
    assert strict.exit_code == 3, strict.output  # AllClose to the input, as before


def test_decoded_weights_named_after_the_first_rewrite_are_checked_step_by_step(tmp_path: Path) -> None:
    """int8 rewrites W1, a weight fold-constants made after 2:4 ran: it is not a weight of
    the model 2:4 read, so the maps are not merged; each rewrite is checked against the model
    it read instead (2:4 up to the model int8 read, fold-constants included; int8 up to the
    output)."""
    rng = np.random.default_rng(3)
    source = _save(TRANSPOSED_MLP, {
        "W1t": rng.standard_normal((32, 16)) / 4, "W2": rng.standard_normal((32, 8)) / 6,
    }, tmp_path / "t.onnx")  # fmt: skip
    recipe = _recipe(tmp_path / "r.yaml", SPARSIFY, "fold-constants", QUANTIZE_8)
    result = optimize(source, tmp_path / "o.onnx", recipe=str(recipe))
    assert result.decoded is not None and result.decoded.passed and not result.verification_note
    assert result.decoded.reference.startswith("each weight rewrite's own input (passes 1, 3; worst: ")
    assert result.decoded.verification is not None
    assert result.decoded.verification.max_rel_diff <= 1e-4
    assert result.verdict_line.startswith("PASSED") and "decoded weights exact" in result.verdict_line
    # the drift is still judged by a policy the caller gives
    strict = optimize(source, tmp_path / "p.onnx", recipe=str(recipe), policy=AllClose(rtol=0.1))
    assert strict.decoded is not None and strict.decoded.verification.passed
    assert strict.verdict_line.startswith("FAILED") and "(needs rel <= 0.1)" in strict.verdict_line
