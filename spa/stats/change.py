"""What a command changed, as shares of the model, and why the rest was left.

Every command reports the share of the model's float weights (params) and of
its weighted-layer MACs that it changed, and groups what it left by reason
("frozen group: ai.onnx::Pad has no rule", "op type Conv not quantizable for
--target tensorrt", "layer skipped: depthwise"). A command that changed nothing
says so in one line instead of a silent "MACs 0 -> 0".

The unit is a weight: a float initializer of the main graph or of an If/Loop/Scan
body (whose nodes, and their MACs, count too), or a weight stored quantized:
the integer initializer a MatMul/Gemm/Conv reads through decode ops
(``DequantizeLinear``, the folded ``Cast -> [Sub] -> Mul``, block and Conv
reshapes; its elements), or the packed weight of a ``MatMulNBits`` or
of one of spa's matmul ops (``K * N``); the headline then says "params (stored
quantized included)". A caller gives,
per weight name, ``""`` when the command changed it or the reason it did not
(:func:`change_share`); weights it gives nothing for get ``default_reason``
with the consuming op type. A weighted layer's MACs (MatMul/Gemm/Conv, and
LSTM/GRU/RNN: :func:`spa.stats.coverage.node_macs`) follow its weight (its second
input; a recurrent layer's R follows W); a node whose weight is not an initializer
is left with the reason "weight is not a constant".

>>> share = change_share(proto, {"W": "", "W2": "layer skipped: last layer"})  # doctest: +SKIP
>>> share.lines()[0]  # doctest: +SKIP
'changed: 71.4% of float params, 88.9% of weighted-layer MACs'
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from spa.analysis.groups import reason_kind
from spa.model_io import FLOAT_TYPES, iter_graph_protos
from spa.stats.coverage import RECURRENT_OPS, WEIGHTED_OPS, node_macs, value_shapes
from spa.stats.shape_facts import SPA_DOMAIN, SPA_MATMULS, all_nodes

__all__ = [
    "BIAS_REASON",
    "ChangeShare",
    "LeftReason",
    "change_share",
    "decisions_share",
    "node_outcomes",
    "rewritten_weights",
]

_NOT_CONSTANT = "no constant weight (a product of two activations, or a computed weight)"
#: Why the other constant inputs (bias, C) of a rewritten layer stay as they were.
BIAS_REASON = "bias or other constant input of a changed layer, kept in float"


@dataclasses.dataclass(frozen=True)
class LeftReason:
    """Weights left unchanged for one reason: their params, MACs, count, one example."""

    reason: str
    params: int
    macs: int
    count: int
    example: str
    #: What ``count`` counts: ``weights``, or ``nodes`` for layers without a constant weight.
    unit: str = "weights"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ChangeShare:
    """Changed params and MACs against the model's totals, and the rest by reason."""

    params_total: int
    params_changed: int
    macs_total: int
    macs_changed: int
    left: tuple[LeftReason, ...]
    #: Whether the params include weights stored quantized (integers a weighted op reads
    #: through decode ops, ``MatMulNBits`` / spa plugin weights), not only float initializers.
    stored_quantized: bool = False

    @property
    def params_share(self) -> float:
        return self.params_changed / self.params_total if self.params_total else 0.0

    @property
    def macs_share(self) -> float:
        return self.macs_changed / self.macs_total if self.macs_total else 0.0

    @property
    def nothing_changed(self) -> bool:
        return self.params_changed == 0 and self.macs_changed == 0

    def headline(self, command: str) -> str:
        """One line; ``NOTHING CHANGED`` with the main reason when nothing was."""
        if self.nothing_changed:
            main = self.left[0].reason if self.left else "the model has no float weights"
            return f"NOTHING CHANGED: {command} left every weight as it was (main reason: {main})"
        kind = "params (stored quantized included)" if self.stored_quantized else "float params"
        return (
            f"changed: {self.params_share:.1%} of {kind}, {self.macs_share:.1%} of "
            "weighted-layer MACs"
        )

    def lines(self, command: str, limit: int = 8) -> list[str]:
        """The headline, then one ``left: <reason>: params, MACs, weights`` line per reason."""
        lines = [self.headline(command)]
        for entry in self.left[:limit]:
            params = entry.params / self.params_total if self.params_total else 0.0
            macs = entry.macs / self.macs_total if self.macs_total else 0.0
            lines.append(
                f"  left {params:.1%} params, {macs:.1%} MACs ({entry.count} {entry.unit}, "
                f"e.g. '{entry.example}'): {entry.reason}"
            )
        if len(self.left) > limit:
            lines.append(f"  left for {len(self.left) - limit} more reasons (see --report)")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "params_total": self.params_total,
            "params_changed": self.params_changed,
            "params_share": self.params_share,
            "macs_total": self.macs_total,
            "macs_changed": self.macs_changed,
            "macs_share": self.macs_share,
            "nothing_changed": self.nothing_changed,
            "left": [entry.as_dict() for entry in self.left],
        }


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Value name -> the nodes reading it, in the main graph and every body inside it
    (a body reads an outer weight by name)."""
    users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in all_nodes(model):
        for name in node.input:
            if name:
                users[name].append(node)
    return users


#: Ops a stored weight is decoded through on its way to the op that reads it: QDQ
#: (``DequantizeLinear``), the folded forms (``Cast -> [Sub] -> Mul``) and the reshapes
#: of block and Conv layouts. Each reads the weight as its first input.
_DECODE_OPS = frozenset(
    {"DequantizeLinear", "Cast", "Sub", "Mul", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze"}
)


def _weight_inputs(node: onnx.NodeProto) -> list[str]:
    """The weight inputs of a weighted op: the second; a recurrent layer's R (third) too."""
    return list(node.input[1 : 3 if node.op_type in RECURRENT_OPS else 2])


