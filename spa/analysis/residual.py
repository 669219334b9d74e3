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
from collections.abc import Container, Mapping

import onnx_ir as ir

from spa.analysis.norms import (
    Norm,
    Refusal,
    WeightSite,
    find_norms,
    initializer_array,
    label,
    node_uses,
    scalar,
)

__all__ = [
    "Norm",
    "ResidualStream",
    "WeightSite",
    "find_residual_stream",
    "initializer_array",
]

#: Ops that only relabel a value on a reader's or writer's path.
_PATH_OPS = frozenset({"Reshape", "Flatten", "Cast", "Identity"})
#: Ops the stream itself may pass through.
_STREAM_OPS = frozenset({"Add", "Cast", "Identity", "Reshape", "Flatten"})
_NORM_OPS = frozenset(
    {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
     "SkipSimplifiedLayerNormalization"}
)  # fmt: skip


@dataclasses.dataclass
class ResidualStream:
    """The stream of one model, or the reason it has none SliceGPT can rotate."""

    hidden: int = 0
    norms: list[Norm] = dataclasses.field(default_factory=list)
    writers: list[WeightSite] = dataclasses.field(default_factory=list)
    adds: list[ir.Node] = dataclasses.field(default_factory=list)
    #: The stream's values (adds, embedding rows, relabelled copies).
    values: list[ir.Value] = dataclasses.field(default_factory=list)
    reason: str | None = None

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


def _axes_of(node: ir.Node, position: int) -> list[int] | None:
    """A node's axes, from its attribute or its constant input ``position``."""
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > position and node.inputs[position] is not None:
        found = initializer_array(node.inputs[position])
        axes = None if found is None else [int(a) for a in found.reshape(-1)]
    return None if axes is None else list(axes)


def _keeps_hidden_last(node: ir.Node) -> bool:
    """A linear step on the tokens that leaves the hidden axis last and whole: a sum or mean
    over other axes (mean pooling; a constant scalar Mul or Div), a Gather or Slice along
    another axis (a class token).
    It commutes with a rotation of the hidden axis, so the readers after it read the norm."""
    if node.op_type in ("Mul", "Div") and len(node.inputs) == 2:
        return scalar(node.inputs[1]) is not None  # the pooled sum over a constant count
    value = node.inputs[0]
    rank = len(value.shape) if value is not None and value.shape is not None else None
    if rank is None:
        return False
    last = {-1, rank - 1}
    if node.op_type in ("ReduceSum", "ReduceMean"):
        axes = _axes_of(node, 1)
        return axes is not None and not last & set(axes) and node.attributes.get_int("noop_with_empty_axes", 0) == 0
    if node.op_type == "Gather":
        return node.attributes.get_int("axis", 0) not in last
    if node.op_type == "Slice":
        axes = _axes_of(node, 3)
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


