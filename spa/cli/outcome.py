"""The end of a rewrite command, shared by ``spa quantize`` and ``spa sparsify``:
sizes in MB/kB, the bytes/cosine/time tail of the verdict line, and the
print -> report -> verdict -> exit code sequence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from spa.cli.options import echo_verdict

__all__ = ["finish", "human_size", "verdict_tail"]


def human_size(size: int) -> str:
    """``12.1 MB`` from one million bytes up, else ``3.4 kB``."""
    return f"{size / 1e6:.1f} MB" if size >= 1_000_000 else f"{size / 1e3:.1f} kB"


def verdict_tail(result: Any) -> str:
    """``bytes 12.1 MB -> 3.4 MB (-72%) | cos 0.99991 | quality ... | 2.1s`` of a result:
    the verification (seeded inputs) and the quality (held-out real data) separately."""
    from spa.verify.quality import quality_verdict

    before, after = result.bytes_before, result.bytes_after
    change = f"{(after - before) / before:+.0%}" if before else "n/a"
    cosine = f"cos {result.cosine:.5f}" if result.cosine is not None else "not verified"
    quality = quality_verdict(result.quality, result.quality_note)
    return (
        f"bytes {human_size(before)} -> {human_size(after)} ({change}) | {cosine} | "
        f"{quality} | {result.seconds:.1f}s"
    )


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
    if result.verification is not None:
        click.echo(result.verification.render())
    if report_path is not None:
        from spa.stats.report import write_report

        write_report(result.as_dict(), report_path)
    echo_verdict(verdict, result.passed, result.output)
