"""A task metric for tests of ``--eval``: top-1 accuracy of the conftest MLP on
32 fixed inputs, labelled by the dense MLP itself (so the dense model scores 1.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spa.ort import create_session
from tests.conftest import mlp_model

_INPUTS = np.random.default_rng(11).standard_normal((32, 8)).astype(np.float32)


def _top1(path: str | Path | bytes) -> np.ndarray:
    session = create_session(path)
    return np.asarray(session.run(None, {"X": _INPUTS})[0]).argmax(axis=-1)


def mlp_accuracy(path: Path) -> float:
    labels = _top1(mlp_model().SerializeToString())
    return float((_top1(path) == labels).mean())
