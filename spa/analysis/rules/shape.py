"""Rules for ops that move axes: Transpose, Squeeze/Unsqueeze, Concat, Split,
Slice, Gather, Softmax, reductions, Pad, Resize, Shape, Expand, Tile,
ConstantOfShape and layer normalisation (Reshape and Flatten: see
:mod:`spa.analysis.rules.reshape`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa.analysis.index_maps import Identity, Offset, Tile
from spa.analysis.rules.elementwise import broadcast_couplings
from spa.analysis.rules.registry import (
    Barrier,
    Coupling,
    RuleContext,
    Unconstrained,
    name,
    register_rule,
    unknown_shapes,
)
from spa.analysis.shape_exprs import Entry, evaluate_ints, evaluate_target

__all__ = ["chunk_of", "slice_axes", "slice_bounds", "slice_windows"]

Result = list[Coupling | Barrier | Unconstrained]


@register_rule("Transpose")
def _transpose(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    perm = context.attribute(node, "perm") or list(reversed(range(len(shape))))
    out: Result = []
    for out_axis, in_axis in enumerate(perm):
        if shape[in_axis] is not None:
            out.append(Coupling((name(x), in_axis), (name(y), out_axis), Identity(shape[in_axis])))
    return out


def _axes(node: ir.Node, context: RuleContext, rank: int) -> list[int] | None:
    axes = context.attribute(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = context.constant(node.inputs[1])
        axes = None if constant is None else constant.tolist()
    if axes is None:
        return None
    return sorted(int(a) % rank for a in axes)


@register_rule("Squeeze", "Unsqueeze")
def _squeeze(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    in_shape, out_shape = context.shape(x), context.shape(y)
    if in_shape is None or out_shape is None:
        return [unknown_shapes(node, x, y)]
    squeezing = node.op_type == "Squeeze"
    removed = [a for a, d in enumerate(in_shape) if d == 1] if squeezing else []
    inserted: list[int] = []
    axes = _axes(node, context, len(in_shape) if squeezing else len(out_shape))
    if axes is not None:
        removed, inserted = (axes, []) if squeezing else ([], axes)
    elif not squeezing:
        return [Barrier(f"Unsqueeze '{node.name}' has computed axes", values=(name(x), name(y)))]
    kept_in = [a for a in range(len(in_shape)) if a not in removed]
    kept_out = [a for a in range(len(out_shape)) if a not in inserted]
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    for in_axis, out_axis in zip(kept_in, kept_out, strict=False):
        dim = in_shape[in_axis]
        if dim is not None:
            out.append(Coupling((name(x), in_axis), (name(y), out_axis), Identity(dim)))
    return out


@register_rule("Concat")
def _concat(node: ir.Node, context: RuleContext) -> Result:
    y = node.outputs[0]
    out_shape = context.shape(y)
    inputs = [v for v in node.inputs if v is not None]
    shapes = [context.shape(v) for v in inputs]
    if out_shape is None or any(s is None for s in shapes):
        return [unknown_shapes(node, *inputs, y)]
    axis = int(context.attribute(node, "axis", 0)) % len(out_shape)
    total, offset = out_shape[axis], 0
    out: Result = []
    for value, shape in zip(inputs, shapes, strict=True):
        assert shape is not None
        for a, dim in enumerate(shape):
            if dim is None or (a == axis and total is None):
                continue
            index_map = Offset(dim, total or 0, offset) if a == axis else Identity(dim)
            out.append(Coupling((name(value), a), (name(y), a), index_map))
        offset += shape[axis] or 0
    return out


@register_rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    axis = int(context.attribute(node, "axis", -1)) % len(shape)
    out: Result = [
        Barrier(
            f"{node.op_type} '{node.name}' normalises over axis {axis} (inexact)",
            ((name(x), axis), (name(y), axis)),
        )
    ]
    for a, dim in enumerate(shape):
        if a != axis and dim is not None:
            out.append(Coupling((name(x), a), (name(y), a), Identity(dim)))
    return out


@register_rule(
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ReduceLogSum",
)
def _reduce(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    axes = _axes(node, context, len(shape))
    if axes is None:
        axes = list(range(len(shape)))
    keepdims = int(context.attribute(node, "keepdims", 1))
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    out_axis = 0
    for a, dim in enumerate(shape):
        if a in axes:
            out_axis += keepdims
            continue
        if dim is not None:
            out.append(Coupling((name(x), a), (name(y), out_axis), Identity(dim)))
        out_axis += 1
    return out


@register_rule("Shape", "Size")
def _shape(node: ir.Node, context: RuleContext) -> Result:
    # Reading a shape does not constrain channels; shape chains recompute after slicing.
    return [Unconstrained(tuple(name(v) for v in node.inputs if v is not None))]


@register_rule("Pad")
def _pad(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    pads_value = node.inputs[1] if len(node.inputs) > 1 else None
    pads = context.attribute(node, "pads")
    if pads is None and pads_value is not None:
        constant = context.constant(pads_value)
        pads = None if constant is None else constant.tolist()
    if shape is None or pads is None or (len(node.inputs) > 3 and node.inputs[3] is not None):
        return [Barrier(f"Pad '{node.name}' has computed pads or axes", values=(name(x), name(y)))]
    rank = len(shape)
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    for a, dim in enumerate(shape):
        if dim is not None and pads[a] == 0 and pads[a + rank] == 0:
            out.append(Coupling((name(x), a), (name(y), a), Identity(dim)))
    return out


@register_rule("Resize", "Upsample")
def _resize(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    in_shape, out_shape = context.shape(x), context.shape(y)
    if in_shape is None or out_shape is None:
        return [unknown_shapes(node, x, y)]
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    # Pruning rewrites a channel entry of ``sizes`` only when it lists every axis.
    listed = context.attribute(node, "axes")
    for a, (dim_in, dim_out) in enumerate(zip(in_shape, out_shape, strict=True)):
        if a >= 2 or dim_in is None or dim_in != dim_out:
            continue
        if listed is not None and a in [int(i) % len(in_shape) for i in listed]:
            reason = f"Resize '{node.name}' lists axis {a} in its axes attribute"
            out.append(Barrier(reason, ((name(x), a), (name(y), a))))
            continue
        out.append(Coupling((name(x), a), (name(y), a), Identity(dim_in)))
    return out


@register_rule("GridSample", opsets=(16, 10_000))
def _grid_sample(node: ir.Node, context: RuleContext) -> Result:
    """Batch and channels pass through; the output's spatial axes are the grid's.

    Every channel is sampled at the same grid points, so axis 1 maps one to one.
    The input's spatial axes are read through normalised coordinates (slicing
    one would move every sample) and the grid's last axis holds coordinates:
    both are barriers.
    """
    x, grid, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and grid is not None
    x_shape, grid_shape = context.shape(x), context.shape(grid)
    if x_shape is None or grid_shape is None:
        return [unknown_shapes(node, x, grid, y)]
    out: Result = []
    for a, dim in enumerate(x_shape[:2]):
        if dim is not None:
            out.append(Coupling((name(x), a), (name(y), a), Identity(dim)))
    for a, dim in enumerate(grid_shape[:-1]):
        if dim is not None:  # grid (N, H_out, W_out, 2): y's axes 0, 2, 3
            out.append(Coupling((name(grid), a), (name(y), a + 1 if a else 0), Identity(dim)))
    reason = f"GridSample '{node.name}' samples these axes at computed coordinates"
    spaces = [(name(x), a) for a in range(2, len(x_shape))]
    spaces.append((name(grid), len(grid_shape) - 1))
    out.append(Barrier(reason, tuple(spaces)))
    return out


@register_rule("Gather")
def _gather(node: ir.Node, context: RuleContext) -> Result:
    data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert data is not None and indices is not None
    data_shape, index_shape = context.shape(data), context.shape(indices)
    if data_shape is None or index_shape is None:
        return [unknown_shapes(node, data, y)]
    axis = int(context.attribute(node, "axis", 0)) % len(data_shape)
    out: Result = []
    for a, dim in enumerate(data_shape):
        if a == axis or dim is None:
            continue
        out_axis = a if a < axis else a - 1 + len(index_shape)
        out.append(Coupling((name(data), a), (name(y), out_axis), Identity(dim)))
    for a, dim in enumerate(index_shape):
        if dim is not None:
            out.append(Coupling((name(indices), a), (name(y), axis + a), Identity(dim)))
    return out


@register_rule("GatherND")
def _gather_nd(node: ir.Node, context: RuleContext) -> Result:
    """``y = data[indices]`` over the first ``k`` axes after ``batch_dims`` (``k``: the
    indices' last dim): the batch axes and the data axes past the indexed ones map to
    ``y`` (torch.export writes a relative-position table lookup ``table[index]`` this
    way, where TorchScript wrote Gather), the indices' leading axes too."""
    data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert data is not None and indices is not None
    data_shape, index_shape = context.shape(data), context.shape(indices)
    if data_shape is None or index_shape is None or index_shape[-1] is None:
        return [unknown_shapes(node, data, y)]
    batch, depth = int(context.attribute(node, "batch_dims", 0)), int(index_shape[-1])
    out: Result = []
    for a, dim in enumerate(data_shape):
        if dim is None or batch <= a < batch + depth:
            continue
        out_axis = a if a < batch else len(index_shape) - 1 + a - batch - depth
        out.append(Coupling((name(data), a), (name(y), out_axis), Identity(dim)))
    for a, dim in enumerate(index_shape[:-1]):
        if dim is not None:
            out.append(Coupling((name(indices), a), (name(y), a), Identity(dim)))
    return out


@register_rule("ConstantOfShape")
def _constant_of_shape(node: ir.Node, context: RuleContext) -> Result:
    """A filled tensor has no channels of its own: every axis may shrink with the
    group it feeds, its shape (constant or a readable Shape/Concat chain) being
    rewritten by the slicing pass. Consumers of one shared fill are coupled."""
    shape = node.inputs[0]
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs if v is not None))]
    if shape is not None and evaluate_target(shape, context) is not None:
        out.append(Unconstrained((name(node.outputs[0]),)))
    return out


