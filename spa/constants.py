"""Reading constant values from the IR (initializers and Constant nodes)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

__all__ = [
    "RANDOM_OPS",
    "constant_array",
    "constant_size",
    "evaluate_node",
    "flushed_subnormals",
    "may_fold",
    "replace_with_initializer",
    "subnormal_count",
    "types_agree",
]

logger = logging.getLogger(__name__)

#: Ops whose output is random even on constant inputs: folding would freeze one draw.
RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)


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


def constant_size(value: ir.Value) -> int | None:
    """Elements of a constant (as :func:`constant_array` reads it) without reading it."""
    if value.is_graph_input():
        return None
    if value.const_value is not None:
        return value.const_value.size
    producer = value.producer()
    if producer is None or producer.op_type != "Constant" or producer.domain != "":
        return None
    attribute = producer.attributes.get("value")
    if attribute is None or attribute.type != ir.AttributeType.TENSOR:
        return None
    return attribute.as_tensor().size


#: Per float type: the unsigned view, its exponent bits and its mantissa bits. A value is
#: subnormal when its exponent bits are all zero and its mantissa is not.
_SUBNORMAL_BITS: dict[ir.DataType, tuple[type[np.unsignedinteger], int, int]] = {
    ir.DataType.FLOAT: (np.uint32, 0x7F800000, 0x007FFFFF),
    ir.DataType.DOUBLE: (np.uint64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    ir.DataType.BFLOAT16: (np.uint16, 0x7F80, 0x007F),
}
_CHUNK = 1 << 22  # elements scanned at a time: bounded temporaries on multi-GB weights


def subnormal_count(tensor: ir.TensorProtocol) -> int:
    """How many values of ``tensor`` are subnormal (0 for types this does not cover)."""
    bits = _SUBNORMAL_BITS.get(tensor.dtype)
    if bits is None or tensor.size == 0:
        return 0
    unsigned, exponent, mantissa = bits
    flat = np.ascontiguousarray(tensor.numpy()).reshape(-1).view(unsigned)
    return sum(
        int(np.count_nonzero(((chunk & exponent) == 0) & ((chunk & mantissa) != 0)))
        for chunk in (flat[start : start + _CHUNK] for start in range(0, flat.size, _CHUNK))
    )


def flushed_subnormals(tensor: ir.TensorProtocol) -> ir.Tensor:
    """A copy of ``tensor`` whose subnormal values are zeros of the same sign."""
    unsigned, exponent, mantissa = _SUBNORMAL_BITS[tensor.dtype]
    array = np.array(tensor.numpy(), copy=True)
    flat = array.reshape(-1).view(unsigned)
    sign = unsigned(~(exponent | mantissa) & np.iinfo(unsigned).max)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        chunk[((chunk & exponent) == 0) & ((chunk & mantissa) != 0)] &= sign
    return ir.Tensor(array, dtype=tensor.dtype, name=tensor.name)


def evaluate_node(
    node: ir.Node, arrays: list[np.ndarray | None], opset: int
) -> list[np.ndarray] | None:
    """Run one standard-domain node with ONNX's reference evaluator.

    ``arrays`` holds one array per input (None for a missing optional input).
    Returns None when the evaluator fails or produces anything but tensors.
    """
    names = [f"in{i}" if array is not None else "" for i, array in enumerate(arrays)]
    proto = onnx.helper.make_node(
        node.op_type, names, [f"out{i}" for i in range(len(node.outputs))]
    )
    proto.attribute.extend(ir.serde.serialize_attribute(a) for a in node.attributes.values())
    feeds = {name: array for name, array in zip(names, arrays, strict=True) if array is not None}
    try:
        results = ReferenceEvaluator(proto, opsets={"": opset}).run(None, feeds)
    except Exception as error:  # the evaluator raises many types; folding is optional
        logger.debug("not folding %s '%s': %s", node.op_type, node.name, error)
        return None
    if not all(isinstance(r, np.ndarray | np.generic) for r in results):
        return None  # sequences, optionals, maps stay as nodes
    return [np.asarray(r) for r in results]


def may_fold(node: ir.Node) -> bool:
    """A standard-domain node that constant folding may evaluate: no random op, no
    ``Constant``, no graph output, no subgraph."""
    if node.domain != "" or node.op_type in RANDOM_OPS or node.op_type == "Constant":
        return False
    if any(value.is_graph_output() for value in node.outputs):
        return False
    return not any(
        a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for a in node.attributes.values()
    )


def types_agree(node: ir.Node, results: list[np.ndarray]) -> bool:
    """The evaluator's dtypes match the types the graph declares (else do not trust it)."""
    for value, array in zip(node.outputs, results, strict=True):
        try:
            dtype = ir.DataType.from_numpy(array.dtype)
        except TypeError:  # object arrays
            return False
        if dtype == ir.DataType.STRING:
            return False  # string tensors stay as nodes
        if value.dtype is not None and dtype != value.dtype:
            logger.debug(
                "not folding %s '%s': evaluator gave %s", node.op_type, node.name, array.dtype
            )
            return False
    return True


def replace_with_initializer(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    """Make an initializer holding ``array`` take ``value``'s name and uses."""
    tensor = ir.Tensor(array, name=value.name)
    constant = ir.Value(
        name=value.name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(tensor.dtype),
        const_value=tensor,
    )
    value.name = f"{value.name}__folded"
    graph.register_initializer(constant)
    value.replace_all_uses_with(constant)
