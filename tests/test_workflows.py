"""One pipeline for every command: per-pass lines, --dump-dir, calibration of
passes that ask for data, and recipes that do what the single commands do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from spa.calibration import CalibrationRequest
from spa.model_io import load_model
from spa.pass_manager import run_passes
from spa.passes.quantize import QuantizeWeightsPass, weight_activations
from spa.verify import AllClose, input_specs, make_feeds, verify_models
from spa.workflows.run import RunOptions, feeds_calibrator, run_pipeline
from tests.conftest import mlp_model


def _calibration(tmp_path: Path, samples: int = 6) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path / "calib.npz"
    np.savez(path, X=rng.standard_normal((samples, 4, 8)).astype(np.float32))
    return path


def _pass_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[") and "/" in line[:8]]


@pytest.mark.parametrize(
    ("command", "pass_name"),
    [
        (["prune", "--ratio", "0.5", "--verify"], "prune"),
        (["quantize", "--weights", "int8", "--block", "16"], "quantize-weights"),
        (["quantize", "--activations", "int8", "--allow-slower"], "quantize-static"),
        (["sparsify", "--pattern", "2:4", "--cosine", "0.3"], "sparsify-2to4"),
    ],
)
def test_each_command_prints_its_pass_line_and_honours_dump_dir(
    run_cli, mlp_path: Path, tmp_path: Path, command: list[str], pass_name: str
) -> None:
    dumps = tmp_path / "dumps"
    out = tmp_path / "out.onnx"
    result = run_cli(command[0], mlp_path, "-o", out, *command[1:], "--dump-dir", dumps)
    assert result.exit_code == 0, result.output
    lines = _pass_lines(result.output)
    # static quantization folds BatchNorm first: [1/2] fold-batchnorm, [2/2] quantize-static
    count = 2 if pass_name == "quantize-static" else 1
    assert len(lines) == count and lines[-1].startswith(f"[{count}/{count}] {pass_name}")
    dumped = dumps / f"{count:02d}-{pass_name}.onnx"
    onnx.checker.check_model(onnx.load(str(dumped)))
    # the dump is the model the command wrote
    check = verify_models(dumped, out, policy=AllClose(rtol=0.0))
    assert check.passed, check.render()


def test_gptq_gets_hessians_of_the_model_it_rewrites(tmp_path: Path) -> None:
    model = ir.serde.deserialize_model(mlp_model())
    quantizer = QuantizeWeightsPass(4, 16, True, "gptq", "ort")
    request = quantizer.calibration_request(model)
    assert request == CalibrationRequest(hessians=weight_activations(model))
    assert request.hessians == ("X", "H2")
    feeds = [make_feeds(input_specs(mlp_model()), seed=s, dims={"N": 4}) for s in range(3)]
    (record,) = run_passes(model, [quantizer], calibrator=feeds_calibrator(feeds))
    assert record.details["calibration"] == "hessians for 2 activations"
    assert record.statistics["nodes_quantized"] == 2


def test_a_recipe_prunes_with_a_calibrated_criterion_then_quantizes(
    run_cli, mlp_path: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "passes:\n"
        "  - name: prune\n    options: {ratio: 0.5, criterion: flap}\n"
        "  - name: sparsify-2to4\n    options: {method: sparsegpt}\n"
        "  - name: quantize-weights\n    options: {bits: 8, block: 16, method: gptq}\n"
    )
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = run_cli(
        "optimize", mlp_path, "-o", out, "--recipe", recipe, "--calib", _calibration(tmp_path),
        "--cosine", "0.5", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = [line.split()[1] for line in _pass_lines(result.output)]
    assert names == ["prune", "sparsify-2to4", "quantize-weights"]
    passes = json.loads(report.read_text())["passes"]
    assert passes[0]["statistics"]["channels_removed"] == 8  # 16 hidden -> 8
    assert passes[1]["statistics"]["nodes_sparsified"] == 2
    assert passes[2]["statistics"]["nodes_quantized"] == 2
    model = load_model(out)
    assert {node.op_type for node in model.graph} >= {"MatMulNBits"}


def test_a_data_criterion_without_calibration_is_one_line(
    run_cli, mlp_path: Path, tmp_path: Path
) -> None:
    result = run_cli("prune", mlp_path, "-o", tmp_path / "o.onnx", "--criterion", "flap")
    assert result.exit_code == 1
    assert "criterion flap needs --calib DATA" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_the_input_is_read_once_and_never_written(mlp_path: Path, tmp_path: Path) -> None:
    before = mlp_path.read_bytes()
    outcome = run_pipeline(mlp_path, tmp_path / "o.onnx", [], RunOptions())
    assert outcome.records == [] and mlp_path.read_bytes() == before
    assert onnx.load(str(tmp_path / "o.onnx")).graph.node


def test_every_command_writes_no_subnormal_weights(run_cli, tmp_path: Path) -> None:
    """x86 CPUs run arithmetic on subnormals up to 15x slower (PP-OCRv4's pruned recognizer
    ran 0.56x of its input): every output has them set to zero, and still verifies."""
    model = mlp_model(seed=4)
    for tensor in model.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor).copy()
        array.reshape(-1)[::3] = 1e-40  # subnormal float32, in kept and pruned channels
        tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    source = tmp_path / "subnormal.onnx"
    onnx.save(model, str(source))
    before = source.read_bytes()
    commands = {
        "prune": ["--ratio", "0.25", "--round-to", "1", "--verify"],
        "optimize": ["--recipe", "cleanup"],
        "quantize": ["--weights", "int8", "--target", "ort", "--allow-slower"],
    }
    for command, options in commands.items():
        out = tmp_path / f"{command}.onnx"
        result = run_cli(command, source, "-o", out, *options)
        assert result.exit_code == 0, result.output
        for tensor in onnx.load(str(out)).graph.initializer:
            array = onnx.numpy_helper.to_array(tensor)
            if array.dtype == np.float32:
                tiny = np.finfo(np.float32).tiny
                assert not np.any((array != 0) & (np.abs(array) < tiny)), (command, tensor.name)
    assert source.read_bytes() == before


def test_constant_node_weights_are_counted_and_quantized(run_cli, tmp_path: Path) -> None:
    """A model exported with its weight as a Constant node is not a silent no-op."""
    weight = np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32)
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 32] X) => (float[N, 16] Y) {
            Y = MatMul(X, W)
        }
        """
    )
    model.graph.node.insert(0, onnx.helper.make_node(
        "Constant", [], ["W"], value=onnx.numpy_helper.from_array(weight, "W")
    ))  # fmt: skip
    source = tmp_path / "constant.onnx"
    onnx.save(model, str(source))
    info = run_cli("inspect", source)
    assert "params    512" in info.output, info.output
    result = run_cli("quantize", source, "-o", tmp_path / "q.onnx", "--weights", "int8")
    assert result.exit_code == 0, result.output
    assert "nodes quantized 1" in result.output
    # INT8 for ORT: the integer weight read through Cast/Mul constants that ORT folds at load
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops == ["Cast", "Mul", "MatMul"]


def test_prune_verify_reads_external_weights_from_the_models_folder(
    run_cli, external_mlp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mask reference keeps reading the input's .data file, wherever the command runs."""
    monkeypatch.chdir(tmp_path)  # not the model's folder
    result = run_cli("prune", external_mlp_path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--verify")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED | prune")