def _stored_quantized(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """The weights stored quantized, by the value a MatMul/Gemm/Conv (or MatMulNBits,
    spa matmul) reads as its second input, or an LSTM/GRU/RNN as its W or R: (the integer
    initializer, its elements as weights). A weighted op's weight is followed up through
    decode ops (first inputs)
    to an integer initializer (its dims: ``DequantizeLinear``, the folded ``Cast`` forms,
    block and Conv reshapes); ``MatMulNBits`` and spa's matmul ops read their packed
    weight directly (``K * N``)."""
    integers = {
        t.name: math.prod(int(d) for d in t.dims)
        for body in iter_graph_protos(model.graph) for t in body.initializer
        if t.data_type not in FLOAT_TYPES
    }  # fmt: skip
    nodes = list(all_nodes(model))
    producer = {name: node for node in nodes for name in node.output if name}
    stored: dict[str, tuple[str, int]] = {}
    for node in nodes:
        if len(node.input) < 2 or not node.input[1]:
            continue
        if node.op_type == "MatMulNBits" or (node.domain == SPA_DOMAIN and node.op_type in SPA_MATMULS):
            if node.input[1] in integers:
                attributes = {a.name: a.i for a in node.attribute}
                stored[node.input[1]] = (node.input[1], attributes.get("K", 0) * attributes.get("N", 0))
            continue
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for read in _weight_inputs(node):
            name, seen = read, 0
            while name in producer and producer[name].op_type in _DECODE_OPS and seen < 16:
                name, seen = producer[name].input[0], seen + 1
            if seen and name in integers:
                stored[read] = (name, integers[name])
    return stored


def change_share(
    model: onnx.ModelProto,
    outcomes: Mapping[str, str],
    default_reason: str = "op type {op} not handled by this command",
) -> ChangeShare:
    """Shares of ``model`` (the model *before* the command) that ``outcomes`` changed.

    ``outcomes``: weight (initializer) name -> ``""`` if changed, else the reason
    it was left. ``default_reason`` (``{op}`` = the op types reading the weight)
    covers the weights ``outcomes`` does not name.
    """
    graph = model.graph
    users = _consumers(model)
    reasons: dict[str, str] = {}
    params: dict[str, int] = {}
    for tensor in (t for body in iter_graph_protos(graph) for t in body.initializer):
        if tensor.data_type not in FLOAT_TYPES:
            continue
        params[tensor.name] = math.prod(int(d) for d in tensor.dims)
        if tensor.name in outcomes:
            reasons[tensor.name] = outcomes[tensor.name]
        else:
            ops = sorted({node.op_type for node in users.get(tensor.name, [])}) or ["none"]
            reasons[tensor.name] = default_reason.format(op="/".join(ops))
    macs: dict[str, int] = collections.defaultdict(int)
    unweighted: list[tuple[str, int]] = []
    shapes = value_shapes(model)
    stored = _stored_quantized(model)
    for node in all_nodes(model):  # both branches of an If, one iteration of a Loop
        count = node_macs(node, shapes)
        if not count:
            continue
        weights = []  # the MACs follow the first (a recurrent layer's R is a weight of its own)
        for weight in _weight_inputs(node):
            if weight not in reasons and weight in stored:
                weight, elements = stored[weight]
                if weight not in reasons:
                    params[weight] = elements
                    reasons[weight] = outcomes.get(weight, default_reason.format(op=node.op_type))
            weights.append(weight)
        weight = weights[0] if weights else ""
        if weight in reasons:
            macs[weight] += count
        else:
            unweighted.append((node.name or node.op_type, count))
    left: dict[str, list[Any]] = {}
    for name, reason in reasons.items():
        if reason:
            entry = left.setdefault(reason_kind(reason), [0, 0, 0, name])
            entry[0] += params[name]
            entry[1] += macs.get(name, 0)
            entry[2] += 1
    for node_name, count in unweighted:
        entry = left.setdefault(_NOT_CONSTANT, [0, 0, 0, node_name])
        entry[1] += count
        entry[2] += 1
    ordered = sorted(left.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))
    return ChangeShare(
        params_total=sum(params.values()),
        params_changed=sum(params[name] for name, reason in reasons.items() if not reason),
        macs_total=sum(macs.values()) + sum(count for _, count in unweighted),
        macs_changed=sum(macs.get(name, 0) for name, reason in reasons.items() if not reason),
        left=tuple(
            LeftReason(
                reason,
                values[0],
                values[1],
                values[2],
                values[3],
                "nodes" if reason == _NOT_CONSTANT else "weights",
            )
            for reason, values in ordered
        ),
        stored_quantized=any(name in reasons for name, _ in stored.values()),
    )


