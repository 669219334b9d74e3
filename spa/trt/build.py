"""Build the plugin library with CMake and TensorRT engines with the TensorRT
Python API (imported lazily: nothing here needs TensorRT until an engine is
built). The CLI faces are ``spa plugins build`` and ``spa build``."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import onnx

from spa.errors import UserError
from spa.trt.ops import PLUGIN_OPS, SPA_DOMAIN

__all__ = [
    "TENSORRT_MISSING",
    "PluginBuild",
    "build_engine",
    "build_plugins",
    "default_source_dir",
    "import_tensorrt",
    "parse_cuda_archs",
    "plugin_ops_in",
]

logger = logging.getLogger(__name__)

TENSORRT_MISSING = (
    "TensorRT is not installed; pip install 'spa[tensorrt]' on a machine with an NVIDIA driver"
)
LIBRARY_NAME = "libspa_trt_plugins.so"


def default_source_dir() -> Path:
    """``plugins/`` of the spa source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "plugins"


def parse_cuda_archs(text: str) -> list[str]:
    """``"80,90"`` / ``"80;90"`` / ``"sm_90a"`` -> ``["80", "90"]`` / ``["90a"]``."""
    archs = [
        part.strip().removeprefix("sm_").removeprefix("compute_")
        for part in text.replace(";", ",").split(",")
    ]
    archs = [arch for arch in archs if arch]
    for arch in archs:
        if not arch.rstrip("af").isdigit() or int(arch.rstrip("af")) < 80:
            raise UserError(
                f"--cuda-arch {text!r}: each architecture must be 80 or newer (e.g. 80,90)"
            )
    if not archs:
        raise UserError("--cuda-arch is empty; pass e.g. 80,90")
    return archs


def _find_nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclasses.dataclass(frozen=True)
class PluginBuild:
    """What ``spa plugins build`` produced."""

    build_dir: Path
    kernels: Path
    harness: Path | None
    library: Path | None  # None where TensorRT headers were not found
    log: Path


def build_plugins(
    build_dir: Path,
    cuda_archs: list[str],
    *,
    source_dir: Path | None = None,
    tensorrt_root: Path | None = None,
    jobs: int = 2,
) -> PluginBuild:
    """Configure and build ``plugins/`` with CMake into ``build_dir``."""
    source = source_dir or default_source_dir()
    if not (source / "CMakeLists.txt").is_file():
        raise UserError(
            f"no plugins/CMakeLists.txt under {source}; pass --source PATH/TO/spa/plugins"
        )
    cmake = shutil.which("cmake")
    if cmake is None:
        raise UserError("cmake is not installed; pip install cmake (3.24 or newer) and retry")
    nvcc = _find_nvcc()
    if nvcc is None:
        raise UserError(
            "nvcc (the CUDA toolkit) is not installed; install CUDA 12.8+ or set CUDACXX=/path/to/nvcc"
        )
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path = build_dir / "build.log"
    configure = [
        cmake, "-S", str(source), "-B", str(build_dir),
        f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(cuda_archs)}",
    ]  # fmt: skip
    if tensorrt_root is not None:
        configure.append(f"-DTensorRT_ROOT={tensorrt_root}")
    build = [cmake, "--build", str(build_dir), "-j", str(jobs)]
    with log_path.open("w") as log:
        for command in (configure, build):
            logger.info("running %s", " ".join(command))
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
            if result.returncode:
                raise UserError(f"CMake failed (exit {result.returncode}); see {log_path}")
    kernels = build_dir / "libspa_kernels.a"
    harness = build_dir / "spa_kernel_harness"
    library = build_dir / LIBRARY_NAME
    return PluginBuild(
        build_dir, kernels, harness if harness.is_file() else None,
        library if library.is_file() else None, log_path,
    )  # fmt: skip


def plugin_ops_in(model: onnx.ModelProto) -> list[str]:
    """The spa plugin op types a model uses (sorted, unique)."""
    known = {op.op_type for op in PLUGIN_OPS}
    found = {n.op_type for n in model.graph.node if n.domain == SPA_DOMAIN and n.op_type in known}
    return sorted(found)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a UserError naming the fix."""
    try:
        import tensorrt
    except (ImportError, OSError):  # the wheel is missing, or libnvinfer cannot be loaded
        raise UserError(TENSORRT_MISSING) from None
    return tensorrt


def _write_atomically(data: bytes, output: Path) -> None:
    """Write to a temporary file next to ``output`` and rename: never a partial engine."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_engine(
    model_path: Path,
    output: Path,
    *,
    plugins: Path | None = None,
    fp16: bool = False,
    workspace_mb: int = 4096,
) -> Path:
    """Parse ``model_path`` with TensorRT's ONNX parser and write a serialized engine."""
    if not model_path.is_file():
        raise UserError(f"model {model_path} does not exist; pass the path of an .onnx file")
    if output.resolve() == model_path.resolve():
        raise UserError(f"output {output} is the input model; pass a different -o path")
    if workspace_mb <= 0:
        raise UserError(f"--workspace {workspace_mb}: must be a positive number of MB")
    if plugins is not None and not plugins.is_file():
        raise UserError(f"--plugins {plugins} does not exist; build it with 'spa plugins build'")
    uses = plugin_ops_in(onnx.load(str(model_path), load_external_data=False))
    if uses and plugins is None:
        raise UserError(
            f"the model uses spa plugin ops ({', '.join(uses)}); pass --plugins build/plugins/{LIBRARY_NAME} (spa plugins build)"
        )
    trt = import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    if plugins is not None:
        trt.get_plugin_registry().load_library(str(plugins))
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(model_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise UserError(f"TensorRT could not parse {model_path}: {first}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        flag = getattr(trt.BuilderFlag, "FP16", None)
        if flag is None:
            raise UserError(
                f"--fp16 is not available in TensorRT {trt.__version__} (strongly typed networks); convert the model to FP16 first"
            )
        config.set_flag(flag)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            f"TensorRT could not build an engine for {model_path}; rerun with -v for its log"
        )
    _write_atomically(bytes(serialized), output)
    return output
