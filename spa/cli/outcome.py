"""The end of a rewrite command, shared by ``spa quantize`` and ``spa sparsify``:
sizes in MB/kB, the bytes/cosine/time tail of the verdict line, and the
print -> report -> verdict -> exit code sequence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from spa.cli.options import echo_verdict

__all__ = ["drift_lines", "finish", "human_size", "verdict_tail", "verification_lines"]


#: Below this cosine to the float input (seeded inputs) a weight rewrite prints a note.
FAR = 0.9


def human_size(size: int) -> str:
    """``12.1 MB`` from one million bytes up, else ``3.4 kB``."""
    return f"{size / 1e6:.1f} MB" if size >= 1_000_000 else f"{size / 1e3:.1f} kB"


def verdict_tail(result: Any) -> str:
    """``bytes 12.1 MB -> 3.4 MB (-72%) | cos 0.99991 | quality ... | 2.1s`` of a result:
    the verification (seeded inputs) and the quality (held-out real data) separately."""
    from spa.verify.quality import quality_verdict

    before, after = result.bytes_before, result.bytes_after
    change = f"{(after - before) / before:+.0%}" if before else "n/a"
    if hasattr(result, "drift"):  # exact against the decoded reference; drift measured
        checked = result.decoded_verdict()
    else:
        checked = f"cos {result.cosine:.5f}" if result.cosine is not None else "not verified"
    quality = quality_verdict(result.quality, result.quality_note)
    return (
        f"bytes {human_size(before)} -> {human_size(after)} ({change}) | {checked} | "
        f"{quality} | {result.seconds:.1f}s"
    )


def drift_lines(result: Any) -> list[str]:
    """The comparison with the float input, one line per output, and a note when the
    outputs moved far (weight-only quantize and sparsify, whose verification is
    exactness against the decoded reference)."""
    drift = getattr(result, "drift", None)
    if drift is None:
        return []
    lines = []
    gate = getattr(result, "drift_gate", None)
    for check in drift.checks:
        verdict = "" if gate is None else ("PASSED | " if check.passed else "FAILED | ")
        lines.append(
            f"float input: {verdict}output {check.name} | max|Δ| {check.max_abs_diff:.3g} | "
            f"rel {check.max_rel_diff:.3g} | cos {check.cosine:.6f}"
            + (f" | {gate}" if gate is not None else " | lossy by design: not judged")
        )
    cosine = getattr(result, "cosine", None)
    if gate is None and cosine is not None and cosine < FAR:
        lines.append(
            f"note: the outputs moved far from the float input (cos {cosine:.3f} on seeded "
            "inputs); measure quality on real data (--calib, --eval) or fail below a floor "
            "(--cosine)"
        )
    return lines


def verification_lines(result: Any) -> list[str]:
    """The verification table of ``result``, each line marked ``decoded reference:``
    for a weight rewrite, then its :func:`drift_lines`."""
    if result.verification is None:
        return drift_lines(result)
    lines = result.verification.render().splitlines()
    if hasattr(result, "drift"):
        lines = [f"decoded reference: {line}" for line in lines]
    return [*lines, *drift_lines(result)]


def finish(
    result: Any, lines: list[str], verdict: str, report_path: Path | None, command: str = "spa"
) -> None:
    """Print ``lines``, the share of the model ``command`` changed (and why the rest
    was left) and the verification table, write the JSON report when asked, print
    ``verdict``; exit with EXIT_VERIFY_FAILED when verification failed."""
    change = getattr(result, "change", None)
    if change is not None:
        lines = [*lines, *change.lines(command)]
    for line in lines:
        click.echo(line)
    for line in verification_lines(result):
        click.echo(line)
    if report_path is not None:
        from spa.stats.report import write_report

        write_report(result.as_dict(), report_path)
    echo_verdict(verdict, result.passed, result.output)
