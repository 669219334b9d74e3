"""Export the PyTorch part of the spa model zoo as light ONNX files.

Usage (in the models venv, see models/README.md)::

    python models/export_zoo.py [--only NAME ...] [--out models/zoo] [--list]

Each model is exported to a temporary file, checked with onnx.checker, run in
ONNX Runtime on seeded inputs, lightened with :func:`spa.zoo.make_light` and
saved as ``<out>/<name>.onnx``; its row in ``<out>/registry.json`` is replaced
(or appended). The nine onnx-wheel rows are always kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch_text
import torch_vision
from zoo_common import main

SPECS = [*torch_vision.SPECS, *torch_text.SPECS]

if __name__ == "__main__":
    sys.exit(main(SPECS))
