"""spa: a graph-IR model optimizer over ONNX.

Import cost is kept low on purpose: heavy modules (onnxruntime, networkx,
TensorRT, torch) are imported by the functions that need them.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
