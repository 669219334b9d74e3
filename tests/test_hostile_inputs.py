"""Every command over the hostile corpus (tests/hostile_corpus.py), in-process:
no exception escapes the CLI's boundary (no traceback), inputs stay
byte-identical, a failed command leaves no output, and no writing command
exits 0 on an input that is certainly invalid.

Every case runs through every command (about ten seconds in all: the cases
are small models).
"""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hostile_corpus import Case, build_corpus, write_case

from spa.cli.main import cli

CORPUS = build_corpus()
WRITERS = ("optimize", "prune", "quantize", "sparsify")
COMMANDS = ("inspect", "analyze", "verify", *WRITERS)


def _arguments(command: str, model: Path, out: Path) -> list[str]:
    tail = {
        "inspect": ["--json", out / "info.json"],
        "analyze": ["--json", out / "groups.json"],
        "verify": [],
        "optimize": ["-o", out / "o.onnx", "--report", out / "r.json", "--dump-dir", out / "d"],
        "prune": ["-o", out / "o.onnx", "--ratio", "0.25", "--verify", "--save-plan", out / "p.json"],
        "quantize": ["-o", out / "o.onnx", "--block", "16", "--report", out / "r.json"],
        "sparsify": ["-o", out / "o.onnx", "--report", out / "r.json"],
    }[command]
    head = [model, model] if command == "verify" else [model]
    return [command, *map(str, head), *map(str, tail)]


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _run_case(command: str, case: Case, folder: Path) -> tuple[int, list[str]]:
    """Exit code and the problems found for one case under one command."""
    model = write_case(case, folder / "in")
    out = folder / "out"
    out.mkdir()
    before = _snapshot(model.parent)
    result = CliRunner().invoke(cli, _arguments(command, model, out))
    problems = []
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"escaped {type(result.exception).__name__}: {result.exception}")
    if "Traceback" in result.output:
        problems.append("printed a traceback")
    if _snapshot(model.parent) != before:
        problems.append("changed or added files next to the input")
    written = [p.name for p in out.rglob("*")]
    if result.exit_code not in (0, 3) and written:
        problems.append(f"exit {result.exit_code} left {written}")
    if result.exit_code == 1:
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        if len(errors) != 1:
            problems.append("exit 1 without exactly one 'error:' line")
    if command in WRITERS and case.invalid and result.exit_code == 0:
        problems.append("exit 0 on an invalid input")
    if result.exit_code not in (0, 1, 3):
        problems.append(f"exit code {result.exit_code}")
    tail = result.output.strip().splitlines()[-1:] if problems else []
    return result.exit_code, [f"{case.name}: {p} {tail}" for p in problems]


def test_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 200
    kinds = collections.Counter(case.name.split("-")[0] for case in CORPUS)
    assert {"truncate", "flip", "dims", "external", "conv", "graph", "nested"} <= set(kinds)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_over_hostile_corpus(command: str, tmp_path: Path) -> None:
    cases = CORPUS
    codes: collections.Counter[int] = collections.Counter()
    problems: list[str] = []
    for index, case in enumerate(cases):
        code, found = _run_case(command, case, tmp_path / f"{index:03d}")
        codes[code] += 1
        problems.extend(found)
    print(f"\nhostile {command}: {len(cases)} cases, exit codes {dict(sorted(codes.items()))}, "
          f"{len(problems)} problems")  # fmt: skip
    assert not problems, "\n".join(problems[:40])
