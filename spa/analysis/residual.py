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
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from spa.constants import constant_array

__all__ = [
    "Norm",
    "ResidualStream",
    "WeightSite",
    "find_residual_stream",
    "initializer_array",
]

MS_DOMAIN = "com.microsoft"
#: Ops that only relabel a value on a reader's or writer's path.
_PATH_OPS = frozenset({"Reshape", "Flatten", "Cast", "Identity"})
#: Ops the stream itself may pass through.
_STREAM_OPS = frozenset({"Add", "Cast", "Identity", "Reshape", "Flatten"})
_NORM_OPS = frozenset(
    {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
     "SkipSimplifiedLayerNormalization"}
)  # fmt: skip
_FUSED = frozenset(
    {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization"}
)


class _Refusal(Exception):
    """The graph is outside the invariance; the message names the node."""


@dataclasses.dataclass(frozen=True)
class WeightSite:
    """A constant input ``node.inputs[index]`` whose ``axis`` is the hidden axis."""

    node: ir.Node
    index: int
    axis: int
    #: A writer's: the stream value its term is summed into (its basis is that value's).
    into: ir.Value | None = None

    def array(self) -> np.ndarray:
        found = initializer_array(self.node.inputs[self.index])
        assert found is not None, f"{self.node.name} input {self.index} is not constant"
        return found


@dataclasses.dataclass(frozen=True)
class Norm:
    """One norm on the stream. ``kind``: ``rms`` or ``layer``; ``op``: its op type
    (``decomposed`` for the Pow/ReduceMean/Sqrt pattern)."""

    kind: str
    op: str
    input: ir.Value
    #: What the readers read: the norm's output after its scale (and bias).
    output: ir.Value
    nodes: tuple[ir.Node, ...]
    epsilon: float
    scale: np.ndarray | None
    bias: np.ndarray | None
    #: Decomposed form: the Add holding eps and the eps input's index.
    eps_site: tuple[ir.Node, int] | None
    readers: tuple[WeightSite, ...] = ()

    @property
    def name(self) -> str:
        return self.nodes[0].name or self.op


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


def initializer_array(value: ir.Value | None) -> np.ndarray | None:
    """A constant's contents, also through ``Identity`` and ``Transpose`` of a constant."""
    found = constant_array(value)
    if found is not None or value is None:
        return found
    producer = value.producer()
    if (
        producer is None
        or producer.domain != ""
        or producer.op_type not in ("Identity", "Transpose")
    ):
        return None
    inner = initializer_array(producer.inputs[0])
    if inner is None or producer.op_type == "Identity":
        return inner
    perm = producer.attributes.get_ints("perm", None)
    return np.transpose(inner, perm if perm is not None else None)


def _label(node: ir.Node) -> str:
    """``Op 'name'``; an unnamed node is named by its first output."""
    return f"{node.op_type} '{node.name or node.outputs[0].name}'"


def _uses(value: ir.Value) -> list[tuple[ir.Node, int]]:
    return [(use.node, use.idx) for use in value.uses()]


def _only_use(value: ir.Value) -> ir.Node | None:
    uses = _uses(value)
    return uses[0][0] if len(uses) == 1 and not value.is_graph_output() else None


def _through_casts(value: ir.Value) -> ir.Value:
    node = _only_use(value)
    while node is not None and node.op_type in ("Cast", "Identity") and node.domain == "":
        value = node.outputs[0]
        node = _only_use(value)
    return value


def _other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    inputs = list(node.inputs)
    if len(inputs) != 2:
        return None
    return inputs[1] if inputs[0] is value else inputs[0] if inputs[1] is value else None


def _scalar(value: ir.Value | None) -> float | None:
    found = initializer_array(value)
    return float(found.reshape(-1)[0]) if found is not None and found.size == 1 else None


def _last_axis(node: ir.Node, value: ir.Value) -> bool:
    """Does the ReduceMean ``node`` reduce only the last axis of ``value``, keeping dims?"""
    if node.attributes.get_int("keepdims", 1) != 1:
        return False
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > 1:
        found = initializer_array(node.inputs[1])
        axes = None if found is None else [int(a) for a in found.reshape(-1)]
    if axes is None or len(axes) != 1:
        return False
    rank = len(value.shape) if value.shape is not None else None
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _match_decomposed(reduce: ir.Node) -> Norm | None:
    """``x * 1/sqrt(mean(x^2) + eps)`` (or ``x / sqrt(...)``), ``x`` possibly
    ``x0 - mean(x0)`` (a decomposed LayerNorm), then an optional scale and bias."""
    square = reduce.inputs[0].producer() if reduce.inputs[0] is not None else None
    if square is None or square.op_type not in ("Pow", "Mul"):
        return None
    x = square.inputs[0]
    if square.op_type == "Pow" and _scalar(square.inputs[1]) != 2.0:
        return None
    if square.op_type == "Mul" and square.inputs[1] is not x:
        return None
    if x is None or not _last_axis(reduce, x):
        return None
    nodes = [square, reduce]
    add = _only_use(reduce.outputs[0])
    if add is None or add.op_type != "Add":
        return None
    eps_index = 1 if add.inputs[0] is reduce.outputs[0] else 0
    epsilon = _scalar(add.inputs[eps_index])
    sqrt = _only_use(add.outputs[0])
    if epsilon is None or sqrt is None or sqrt.op_type != "Sqrt":
        return None
    nodes += [add, sqrt]
    step = _only_use(sqrt.outputs[0])
    if step is None:
        return None
    normalize: ir.Node | None = None
    if step.op_type == "Div" and step.inputs[1] is sqrt.outputs[0] and step.inputs[0] is x:
        normalize = step
    else:
        inverse_ok = step.op_type == "Reciprocal" or (
            step.op_type == "Div"
            and step.inputs[1] is sqrt.outputs[0]
            and _scalar(step.inputs[0]) == 1.0
        )
        normalize = _only_use(step.outputs[0]) if inverse_ok else None
        if (
            normalize is None
            or normalize.op_type != "Mul"
            or _other_input(normalize, step.outputs[0]) is not x
        ):
            return None
        nodes.append(step)
    nodes.append(normalize)
    kind, source = _centred_source(x, nodes)
    # the stream value is x, or the value a Cast made x from
    producer = source.producer()
    while producer is not None and producer.op_type == "Cast" and producer.domain == "":
        nodes.append(producer)
        source = producer.inputs[0]  # type: ignore[assignment]
        producer = source.producer() if source is not None else None
    output, scale, bias = _affine(normalize.outputs[0], nodes)
    return Norm(
        kind, "decomposed", source, output, tuple(nodes), epsilon, scale, bias, (add, eps_index)
    )


def _centred_source(x: ir.Value, nodes: list[ir.Node]) -> tuple[str, ir.Value]:
    """``("layer", x0)`` when ``x = x0 - mean(x0, -1)`` (a decomposed LayerNorm), else ``("rms", x)``."""
    sub = x.producer()
    if sub is None or sub.op_type != "Sub" or sub.domain != "":
        return "rms", x
    x0, mean = sub.inputs[0], sub.inputs[1]
    reduce = mean.producer() if mean is not None else None
    if x0 is None or reduce is None or reduce.op_type != "ReduceMean" or reduce.inputs[0] is not x0:
        return "rms", x
    if not _last_axis(reduce, x0) or len(mean.uses()) != 1:  # type: ignore[union-attr]
        return "rms", x
    nodes += [sub, reduce]
    return "layer", x0


def _affine(
    value: ir.Value, nodes: list[ir.Node]
) -> tuple[ir.Value, np.ndarray | None, np.ndarray | None]:
    """The output after an optional constant scale ``Mul`` and bias ``Add``."""
    output = _through_casts(value)
    found: dict[str, np.ndarray | None] = {"Mul": None, "Add": None}
    for op in ("Mul", "Add"):
        node = _only_use(output)
        if node is None or node.op_type != op or node.domain != "":
            continue
        constant = initializer_array(_other_input(node, output))
        if constant is None or constant.ndim > 1:
            continue
        found[op] = constant
        nodes.append(node)
        output = _through_casts(node.outputs[0])
    return output, found["Mul"], found["Add"]


def _match_op(node: ir.Node) -> Norm | None:
    """``LayerNormalization``, ``RMSNormalization``, ``SimplifiedLayerNormalization``."""
    known = {("", "LayerNormalization"): "layer", ("", "RMSNormalization"): "rms",
             ("", "SimplifiedLayerNormalization"): "rms",  # where ORT registers it
             (MS_DOMAIN, "SimplifiedLayerNormalization"): "rms"}  # fmt: skip
    kind = known.get((node.domain, node.op_type))
    if kind is None or node.inputs[0] is None:
        return None
    if node.attributes.get_int("axis", -1) != -1:
        shape = node.inputs[0].shape
        if shape is None or node.attributes.get_int("axis", -1) != len(shape) - 1:
            raise _Refusal(
                f"{_label(node)} normalizes axis {node.attributes.get_int('axis', -1)}, not the last"
            )
    if any(output is not None and output.uses() for output in node.outputs[1:]):
        raise _Refusal(f"{_label(node)}: its mean / inverse-std outputs are read")
    scale = initializer_array(node.inputs[1]) if len(node.inputs) > 1 else None
    bias = (
        initializer_array(node.inputs[2])
        if len(node.inputs) > 2 and node.inputs[2] is not None
        else None
    )
    if len(node.inputs) > 1 and scale is None:
        raise _Refusal(f"{_label(node)} has a non-constant scale")
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    output = _through_casts(node.outputs[0])
    return Norm(kind, node.op_type, node.inputs[0], output, (node,), epsilon, scale, bias, None)


def _norms(graph: ir.Graph) -> Iterator[Norm]:
    for node in graph:
        if node.op_type in _FUSED and node.domain == MS_DOMAIN:
            raise _Refusal(
                f"{_label(node)} fuses the residual add into the norm (the rotation-invariant "
                "pass splits Skip*LayerNormalization; EmbedLayerNormalization: export unfused)"
            )
        norm = _match_op(node)
        if norm is None and node.op_type == "ReduceMean" and node.domain == "":
            norm = _match_decomposed(node)
        if norm is not None:
            yield norm


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


def _readers(norm: Norm, hidden: int) -> tuple[WeightSite, ...]:
    """Constant-weight MatMul/Gemm reading ``norm.output`` (through relabelling ops)."""
    if norm.output.is_graph_output():
        raise _Refusal(
            f"the output of {norm.op} '{norm.name}' is a graph output; no reader to fold into"
        )
    sites: list[WeightSite] = []
    pending = [norm.output]
    while pending:
        value = pending.pop()
        for node, index in _uses(value):
            if node.op_type == "Shape" and node.domain == "":
                continue  # reads the shape only
            if node.op_type in _PATH_OPS and node.domain == "" and index == 0:
                if node.outputs[0].is_graph_output():
                    raise _Refusal(
                        f"{_label(node)} returns the normalized stream as a graph output"
                    )
                pending.append(node.outputs[0])
                continue
            site = (
                _weight_of(node, 0) if node.op_type in ("MatMul", "Gemm") and index == 0 else None
            )
            if site is None:
                raise _Refusal(
                    f"{_label(node)} reads the output of {norm.op} '{norm.name}'; only constant-weight "
                    "MatMul/Gemm may (post-norm block or non-linear reader)"
                )
            if site.array().shape[site.axis] != hidden:
                raise _Refusal(
                    f"{_label(node)} reads {site.array().shape[site.axis]} channels, not {hidden}"
                )
            sites.append(site)
    return tuple(sites)


def _terms(
    value: ir.Value, add: ir.Node, sites: list[WeightSite], stream: set[int], *, root: bool = False
) -> bool:
    """Classify one term added at ``add`` (``root``: the stream's first value, read
    by many); True when it is a stream value."""
    producer = value.producer()
    constant = initializer_array(value)
    if constant is not None:
        sites.append(WeightSite(add, list(add.inputs).index(value), -1))
        return False
    if producer is None:
        raise _Refusal(
            f"graph input '{value.name}' is added into the residual stream at {_label(add)}"
        )
    if id(value) in stream:
        return True
    if producer.op_type in _NORM_OPS:
        source = producer.inputs[0].producer() if producer.inputs[0] is not None else None
        if source is not None and source.op_type in ("MatMul", "Gemm"):
            raise _Refusal(f"{_label(producer)} normalizes a branch before the add {_label(add)} "
                           "(a norm inside the block's output); the stream is not invariant")  # fmt: skip
        raise _Refusal(f"post-norm block: the output of {_label(producer)} is added into the residual "
                       f"stream at {_label(add)}; SliceGPT needs pre-norm blocks")  # fmt: skip
    if not root and (len(value.uses()) != 1 or value.is_graph_output()):
        raise _Refusal(f"{_label(producer)} writes into the stream and is also read elsewhere")
    op = producer.op_type if producer.domain == "" else f"{producer.domain}.{producer.op_type}"
    if op in ("Reshape", "Flatten", "Cast", "Identity"):
        return _terms(producer.inputs[0], producer, sites, stream)  # type: ignore[arg-type]
    if op == "Mul" and _scalar(producer.inputs[1]) is not None:
        return _terms(producer.inputs[0], producer, sites, stream)  # type: ignore[arg-type]
    if op in ("MatMul", "Gemm"):
        site = _weight_of(producer, 1)
        if site is None:
            raise _Refusal(f"{_label(producer)} writes into the residual stream with a non-constant "
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
    raise _Refusal(f"{_label(producer)} writes into the residual stream at {_label(add)}; only "
                   "constant-weight MatMul/Gemm, embedding Gathers and constants can be rotated "
                   "(a norm or non-linearity on the branch before the add?)")  # fmt: skip


def _walk_stream(start: ir.Value) -> tuple[list[WeightSite], list[ir.Node], list[ir.Value]]:
    """Backwards from a norm's input through Add/Cast/Identity: the writers, adds and stream values."""
    stream: set[int] = set()
    adds: list[ir.Node] = []
    sites: list[WeightSite] = []
    values: list[ir.Value] = []
    pending = [start]
    while pending:
        value = pending.pop()
        if id(value) in stream:
            continue
        producer = value.producer()
        if producer is None or producer.domain != "" or producer.op_type not in _STREAM_OPS:
            readers = [use.node for use in value.uses()]
            root = next((node for node in readers if node.op_type == "Add"), readers[0])
            found: list[WeightSite] = []
            _terms(value, root, found, stream, root=value is start or len(value.uses()) > 1)
            sites += [dataclasses.replace(site, into=value) for site in found]
            stream.add(id(value))
            values.append(value)
            continue
        stream.add(id(value))
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
    return sites, adds, values


def _width(value: ir.Value) -> int | None:
    shape = value.shape
    if shape is None or len(shape) == 0 or not isinstance(shape[-1], int):
        return None
    return int(shape[-1])


def _check_uses(values: list[ir.Value], allowed: set[int]) -> None:
    """Every stream value is read only by stream adds and norms."""
    for value in values:
        if value.is_graph_output():
            raise _Refusal(f"the residual stream value '{value.name}' is a graph output")
        for node, _ in _uses(value):
            if id(node) not in allowed and node.op_type != "Shape":
                raise _Refusal(f"{_label(node)} reads the residual stream '{value.name}'; only adds and "
                               "norms may (post-norm block, or a norm on a branch)")  # fmt: skip


def _find(graph: ir.Graph) -> ResidualStream:
    norms = list(_norms(graph))
    if not norms:
        raise _Refusal(
            "no LayerNormalization / RMSNorm found; SliceGPT needs a pre-norm transformer"
        )
    walks: list[tuple[Norm, list[WeightSite], list[ir.Node], list[ir.Value]]] = []
    failures: list[tuple[Norm, str]] = []
    for norm in norms:
        try:
            walks.append((norm, *_walk_stream(norm.input)))
        except _Refusal as refusal:
            failures.append((norm, str(refusal)))
    main = [
        walk for walk in walks if any(s.node.op_type == "Gather" and s.index == 0 for s in walk[1])
    ]
    if not main:
        raise _Refusal(failures[0][1] if failures else "no norm reads a token embedding (Gather)")
    gather = next(s for s in main[0][1] if s.node.op_type == "Gather")
    hidden = int(gather.array().shape[1])
    for norm, reason in failures:
        if _width(norm.input) in (None, hidden):
            raise _Refusal(reason)
    kinds = {walk[0].kind for walk in main}
    if len(kinds) > 1:
        raise _Refusal(f"the stream mixes LayerNorm and RMSNorm ({main[0][0].name}); not invariant")
    stream = ResidualStream(hidden=hidden)
    seen_sites: set[tuple[int, int]] = set()
    seen_adds: set[int] = set()
    values: dict[int, ir.Value] = {}
    for norm, sites, adds, walked in main:
        stream.norms.append(dataclasses.replace(norm, readers=_readers(norm, hidden)))
        for site in sites:
            if (id(site.node), site.index) not in seen_sites:
                seen_sites.add((id(site.node), site.index))
                stream.writers.append(site)
        stream.adds += [add for add in adds if id(add) not in seen_adds]
        seen_adds.update(id(add) for add in adds)
        values.update((id(value), value) for value in walked)
    for site in stream.writers:
        array = site.array()
        size = array.shape[site.axis] if array.ndim else 1
        if size not in (1, hidden):
            raise _Refusal(
                f"{_label(site.node)} adds a constant of shape {array.shape} to the stream"
            )
    allowed = {id(value.producer()) for value in values.values()}
    allowed.update(id(node) for norm in stream.norms for node in norm.nodes)
    stream.values = list(values.values())
    _check_uses(stream.values, allowed)
    return stream


def find_residual_stream(model: ir.Model) -> ResidualStream:
    """The residual stream of ``model``'s main graph, or one with ``reason`` set."""
    try:
        return _find(model.graph)
    except _Refusal as refusal:
        return ResidualStream(reason=str(refusal))
