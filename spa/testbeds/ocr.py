"""PP-OCRv4 text recognition and detection, the ONNX models the ``rapidocr-onnxruntime`` wheel
(1.4.4, Apache-2.0) ships, on text rendered by :mod:`spa.testbeds.text_render`.

Recognition (``ocr_rec``, ``ch_PP-OCRv4_rec_infer.onnx``): input ``x`` float32
``[batch, 3, 48, width]``, output ``[batch, width / 8, 6625]`` softmax over CTC classes (blank,
the 6,623 characters in the model's ``character`` metadata, space). Pre- and post-processing
follow RapidOCR's ``TextRecognizer`` and ``CTCLabelDecode``: the BGR line is resized to height
48 keeping its aspect ratio (OpenCV's bilinear, :mod:`spa.testbeds.resize`), scaled to [-1, 1]
and zero-padded on the right to width 320 (wider lines keep their width); greedy CTC decoding
(arg-max, merge repeats, drop blanks), outer spaces stripped. Metric: character error rate, the
Levenshtein distance summed over lines over the reference length.

Detection (``ocr_det``, ``ch_PP-OCRv4_det_infer.onnx``): input ``x`` float32
``[batch, 3, height, width]`` (multiples of 32), output ``[batch, 1, height, width]`` text
probability (a DB head). The 640 x 480 pages are fed at their size (PaddleOCR's default limit:
longest side at most 960; RapidOCR's config would scale the short side up to 736); pixels are
scaled with RapidOCR's ``mean = std = 0.5``. Post-processing follows DB's (``thresh`` 0.3,
``box_thresh`` 0.5, ``unclip_ratio`` 1.6 of RapidOCR's config) for axis-aligned text: connected
regions of probability > 0.3, kept when their mean probability is >= 0.5 and both sides are
>= 3 px, each region's bounding box grown by area * 1.6 / perimeter on every side. Metric: F1 of predicted
against rendered line boxes, matched one-to-one greedily by IoU >= 0.5, counted over the split.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.errors import UserError
from spa.testbeds import Testbed, session_for
from spa.testbeds.packages import package_file
from spa.testbeds.resize import resize
from spa.testbeds.text_render import Page, render_line, render_page, rng_for, text_lines

__all__ = [
    "DENSE_DET",
    "DENSE_REC",
    "EVAL_LINES",
    "EVAL_PAGES",
    "TESTBEDS",
    "box_f1",
    "ctc_decode",
    "det_input",
    "detect_boxes",
    "edit_distance",
    "eval_lines",
    "eval_pages",
    "evaluate_det",
    "evaluate_rec",
    "rec_input",
]

DISTRIBUTION = "rapidocr-onnxruntime"
INSTALL = "pip install 'spa[testbeds]' (rapidocr-onnxruntime ships the PP-OCRv4 models)"
EVAL_LINES = 300
EVAL_PAGES = 60
#: Full-evaluation figures of the dense models (docs/testbeds.md says how they were measured).
DENSE_REC = {"cer": 0.0105, "line_accuracy": 0.8700}
DENSE_DET = {"f1": 0.9832, "precision": 0.9832, "recall": 0.9832}
_HEIGHT, _MIN_WIDTH = 48, 320
_THRESH, _BOX_THRESH, _UNCLIP = 0.3, 0.5, 1.6


def rec_model_path() -> Path:
    """``ch_PP-OCRv4_rec_infer.onnx`` inside the installed wheel."""
    return package_file(DISTRIBUTION, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                        INSTALL)


def det_model_path() -> Path:
    """``ch_PP-OCRv4_det_infer.onnx`` inside the installed wheel."""
    return package_file(DISTRIBUTION, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                        INSTALL)


@functools.cache
def _characters() -> tuple[str, ...]:
    """CTC classes: blank, the shipped model's ``character`` metadata lines, space (read from
    the wheel's model, so a rewritten model that dropped its metadata decodes the same)."""
    model = onnx.load(str(rec_model_path()), load_external_data=False)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if "character" not in metadata:
        raise UserError(f"{rec_model_path()} has no 'character' metadata; reinstall: {INSTALL}")
    return ("", *metadata["character"].splitlines(), " ")


def rec_input(image: np.ndarray) -> np.ndarray:
    """float32 [1, 3, 48, W] of a BGR uint8 line image, W = max(320, int(48 * w / h)); the
    line is resized to ceil(48 * w / h) columns, at most W (RapidOCR's ``resize_norm_img``)."""
    height, width = image.shape[:2]
    padded_width = max(_MIN_WIDTH, int(_HEIGHT * width / height))
    resized_width = min(math.ceil(_HEIGHT * width / height), padded_width)
    pixels = resize(image, resized_width, _HEIGHT).astype(np.float32) / 255.0
    batch = np.zeros((1, 3, _HEIGHT, padded_width), dtype=np.float32)
    batch[0, :, :, :resized_width] = (pixels.transpose(2, 0, 1) - 0.5) / 0.5
    return batch


def ctc_decode(probabilities: np.ndarray) -> list[str]:
    """Greedy CTC decoding of ``[batch, steps, classes]``: arg-max, merge repeats, drop blank."""
    characters = _characters()
    texts = []
    for best in probabilities.argmax(axis=-1):
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        texts.append("".join(characters[i] for i in best[keep & (best != 0)]))
    return texts


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions cost 1)."""
    previous = list(range(len(second) + 1))
    for i, char in enumerate(first, 1):
        current = [i]
        for j, other in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def eval_lines(limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(text, BGR image) of the evaluation lines: :data:`EVAL_LINES` lines evenly spread over
    the evaluation text (the first ``limit`` of them when given), each rendered with its own
    generator."""
    texts = text_lines("eval")
    picks = np.linspace(0, len(texts) - 1, EVAL_LINES).round().astype(np.int64)
    count = EVAL_LINES if limit is None else min(limit, EVAL_LINES)
    return [(texts[picks[i]], render_line(texts[picks[i]], rng_for("eval", 0, i))) for i in range(count)]


