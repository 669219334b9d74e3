"""Nothing lost: no path a command writes may overwrite its input model or the
input's external data, nor be a device or FIFO; a command that fails with a
user error leaves no output; SIGTERM during a save leaves no staging folder."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from spa.destinations import check_destination, protect_inputs
from spa.errors import UserError
from spa.model_io import load_model, save_model

#: (command, its extra arguments) for every command that writes a model.
WRITERS: dict[str, tuple[str, ...]] = {
    "optimize": ("--no-verify",),
    "prune": ("--ratio", "0.25"),
    "quantize": ("--block", "16", "--no-verify"),
    "sparsify": ("--no-verify",),
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _targets(model: Path) -> dict[str, Path]:
    return {"model": model, "data": model.parent / "mlp.data", "devnull": Path("/dev/null")}


def _assert_refused(result, inputs: dict[Path, str], folder: Path, before: set[str]) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for path, hashed in inputs.items():
        assert digest(path) == hashed, f"{path} changed"
    assert {p.name for p in folder.iterdir()} == before, "a file was left behind"


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_writers_succeed_with_fresh_destinations(
    run_cli, external_mlp_path: Path, tmp_path: Path, command: str
) -> None:
    """The refusals below are about the destination, not a command that always fails."""
    out, report, dumps = tmp_path / "out.onnx", tmp_path / "r.json", tmp_path / "dumps"
    args = ["-o", out, "--report", report, "--dump-dir", dumps]
    result = run_cli(command, external_mlp_path, *WRITERS[command], *args)
    assert result.exit_code == 0, result.output
    assert out.is_file() and report.is_file() and any(dumps.iterdir())


@pytest.mark.parametrize("target", ["model", "data", "devnull"])
@pytest.mark.parametrize("flag", ["-o", "--report", "--dump-dir"])
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_writer_flags_never_overwrite_the_input(
    run_cli, external_mlp_path: Path, tmp_path: Path, command: str, flag: str, target: str
) -> None:
    folder = external_mlp_path.parent
    inputs = {path: digest(path) for path in folder.iterdir()}
    before = {p.name for p in folder.iterdir()}
    destination = _targets(external_mlp_path)[target]
    args = ["-o", tmp_path / "out.onnx"] if flag != "-o" else []
    result = run_cli(command, external_mlp_path, *WRITERS[command], *args, flag, destination)
    _assert_refused(result, inputs, folder, before)
    assert not (tmp_path / "out.onnx").exists(), "exit 1 left the output behind"


@pytest.mark.parametrize("target", ["model", "data", "devnull"])
def test_save_plan_never_overwrites_the_input(
    run_cli, external_mlp_path: Path, tmp_path: Path, target: str
) -> None:
    folder = external_mlp_path.parent
    inputs = {path: digest(path) for path in folder.iterdir()}
    out = tmp_path / "out.onnx"
    destination = _targets(external_mlp_path)[target]
    result = run_cli("prune", external_mlp_path, "-o", out, "--save-plan", destination)
    _assert_refused(result, inputs, folder, {p.name for p in inputs})
    assert not out.exists()


@pytest.mark.parametrize("target", ["model", "data", "devnull"])
@pytest.mark.parametrize("command", ["inspect", "analyze"])
def test_json_never_overwrites_the_input(
    run_cli, external_mlp_path: Path, command: str, target: str
) -> None:
    folder = external_mlp_path.parent
    inputs = {path: digest(path) for path in folder.iterdir()}
    destination = _targets(external_mlp_path)[target]
    result = run_cli(command, external_mlp_path, "--json", destination)
    _assert_refused(result, inputs, folder, {p.name for p in inputs})


def test_links_to_the_input_are_refused(run_cli, external_mlp_path: Path, tmp_path: Path) -> None:
    data = external_mlp_path.parent / "mlp.data"
    (tmp_path / "soft.json").symlink_to(data)
    os.link(data, tmp_path / "hard.json")
    hashed = digest(data)
    for name in ("soft.json", "hard.json"):
        result = run_cli("inspect", external_mlp_path, "--json", tmp_path / name)
        assert result.exit_code == 1 and "overwrite the input model" in result.output
    assert digest(data) == hashed


def test_fifo_is_refused(mlp_path: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        check_destination(fifo, "-o")


def test_library_scope_protects_what_was_loaded(external_mlp_path: Path) -> None:
    data = external_mlp_path.parent / "mlp.data"
    with protect_inputs():
        load_model(external_mlp_path)
        with pytest.raises(UserError, match="--report"):
            check_destination(data, "--report")
    check_destination(data, "--report")  # outside a scope only the explicit checks apply


def test_an_output_the_scope_wrote_and_read_back_may_be_rewritten(mlp_path: Path, tmp_path: Path) -> None:
    """The weight-only latency guard measures the output it saved (a load: recorded as
    read), then writes the faster Cast form over it; that was refused as "would overwrite
    the input model" (seen as a search candidate that "could not be built"). The input stays
    protected."""
    output = tmp_path / "out.onnx"
    with protect_inputs():
        model = load_model(mlp_path)
        save_model(model, output)
        load_model(output)
        save_model(model, output)  # its own output, read back: allowed
        with pytest.raises(UserError, match="would overwrite the input model"):
            save_model(model, mlp_path)


def test_user_error_during_verification_leaves_no_output(run_cli, tmp_path: Path) -> None:
    """ORT cannot load a model with an unknown custom op: verification raises a
    UserError after the output was saved; the output must be taken back."""
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17, "com.example": 1]>
        g (float[2, 8] X) => (float[2, 8] Y) {
          H = Relu(X)
          Y = com.example.Frobnicate(H)
        }
        """
    )
    source = tmp_path / "custom.onnx"
    onnx.save(model, str(source))
    for command in ("optimize", "quantize", "sparsify"):
        out = tmp_path / f"{command}.onnx"
        result = run_cli(command, source, "-o", out, "--report", tmp_path / "r.json")
        assert result.exit_code == 1, result.output
        assert "ONNX Runtime cannot load it" in result.output
        assert not out.exists() and not (tmp_path / "r.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx"]


