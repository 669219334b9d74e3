"""``spa build`` (TensorRT engine) and ``spa plugins build`` (CMake)."""

from __future__ import annotations

import time
from pathlib import Path

import click

__all__ = ["build_command", "plugins_group"]


@click.command("build")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Engine file to write.")
@click.option("--plugins", type=click.Path(path_type=Path), help="spa plugin library (libspa_trt_plugins.so).")
@click.option("--fp16", is_flag=True, help="Allow FP16 kernels (weakly typed TensorRT only).")
@click.option("--workspace", "workspace_mb", type=int, default=4096, show_default=True, help="Builder workspace, MB.")
def build_command(model: Path, output: Path, plugins: Path | None, fp16: bool, workspace_mb: int) -> None:
    """Build a TensorRT engine from MODEL (spa plugin ops need --plugins)."""
    from spa.plugins.build import build_engine

    start = time.perf_counter()
    engine = build_engine(model, output, plugins=plugins, fp16=fp16, workspace_mb=workspace_mb)
    size = engine.stat().st_size / 2**20
    click.echo(f"PASSED | build | {engine} ({size:.1f} MB) | {time.perf_counter() - start:.1f}s")


@click.group("plugins")
def plugins_group() -> None:
    """spa's TensorRT plugins (CUDA kernels, plugin library, harness)."""


@plugins_group.command("build")
@click.option("--cuda-arch", default="80,90", show_default=True, help="CUDA architectures, e.g. 80,90 or 90a.")
@click.option("--build-dir", type=click.Path(path_type=Path), default=Path("build/plugins"), show_default=True)
@click.option("--tensorrt-root", type=click.Path(path_type=Path), help="TensorRT prefix (default: $TensorRT_ROOT).")
@click.option("--source", type=click.Path(path_type=Path), help="plugins/ folder (default: this checkout's).")
@click.option("-j", "--jobs", type=int, default=2, show_default=True, help="Parallel compile jobs.")
def plugins_build(cuda_arch: str, build_dir: Path, tensorrt_root: Path | None, source: Path | None, jobs: int) -> None:
    """Build the kernels, the harness and (where TensorRT is found) the plugin library."""
    from spa.plugins.build import build_plugins, parse_cuda_archs

    start = time.perf_counter()
    result = build_plugins(
        build_dir, parse_cuda_archs(cuda_arch), source_dir=source, tensorrt_root=tensorrt_root, jobs=jobs
    )
    library = str(result.library) if result.library else "no TensorRT plugin library (TensorRT headers not found)"
    click.echo(f"PASSED | plugins build | {library} | {time.perf_counter() - start:.1f}s")
