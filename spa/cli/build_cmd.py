"""``spa build``: a TensorRT engine from an ONNX model."""

from __future__ import annotations

import time
from pathlib import Path

import click

__all__ = ["build_command"]


@click.command("build")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Engine file to write."
)
@click.option(
    "--plugins", type=click.Path(path_type=Path), help="spa plugin library (libspa_trt_plugins.so)."
)
@click.option("--fp16", is_flag=True, help="Allow FP16 kernels (weakly typed TensorRT only).")
@click.option(
    "--workspace",
    "workspace_mb",
    type=int,
    default=4096,
    show_default=True,
    help="Builder workspace, MB.",
)
def build_command(
    model: Path, output: Path, plugins: Path | None, fp16: bool, workspace_mb: int
) -> None:
    """Build a TensorRT engine from MODEL (spa plugin ops need --plugins)."""
    from spa.trt.build import build_engine

    start = time.perf_counter()
    engine = build_engine(model, output, plugins=plugins, fp16=fp16, workspace_mb=workspace_mb)
    size = engine.stat().st_size / 2**20
    click.echo(f"PASSED | build | {engine} ({size:.1f} MB) | {time.perf_counter() - start:.1f}s")