def test_failed_verification_keeps_the_output(run_cli, mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    result = run_cli("quantize", mlp_path, "-o", out, "--block", "16", "--cosine", "1.0001")
    assert result.exit_code == 3, result.output
    assert out.is_file()
    assert f"output kept: {out}" in result.output


def _chain_model(tensors: int, size: int) -> onnx.ModelProto:
    """Y = X + W0 + W1 + ... : ``tensors`` float32 [64, size/64] weights (2-D, so
    ONNX's data propagation, slow on long 1-D tensors, does not run)."""
    rng = np.random.default_rng(0)
    nodes, previous = [], "X"
    weights = []
    for index in range(tensors):
        name = f"H{index}" if index < tensors - 1 else "Y"
        nodes.append(helper.make_node("Add", [previous, f"W{index}"], [name]))
        array = rng.standard_normal((64, size // 64)).astype(np.float32)
        weights.append(numpy_helper.from_array(array, f"W{index}"))
        previous = name
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [64, size // 64])],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [64, size // 64])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sigterm_during_save_leaves_no_staging_folder(tmp_path: Path) -> None:
    """The CLI runs in a subprocess on a 320 MB model (saved with external data);
    once its staging folder exists it gets SIGTERM, and must remove the folder."""
    source_folder, out_folder = tmp_path / "in", tmp_path / "out"
    source_folder.mkdir()
    out_folder.mkdir()
    source = source_folder / "chain.onnx"
    onnx.save(
        _chain_model(40, 2_097_152),
        str(source),
        save_as_external_data=True,
        location="chain.data",
    )
    inputs = {path: digest(path) for path in source_folder.iterdir()}
    code = "import sys; from spa.cli.main import main; main(sys.argv[1:])"
    args = [sys.executable, "-c", code, "optimize", str(source), "-o", str(out_folder / "o.onnx")]
    process = subprocess.Popen([*args, "--no-verify"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    caught = False
    while process.poll() is None:
        staging = [p for p in out_folder.iterdir() if p.name.startswith(".spa-tmp-")]
        if staging and any(staging[0].iterdir()):
            process.send_signal(signal.SIGTERM)
            caught = True
            break
    output = process.communicate()[0].decode()
    assert "Traceback" not in output
    if not caught:
        pytest.skip("the save finished before the staging folder was seen")
    assert process.returncode == 128 + signal.SIGTERM, output
    assert not [p for p in out_folder.iterdir() if p.name.startswith(".spa-tmp-")]
    assert {path: digest(path) for path in source_folder.iterdir()} == inputs


def test_staging_left_by_a_killed_run_is_removed_by_the_next_save(
    run_cli, mlp_path: Path, tmp_path: Path
) -> None:
    """SIGKILL runs no cleanup; the staging folder names its process, and the next
    save into that folder removes it once that process is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".spa-tmp-{dead.pid}-abcd1234"
    stale.mkdir()
    (stale / "o.onnx.data").write_bytes(b"\0" * 1024)
    alive = tmp_path / f".spa-tmp-{os.getpid()}-efgh5678"  # this process: not stale
    alive.mkdir()
    result = run_cli("optimize", mlp_path, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.is_dir()


def test_sigterm_during_verification_publishes_no_output(tmp_path: Path) -> None:
    """The output is saved, then verified; SIGTERM while verifying removes it (an
    unverified model is never left under the name the user asked for)."""
    source_folder, out_folder = tmp_path / "in", tmp_path / "out"
    source_folder.mkdir()
    out_folder.mkdir()
    source = source_folder / "chain.onnx"
    onnx.save(_chain_model(40, 2_097_152), str(source), save_as_external_data=True,
              location="chain.data")  # fmt: skip
    code = "import sys; from spa.cli.main import main; main(sys.argv[1:])"
    output_path = out_folder / "o.onnx"
    args = [sys.executable, "-c", code, "optimize", str(source), "-o", str(output_path)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    caught = False
    while process.poll() is None:
        if output_path.exists():  # saved: verification is running
            process.send_signal(signal.SIGTERM)
            caught = True
            break
    output = process.communicate()[0].decode()
    if not caught:
        pytest.skip("the command finished before its output was seen")
    assert "Traceback" not in output
    assert process.returncode == 128 + signal.SIGTERM, output
    left = sorted(str(p.relative_to(out_folder)) for p in out_folder.rglob("*"))
    assert left == [], output