@register_rule(
    "Constant",
    "Range",
    "EyeLike",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
)
def _constant(node: ir.Node, context: RuleContext) -> Result:
    # Generated values: their inputs are shapes/scalars; outputs are frozen by default.
    return [Unconstrained(tuple(name(v) for v in node.inputs if v is not None))]


def _split_sizes(node: ir.Node, context: RuleContext, total: int | None) -> list[int] | None:
    sizes = context.attribute(node, "split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = context.constant(node.inputs[1])
        sizes = None if constant is None else constant.tolist()
    if sizes is None and total is not None:
        count = len(node.outputs)
        if total % count == 0:
            sizes = [total // count] * count
    return None if sizes is None else [int(s) for s in sizes]


@register_rule("Split")
def _split(node: ir.Node, context: RuleContext) -> Result:
    x = node.inputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x)]
    axis = int(context.attribute(node, "axis", 0)) % len(shape)
    sizes = _split_sizes(node, context, shape[axis])
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    total = shape[axis]
    if sizes is None or total is None or sum(sizes) != total:
        return out  # the split axis stays unmapped, hence frozen
    offset = 0
    for output, size in zip(node.outputs, sizes, strict=True):
        for a, dim in enumerate(shape):
            if a == axis:
                out.append(Coupling((name(x), a), (name(output), a), Offset(total, size, -offset)))
            elif dim is not None:
                out.append(Coupling((name(x), a), (name(output), a), Identity(dim)))
        offset += size
    return out


