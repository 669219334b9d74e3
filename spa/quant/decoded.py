"""The float model a weight rewrite encodes, for the exactness check of lossy rewrites.

Quantizing weights changes a model's outputs by design, so comparing the output
with the float input cannot tell a correct rewrite from a broken one: depth alone
moves a healthy INT8 transformer below any fixed cosine, while a wrong packing
(a swapped nibble, a transposed scale, a bias applied twice) may stay above it.
What a weight-only rewrite promises exactly is narrower: the written model
computes what the input computes with each rewritten weight replaced by the values
its stored form decodes to. :func:`decoded_model` builds that model (the
*decoded reference*); ``spa quantize --verify`` compares the output with it at a
float tolerance and reports the distance to the float input, and the quality on
real data, separately.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

__all__ = ["decoded_model"]


def decoded_model(model: ir.Model, decoded: Mapping[str, Callable[[], np.ndarray]]) -> ir.Model:
    """``model`` (the one the rewrite read) with each initializer named in ``decoded``
    given the values its function returns, in place (subgraph bodies included).
    A name the model does not hold is a bug of the caller: RuntimeError."""
    found: set[str] = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.inputs:
            if value is None or value.const_value is None:
                continue
            name = value.name or ""
            if name not in decoded or name in found:
                continue
            array = decoded[name]()
            stored = value.const_value
            if tuple(array.shape) != tuple(stored.shape) or array.dtype != stored.dtype.numpy():
                raise RuntimeError(
                    f"decoded weight '{name}' is {array.dtype}{list(array.shape)}, "
                    f"the model's is {stored.dtype.numpy()}{list(stored.shape)}"
                )
            value.const_value = ir.Tensor(array, name=name)
            found.add(name)
    missing = sorted(set(decoded) - found)
    if missing:
        raise RuntimeError(f"decoded weights not found in the model: {missing[:5]}")
    return model
