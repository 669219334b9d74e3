"""Scopes of control-flow nodes: the outer values an If/Loop/Scan body reads.

An ONNX body may use any value of an enclosing graph by name (an *outer-scope
reference*) without listing it among the node's inputs. The analyzer sees the
control-flow node's inputs and outputs only; a value read this way would look
unconsumed, so its channel group could be pruned while the body still expects
the old width (an LSTM inside an ``If`` branch then fails in ONNX Runtime).
:func:`outer_references` finds these values so the analyzer can freeze them
with a reason naming the node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import onnx_ir as ir

__all__ = ["OuterReference", "has_subgraph", "outer_references", "subgraphs"]


@dataclasses.dataclass(frozen=True)
class OuterReference:
    """``value`` (defined outside ``node``'s bodies) is read inside them by ``reader``
    (a node description such as ``LSTM 'lstm'``, or ``output of body 'then'``)."""

    value: ir.Value
    reader: str


def has_subgraph(node: ir.Node) -> bool:
    """Does the node carry a graph attribute (If, Loop, Scan, custom ops)?"""
    return any(
        attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for attr in node.attributes.values()
    )


def subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    """The node's own bodies (not nested ones), in attribute order."""
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.as_graphs()


def _nested_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    yield graph
    for node in graph:
        for body in subgraphs(node):
            yield from _nested_graphs(body)


def outer_references(node: ir.Node) -> list[OuterReference]:
    """Every value defined outside ``node``'s bodies and read inside them, at any
    depth (first reader kept), in the order the bodies use them."""
    graphs = [graph for body in subgraphs(node) for graph in _nested_graphs(body)]
    inside = {id(graph) for graph in graphs}
    found: dict[int, OuterReference] = {}

    def note(value: ir.Value | None, reader: str) -> None:
        if value is None or id(value) in found:
            return
        owner = value.graph
        if owner is None or id(owner) not in inside:
            found[id(value)] = OuterReference(value, reader)

    for graph in graphs:
        for inner in graph:
            for value in inner.inputs:
                note(value, f"{inner.op_type} '{inner.name}'")
        for value in graph.outputs:
            note(value, f"output of body '{graph.name}'")
    return list(found.values())
