"""The residual stream of a pre-norm transformer, found from the graph alone.

SliceGPT (Ashkboos et al., ICLR 2024, arXiv 2401.15024) rests on one
invariance: ``RMSNorm(x Q) = RMSNorm(x) Q`` for orthogonal ``Q``. A transformer
whose blocks read the residual stream only through norms, and write into it
only by adding outputs of constant-weight linear maps, computes the same
function when every *writer* ``W_out`` becomes ``W_out Q`` and every *reader*
``W_in`` (behind a norm whose scale was folded into it) becomes ``Q^T W_in``.

This module finds, read-only:

* the *norms* as exporters write them: ``LayerNormalization``, opset-23
  ``RMSNormalization``, ORT's ``SimplifiedLayerNormalization``, and the
  decomposed RMSNorm ``x * 1/sqrt(mean(x^2) + eps)`` (``Pow``/``Mul``,
  ``ReduceMean``, ``Add``, ``Sqrt``, ``Reciprocal``/``Div``; ``Cast`` skipped)
  and decomposed LayerNorm (the same on ``x - mean(x)``, ``Sub``), with their
  constant scale ``Mul`` and bias ``Add``;
* the *stream*: the ``Add`` (and ``Cast``/``Identity``) nodes reached backwards
  from the norms' inputs, starting at the token embedding ``Gather``;
* its *writers*: every term added into it (constant-weight ``MatMul``/``Gemm``
  with their bias, embedding ``Gather`` rows, constants);
* its *readers*: constant-weight ``MatMul``/``Gemm`` fed by a norm (through
  ``Reshape``/``Flatten``/``Cast``/``Identity``), the LM head included.

A graph the invariance does not cover gets a one-line ``reason`` naming the
node: post-norm blocks (BERT: a norm's output added back into the stream), a
norm on a branch before the add, non-constant or quantized writers, a stream
value read by anything but an ``Add`` or a norm, fused ``Skip*LayerNormalization``.

>>> stream = find_residual_stream(model)  # doctest: +SKIP
>>> stream.reason or f"hidden {stream.hidden}, {len(stream.norms)} norms"  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Container, Mapping

import onnx_ir as ir

from spa.analysis.norms import (
    Norm,
    Refusal,
    WeightSite,
    axes_of,
    find_norms,
    initializer_array,
    label,
    node_uses,
    scalar,
)

__all__ = [
    "EMBEDDING_AFFINE",
    "STREAM_ENTRY",
    "STREAM_NODE_OPS",
    "Norm",
    "ResidualStream",
    "StreamEntry",
    "WeightSite",
    "find_residual_stream",
    "initializer_array",
    "is_token_embedding",
    "last_dim",
]

#: Ops that only relabel a value on a reader's or writer's path.
_PATH_OPS = frozenset({"Reshape", "Flatten", "Cast", "Identity"})
#: Ops the stream itself may pass through.
_STREAM_OPS = frozenset({"Add", "Cast", "Identity", "Reshape", "Flatten"})
#: Ops that may make one stream value from another: the above, and a pooling over the tokens
#: before a norm (:func:`_keeps_hidden_last`).
STREAM_NODE_OPS = _STREAM_OPS | {"ReduceMean", "ReduceSum", "Gather", "Slice", "Mul", "Div"}
_NORM_OPS = frozenset(
    {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
     "SkipSimplifiedLayerNormalization"}
)  # fmt: skip


class _NonLinearWriter(Refusal):
    """A term reaches the stream from a non-linear op (or with its hidden axis elsewhere)."""


class StreamEntry(Refusal):
    """The stream starts at a non-linear front end (a convolution and GELU, then the position
    table: Whisper's encoder): ``entry``, the value added there, has no linear writer. A
    ``MatMul(entry, I)`` would be one (``passes/slice_rewrite.enter_streams``)."""

    def __init__(self, message: str, entry: ir.Value) -> None:
        super().__init__(message)
        self.entry = entry


#: The name suffix of the MatMul(I) that starts a stream after a non-linear front end.
STREAM_ENTRY = ".spa_stream_entry"


@dataclasses.dataclass
class ResidualStream:
    """The stream of one model, or the reason it has none SliceGPT can rotate."""

    hidden: int = 0
    norms: list[Norm] = dataclasses.field(default_factory=list)
    writers: list[WeightSite] = dataclasses.field(default_factory=list)
    adds: list[ir.Node] = dataclasses.field(default_factory=list)
    #: The stream's values (adds, embedding rows, relabelled copies).
    values: list[ir.Value] = dataclasses.field(default_factory=list)
    #: Reshapes on a writer's path whose constant target holds the hidden size at a position
    #: other than the last (a ViT's patch embedding: [N, D, H, W] -> [-1, D, H*W]), and
    #: Resizes whose constant sizes hold it (a position table interpolated at export).
    targets: list[tuple[ir.Node, int]] = dataclasses.field(default_factory=list)
    reason: str | None = None
    #: With ``reason``: the value a MatMul(I) would start the stream at (:class:`StreamEntry`).
    entry: ir.Value | None = None

    @property
    def readers(self) -> list[WeightSite]:
        return [reader for norm in self.norms for reader in norm.readers]

    @property
    def kind(self) -> str:
        return self.norms[0].kind if self.norms else ""


def _weight_of(node: ir.Node, hidden_axis_if_plain: int) -> WeightSite | None:
    """The constant weight of a MatMul/Gemm with its hidden axis (None if not constant)."""
    if node.op_type == "MatMul":
        weight = initializer_array(node.inputs[1])
        if weight is None or weight.ndim != 2:
            return None
        return WeightSite(node, 1, hidden_axis_if_plain)
    if node.attributes.get_int("transA", 0):
        return None
    weight = initializer_array(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    flipped = 1 - hidden_axis_if_plain
    return WeightSite(
        node, 1, flipped if node.attributes.get_int("transB", 0) else hidden_axis_if_plain
    )


def _keeps_hidden_last(node: ir.Node) -> bool:
    """A linear step on the tokens that leaves the hidden axis last and whole: a sum or mean
    over other axes (mean pooling; a constant scalar Mul or Div), a Gather or Slice along
    another axis (a class token).
    It commutes with a rotation of the hidden axis, so the readers after it read the norm."""
    if node.op_type in ("Mul", "Div") and len(node.inputs) == 2:
        return scalar(node.inputs[1]) is not None  # the pooled sum over a constant count
    rank = _rank(node.inputs[0])
    if rank is None:
        return False
    last = {-1, rank - 1}
    if node.op_type in ("ReduceSum", "ReduceMean"):
        axes = axes_of(node, 1)
        return axes is not None and not last & set(axes) and node.attributes.get_int("noop_with_empty_axes", 0) == 0
    if node.op_type == "Gather":
        return node.attributes.get_int("axis", 0) not in last
    if node.op_type == "Slice":
        axes = axes_of(node, 3)
        return axes is not None and not last & set(axes)
    return False


def _readers(norm: Norm, hidden: int) -> tuple[WeightSite, ...]:
    """Constant-weight MatMul/Gemm reading ``norm.output`` (through relabelling ops)."""
    if norm.output.is_graph_output():
        raise Refusal(
            f"the output of {norm.op} '{norm.name}' is a graph output; no reader to fold into"
        )
    sites: list[WeightSite] = []
    pending = [norm.output]
    while pending:
        value = pending.pop()
        for node, index in node_uses(value):
            if node.op_type == "Shape" and node.domain == "":
                continue  # reads the shape only
            if index == 0 and node.domain == "" and (node.op_type in _PATH_OPS or _keeps_hidden_last(node)):
                if node.outputs[0].is_graph_output():
                    raise Refusal(f"{label(node)} returns the normalized stream as a graph output")
                pending.append(node.outputs[0])
                continue
            site = (
                _weight_of(node, 0) if node.op_type in ("MatMul", "Gemm") and index == 0 else None
            )
            if site is None:
                raise Refusal(
                    f"{label(node)} reads the output of {norm.op} '{norm.name}'; only constant-weight "
                    "MatMul/Gemm may (post-norm block or non-linear reader)"
                )
            if site.array().shape[site.axis] != hidden:
                raise Refusal(
                    f"{label(node)} reads {site.array().shape[site.axis]} channels, not {hidden}"
                )
            sites.append(site)
    return tuple(sites)


#: The name suffix of the MatMul that takes an embedding norm's scale (passes/slice_rewrite.py).
EMBEDDING_AFFINE = ".spa_embedding_affine"
#: Ops whose output has the rank of their data input (or the largest of their operands').
_RANK_KEEPING = frozenset(
    {"Add", "Sub", "Mul", "Div", "Cast", "Identity", "Relu", "Sigmoid", "Tanh", "Erf", "Softmax", "Concat",
     "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "Sqrt", "Reciprocal", "Pow"}
)  # fmt: skip


def _rank(value: ir.Value | None, memo: dict[int, int | None] | None = None) -> int | None:
    """``value``'s rank from its shape, or from the ops that made it (a Transpose's perm,
    elementwise ops and norms keep their operands' rank): TorchScript exports carry few shapes."""
    if value is None:
        return None
    if value.shape is not None:
        return len(value.shape)
    if value.const_value is not None:
        return len(value.const_value.shape)
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = None  # a cycle-free graph; this only stops revisits
    producer = value.producer()
    found: int | None = None
    if producer is not None and producer.domain == "":
        if producer.op_type == "Transpose" and producer.attributes.get_ints("perm", None) is not None:
            found = len(producer.attributes.get_ints("perm", []))
        elif producer.op_type in _RANK_KEEPING:
            operands = producer.inputs[:1] if producer.op_type in _NORM_OPS else producer.inputs
            ranks = [r for r in (_rank(v, memo) for v in operands) if r is not None]
            found = max(ranks) if ranks else None
    memo[id(value)] = found
    return found


def _leading_dims_of(target: ir.Value | None, source: ir.Value | None, count: int) -> bool:
    """Whether a run-time Reshape target starts with ``source``'s own first ``count`` dims:
    ``Concat(Slice(Shape(source), 0, n >= count), ...)``, as ``x.flatten(2)`` exports."""
    concat = target.producer() if target is not None else None
    if concat is None or concat.op_type != "Concat" or not concat.inputs or concat.inputs[0] is None:
        return False
    cut = concat.inputs[0].producer()
    if cut is None or cut.op_type != "Slice" or len(cut.inputs) < 3:
        return False
    shape = cut.inputs[0].producer() if cut.inputs[0] is not None else None
    starts, ends = initializer_array(cut.inputs[1]), initializer_array(cut.inputs[2])
    axes = initializer_array(cut.inputs[3]) if len(cut.inputs) > 3 and cut.inputs[3] is not None else None
    return (
        shape is not None and shape.op_type == "Shape" and shape.inputs[0] is source
        and not shape.attributes.get_int("start", 0)
        and starts is not None and starts.size == 1 and int(starts[0]) == 0
        and ends is not None and ends.size == 1 and int(ends[0]) >= count
        and (axes is None or int(axes.reshape(-1)[0]) == 0)
    )  # fmt: skip


def _reshape_keeps(node: ir.Node, axis: int) -> bool:
    """Whether Reshape ``node`` keeps its input's axis ``axis`` at the same position of its
    output: a constant target holding the input's size there, and the same number of
    elements after it on both sides (so the dims before it only merge); or a target
    computed from the input's own leading dims (then nothing to fix when sliced)."""
    if len(node.inputs) > 1 and _leading_dims_of(node.inputs[1], node.inputs[0], axis + 1):
        return True
    target = initializer_array(node.inputs[1]) if len(node.inputs) > 1 else None
    shape = node.inputs[0].shape if node.inputs[0] is not None else None
    if target is None or shape is None or axis < 0 or axis >= len(target) or axis >= len(shape):
        return False
    after_in, after_out = list(shape)[axis:], [int(d) for d in target[axis:]]
    if not all(isinstance(d, int) for d in after_in) or any(d <= 0 for d in after_out):
        return False
    return after_in[0] == after_out[0] and math.prod(after_in) == math.prod(after_out)


def _resize_keeps(node: ir.Node, axis: int) -> bool:
    """Whether Resize ``node`` leaves its input's axis ``axis`` (the hidden one) unresized: a
    constant scale of 1 there, or sizes that start with the input's own leading dims
    (``Concat(Slice(Shape(x), 0, 2), [h, w])``, as a ViT's interpolated position table
    exports). Interpolation is then the same linear map on every hidden channel, so it
    commutes with a rotation of that axis."""
    source = node.inputs[0]
    rank = _rank(source)
    if source is None or rank is None or not -rank <= axis < rank:
        return False
    axis %= rank
    listed = node.attributes.get_ints("axes", None)  # opset 18: scales / sizes for these axes only
    if listed is not None:
        return axis not in {int(a) % rank for a in listed}
    scales = initializer_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if scales is not None and scales.size:
        return scales.ndim == 1 and len(scales) == rank and float(scales[axis]) == 1.0
    sizes = node.inputs[3] if len(node.inputs) > 3 else None
    fixed = initializer_array(sizes)
    if fixed is not None:  # constant sizes: the hidden entry must be the input's own size
        known = initializer_array(source)
        shape = known.shape if known is not None else source.shape
        return (shape is not None and fixed.ndim == 1 and len(fixed) == rank and isinstance(shape[axis], int)
                and int(fixed[axis]) == shape[axis])  # fmt: skip
    return sizes is not None and _leading_dims_of(sizes, source, axis + 1)


def _terms(
    value: ir.Value,
    add: ir.Node,
    sites: list[WeightSite],
    stream: Container[int],
    *,
    root: bool = False,
    axis: int = -1,
    targets: list[tuple[ir.Node, int]] | None = None,
) -> bool:
    """Classify one term added at ``add`` (``root``: the stream's first value, read
    by many); True when it is a stream value. ``axis``: where the hidden axis of ``value``
    is (-1: last, as in the stream; a patch embedding's convolution has it at 1 before a
    Reshape and Transpose put it last); Reshapes that keep it elsewhere go to ``targets``."""
    producer = value.producer()
    constant = initializer_array(value)
    if constant is not None:  # rotated along its hidden axis (elsewhere than last: a position grid's [1, D, h, w])
        if axis != -1 and not -constant.ndim <= axis < constant.ndim:
            raise Refusal(f"a constant reaches the stream at {label(add)} with its hidden axis at {axis}")
        sites.append(WeightSite(add, list(add.inputs).index(value), axis))
        return False
    if producer is None:
        raise Refusal(
            f"graph input '{value.name}' is added into the residual stream at {label(add)}"
        )
    if id(value) in stream:
        return True
    if producer.op_type in _NORM_OPS:
        source = producer.inputs[0].producer() if producer.inputs[0] is not None else None
        if source is not None and source.op_type in ("MatMul", "Gemm"):
            raise Refusal(f"{label(producer)} normalizes a branch before the add {label(add)} "
                           "(a norm inside the block's output); the stream is not invariant")  # fmt: skip
        raise Refusal(f"post-norm block: the output of {label(producer)} is added into the residual "
                       f"stream at {label(add)}; SliceGPT needs pre-norm blocks")  # fmt: skip
    readers = [use for use in value.uses() if use.node.op_type != "Shape"]  # a size read is no use
    if not root and (len(readers) != 1 or value.is_graph_output()):
        raise Refusal(f"{label(producer)} writes into the stream and is also read elsewhere")
    op = producer.op_type if producer.domain == "" else f"{producer.domain}.{producer.op_type}"
    if op in ("Cast", "Identity") or (op in ("Reshape", "Flatten") and axis == -1):
        return _terms(producer.inputs[0], producer, sites, stream, axis=axis, targets=targets)  # type: ignore[arg-type]
    if op == "Mul" and scalar(producer.inputs[1]) is not None:
        return _terms(producer.inputs[0], producer, sites, stream, axis=axis, targets=targets)  # type: ignore[arg-type]
    if op == "Reshape" and targets is not None and _reshape_keeps(producer, axis):
        if initializer_array(producer.inputs[1]) is not None:
            targets.append((producer, axis))
        return _terms(producer.inputs[0], producer, sites, stream, axis=axis, targets=targets)  # type: ignore[arg-type]
    if op == "Transpose" and (rank := _rank(value)) is not None:
        perm = producer.attributes.get_ints("perm", None) or list(reversed(range(rank)))
        inner = perm[axis % rank]
        inner = -1 if inner == rank - 1 else inner
        return _terms(producer.inputs[0], producer, sites, stream, axis=inner, targets=targets)  # type: ignore[arg-type]
    if op == "Resize" and _resize_keeps(producer, axis):
        if targets is not None and len(producer.inputs) > 3 and initializer_array(producer.inputs[3]) is not None:
            targets.append((producer, axis))  # its constant sizes hold D: rewritten when sliced
        return _terms(producer.inputs[0], producer, sites, stream, axis=axis, targets=targets)  # type: ignore[arg-type]
    if op == "Concat" and (rank := _rank(value)) is not None:
        if producer.attributes.get_int("axis", 0) % rank == axis % rank:
            raise Refusal(f"{label(producer)} concatenates along the hidden axis into the stream")
        if any(_terms(operand, producer, sites, stream, axis=axis, targets=targets) for operand in producer.inputs if operand is not None):
            raise Refusal(f"{label(producer)} concatenates the stream with other terms")
        return False
    if op == "Expand" and axis == -1 and initializer_array(producer.inputs[0]) is not None:
        sites.append(WeightSite(producer, 0, -1))  # a class token broadcast over the batch
        return False
    if op == "Conv" and axis == 1 and producer.attributes.get_int("group", 1) == 1:
        weight = initializer_array(producer.inputs[1])
        if weight is None:
            raise Refusal(f"{label(producer)} writes into the residual stream with a non-constant weight")
        sites.append(WeightSite(producer, 1, 0))  # a patch embedding: output channels
        if len(producer.inputs) > 2 and producer.inputs[2] is not None:
            sites.append(WeightSite(producer, 2, 0))
        return False
    if axis != -1:
        raise _NonLinearWriter(f"{label(producer)} writes into the residual stream with its hidden axis at {axis}")
    if op in ("MatMul", "Gemm"):
        site = _weight_of(producer, 1)
        if site is None:
            raise Refusal(f"{label(producer)} writes into the residual stream with a non-constant "
                           "(or quantized) weight")  # fmt: skip
        sites.append(site)
        if op == "Gemm" and len(producer.inputs) > 2 and producer.inputs[2] is not None:
            sites.append(WeightSite(producer, 2, -1))
        return False
    if op == "Gather" and producer.attributes.get_int("axis", 0) == 0:
        table = initializer_array(producer.inputs[0])
        if table is not None and table.ndim == 2:
            sites.append(WeightSite(producer, 0, 1))
            return False
    if op == "Add":
        for operand in producer.inputs:
            assert operand is not None
            _terms(operand, producer, sites, stream, targets=targets)
        return False
    raise _NonLinearWriter(f"{label(producer)} writes into the residual stream at {label(add)}; only "
                           "constant-weight MatMul/Gemm, embedding Gathers and constants can be rotated "
                           "(a norm or non-linearity on the branch before the add?)")  # fmt: skip


class _Seen:
    """Membership in this walk's values or in those of the walks before it."""

    def __init__(self, own: set[int], earlier: Mapping[int, int]) -> None:
        self.own, self.earlier = own, earlier

    def __contains__(self, key: object) -> bool:
        return key in self.own or key in self.earlier


@dataclasses.dataclass
class _Walk:
    """The part of the stream one norm's walk found that no earlier walk had."""

    norm: Norm
    sites: list[WeightSite]
    adds: list[ir.Node]
    values: list[ir.Value]
    #: Earlier walks this one reached (the stream below them is theirs).
    joins: set[int]
    targets: list[tuple[ir.Node, int]]


def _walk_stream(
    start: ir.Value, earlier: Mapping[int, int]
) -> tuple[list[WeightSite], list[ir.Node], list[ir.Value], set[int], list[tuple[ir.Node, int]]]:
    """Backwards from a norm's input through Add/Cast/Identity: the writers, adds and
    stream values, stopping at values an earlier walk found (``earlier``: value id ->
    walk index; those walks are returned as joined). Each value is walked once over
    all norms, so finding the stream is linear in the graph."""
    own: set[int] = set()
    stream = _Seen(own, earlier)
    joins: set[int] = set()
    adds: list[ir.Node] = []
    sites: list[WeightSite] = []
    values: list[ir.Value] = []
    targets: list[tuple[ir.Node, int]] = []
    pending = [start]
    while pending:
        value = pending.pop()
        if id(value) in own:
            continue
        if id(value) in earlier:
            joins.add(earlier[id(value)])
            continue
        producer = value.producer()
        pooled = (  # a pooling over the tokens (a norm after it): not an embedding table's Gather
            producer is not None and producer.domain == "" and _keeps_hidden_last(producer)
            and initializer_array(producer.inputs[0]) is None
        )  # fmt: skip
        if not pooled and (producer is None or producer.domain != "" or producer.op_type not in _STREAM_OPS):
            readers = [use.node for use in value.uses()]
            root = next((node for node in readers if node.op_type == "Add"), readers[0])
            found: list[WeightSite] = []
            try:
                _terms(value, root, found, stream, root=value is start or len(value.uses()) > 1, targets=targets)
            except _NonLinearWriter as refusal:
                # where the stream starts (every other term of its Add a constant: a position
                # table), a MatMul(I) after the front end would be its first writer
                others = [v for v in root.inputs if v is not None and v is not value]
                if root.op_type == "Add" and others and all(initializer_array(v) is not None for v in others):
                    raise StreamEntry(str(refusal), value) from None
                raise
            sites += [dataclasses.replace(site, into=value) for site in found]
            own.add(id(value))
            values.append(value)
            continue
        own.add(id(value))
        values.append(value)
        assert producer is not None
        if producer.op_type != "Add":  # a relabelling, or a pooling over tokens (a norm after it)
            pending.append(producer.inputs[0])  # type: ignore[arg-type]
            continue
        adds.append(producer)
        for operand in producer.inputs:
            assert operand is not None
            if initializer_array(operand) is not None:
                index = list(producer.inputs).index(operand)
                sites.append(WeightSite(producer, index, -1, into=producer.outputs[0]))
            else:
                pending.append(operand)
    return sites, adds, values, joins, targets


def last_dim(value: ir.Value) -> int | None:
    """``value``'s last dim where its shape declares it as a number, else None."""
    shape = value.shape
    if shape is None or len(shape) == 0 or not isinstance(shape[-1], int):
        return None
    return int(shape[-1])


def _checknode_uses(values: list[ir.Value], allowed: set[int]) -> None:
    """Every stream value is read only by stream adds and norms."""
    for value in values:
        if value.is_graph_output():
            raise Refusal(f"the residual stream value '{value.name}' is a graph output")
        for node, _ in node_uses(value):
            if id(node) not in allowed and node.op_type == "Add" and node.outputs[0].is_graph_output():
                raise Refusal(f"the residual stream leaves the graph unnormalized at {label(node)} (graph output "
                              f"'{node.outputs[0].name}'); SliceGPT returns only normalized outputs in the "
                              "model's basis (the rotated, centred stream is not the model's)")  # fmt: skip
            if id(node) not in allowed and node.op_type != "Shape":
                raise Refusal(f"{label(node)} reads the residual stream '{value.name}'; only adds and "
                               "norms may (post-norm block, or a norm on a branch)")  # fmt: skip


def _after_embedding_norm(site: WeightSite, norms: list[Norm]) -> bool:
    """A writer ``MatMul(norm(embedding), W)`` that the slice pass made from an embedding
    norm's scale (BLOOM's; named with :data:`EMBEDDING_AFFINE`): the stream starts after it.
    Not any MatMul reading a norm of the embedding: the first block's projections do too,
    and a per-head norm (Qwen3's q/k norms) would then count as a stream norm."""
    if site.node.op_type != "MatMul" or site.index != 1 or site.node.inputs[0] is None:
        return False
    if not (site.node.name or "").endswith(EMBEDDING_AFFINE):
        return False
    source = site.node.inputs[0]
    return any(norm.output is source and is_token_embedding(norm.input) for norm in norms)


def is_token_embedding(value: ir.Value | None) -> bool:
    """Whether ``value`` is a token embedding (a Gather of a constant 2-D table along axis 0),
    through Cast."""
    producer = value.producer() if value is not None else None
    while producer is not None and producer.op_type == "Cast" and producer.domain == "":
        producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
    if producer is None or producer.op_type != "Gather" or producer.domain != "":
        return False
    table = initializer_array(producer.inputs[0])
    return table is not None and table.ndim == 2 and producer.attributes.get_int("axis", 0) == 0


def _embeds(site: WeightSite) -> bool:
    """A writer that starts the stream from the model's input: a token embedding table
    (Gather), a patch embedding (a Conv's output channels), or the MatMul(I) the slice pass
    put after a non-linear front end (:data:`STREAM_ENTRY`)."""
    entry = site.node.op_type == "MatMul" and site.index == 1 and (site.node.name or "").endswith(STREAM_ENTRY)
    return (site.node.op_type == "Gather" and site.index == 0) or (site.node.op_type == "Conv" and site.index == 1) or entry


def _find(graph: ir.Graph) -> ResidualStream:
    norms = list(find_norms(graph))
    if not norms:
        raise Refusal(
            "no LayerNormalization / RMSNorm found; SliceGPT needs a pre-norm transformer"
        )
    walks: list[_Walk] = []
    walked: dict[int, int] = {}  # stream value id -> index of the walk that found it
    failures: list[tuple[Norm, Refusal]] = []
    for norm in norms:
        try:
            walk = _Walk(norm, *_walk_stream(norm.input, walked))
        except Refusal as refusal:
            failures.append((norm, refusal))
            continue
        walked.update((id(value), len(walks)) for value in walk.values)
        walks.append(walk)

    # A norm is on the main stream when its stream (its own part and the parts it
    # joined) reaches a token embedding; the stream is every part such norms reach.
    def has_gather(walk: _Walk) -> bool:
        return any(_embeds(s) or _after_embedding_norm(s, norms) for s in walk.sites)

    on_main: list[bool] = []
    for walk in walks:
        on_main.append(has_gather(walk) or any(on_main[index] for index in walk.joins))
    reached: set[int] = set()
    pending = [index for index, flag in enumerate(on_main) if flag]
    while pending:
        index = pending.pop()
        if index not in reached:
            reached.add(index)
            pending.extend(walks[index].joins)
    main = [walk for index, walk in enumerate(walks) if on_main[index]]
    if not main:
        raise failures[0][1] if failures else Refusal("no norm reads a token or patch embedding (Gather, Conv)")
    parts = [walks[index] for index in sorted(reached)]
    embedding = next(s for walk in parts for s in walk.sites if _embeds(s))
    hidden = int(embedding.array().shape[embedding.axis])
    for norm, reason in failures:
        if last_dim(norm.input) in (None, hidden):
            raise reason
    kinds = {walk.norm.kind for walk in main}
    if len(kinds) > 1:
        raise Refusal(
            f"the stream mixes LayerNorm and RMSNorm ({main[0].norm.name}); not invariant"
        )
    stream = ResidualStream(hidden=hidden)
    seen_sites: set[tuple[int, int]] = set()
    seen_adds: set[int] = set()
    values: dict[int, ir.Value] = {}
    for walk in main:
        stream.norms.append(dataclasses.replace(walk.norm, readers=_readers(walk.norm, hidden)))
    for walk in parts:
        for site in walk.sites:
            if (id(site.node), site.index) not in seen_sites:
                seen_sites.add((id(site.node), site.index))
                stream.writers.append(site)
        stream.adds += [add for add in walk.adds if id(add) not in seen_adds]
        stream.targets += [t for t in walk.targets if all(t[0] is not u[0] for u in stream.targets)]
        seen_adds.update(id(add) for add in walk.adds)
        values.update((id(value), value) for value in walk.values)
    for site in stream.writers:
        array = site.array()
        size = array.shape[site.axis] if array.ndim else 1
        if size not in (1, hidden):
            raise Refusal(
                f"{label(site.node)} adds a constant of shape {array.shape} to the stream"
            )
    for site in stream.writers:  # a projection of the stream itself, with no norm between, added back
        source = site.node.inputs[0] if site.node.op_type in ("MatMul", "Gemm") and site.index else None
        if source is not None and id(source) in values:
            raise Refusal(f"{label(site.node)} reads the residual stream '{source.name}' without a norm and "
                          "writes into it; SliceGPT needs a norm before every reader")  # fmt: skip
    allowed = {id(value.producer()) for value in values.values()}
    allowed.update(id(node) for norm in stream.norms for node in norm.nodes)
    stream.values = list(values.values())
    _checknode_uses(stream.values, allowed)
    return stream


def find_residual_stream(model: ir.Model) -> ResidualStream:
    """The residual stream of ``model``'s main graph, or one with ``reason`` set."""
    try:
        return _find(model.graph)
    except StreamEntry as refusal:
        return ResidualStream(reason=str(refusal), entry=refusal.entry)
    except Refusal as refusal:
        return ResidualStream(reason=str(refusal))