def node_outcomes(
    model: onnx.ModelProto, decisions: Mapping[str, str], unnamed: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Per-weight outcomes from per-node ones (node name -> ``""`` changed, else a reason;
    ``unnamed``: the same for nodes without a name, keyed by their weight).

    A node's weight (its second input, when an initializer) takes the node's
    outcome; its other initializer inputs take :data:`BIAS_REASON` when the
    node changed, else the node's reason. A weight read by several decided
    nodes counts as changed when any of them changed it.
    """
    initializers = {t.name for body in iter_graph_protos(model.graph) for t in body.initializer}
    outcomes: dict[str, str] = {}
    for node in all_nodes(model):
        if node.name and node.name in decisions:
            reason = decisions[node.name]
        elif not node.name and unnamed and len(node.input) > 1 and node.input[1] in unnamed:
            reason = unnamed[node.input[1]]  # an exporter's unnamed layer: found by its weight
        else:
            continue
        for index, name in enumerate(node.input):
            if name not in initializers:
                continue
            mine = BIAS_REASON if index != 1 and not reason else reason
            if outcomes.get(name) != "":  # changed by one node: changed
                outcomes[name] = mine
    return outcomes


def decisions_share(
    model: onnx.ModelProto,
    decisions: Iterable[Any],
    changed_actions: Collection[str],
    default_reason: str,
    also_changed: Collection[str] = (),
) -> ChangeShare:
    """:func:`change_share` from a pass's per-node decisions (objects with ``node``,
    ``action``, ``reason`` and optionally ``weight``): a decision whose ``action``
    is in ``changed_actions`` changed its node; any other was left for its reason.
    ``also_changed``: weights another pass of the command rewrote (a folded BatchNorm)."""
    per_node: dict[str, str] = {}
    per_weight: dict[str, str] = {}
    unnamed: dict[str, str] = {}
    for decision in decisions:
        changed = decision.action in changed_actions
        why = decision.reason or "no reason given"
        reason = (
            "" if changed else why if decision.action == "skipped" else f"{decision.action}: {why}"
        )
        if decision.node:
            per_node[decision.node] = reason
        weight = getattr(decision, "weight", "")
        if weight and per_weight.get(weight) != "":
            per_weight[weight] = reason
            if not decision.node:
                unnamed[weight] = reason
    outcomes = node_outcomes(model, per_node, unnamed)
    outcomes.update(per_weight)
    outcomes.update(dict.fromkeys(also_changed, ""))
    return change_share(model, outcomes, default_reason)


def _array(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None) -> np.ndarray:
    return numpy_helper.to_array(tensor, str(base_dir) if base_dir is not None else "")


def rewritten_weights(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    reason: str,
    *,
    before_dir: str | os.PathLike[str] | None = None,
    after_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Per-weight outcomes of a rewrite seen from its input and output alone: a
    float initializer of ``before`` (or a weight it stores quantized) that ``after`` lacks (or no longer reads), or
    holds with another shape or other values, was changed (``""``); the others get
    ``reason``.
    ``*_dir``: the folders of external weight data."""
    used = {name for node in after.graph.node for name in node.input}
    used |= {value.name for value in after.graph.output}
    kept = {tensor.name: tensor for tensor in after.graph.initializer if tensor.name in used}
    stored = {name for name, _ in _stored_quantized(before).values()}
    outcomes: dict[str, str] = {}
    for tensor in before.graph.initializer:
        if tensor.data_type not in FLOAT_TYPES and tensor.name not in stored:
            continue
        other = kept.get(tensor.name)
        same = (
            other is not None
            and list(other.dims) == list(tensor.dims)
            and other.data_type == tensor.data_type
            and np.array_equal(_array(tensor, before_dir), _array(other, after_dir))
        )
        outcomes[tensor.name] = reason if same else ""
    return outcomes
