"""The CLI through click's CliRunner: happy paths, exit codes and every bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import mlp_model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_version_and_help(run_cli) -> None:
    from spa import __version__

    assert run_cli("--version").output.strip() == f"spa, version {__version__}"
    assert "optimize" in run_cli("--help").output


def test_inspect(run_cli, external_mlp_path: Path, tmp_path: Path) -> None:
    result = run_cli("inspect", external_mlp_path, "--json", tmp_path / "info.json")
    assert result.exit_code == 0, result.output
    assert "MatMul" in result.output
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["params"] == 8 * 16 + 16 + 16 * 4


def test_optimize_cleans_verifies_and_reports(run_cli, mlp_path: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    before = digest(mlp_path)
    result = run_cli("optimize", mlp_path, "-o", out, "--report", report, "--dim", "N=3")
    assert result.exit_code == 0, result.output
    assert "remove-identity" in result.output
    assert "PASSED | cleanup | params" in result.output
    # The default recipe only cleans up: the output says how to get a faster model.
    assert f"hint: this ran the cleanup recipe only; for a faster model within a quality budget, search pruning and quantization: spa optimize {mlp_path} -o {out} --calib DATA --max-drop 1%" in result.output
    assert result.output.splitlines()[-1].startswith("PASSED | cleanup")  # the verdict stays last
    assert digest(mlp_path) == before
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert "Identity" not in {node.op_type for node in onnx.load(str(out)).graph.node}
    data = json.loads(report.read_text())
    assert list(data)[:3] == ["command", "versions", "seeds"]
    assert data["verification"]["passed"] is True


def test_print_passes_and_dry_run(run_cli, tmp_path: Path) -> None:
    listing = run_cli("optimize", "unused.onnx", "--print-passes")
    assert listing.exit_code == 0 and "fold-batchnorm" in listing.output
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"passes": ["remove-identity", {"name": "eliminate-dead-code"}]}))
    dry = run_cli("optimize", "unused.onnx", "--recipe", recipe, "--dry-run")
    assert dry.exit_code == 0
    assert dry.output.splitlines()[0].startswith("[1/2] remove-identity")


def test_dump_dir_writes_one_model_per_pass(run_cli, mlp_path: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - remove-identity\n  - eliminate-dead-code\n")
    dumps = tmp_path / "dumps"
    result = run_cli(
        "optimize", mlp_path, "-o", tmp_path / "o.onnx", "--recipe", recipe, "--dump-dir", dumps
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dumps.iterdir()) == [
        "01-remove-identity.onnx",
        "02-eliminate-dead-code.onnx",
    ]


def test_verify_pass_and_fail(run_cli, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    onnx.save(mlp_model(0), str(a))
    onnx.save(mlp_model(0), str(b))
    onnx.save(mlp_model(1), str(c))
    same = run_cli("verify", a, b, "--exact")
    assert same.exit_code == 0 and same.output.startswith("PASSED | output Y")
    different = run_cli("verify", a, c)
    assert different.exit_code == 3 and different.output.startswith("FAILED | output Y")


def test_usage_error_is_exit_2(run_cli) -> None:
    assert run_cli("verify", "only-one.onnx").exit_code == 2


@pytest.mark.parametrize("command", ["prune", "quantize", "sparsify", "slice", "optimize"])
def test_missing_output_is_the_same_usage_error_everywhere(run_cli, tmp_path, command) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(mlp_model(0), str(model))
    result = run_cli(command, model)
    assert result.exit_code == 2 and "Missing option '-o' / '--output'" in result.output


# --- bad input: one line, exit 1, input untouched, no partial output ---------------


def _write_bad(kind: str, mlp_path: Path, external_mlp_path: Path) -> Path:
    if kind == "not-onnx":
        mlp_path.write_text("name,value\nthis,is a csv file\n" * 10)
        return mlp_path
    if kind == "truncated":
        mlp_path.write_bytes(mlp_path.read_bytes()[:150])
        return mlp_path
    if kind == "missing-external-data":
        os.remove(external_mlp_path.parent / "mlp.data")
        return external_mlp_path
    proto = onnx.load(str(external_mlp_path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../../../etc/passwd"
    onnx.save(proto, str(external_mlp_path))
    return external_mlp_path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not-onnx", "not a readable ONNX protobuf|holds no ONNX graph"),
        ("truncated", "truncated|holds no ONNX graph"),
        ("missing-external-data", "is missing; copy it next to the model"),
        ("path-traversal", "outside the model's folder"),
    ],
)
@pytest.mark.parametrize("command", ["inspect", "optimize", "verify"])
def test_bad_model_files(
    run_cli, mlp_path, external_mlp_path, tmp_path, kind, message, command
) -> None:
    bad = _write_bad(kind, mlp_path, external_mlp_path)
    before = digest(bad)
    out = tmp_path / "out.onnx"
    args = {
        "inspect": ("inspect", bad),
        "optimize": ("optimize", bad, "-o", out),
        "verify": ("verify", bad, bad),
    }[command]
    result = run_cli(*args)
    assert result.exit_code == 1, result.output
    assert re_search(message, one_error_line(result))
    assert digest(bad) == before
    assert not out.exists()
    assert not [p for p in tmp_path.rglob(".spa-tmp-*")]


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_output_equal_to_input(run_cli, mlp_path: Path) -> None:
    before = digest(mlp_path)
    result = run_cli("optimize", mlp_path, "-o", mlp_path)
    assert result.exit_code == 1
    assert "overwrite the input" in one_error_line(result)
    assert digest(mlp_path) == before


def test_unwritable_output_folder(run_cli, mlp_path: Path) -> None:
    result = run_cli("optimize", mlp_path, "-o", "/proc/sys/out.onnx")
    assert result.exit_code == 1
    assert "not writable" in one_error_line(result)


def test_missing_output_folder_and_flag(run_cli, mlp_path: Path, tmp_path: Path) -> None:
    result = run_cli("optimize", mlp_path, "-o", tmp_path / "no" / "out.onnx")
    assert result.exit_code == 1 and "does not exist" in one_error_line(result)
    result = run_cli("optimize", mlp_path)  # a usage error, as for every writing command
    assert result.exit_code == 2 and "Missing option '-o' / '--output'" in result.output


def test_bad_recipe_and_options(run_cli, mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    assert "neither a built-in" in one_error_line(
        run_cli("optimize", mlp_path, "-o", out, "--recipe", "nope")
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - no-such-pass\n")
    assert "unknown pass 'no-such-pass'" in one_error_line(
        run_cli("optimize", mlp_path, "-o", out, "--recipe", recipe)
    )
    recipe.write_text("passes:\n  - name: remove-identity\n    options: {bogus: 1}\n")
    assert "has no option ['bogus']" in one_error_line(
        run_cli("optimize", mlp_path, "-o", out, "--recipe", recipe)
    )
    assert "INPUT:1x3x224x224" in one_error_line(
        run_cli("optimize", mlp_path, "-o", out, "--shapes", "X=3,8")
    )
    assert not out.exists()


def test_zoo_commands(run_cli, tmp_path: Path) -> None:
    listing = run_cli("zoo", "list")
    assert listing.exit_code == 0 and "onnx-resnet50" in listing.output
    unknown = run_cli("zoo", "get", "no-such-model", "-o", tmp_path / "x.onnx")
    assert unknown.exit_code == 1 and "spa zoo list" in one_error_line(unknown)


@pytest.mark.parametrize(
    "command",
    [["prune"], ["quantize", "--activations", "int8"], ["optimize"], ["slice"], ["sparsify"]],
    ids=["prune", "quantize-static", "optimize", "slice", "sparsify"],
)
def test_calibration_samples_of_the_wrong_shape_are_one_line(run_cli, tmp_path, command) -> None:
    model, calib, out = tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "o.onnx"
    proto = mlp_model(0)
    onnx.save(proto, str(model))
    name = proto.graph.input[0].name
    np.savez(calib, **{name: np.zeros((4, 3, 5, 7), np.float32)})  # not the model's shape
    result = run_cli(command[0], model, "-o", out, "--calib", calib, *command[1:])
    assert result.exit_code == 1 and not out.exists()
    assert f"samples of input '{name}' are 3x5x7" in one_error_line(result)
