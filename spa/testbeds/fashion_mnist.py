"""Fashion-MNIST (60k train, 10k test, 28x28 grey images, 10 classes) and classifier accuracy.

Read from the IDX files of the Debian package ``dataset-fashion-mnist`` (Zalando Research, MIT
licence) under :data:`DATA_DIR`. Images are float32 [n, 1, 28, 28] scaled to [0, 1], the input
``models/testbeds/fashion_cnn.onnx`` was trained on; labels are int64.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import onnx

from spa.errors import UserError
from spa.progress import track
from spa.testbeds import Testbed, session_for

__all__ = [
    "CLASSES",
    "DATA_DIR",
    "FIXTURE",
    "TESTBEDS",
    "accuracy",
    "calibration_feeds",
    "evaluate",
    "fixture_path",
    "load",
]

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_PREFIX = {"train": "train", "test": "t10k"}


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path} not found; apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise UserError(
            f"{path} is not an IDX file (magic {found:#x}); "
            "reinstall with apt-get install --reinstall dataset-fashion-mnist"
        )
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


@functools.cache
def _load(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _PREFIX[split]
    images = _read_idx(DATA_DIR / f"{prefix}-images-idx3-ubyte.gz", 0x803)
    labels = _read_idx(DATA_DIR / f"{prefix}-labels-idx1-ubyte.gz", 0x801)
    if len(images) != len(labels):
        raise UserError(
            f"{split}: {len(images)} images but {len(labels)} labels; "
            "reinstall with apt-get install --reinstall dataset-fashion-mnist"
        )
    scaled = (images.astype(np.float32) / 255.0)[:, None]
    scaled.flags.writeable = False
    return scaled, labels.astype(np.int64)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [n, 1, 28, 28] in [0, 1], labels int64 [n]) of ``split`` ("train"/"test").

    The arrays are cached and read-only; copy them before changing them.
    """
    if split not in _PREFIX:
        raise UserError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    return _load(split)


def accuracy(
    model: str | os.PathLike[str] | onnx.ModelProto,
    split: str = "test",
    limit: int | None = None,
    batch: int = 256,
) -> float:
    """Share of the first ``limit`` images of ``split`` (all when None) whose arg-max logit is
    the label; ``model`` maps ``images`` [batch, 1, 28, 28] to ``logits`` [batch, 10]."""
    images, labels = load(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    session = session_for(model)
    input_name = session.get_inputs()[0].name
    correct = 0
    starts = range(0, len(images), batch)
    for start in track(starts, total=len(starts), description="accuracy"):
        (logits,) = session.run(None, {input_name: images[start : start + batch]})
        correct += int((logits.argmax(axis=-1) == labels[start : start + batch]).sum())
    return correct / len(images)


def calibration_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` feeds ``{"images": float32 [1, 1, 28, 28]}`` drawn without replacement (seeded)
    from the training split."""
    images, _ = load("train")
    picks = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return [{"images": images[i : i + 1].copy()} for i in picks]


#: The committed fixture trained on the training split (docs/testbeds.md, "Models").
FIXTURE = Path(__file__).resolve().parents[2] / "models" / "testbeds" / "fashion_cnn.onnx"


def fixture_path() -> Path:
    """``models/testbeds/fashion_cnn.onnx`` of the source tree."""
    if not FIXTURE.is_file():
        raise UserError(f"{FIXTURE} not found; the Fashion-MNIST CNN fixture lives in spa's source tree")
    return FIXTURE


def evaluate(model: str | os.PathLike[str] | onnx.ModelProto, limit: int | None = None) -> dict[str, float]:
    """``{"accuracy": ...}`` on the test split; ``limit`` its first images."""
    return {"accuracy": accuracy(model, "test", limit=limit)}


TESTBEDS = (Testbed(
    name="fashion_cnn",
    description="small CNN trained here (models/testbeds/fashion_cnn.onnx)",
    metric="accuracy",
    higher_is_better=True,
    model_path=fixture_path,
    calibration_feeds=calibration_feeds,
    evaluate=evaluate,
    dense={"accuracy": 0.9140},
),)
