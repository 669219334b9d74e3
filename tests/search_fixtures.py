"""Fixtures of the search tests (``spa optimize --max-drop``): the MLP of
:mod:`tests.search_metric` saved to a file, and 16 seeded calibration samples for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.search_metric import search_mlp


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(search_mlp(), str(path))
    return path


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, X=np.random.default_rng(5).standard_normal((16, 32, 64)).astype(np.float32))
    return path
