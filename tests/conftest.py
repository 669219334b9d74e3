"""Shared fixtures: tiny models written inline, and a CLI runner."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import numpy_helper

from spa.cli.main import cli

#: Tests that read Fashion-MNIST from Debian's dataset-fashion-mnist skip, naming the install,
#: where it is missing (the README's test command installs it where apt-get can).
needs_fashion_mnist = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist",
)


def load_bench(name: str) -> Any:
    """plugins/bench/<name>.py (a script folder, not a package), registered in sys.modules under
    ``name`` (dataclasses look their module up there: sass_budget.py)."""
    path = Path(__file__).resolve().parents[1] / "plugins" / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def shared_folder(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A folder every pytest-xdist worker of this run sees (the workers' temporary folders
    share a parent), held under an exclusive lock: the first worker to enter builds what the
    folder is for, the others wait for it and find it built. Session-scoped fixtures that
    compile (the kernels, the emulation's sanitizer builds) use it instead of xdist_group
    marks, which pytest 9.2 with pytest-xdist 3.8 no longer honours (a worker ran each)."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / name
    folder.mkdir(exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mlp_model(seed: int = 0, hidden: int = 16) -> onnx.ModelProto:
    """X[N,8] -> MatMul -> Add -> Relu -> MatMul -> Identity -> Y[N,4], random weights."""
    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        mlp (float[N, 8] X) => (float[N, 4] Y) {
            H0 = MatMul(X, W1)
            H1 = Add(H0, B1)
            H2 = Relu(H1)
            H3 = MatMul(H2, W2)
            Y = Identity(H3)
        }
        """
    )
    for name, shape in (("W1", (8, hidden)), ("B1", (hidden,)), ("W2", (hidden, 4))):
        array = rng.standard_normal(shape).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), str(path))
    return path


@pytest.fixture
def external_mlp_path(tmp_path: Path) -> Path:
    """The MLP with its weights in mlp.data beside it."""
    folder = tmp_path / "external"
    folder.mkdir()
    path = folder / "mlp.onnx"
    onnx.save(
        mlp_model(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="mlp.data",
        size_threshold=0,
    )
    return path


@pytest.fixture
def run_cli():
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke
