"""Rules for fused attention: com.microsoft MultiHeadAttention, GroupQueryAttention
and RotaryEmbedding, ONNX opset-23 Attention and RotaryEmbedding.

Heads are virtual spaces (see :func:`spa.analysis.rules.contrib.heads_space`);
KV heads get their own, ``("<node>/kv_heads", 0)``, which maps to the query
heads by ``Block(kv_heads, query_heads_per_kv_head)``: pruning a KV head
removes its query heads with it, so every KV head keeps the same number of
query heads. ``head_dim`` is never pruned: the default softmax scale is
``1/sqrt(head_dim)`` and RoPE rotates half-pairs inside it, so only whole
heads go. :func:`sized_attributes` names the attribute that follows each
space's new size (``num_heads``, ``kv_num_heads``, ``q_num_heads``, ``N``,
``hidden_size``); the slicing pass rewrites them.
"""

from __future__ import annotations

import onnx_ir as ir

from spa.analysis.index_maps import Block, Identity, Offset
from spa.analysis.rules.contrib import MS, heads_space
from spa.analysis.rules.layers import recurrent_hidden_space
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

__all__ = ["kv_heads_space", "sized_attributes"]

Result = list[Coupling | Barrier | Unconstrained]


def kv_heads_space(node: ir.Node) -> Space:
    """The virtual channel space of an attention node's KV heads."""
    return (f"{node.name or id(node)}/kv_heads", 0)


def sized_attributes(node: ir.Node) -> list[tuple[str, Space]]:
    """``(attribute, space)``: the attribute must hold the space's size after slicing."""
    domain, op = node.domain or "", node.op_type
    present = {
        key
        for key in ("num_heads", "q_num_heads", "kv_num_heads")
        if key in node.attributes
        and node.attributes[key].type == ir.AttributeType.INT
        and node.attributes[key].value > 0
    }
    found: list[tuple[str, Space]] = []
    if domain == "" and op in ("LSTM", "GRU", "RNN"):
        found.append(("hidden_size", recurrent_hidden_space(node)))
    elif domain == "" and op in ("Conv", "ConvTranspose") and node.inputs[0] is not None:
        if _is_depthwise(node):
            found.append(("group", (name(node.inputs[0]), 1)))
    elif domain == MS and op == "MatMulNBits" and node.outputs[0].shape is not None:
        found.append(("N", (name(node.outputs[0]), len(node.outputs[0].shape) - 1)))
    elif domain in ("", MS):
        for attribute in ("num_heads", "q_num_heads"):
            if attribute in present:
                found.append((attribute, heads_space(node)))
        if "kv_num_heads" in present:
            found.append(("kv_num_heads", kv_heads_space(node)))
    return found


def _is_depthwise(node: ir.Node) -> bool:
    """A Conv/ConvTranspose with one input channel per group (depthwise, maybe
    with a multiplier): its input's channel count (as inferred before slicing)
    is its group count."""
    x, group = node.inputs[0], node.attributes.get("group")
    if x is None or x.shape is None or len(x.shape) < 2 or group is None:
        return False
    return group.value > 1 and x.shape[1] == group.value


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _identities(
    pairs: list[tuple[ir.Value | None, int, ir.Value | None, int]], context: RuleContext
) -> Result:
    """Identity couplings between axes whose static dim is known on the first side."""
    out: Result = []
    for a, a_axis, b, b_axis in pairs:
        shape = context.shape(a)
        if a is None or b is None or shape is None or a_axis >= len(shape):
            continue
        dim = shape[a_axis]
        if dim is not None:
            out.append(Coupling((name(a), a_axis), (name(b), b_axis), Identity(dim)))
    return out


def _used_outputs(node: ir.Node, start: int) -> bool:
    return any(v.uses() for v in node.outputs[start:])


def _layout_barrier(node: ir.Node, why: str) -> Barrier:
    values = tuple(name(v) for v in (*node.inputs, *node.outputs) if v is not None)
    return Barrier(f"{node.op_type} '{node.name}' {why}", values=values)


def _qkvy(
    node: ir.Node, context: RuleContext
) -> tuple[list[ir.Value], list[tuple[int | None, ...]]] | None:
    """Query, key, value and output with shapes of one rank, or None."""
    values = [v for v in (_input(node, 0), _input(node, 1), _input(node, 2), node.outputs[0]) if v]
    shapes = [s for s in (context.shape(v) for v in values) if s is not None]
    if len(values) != 4 or len(shapes) != 4 or len({len(s) for s in shapes}) != 1:
        return None
    return values, shapes


def _last_dims(shapes: list[tuple[int | None, ...]]) -> list[int] | None:
    dims = [s[-1] for s in shapes]
    return None if any(d is None for d in dims) else [int(d or 0) for d in dims]


