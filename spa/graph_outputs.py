"""What computes a graph's outputs: the producing node of an output, looking
through Identity nodes, and the logits behind each ``Softmax``/``LogSoftmax``
output.

One rule for every caller: ``spa verify``'s pre-softmax checks and its
Softmax resolution (:mod:`spa.verify`, :mod:`spa.verify.tolerance`) and the
sensitivity measurement's logits (:mod:`spa.pruning.sensitivity`). An output
reached through Identity nodes after a Softmax (Paddle's and skl2onnx's
classifiers end in Softmax -> Identity -> output) is still probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

__all__ = ["output_producer", "softmax_inputs"]

_SOFTMAX_OPS = ("Softmax", "LogSoftmax")
_DEFAULT_DOMAINS = ("", "ai.onnx")


def output_producer(producers: Mapping[str, onnx.NodeProto], name: str) -> onnx.NodeProto | None:
    """The node that computes value ``name`` (``producers``: value name -> the node
    that outputs it), looking through Identity nodes; None for a value no node
    computes (a graph input or initializer, directly or through Identity)."""
    node = producers.get(name)
    for _ in range(len(producers)):
        if node is None or node.op_type != "Identity" or node.domain not in _DEFAULT_DOMAINS:
            break
        node = producers.get(node.input[0])
    return node


def softmax_inputs(proto: onnx.ModelProto) -> dict[str, str]:
    """Graph output -> the input (the logits) of the ``Softmax``/``LogSoftmax``
    (default domain) that computes it, looking through Identity nodes
    (:func:`output_producer`); in graph-output order. The logits may be a graph
    input, an initializer or a graph output themselves: callers that only want
    values the graph computes and does not already return filter them."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    found: dict[str, str] = {}
    for value in proto.graph.output:
        node = output_producer(producers, value.name)
        if node is not None and node.op_type in _SOFTMAX_OPS and node.domain in _DEFAULT_DOMAINS:
            found[value.name] = node.input[0]
    return found