def evaluate_rec(model: Any, limit: int | None = None) -> dict[str, float]:
    """``{"cer", "line_accuracy"}`` of a recognition model (path, ModelProto or session) on the
    evaluation lines (the first ``limit`` when given)."""
    session = session_for(model)
    input_name = session.get_inputs()[0].name
    errors = length = exact = 0
    lines = eval_lines(limit)
    for text, image in lines:
        (probabilities,) = session.run(None, {input_name: rec_input(image)})
        predicted = ctc_decode(probabilities)[0].strip()
        errors += edit_distance(predicted, text)
        length += len(text)
        exact += predicted == text
    return {"cer": errors / length, "line_accuracy": exact / len(lines)}


def rec_calibration_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` feeds ``{"x": float32 [1, 3, 48, width]}`` of calibration lines (random lines of the
    calibration text, rendered with the calibration generators of ``seed``)."""
    texts = text_lines("calibration")
    feeds = []
    for index in range(n):
        rng = rng_for("calibration", seed, index)
        feeds.append({"x": rec_input(render_line(texts[int(rng.integers(len(texts)))], rng))})
    return feeds


def det_input(image: np.ndarray) -> np.ndarray:
    """float32 [1, 3, H, W] of a BGR uint8 page, each side rounded to a multiple of 32."""
    height, width = image.shape[:2]
    target_h, target_w = max(32, round(height / 32) * 32), max(32, round(width / 32) * 32)
    if (target_h, target_w) != (height, width):
        image = resize(image, target_w, target_h)
    pixels = image.astype(np.float32) / 255.0
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()


def detect_boxes(probability: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes [n, 4] (x0, y0, x1, y1 in the page's pixels) from a [H', W'] probability map."""
    from scipy import ndimage

    labels, _ = ndimage.label(probability > _THRESH)
    scale_x, scale_y = width / probability.shape[1], height / probability.shape[0]
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labels), 1):
        if found is None:
            continue
        rows, cols = found
        box_h, box_w = rows.stop - rows.start, cols.stop - cols.start
        if min(box_h, box_w) < 3 or probability[found][labels[found] == index].mean() < _BOX_THRESH:
            continue
        grow = box_h * box_w * _UNCLIP / (2 * (box_h + box_w))
        boxes.append(((cols.start - grow) * scale_x, (rows.start - grow) * scale_y,
                      (cols.stop + grow) * scale_x, (rows.stop + grow) * scale_y))
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def box_f1(predicted: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """(matches, predicted, true) counts: pairs matched one-to-one, highest IoU first."""
    if len(predicted) == 0 or len(truth) == 0:
        return 0, len(predicted), len(truth)
    iou = np.stack([_iou(box, truth) for box in predicted])
    matches = 0
    while True:
        best = np.unravel_index(iou.argmax(), iou.shape)
        if iou[best] < threshold:
            break
        matches += 1
        iou[best[0], :] = -1.0
        iou[:, best[1]] = -1.0
    return matches, len(predicted), len(truth)


def _page(split: str, seed: int, index: int) -> Page:
    texts = text_lines(split)
    rng = rng_for(split, seed, index)
    start = int(rng.integers(len(texts)))
    count = int(rng.integers(3, 10))
    return render_page(list(texts[start : start + count]), rng)


def eval_pages(limit: int | None = None) -> list[Page]:
    """The :data:`EVAL_PAGES` evaluation pages (the first ``limit`` when given): 3 to 9
    consecutive lines of the evaluation text from a random start, on a 640 x 480 page."""
    count = EVAL_PAGES if limit is None else min(limit, EVAL_PAGES)
    return [_page("eval", 0, index) for index in range(count)]


def evaluate_det(model: Any, limit: int | None = None) -> dict[str, float]:
    """``{"f1", "precision", "recall"}`` of a detection model (path, ModelProto or session) on
    the evaluation pages (the first ``limit`` when given)."""
    session = session_for(model)
    input_name = session.get_inputs()[0].name
    matched = predicted = true = 0
    for page in eval_pages(limit):
        (probability,) = session.run(None, {input_name: det_input(page.image)})
        boxes = detect_boxes(probability[0, 0], *page.image.shape[:2])
        counts = box_f1(boxes, page.boxes)
        matched, predicted, true = matched + counts[0], predicted + counts[1], true + counts[2]
    precision = matched / predicted if predicted else 0.0
    recall = matched / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def det_calibration_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` feeds ``{"x": float32 [1, 3, 480, 640]}`` of calibration pages (``seed``)."""
    return [{"x": det_input(_page("calibration", seed, index).image)} for index in range(n)]


TESTBEDS = (
    Testbed(
        name="ocr_rec",
        description="PP-OCRv4 text recognition (rapidocr-onnxruntime wheel)",
        metric="cer",
        higher_is_better=False,
        model_path=rec_model_path,
        calibration_feeds=rec_calibration_feeds,
        evaluate=evaluate_rec,
        dense=DENSE_REC,
    ),
    Testbed(
        name="ocr_det",
        description="PP-OCRv4 text detection (rapidocr-onnxruntime wheel)",
        metric="f1",
        higher_is_better=True,
        model_path=det_model_path,
        calibration_feeds=det_calibration_feeds,
        evaluate=evaluate_det,
        dense=DENSE_DET,
    ),
)
