"""Norms as exporters write them, matched on an onnx-ir graph (read-only).

``LayerNormalization``, opset-23 ``RMSNormalization``, ORT's
``SimplifiedLayerNormalization`` (ONNX or com.microsoft domain), and the
decomposed forms: RMSNorm ``x * 1/sqrt(mean(x^2) + eps)`` (``Pow``/``Mul``,
``ReduceMean``, ``Add``, ``Sqrt``, ``Reciprocal``/``Div``; ``Cast`` skipped) and
LayerNorm (the same on ``x - mean(x)``), each with its constant scale ``Mul``
and bias ``Add``. Used by :mod:`spa.analysis.residual` (SliceGPT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from spa.constants import constant_array

__all__ = [
    "MS_DOMAIN",
    "Norm",
    "Refusal",
    "WeightSite",
    "find_norms",
    "initializer_array",
    "label",
    "node_uses",
    "scalar",
]

MS_DOMAIN = "com.microsoft"
_FUSED = frozenset(
    {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization"}
)


class Refusal(Exception):
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


def label(node: ir.Node) -> str:
    """``Op 'name'``; an unnamed node is named by its first output."""
    return f"{node.op_type} '{node.name or node.outputs[0].name}'"


def node_uses(value: ir.Value) -> list[tuple[ir.Node, int]]:
    return [(use.node, use.idx) for use in value.uses()]


def _only_use(value: ir.Value) -> ir.Node | None:
    uses = node_uses(value)
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


def scalar(value: ir.Value | None) -> float | None:
    found = initializer_array(value)
    return float(found.reshape(-1)[0]) if found is not None and found.size == 1 else None


def axes_of(node: ir.Node, position: int) -> list[int] | None:
    """A node's axes, from its ``axes`` attribute (older opsets) or its constant input
    ``position`` (ReduceMean's 1 from opset 18, Slice's 3); None when neither is known."""
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > position and node.inputs[position] is not None:
        found = initializer_array(node.inputs[position])
        axes = None if found is None else [int(a) for a in found.reshape(-1)]
    return None if axes is None else list(axes)


def _last_axis(node: ir.Node, value: ir.Value) -> bool:
    """Does the ReduceMean ``node`` reduce only the last axis of ``value``, keeping dims?"""
    if node.attributes.get_int("keepdims", 1) != 1:
        return False
    axes = axes_of(node, 1)
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
    if square.op_type == "Pow" and scalar(square.inputs[1]) != 2.0:
        return None
    if square.op_type == "Mul" and square.inputs[1] is not x:
        return None
    if x is None or not _last_axis(reduce, x):
        return None
    nodes = [square, reduce]
    # Flax/jax2onnx: var = max(mean(x^2) - mean(x)^2, 0), normalised (x - mean(x)) / sqrt(var + eps)
    raw = _raw_moment_variance(reduce, x, nodes)
    add = _only_use(raw[1] if raw is not None else reduce.outputs[0])
    if add is None or add.op_type != "Add":
        return None
    eps_index = 0 if scalar(add.inputs[0]) is not None else 1
    epsilon = scalar(add.inputs[eps_index])
    sqrt = _only_use(add.outputs[0])
    if epsilon is None or sqrt is None or sqrt.op_type != "Sqrt":
        return None
    nodes += [add, sqrt]
    step = _only_use(sqrt.outputs[0])
    if step is None:
        return None
    normalize: ir.Node | None = None
    numerator = raw[0] if raw is not None else x  # the raw-moment form divides x - mean(x)
    if step.op_type == "Div" and step.inputs[1] is sqrt.outputs[0] and step.inputs[0] is numerator:
        normalize = step
    else:
        inverse_ok = step.op_type == "Reciprocal" or (
            step.op_type == "Div"
            and step.inputs[1] is sqrt.outputs[0]
            and scalar(step.inputs[0]) == 1.0
        )
        normalize = _only_use(step.outputs[0]) if inverse_ok else None
        if (
            normalize is None
            or normalize.op_type != "Mul"
            or _other_input(normalize, step.outputs[0]) is not numerator
        ):
            return None
        nodes.append(step)
    nodes.append(normalize)
    if raw is not None:
        kind, source = "layer", x
    else:
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


def _raw_moment_variance(
    reduce: ir.Node, x: ir.Value, nodes: list[ir.Node]
) -> tuple[ir.Value, ir.Value] | None:
    """``(x - m, max(mean(x^2) - m^2, 0))`` with ``m = mean(x, -1)`` when ``reduce`` (the
    ``mean(x^2)``) starts that raw-moment variance (the Max optional), else None. Its nodes
    join ``nodes``."""
    sub = _only_use(reduce.outputs[0])
    if sub is None or sub.op_type != "Sub" or sub.domain != "" or sub.inputs[0] is not reduce.outputs[0]:
        return None
    squared = sub.inputs[1].producer() if sub.inputs[1] is not None else None
    if squared is None or squared.op_type not in ("Mul", "Pow") or squared.domain != "":
        return None
    mean = squared.inputs[0]
    if squared.op_type == "Mul" and squared.inputs[1] is not mean:
        return None
    if squared.op_type == "Pow" and scalar(squared.inputs[1]) != 2.0:
        return None
    mean_node = mean.producer() if mean is not None else None
    if mean_node is None or mean_node.op_type != "ReduceMean" or mean_node.inputs[0] is not x:
        return None
    if not _last_axis(mean_node, x):
        return None
    centred = next(
        (use.node for use in mean.uses()  # type: ignore[union-attr]
         if use.node.op_type == "Sub" and use.node.inputs[0] is x and use.node.inputs[1] is mean),
        None,
    )  # fmt: skip
    if centred is None:
        return None
    found = [sub, squared, mean_node, centred]
    variance = sub.outputs[0]
    clamp = _only_use(variance)
    if clamp is not None and clamp.op_type == "Max" and scalar(_other_input(clamp, variance)) == 0.0:
        found.append(clamp)
        variance = clamp.outputs[0]
    nodes += found
    return centred.outputs[0], variance


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
            raise Refusal(
                f"{label(node)} normalizes axis {node.attributes.get_int('axis', -1)}, not the last"
            )
    if any(output is not None and output.uses() for output in node.outputs[1:]):
        raise Refusal(f"{label(node)}: its mean / inverse-std outputs are read")
    scale = initializer_array(node.inputs[1]) if len(node.inputs) > 1 else None
    bias = (
        initializer_array(node.inputs[2])
        if len(node.inputs) > 2 and node.inputs[2] is not None
        else None
    )
    if len(node.inputs) > 1 and scale is None:
        raise Refusal(f"{label(node)} has a non-constant scale")
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    output = _through_casts(node.outputs[0])
    return Norm(kind, node.op_type, node.inputs[0], output, (node,), epsilon, scale, bias, None)


def find_norms(graph: ir.Graph) -> Iterator[Norm]:
    """Every norm of ``graph`` in node order; a fused Skip/Embed norm is a :class:`Refusal`."""
    for node in graph:
        if node.op_type in _FUSED and node.domain == MS_DOMAIN:
            raise Refusal(
                f"{label(node)} fuses the residual add into the norm (the rotation-invariant "
                "pass splits Skip*LayerNormalization; EmbedLayerNormalization: export unfused)"
            )
        norm = _match_op(node)
        if norm is None and node.op_type == "ReduceMean" and node.domain == "":
            norm = _match_decomposed(node)
        if norm is not None:
            yield norm
