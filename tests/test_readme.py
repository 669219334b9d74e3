"""The README's commands and code blocks are executed here, so they cannot drift."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
INSTALL_STEPS = ("python3 -m venv", ". .venv/bin/activate", "pip install")


def readme_command(kind: str) -> str:
    match = re.search(rf"<!-- readme-command: {kind} -->\n```bash\n(.*?)\n```", README, re.S)
    assert match, f"README lacks the '{kind}' command block"
    return match.group(1)


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", README, re.S)


def test_readme_has_exactly_two_fresh_machine_commands() -> None:
    assert README.count("<!-- readme-command:") == 2
    for kind in ("run", "test"):
        assert readme_command(kind).count("\n") == 0, "each command is one line"
    assert "readme-command: test" in (ROOT / ".ci" / "run").read_text()


def test_ci_extracts_the_same_commands() -> None:
    script = ROOT / ".ci" / "run"
    source = script.read_text()
    extractor = source[source.index("readme_command() {") : source.index("run_command=")]
    for kind in ("run", "test"):
        shown = subprocess.run(
            ["bash", "-c", f"{extractor}\nreadme_command {kind}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert shown == readme_command(kind)


def test_run_command_and_python_example(tmp_path: Path) -> None:
    """The run command's spa steps (install skipped: spa is installed) and the Python block."""
    steps = [s for s in readme_command("run").split(" && ") if not s.startswith(INSTALL_STEPS)]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(
        ["bash", "-euc", " && ".join(steps)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^PASSED \| cleanup \| params", done.stdout, re.M), done.stdout
    assert "fold-batchnorm" in done.stdout
    assert (tmp_path / "demo" / "report.json").is_file()
    (python_block,) = code_blocks("python")
    done = subprocess.run(
        [sys.executable, "-c", python_block], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("PASSED | cleanup")


def test_yaml_recipe_block_is_a_valid_recipe(tmp_path: Path) -> None:
    from spa.workflows.recipes import build_passes, load_recipe

    (block,) = code_blocks("yaml")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(block)
    assert yaml.safe_load(block)["passes"]
    names = [p.name for p in build_passes(load_recipe(str(recipe_file)))]
    assert names == [
        "remove-identity", "fold-constants", "fold-batchnorm", "eliminate-dead-code", "prune",
        "quantize-weights",
    ]  # fmt: skip


def test_yaml_recipe_block_runs_with_calibration(tmp_path: Path, run_cli, mlp_path: Path) -> None:
    """The README's recipe through `spa optimize --calib` on a small MLP."""
    import numpy as np

    (block,) = code_blocks("yaml")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(block)
    calib = tmp_path / "calib.npz"
    np.savez(calib, X=np.random.default_rng(0).standard_normal((4, 2, 8)).astype(np.float32))
    out = tmp_path / "out.onnx"
    result = run_cli(
        "optimize", mlp_path, "-o", out, "--recipe", recipe_file, "--calib", calib,
        "--cosine", "0.9",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.output.splitlines() if line.startswith("[")][-2:] == [
        "prune", "quantize-weights",
    ]  # fmt: skip
