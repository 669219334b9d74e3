"""``spa plugins build``: the CUDA kernels, harness and TensorRT plugin library (CMake)."""

from __future__ import annotations

import time
from pathlib import Path

import click

__all__ = ["plugins_group"]


@click.group("plugins")
def plugins_group() -> None:
    """spa's TensorRT plugins (CUDA kernels, plugin library, harness)."""


@plugins_group.command("build")
@click.option(
    "--cuda-arch", default="80,90", show_default=True, help="CUDA architectures, e.g. 80,90 or 90a."
)
@click.option(
    "--build-dir", type=click.Path(path_type=Path), default=Path("build/plugins"), show_default=True
)
@click.option(
    "--tensorrt-root",
    type=click.Path(path_type=Path),
    help="TensorRT prefix (default: $TensorRT_ROOT).",
)
@click.option(
    "--source", type=click.Path(path_type=Path), help="plugins/ folder (default: this checkout's)."
)
@click.option("-j", "--jobs", type=int, default=2, show_default=True, help="Parallel compile jobs.")
def plugins_build(
    cuda_arch: str, build_dir: Path, tensorrt_root: Path | None, source: Path | None, jobs: int
) -> None:
    """Build the kernels, the harness and (where TensorRT is found) the plugin library."""
    from spa.trt.build import build_plugins, parse_cuda_archs

    start = time.perf_counter()
    result = build_plugins(
        build_dir,
        parse_cuda_archs(cuda_arch),
        source_dir=source,
        tensorrt_root=tensorrt_root,
        jobs=jobs,
    )
    library = (
        str(result.library)
        if result.library
        else "no TensorRT plugin library (TensorRT headers not found)"
    )
    click.echo(f"PASSED | plugins build | {library} | {time.perf_counter() - start:.1f}s")