def _terms(
    value: ir.Value,
    add: ir.Node,
    sites: list[WeightSite],
    stream: Container[int],
    *,
    root: bool = False,
) -> bool:
    """Classify one term added at ``add`` (``root``: the stream's first value, read
    by many); True when it is a stream value."""
    producer = value.producer()
    constant = initializer_array(value)
    if constant is not None:
        sites.append(WeightSite(add, list(add.inputs).index(value), -1))
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
    if not root and (len(value.uses()) != 1 or value.is_graph_output()):
        raise Refusal(f"{label(producer)} writes into the stream and is also read elsewhere")
    op = producer.op_type if producer.domain == "" else f"{producer.domain}.{producer.op_type}"
    if op in ("Reshape", "Flatten", "Cast", "Identity"):
        return _terms(producer.inputs[0], producer, sites, stream)  # type: ignore[arg-type]
    if op == "Mul" and scalar(producer.inputs[1]) is not None:
        return _terms(producer.inputs[0], producer, sites, stream)  # type: ignore[arg-type]
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
            _terms(operand, producer, sites, stream)
        return False
    raise Refusal(f"{label(producer)} writes into the residual stream at {label(add)}; only "
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


def _walk_stream(
    start: ir.Value, earlier: Mapping[int, int]
) -> tuple[list[WeightSite], list[ir.Node], list[ir.Value], set[int]]:
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
    pending = [start]
    while pending:
        value = pending.pop()
        if id(value) in own:
            continue
        if id(value) in earlier:
            joins.add(earlier[id(value)])
            continue
        producer = value.producer()
        if producer is None or producer.domain != "" or producer.op_type not in _STREAM_OPS:
            readers = [use.node for use in value.uses()]
            root = next((node for node in readers if node.op_type == "Add"), readers[0])
            found: list[WeightSite] = []
            _terms(value, root, found, stream, root=value is start or len(value.uses()) > 1)
            sites += [dataclasses.replace(site, into=value) for site in found]
            own.add(id(value))
            values.append(value)
            continue
        own.add(id(value))
        values.append(value)
        if producer.op_type != "Add":
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
    return sites, adds, values, joins


def _width(value: ir.Value) -> int | None:
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
            if id(node) not in allowed and node.op_type != "Shape":
                raise Refusal(f"{label(node)} reads the residual stream '{value.name}'; only adds and "
                               "norms may (post-norm block, or a norm on a branch)")  # fmt: skip


def _after_embedding_norm(site: WeightSite, norms: list[Norm]) -> bool:
    """A writer ``MatMul(norm(embedding), W)``: the stream starts after an embedding norm
    (BLOOM's, whose scale and bias the slice pass moved into that MatMul and an Add)."""
    if site.node.op_type != "MatMul" or site.index != 1 or site.node.inputs[0] is None:
        return False
    source = site.node.inputs[0]
    for norm in norms:
        if norm.output is source:
            producer = norm.input.producer()
            while producer is not None and producer.op_type == "Cast":
                producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
            return producer is not None and producer.op_type == "Gather"
    return False


def _find(graph: ir.Graph) -> ResidualStream:
    norms = list(find_norms(graph))
    if not norms:
        raise Refusal(
            "no LayerNormalization / RMSNorm found; SliceGPT needs a pre-norm transformer"
        )
    walks: list[_Walk] = []
    walked: dict[int, int] = {}  # stream value id -> index of the walk that found it
    failures: list[tuple[Norm, str]] = []
    for norm in norms:
        try:
            walk = _Walk(norm, *_walk_stream(norm.input, walked))
        except Refusal as refusal:
            failures.append((norm, str(refusal)))
            continue
        walked.update((id(value), len(walks)) for value in walk.values)
        walks.append(walk)

    # A norm is on the main stream when its stream (its own part and the parts it
    # joined) reaches a token embedding; the stream is every part such norms reach.
    def has_gather(walk: _Walk) -> bool:
        return any(
            (s.node.op_type == "Gather" and s.index == 0) or _after_embedding_norm(s, norms)
            for s in walk.sites
        )

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
        raise Refusal(failures[0][1] if failures else "no norm reads a token embedding (Gather)")
    parts = [walks[index] for index in sorted(reached)]
    gather = next(
        s for walk in parts for s in walk.sites if s.node.op_type == "Gather" and s.index == 0
    )
    hidden = int(gather.array().shape[1])
    for norm, reason in failures:
        if _width(norm.input) in (None, hidden):
            raise Refusal(reason)
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
        seen_adds.update(id(add) for add in walk.adds)
        values.update((id(value), value) for value in walk.values)
    for site in stream.writers:
        array = site.array()
        size = array.shape[site.axis] if array.ndim else 1
        if size not in (1, hidden):
            raise Refusal(
                f"{label(site.node)} adds a constant of shape {array.shape} to the stream"
            )
    allowed = {id(value.producer()) for value in values.values()}
    allowed.update(id(node) for norm in stream.norms for node in norm.nodes)
    stream.values = list(values.values())
    _checknode_uses(stream.values, allowed)
    return stream


def find_residual_stream(model: ir.Model) -> ResidualStream:
    """The residual stream of ``model``'s main graph, or one with ``reason`` set."""
    try:
        return _find(model.graph)
    except Refusal as refusal:
        return ResidualStream(reason=str(refusal))