@register_rule("MultiHeadAttention", domain=MS)
def _multi_head_attention(node: ir.Node, context: RuleContext) -> Result:
    """Separate 3-D query/key/value ``[B, S, heads*head_dim]``; no past state."""
    heads = int(context.attribute(node, "num_heads", 0))
    found = _qkvy(node, context)
    dims = None if found is None or len(found[1][0]) != 3 else _last_dims(found[1])
    if found is None or dims is None or heads <= 0:
        return [_layout_barrier(node, "has packed, 4-D or unknown inputs spa does not slice")]
    if any(_input(node, i) is not None for i in (6, 7, 8, 9)) or _used_outputs(node, 1):
        return [_layout_barrier(node, "has past/present state or extra outputs")]
    (q, k, v, y), (q_size, k_size, v_size, _) = found[0], dims
    if k_size != q_size or q_size % heads or v_size % heads:
        return [_layout_barrier(node, f"has sizes not divisible by num_heads={heads}")]
    space = heads_space(node)
    head_dim, v_head_dim = q_size // heads, v_size // heads
    out: Result = [
        Coupling(space, (name(q), 2), Block(heads, head_dim)),
        Coupling(space, (name(k), 2), Block(heads, head_dim)),
        Coupling(space, (name(v), 2), Block(heads, v_head_dim)),
        Coupling(space, (name(y), 2), Block(heads, v_head_dim)),
    ]
    out += _identities(
        [(q, 0, y, 0), (q, 1, y, 1), (k, 0, q, 0), (v, 0, q, 0), (k, 1, v, 1)], context
    )
    bias = _input(node, 3)
    if bias is not None:
        total = 2 * q_size + v_size
        for offset, size, part in (
            (0, q_size, "q"),
            (q_size, q_size, "k"),
            (2 * q_size, v_size, "v"),
        ):
            part_space = (f"{space[0]}/{part}", 0)
            out.append(Coupling(space, part_space, Block(heads, size // heads)))
            out.append(Coupling(part_space, (name(bias), 0), Offset(size, total, offset)))
    out += _mask_couplings(node, context, space, heads, (_input(node, 4),), (_input(node, 5),))
    return out


def _mask_couplings(
    node: ir.Node,
    context: RuleContext,
    space: Space,
    heads: int,
    plain: tuple[ir.Value | None, ...],
    per_head: tuple[ir.Value | None, ...],
) -> Result:
    """Masks read per batch/position are unconstrained; a 4-D bias with a heads axis
    (``[B, heads, S, L]``) is sliced with the heads."""
    out: Result = [Unconstrained(tuple(name(v) for v in plain if v is not None))]
    for value in per_head:
        shape = context.shape(value)
        if value is None:
            continue
        if shape is not None and len(shape) == 4 and shape[1] == heads and heads > 1:
            out.append(Coupling(space, (name(value), 1), Identity(heads)))
        elif shape is not None and (len(shape) < 3 or shape[-3] == 1):
            out.append(Unconstrained((name(value),)))
        else:
            out.append(
                Barrier(
                    f"{node.op_type} '{node.name}' has a mask spa does not slice",
                    values=(name(value),),
                )
            )
    return out


@register_rule("GroupQueryAttention", domain=MS)
def _group_query_attention(node: ir.Node, context: RuleContext) -> Result:
    """Separate query/key/value; KV heads own their query heads."""
    heads = int(context.attribute(node, "num_heads", 0))
    kv_heads = int(context.attribute(node, "kv_num_heads", 0))
    found = _qkvy(node, context)
    dims = None if found is None or len(found[1][0]) != 3 else _last_dims(found[1])
    if found is None or dims is None or kv_heads <= 0:
        return [_layout_barrier(node, "has packed QKV or unknown shapes")]
    if heads % kv_heads or dims[0] % heads or _input(node, 10) is not None:
        return [_layout_barrier(node, "has an attention bias or uneven KV groups")]
    q, k, v, y = found[0]
    head_dim = dims[0] // heads
    space, kv_space = heads_space(node), kv_heads_space(node)
    out: Result = [
        Coupling(kv_space, space, Block(kv_heads, heads // kv_heads)),
        Coupling(space, (name(q), 2), Block(heads, head_dim)),
        Coupling(space, (name(y), 2), Block(heads, head_dim)),
        Coupling(kv_space, (name(k), 2), Block(kv_heads, head_dim)),
        Coupling(kv_space, (name(v), 2), Block(kv_heads, head_dim)),
    ]
    out += _identities(
        [(q, 0, y, 0), (q, 1, y, 1), (k, 0, q, 0), (v, 0, q, 0), (k, 1, v, 1)], context
    )
    states = [_input(node, 3), _input(node, 4), *node.outputs[1:3]]
    out += [
        Coupling(kv_space, (name(s), 1), Identity(kv_heads))
        for s in states
        if s is not None and s.name
    ]
    sink = _input(node, 11)
    if sink is not None:
        out.append(Coupling(space, (name(sink), 0), Identity(heads)))
    out.append(Unconstrained(tuple(name(v) for v in node.inputs[5:10] if v is not None)))
    return out


@register_rule("RotaryEmbedding", domain=MS)
@register_rule("RotaryEmbedding", opsets=(23, 10_000))
def _rotary_embedding(node: ir.Node, context: RuleContext) -> Result:
    """Half-pairs inside head_dim stay together: whole heads only."""
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    cos = _input(node, 2 if node.domain == MS else 1)
    cos_shape = context.shape(cos)
    others = Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))
    if shape is None or len(shape) not in (3, 4):
        return [unknown_shapes(node, x, y)]
    reason = f"RotaryEmbedding '{node.name}' rotates half-pairs of head_dim: whole heads only"
    if len(shape) == 4:  # [B, heads, S, head_dim]
        out: Result = [others, Barrier(reason, ((name(x), 3), (name(y), 3)))]
        return out + _identities([(x, 0, y, 0), (x, 1, y, 1), (x, 2, y, 2)], context)
    heads = int(context.attribute(node, "num_heads", 0))
    rotary = int(context.attribute(node, "rotary_embedding_dim", 0))
    hidden = shape[2]
    if heads <= 0 and rotary == 0 and cos_shape is not None and cos_shape[-1] and hidden:
        heads = hidden // (2 * cos_shape[-1])
    if hidden is None or heads <= 0 or hidden % heads:
        unknown = f"RotaryEmbedding '{node.name}' has no head count that divides its hidden size"
        return [others, Barrier(unknown, ((name(x), 2), (name(y), 2)))]
    space = heads_space(node)
    out = [others, Coupling(space, (name(x), 2), Block(heads, hidden // heads))]
    out.append(Coupling(space, (name(y), 2), Block(heads, hidden // heads)))
    return out + _identities([(x, 0, y, 0), (x, 1, y, 1)], context)


@register_rule("Attention", opsets=(23, 10_000))
def _attention_23(node: ir.Node, context: RuleContext) -> Result:
    """4-D ``[B, heads, S, head_dim]`` or 3-D with ``q_num_heads``/``kv_num_heads``."""
    found = _qkvy(node, context)
    if found is None or (len(node.outputs) > 3 and node.outputs[3].uses()):
        return [_layout_barrier(node, "has unknown shapes or a used qk output")]
    (q, k, v, y), shapes = found
    rank = len(shapes[0])
    if rank == 4:
        heads, kv_heads = shapes[0][1] or 0, shapes[1][1] or 0
    else:
        heads = int(context.attribute(node, "q_num_heads", 0))
        kv_heads = int(context.attribute(node, "kv_num_heads", 0))
    if not heads or not kv_heads or heads % kv_heads:
        return [_layout_barrier(node, "has unknown or uneven head counts")]
    space, kv_space = heads_space(node), kv_heads_space(node)
    out: Result = [Coupling(kv_space, space, Block(kv_heads, heads // kv_heads))]
    if rank == 4:
        out += [
            Coupling(space, (name(q), 1), Identity(heads)),
            Coupling(space, (name(y), 1), Identity(heads)),
        ]
        out += [Coupling(kv_space, (name(k), 1), Identity(kv_heads))]
        out += [Coupling(kv_space, (name(v), 1), Identity(kv_heads))]
        out += _identities(
            [(q, 0, y, 0), (k, 0, q, 0), (v, 0, q, 0), (q, 2, y, 2), (k, 2, v, 2), (v, 3, y, 3)],
            context,
        )
    else:
        dims = _last_dims(shapes)
        if dims is None or dims[0] % heads or dims[1] % kv_heads or dims[2] % kv_heads:
            return [_layout_barrier(node, "has hidden sizes not divisible by the head counts")]
        v_head_dim = dims[2] // kv_heads
        out += [
            Coupling(space, (name(q), 2), Block(heads, dims[0] // heads)),
            Coupling(kv_space, (name(k), 2), Block(kv_heads, dims[1] // kv_heads)),
            Coupling(kv_space, (name(v), 2), Block(kv_heads, v_head_dim)),
            Coupling(space, (name(y), 2), Block(heads, v_head_dim)),
        ]
        out += _identities(
            [(q, 0, y, 0), (q, 1, y, 1), (k, 0, q, 0), (v, 0, q, 0), (k, 1, v, 1)], context
        )
    states = [_input(node, 4), _input(node, 5), *node.outputs[1:3]]
    out += [
        Coupling(kv_space, (name(s), 1), Identity(kv_heads))
        for s in states
        if s is not None and s.name
    ]
    out += _mask_couplings(node, context, space, heads, (_input(node, 6),), (_input(node, 3),))
    return out
