"""Reading constant values from the IR (initializers and Constant nodes)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["constant_array"]


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """Contents of an initializer or of a Constant node's output, else None.

    An initializer that is also a graph input can be overridden at run time, so
    it is not a constant.
    """
    if value is None or value.is_graph_input():
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attribute = producer.attributes.get("value")
        if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
            return attribute.as_tensor().numpy()
    return None
