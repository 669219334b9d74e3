"""Feeds that take both branches of every ``If`` an integer/boolean input selects.

Seeded random feeds pick one branch of such an ``If`` (boolean inputs are all
True, integer ones uniform in a small range), so a rewrite inside the other
branch would go unchecked. :func:`branch_feeds` finds each main-graph ``If``
whose condition is computed from bool/int graph inputs, evaluates the
condition alone (the part of the model between those inputs and the
condition, extracted and run in ONNX Runtime) for a few candidate values of
those inputs, and returns one extra feed per branch it found. Its
:class:`BranchCoverage` says, per ``If``, which branches the feeds take, so a
verdict never claims a branch it did not run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping

import numpy as np
import onnx

__all__ = ["BranchCoverage", "branch_feeds", "branch_selectors"]

logger = logging.getLogger(__name__)

#: Integer values tried for an input that selects a branch (inside its range, if any).
_INT_CANDIDATES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, -1)
_BRANCHES = ("then", "else")


@dataclasses.dataclass(frozen=True)
class BranchSelector:
    """``If`` node ``node`` branches on ``cond``, computed from ``inputs``
    (the bool/int graph inputs among its ancestors)."""

    node: str
    cond: str
    inputs: tuple[str, ...]


@dataclasses.dataclass
class BranchCoverage:
    """Per ``If`` node, the branches the verification feeds took."""

    taken: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        """``branches | If 'sel': then+else`` (or what was left unchecked, and why)."""
        parts = []
        for node, taken in sorted(self.taken.items()):
            names = "+".join(b for b in _BRANCHES if b in taken) or "none"
            missing = [b for b in _BRANCHES if b not in taken]
            note = self.notes.get(node, "")
            text = f"If '{node}': {names}"
            if missing:
                text += f" (not checked: {', '.join(missing)}{'; ' + note if note else ''})"
            parts.append(text)
        return "branches | " + "; ".join(parts) if parts else ""

    def as_dict(self) -> dict[str, object]:
        return {
            node: {"checked": [b for b in _BRANCHES if b in taken], "note": self.notes.get(node, "")}
            for node, taken in sorted(self.taken.items())
        }


def _ancestor_inputs(graph: onnx.GraphProto, value: str) -> set[str]:
    """Graph inputs ``value`` is computed from (main graph; bodies read by name count)."""
    producers = {output: node for node in graph.node for output in node.output}
    inputs = {item.name for item in graph.input}
    found: set[str] = set()
    pending, seen = [value], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.add(name)
        node = producers.get(name)
        if node is not None:
            pending.extend(item for item in node.input if item)
    return found


def branch_selectors(model: onnx.ModelProto) -> list[BranchSelector]:
    """Main-graph ``If`` nodes whose condition depends on a bool/int graph input."""
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    discrete = {
        item.name
        for item in graph.input
        if item.name not in weights
        and item.type.HasField("tensor_type")
        and _is_discrete(item.type.tensor_type.elem_type)
    }
    selectors = []
    for position, node in enumerate(graph.node):
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.input:
            continue
        inputs = _ancestor_inputs(graph, node.input[0]) & discrete
        if inputs:
            selectors.append(
                BranchSelector(node.name or f"#{position}", node.input[0], tuple(sorted(inputs)))
            )
    return selectors


def _is_discrete(elem_type: int) -> bool:
    if elem_type == onnx.TensorProto.BOOL:
        return True
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    return bool(np.issubdtype(dtype, np.integer))


def _candidates(array: np.ndarray, int_range: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """The input filled with each candidate value (bool: True, False)."""
    if array.dtype == np.bool_:
        yield from (np.full(array.shape, flag, dtype=np.bool_) for flag in (True, False))
        return
    info = np.iinfo(array.dtype)
    low, high = int_range or (info.min, int(info.max) + 1)
    for value in _INT_CANDIDATES:
        if low <= value < high and info.min <= value <= info.max:
            yield np.full(array.shape, value, dtype=array.dtype)


def _condition_model(model: onnx.ModelProto, selector: BranchSelector) -> bytes | None:
    """The nodes of ``model`` that compute the condition, as a model of their own
    (None when it would read external data)."""
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    needed: set[str] = set()
    pending = [selector.cond]
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producers.get(name)
        if node is not None:
            pending.extend(item for item in node.input if item)
    nodes = [node for node in graph.node if any(output in needed for output in node.output)]
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in initializers):
        return None
    weights = {tensor.name for tensor in initializers}
    inputs = [item for item in graph.input if item.name in needed and item.name not in weights]
    output = onnx.helper.make_tensor_value_info(selector.cond, onnx.TensorProto.BOOL, None)
    probe = onnx.helper.make_graph(nodes, "condition", inputs, [output], initializers)
    extracted = onnx.helper.make_model(
        probe, opset_imports=model.opset_import, ir_version=model.ir_version
    )
    extracted.functions.extend(model.functions)
    return extracted.SerializeToString()


def branch_feeds(
    model: onnx.ModelProto,
    base: Mapping[str, np.ndarray],
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[dict[str, np.ndarray]], BranchCoverage]:
    """Extra feeds (``base`` with selector inputs changed) taking each branch the
    base feed does not, and the coverage of base plus extras."""
    from spa.verify.runner import run_model

    coverage = BranchCoverage()
    extras: list[dict[str, np.ndarray]] = []
    for selector in branch_selectors(model):
        try:
            probe = _condition_model(model, selector)
        except Exception as error:  # onnx's extractor raises bare errors on odd graphs
            logger.info("If '%s': condition not extracted (%s)", selector.node, error)
            probe = None
        if probe is None:
            coverage.taken[selector.node] = set()
            coverage.notes[selector.node] = "its condition could not be evaluated alone"
            continue
        taken: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
        for index, feed in enumerate(_variations(base, selector, int_ranges or {})):
            try:
                cond = run_model(probe, feed)[selector.cond]
            except Exception as error:  # a candidate value the condition cannot take
                logger.debug("If '%s': candidate feed fails (%s)", selector.node, error)
                continue
            if cond.size != 1:
                continue
            taken.setdefault("then" if bool(cond.reshape(-1)[0]) else "else", (index, feed))
            if len(taken) == 2:
                break
        coverage.taken[selector.node] = set(taken)
        extras.extend(feed for index, feed in taken.values() if index > 0)
        if len(taken) < 2:
            values = ", ".join(selector.inputs)
            coverage.notes[selector.node] = f"no tried value of {values} selects it"
    return extras, coverage


def _variations(
    base: Mapping[str, np.ndarray],
    selector: BranchSelector,
    int_ranges: Mapping[str, tuple[int, int]],
) -> Iterator[dict[str, np.ndarray]]:
    """``base`` itself, then ``base`` with one selector input changed at a time."""
    yield dict(base)
    for name in selector.inputs:
        if name not in base:
            continue
        for array in _candidates(base[name], int_ranges.get(name)):
            yield {**base, name: array}