@register_rule("Expand")
def _expand(node: ir.Node, context: RuleContext) -> Result:
    """Broadcast couplings from the input; broadcast axes with a literal target.

    An output axis that broadcasts a size-1 (or missing) input axis to a literal
    entry of the target is a uniform fill: any slice of it is the same fill once
    that entry is rewritten, which pruning does for constant and readable
    run-time targets alike (a recurrence's state initialised by
    ``zeros(batch, channels, state)``). Such an axis follows its consumers'
    group; an axis whose entry is copied from another value's shape does not.
    """
    x, shape_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and shape_value is not None
    out: Result = [Unconstrained((name(shape_value),))]
    in_shape, out_shape = context.shape(x), context.shape(y)
    constant = context.constant(shape_value)
    if constant is not None:
        entries: list[Entry] | None = [int(v) for v in constant.tolist()]
    else:
        # A run-time target spa can read: its literals are rewritten when sliced.
        entries = evaluate_target(shape_value, context)
        if entries is None or in_shape is None or out_shape is None or len(entries) != len(out_shape):
            reason = f"Expand '{node.name}' has a computed target shape spa cannot read"
            return [*out, Barrier(reason, values=(name(x), name(y)))]
    out += broadcast_couplings([x], y, context)
    if out_shape is not None and entries is not None:
        mentioned = {c.target for c in out if isinstance(c, Coupling)}
        offset = len(out_shape) - len(entries)
        fills = tuple(
            (name(y), axis)
            for axis in range(offset, len(out_shape))
            if (name(y), axis) not in mentioned and isinstance(entries[axis - offset], int)
        )  # an entry copied from another value's shape stays unmapped, hence frozen
        out.append(Unconstrained((), fills))
    return out


