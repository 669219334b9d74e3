"""A task metric for tests of ``spa optimize --max-drop --eval``: top-1 accuracy of
the search tests' MLP on 64 fixed inputs, labelled by the dense MLP itself (so the
dense model scores 1.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from spa.ort import create_session

_INPUTS = np.random.default_rng(12).standard_normal((64, 64)).astype(np.float32)


def search_mlp(hidden: int = 128) -> onnx.ModelProto:
    """X[N,64] -> MatMul -> Add -> Relu -> Gemm(transB) -> Y[N,10], seeded weights."""
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        mlp (float[N, 64] X) => (float[N, 10] Y) {
            H0 = MatMul(X, W1)
            H1 = Add(H0, B1)
            H2 = Relu(H1)
            Y = Gemm<transB: int = 1>(H2, W2, B2)
        }
        """
    )
    rng = np.random.default_rng(3)
    for name, shape in (("W1", (64, hidden)), ("B1", (hidden,)), ("W2", (10, hidden)), ("B2", (10,))):
        array = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model)
    return model


def _top1(path: str | Path | bytes) -> np.ndarray:
    return np.asarray(create_session(path).run(None, {"X": _INPUTS})[0]).argmax(axis=-1)


def mlp_accuracy(path: Path) -> float:
    labels = _top1(search_mlp().SerializeToString())
    return float((_top1(path) == labels).mean())
