"""Rules for Einsum, DepthToSpace/SpaceToDepth and QuantizeLinear/DequantizeLinear.

* Einsum: every letter is one channel space; its occurrences in the inputs and
  the output are coupled by identities (a letter contracted between two inputs
  couples those inputs). A letter summed out of a single input is left
  unmapped (frozen, as a Reduce* axis is); an ellipsis or a letter repeated in
  one term (a diagonal) is a barrier.
* DepthToSpace/SpaceToDepth: output channel ``c`` of DepthToSpace reads input
  channels ``c + C*k`` (DCR) or ``c*b*b + k`` (CRD) for the ``b*b`` block
  positions ``k``; SpaceToDepth is DCR's inverse. The coarse ``C`` side is the
  space that is pruned, so a pruned channel always takes its whole block.
* QuantizeLinear/DequantizeLinear: per-tensor parameters pass every axis
  through; per-axis scale and zero point are sliced with the quantized axis;
  blocked quantization passes the axes it does not block and freezes the
  blocked one.
"""

from __future__ import annotations

import onnx_ir as ir

from spa.analysis.index_maps import Block, Identity, Tile
from spa.analysis.rules.elementwise import unary_couplings
from spa.analysis.rules.registry import (
    Barrier,
    Coupling,
    RuleContext,
    Space,
    Unconstrained,
    name,
    register_rule,
    unknown_shapes,
)

__all__ = ["parse_einsum"]

Result = list[Coupling | Barrier | Unconstrained]


def parse_einsum(equation: str, count: int) -> tuple[list[str], str] | str:
    """``(input terms, output term)`` of an equation, or the reason it is not read."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if "." in equation:
        return "uses an ellipsis"
    if len(terms) != count:
        return f"has {len(terms)} terms for {count} inputs"
    for term in (*terms, rhs):
        if not term.isalpha() and term:
            return f"has a term '{term}' that is not letters"
        if len(set(term)) != len(term):
            return f"repeats a letter in '{term}' (a diagonal)"
    if not arrow:
        letters = "".join(terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs


@register_rule("Einsum", opsets=(12, 10_000))
def _einsum(node: ir.Node, context: RuleContext) -> Result:
    inputs = [v for v in node.inputs if v is not None]
    y = node.outputs[0]
    values = tuple(name(v) for v in (*inputs, y))
    parsed = parse_einsum(str(context.attribute(node, "equation", "")), len(inputs))
    if isinstance(parsed, str):
        return [Barrier(f"Einsum '{node.name}' {parsed}", values=values)]
    terms, output_term = parsed
    occurrences: dict[str, list[tuple[Space, int | None]]] = {}
    for value, term in [*zip(inputs, terms, strict=True), (y, output_term)]:
        shape = context.shape(value)
        if shape is None or len(shape) != len(term):
            return [unknown_shapes(node, *inputs, y)]
        for axis, letter in enumerate(term):
            occurrences.setdefault(letter, []).append(((name(value), axis), shape[axis]))
    out: Result = []
    for letter, places in occurrences.items():
        dims = {dim for _, dim in places if dim is not None}
        if len(dims) > 1:
            spaces = tuple(space for space, _ in places)
            out.append(Barrier(f"Einsum '{node.name}' broadcasts letter '{letter}'", spaces))
            continue
        if not dims or len(places) < 2:
            continue  # symbolic (batch) or summed out of one input: left unmapped
        size = dims.pop()
        first = places[0][0]
        out += [Coupling(first, space, Identity(size)) for space, _ in places[1:]]
    return out


@register_rule("DepthToSpace", "SpaceToDepth")
def _depth_to_space(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    in_shape, out_shape = context.shape(x), context.shape(y)
    if in_shape is None or out_shape is None or len(in_shape) != 4:
        return [unknown_shapes(node, x, y)]
    block = int(context.attribute(node, "blocksize", 1))
    out: Result = []
    if in_shape[0] is not None:
        out.append(Coupling((name(x), 0), (name(y), 0), Identity(in_shape[0])))
    to_space = node.op_type == "DepthToSpace"
    coarse, fine = (y, x) if to_space else (x, y)
    channels = context.shape(coarse)[1]  # type: ignore[index]
    if channels is None:
        return out
    mode = str(context.attribute(node, "mode", "DCR")) if to_space else "DCR"
    index_map = Block(channels, block * block) if mode == "CRD" else Tile(channels, block * block)
    out.append(Coupling((name(coarse), 1), (name(fine), 1), index_map))
    return out


@register_rule("QuantizeLinear", "DequantizeLinear")
def _quantize(node: ir.Node, context: RuleContext) -> Result:
    x, scale, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and scale is not None
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    parameters = [v for v in (scale, zero_point) if v is not None]
    shape, scale_shape = context.shape(x), context.shape(scale)
    if shape is None or scale_shape is None:
        return [unknown_shapes(node, x, y)]
    rank = len(shape)
    axis = int(context.attribute(node, "axis", 1)) % max(rank, 1)
    block = int(context.attribute(node, "block_size", 0))
    if len(scale_shape) == 0 or tuple(scale_shape) == (1,):
        return [Unconstrained(tuple(name(v) for v in parameters)), *unary_couplings(x, y, context)]
    if block == 0 and len(scale_shape) == 1:
        out: Result = [*unary_couplings(x, y, context)]
        size = shape[axis]
        if size is not None:
            out += [Coupling((name(v), 0), (name(y), axis), Identity(size)) for v in parameters]
        return out
    if block > 0 and len(scale_shape) == rank:
        out = []
        for a, dim in enumerate(shape):
            spaces = ((name(x), a), (name(y), a), *((name(v), a) for v in parameters))
            if a == axis:
                reason = f"{node.op_type} '{node.name}' quantizes axis {a} in blocks of {block}"
                out.append(Barrier(reason, spaces))
            elif dim is not None:
                out.append(Coupling((name(x), a), (name(y), a), Identity(dim)))
                out += [Coupling((name(v), a), (name(y), a), Identity(dim)) for v in parameters]
        return out
    reason = f"{node.op_type} '{node.name}' has a scale of shape {scale_shape} spa does not read"
    return [Barrier(reason, values=(name(x), name(y), *(name(v) for v in parameters)))]