@register_rule("Tile")
def _tile(node: ir.Node, context: RuleContext) -> Result:
    x, repeats_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
    assert x is not None and repeats_value is not None
    shape, repeats = context.shape(x), context.constant(repeats_value)
    if shape is None or repeats is None:
        return [
            Barrier(f"Tile '{node.name}' has computed repeats", values=(name(x), name(y))),
            Unconstrained((name(repeats_value),)),
        ]
    out: Result = [Unconstrained((name(repeats_value),))]
    for a, (dim, count) in enumerate(zip(shape, repeats.tolist(), strict=True)):
        if dim is not None:
            out.append(Coupling((name(x), a), (name(y), a), Tile(dim, int(count))))
    return out


@register_rule("LayerNormalization", "RMSNormalization")
@register_rule("SimplifiedLayerNormalization", "LayerNormalization", domain="com.microsoft")
def _layer_norm(node: ir.Node, context: RuleContext) -> Result:
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    shape = context.shape(x)
    if shape is None:
        return [unknown_shapes(node, x, y)]
    axis = int(context.attribute(node, "axis", -1)) % len(shape)
    reason = f"{node.op_type} '{node.name}' normalises over axis {axis} (inexact)"
    out: Result = []
    for a, dim in enumerate(shape):
        if a >= axis:
            out.append(Barrier(reason, ((name(x), a), (name(y), a))))
        elif dim is not None:
            out.append(Coupling((name(x), a), (name(y), a), Identity(dim)))
    # scale and bias live on the normalised axes: they share that (frozen) group and
    # its reason, rather than making groups of their own
    for parameter in node.inputs[1:3]:
        p_shape = context.shape(parameter) if parameter is not None else None
        if parameter is None or p_shape is None or len(p_shape) > len(shape) - axis:
            continue
        offset = len(shape) - len(p_shape)
        for a, dim in enumerate(p_shape):
            if dim is not None and dim == shape[offset + a]:
                out.append(Coupling((name(parameter), a), (name(x), offset + a), Identity(dim)))
    return out


@register_rule("Slice")
def _slice(node: ir.Node, context: RuleContext) -> Result:
    """Axes a Slice does not cut are identities, and so is a listed axis it keeps
    whole at any size (start 0, step 1, an end >= dim, which ONNX clamps: GhostNet's
    ``cat([x1, x2])[:, :out]`` with ``out`` = all channels); a window with constant
    bounds is an offset (:func:`slice_windows`: ``torch.split`` as two Slices, a
    packed ``qkv[..., q:q + kv]``), and a chunk whose bounds are computed from the
    axis's own size (:func:`chunk_of`: ``torch.chunk`` exported by TorchScript) is a
    ``Tile``; other cut axes stay frozen."""
    x, y = node.inputs[0], node.outputs[0]
    assert x is not None
    in_shape, out_shape = context.shape(x), context.shape(y)
    if in_shape is None or out_shape is None:
        return [unknown_shapes(node, x, y)]
    rank = len(in_shape)
    axes = slice_axes(node, context)
    if axes is None and len(node.inputs) > 3 and node.inputs[3] is not None:
        return [Barrier(f"Slice '{node.name}' has computed axes", values=(name(x), name(y)))]
    cut = set(range(rank)) if axes is None else {int(a) % rank for a in axes.reshape(-1).tolist()}
    windows = _clamped_windows(node, context, in_shape)
    cut -= {axis for axis, window in windows.items() if window == (0, in_shape[axis])}
    out: Result = [Unconstrained(tuple(name(v) for v in node.inputs[1:] if v is not None))]
    for axis, dim in enumerate(in_shape):
        if axis not in cut and dim is not None and out_shape[axis] == dim:
            out.append(Coupling((name(x), axis), (name(y), axis), Identity(dim)))
    for axis, (start, stop) in windows.items():
        dim = in_shape[axis]
        if dim is not None and axis in cut and out_shape[axis] == stop - start and _inside(start, stop, dim):
            out.append(Coupling((name(x), axis), (name(y), axis), Offset(dim, stop - start, -start)))
    chunk = chunk_of(node, context, in_shape) if not windows else None
    if chunk is not None and out_shape[chunk[0]] == chunk[1]:
        axis, size, count = chunk
        # every chunk keeps the same positions, so that the run-time bounds of the
        # pruned axis still cut it into the pruned chunks
        out.append(Coupling((name(y), axis), (name(x), axis), Tile(size, count)))
    return out


def slice_windows(
    node: ir.Node, context: RuleContext, in_shape: tuple[int | None, ...]
) -> dict[int, tuple[int, int]]:
    """Listed axes a Slice cuts to a window, ``axis -> (start, stop)``: constant bounds,
    step 1, neither empty nor the whole axis (``torch.split(x, [a, b], dim=1)``
    exported as two Slices; the ``k`` of a packed ``qkv[..., q:q + kv]``). The pruning
    pass rewrites such bounds from the kept channels of the input's axis."""
    return {
        axis: (start, stop)
        for axis, (start, stop) in _clamped_windows(node, context, in_shape).items()
        if _inside(start, stop, in_shape[axis])
    }


def _inside(start: int, stop: int, dim: int | None) -> bool:
    """A non-empty window of the axis, but not all of it."""
    return stop > start and (start, stop) != (0, dim)


def chunk_of(
    node: ir.Node, context: RuleContext, in_shape: tuple[int | None, ...]
) -> tuple[int, int, int] | None:
    """``(axis, size, count)`` where a Slice with computed bounds takes one of ``count``
    equal chunks of one static axis, the bounds following that axis's own size: for
    several sizes that ``count`` divides, the bounds (computed by
    :func:`~spa.analysis.shape_exprs.evaluate_ints`) stay the same chunk. None otherwise."""
    x = node.inputs[0]
    axes = slice_axes(node, context)
    steps = context.constant(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if x is None or axes is None or axes.size != 1 or len(node.inputs) < 3:
        return None
    if len(node.inputs) > 4 and node.inputs[4] is not None and (steps is None or steps.reshape(-1).tolist() != [1]):
        return None
    axis = int(axes.reshape(-1)[0]) % len(in_shape)
    dim = in_shape[axis]

    def window(size: int) -> tuple[int, int] | None:
        sizes = {(name(x), axis): size}
        bounds = [evaluate_ints(v, context, sizes) for v in node.inputs[1:3]]
        if any(b is None or b.size != 1 or b.dtype == object for b in bounds):
            return None
        first, stop = (min(max(b + size if b < 0 else b, 0), size) for b in (int(v[0]) for v in bounds))  # type: ignore[index]
        return first, stop

    found = window(dim) if dim is not None else None
    if found is None or found[1] <= found[0] or dim is None:
        return None
    size = found[1] - found[0]
    if dim % size or found[0] % size or dim == size:
        return None
    count, index = dim // size, found[0] // size
    if any(window(count * m) != (index * m, (index + 1) * m) for m in (1, 2, 3, 5, 8)):
        return None
    return axis, size, count


def _clamped_windows(
    node: ir.Node, context: RuleContext, in_shape: tuple[int | None, ...]
) -> dict[int, tuple[int, int]]:
    """``axis -> (start, stop)`` as ONNX clamps them, for each listed axis of static
    size that a Slice with constant bounds cuts with step 1."""
    windows = {}
    for axis, start, end, step in slice_bounds(node, context) or []:
        axis %= len(in_shape)
        dim = in_shape[axis]
        if dim is None or step != 1:
            continue
        first, stop = (min(max(b + dim if b < 0 else b, 0), dim) for b in (start, end))
        windows[axis] = (first, stop)
    return windows


def slice_axes(node: ir.Node, context: RuleContext) -> np.ndarray | None:
    """The axes a Slice lists: its ``axes`` input, else ``0 .. len(starts) - 1``;
    None where they are computed."""
    axes_value = node.inputs[3] if len(node.inputs) > 3 else None
    if axes_value is not None:
        return context.constant(axes_value)
    starts = context.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if starts is None else np.arange(starts.size)


def slice_bounds(node: ir.Node, context: RuleContext) -> list[tuple[int, int, int, int]] | None:
    """``(axis, start, end, step)`` per listed axis of a Slice with constant bounds."""
    inputs = [*node.inputs, None, None, None, None][1:5]
    starts, ends = (context.constant(v) if v is not None else None for v in inputs[:2])
    if starts is None or ends is None or starts.size != ends.size:
        return None
    axes = slice_axes(node, context)
    steps = context.constant(inputs[3]) if inputs[3] is not None else np.ones(starts.size)
    if axes is None or steps is None or axes.size != starts.size or steps.size != starts.size:
        return None
    return [
        (int(a), int(s), int(e), int(t))
        for a, s, e, t in zip(
            axes.reshape(-1).tolist(),
            starts.reshape(-1).tolist(),
            ends.reshape(-1).tolist(),
            steps.reshape(-1).tolist(),
            strict=True,
        )
    ]
