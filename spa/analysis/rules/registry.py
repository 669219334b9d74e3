"""The op-rule registry (imports no rule module; ``spa.analysis.rules`` loads them all): how each op couples the channel spaces it touches.

A *channel space* is one axis of one value, written ``(value_name, axis)``.
A rule is a small function registered for ``(domain, op_type)`` over an
opset range. It returns couplings (``source -> target`` with an index map)
and barriers (spaces frozen, with a reason naming the node). Any axis of the
node's inputs and outputs that the rule neither couples nor freezes is frozen
by the analyzer with a reason: a rule only has to state what it understands.
An op with no rule freezes every space it touches ("no rule for …"), never
treated as elementwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.analysis.index_maps import IndexMap
from spa.constants import constant_array

__all__ = [
    "Barrier",
    "Coupling",
    "RuleContext",
    "RuleFunction",
    "Space",
    "Unconstrained",
    "find_rule",
    "name",
    "register_rule",
    "unknown_shapes",
]

Space = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Coupling:
    """``source`` indices map to ``target`` indices by ``index_map``."""

    source: Space
    target: Space
    index_map: IndexMap


def name(value: ir.Value) -> str:
    """A value's name ("" for the rare unnamed value)."""
    return value.name or ""


@dataclasses.dataclass(frozen=True)
class Barrier:
    """Freeze ``spaces`` (and every space of ``values``) for ``reason``."""

    reason: str
    spaces: tuple[Space, ...] = ()
    values: tuple[str, ...] = ()


def unknown_shapes(node: ir.Node, *values: ir.Value | None) -> Barrier:
    """The barrier of a rule that needs shapes inference did not give."""
    return Barrier(
        f"{node.op_type} '{node.name}' has unknown shapes",
        values=tuple(name(v) for v in values if v is not None),
    )


@dataclasses.dataclass(frozen=True)
class Unconstrained:
    """The node reads ``values`` without caring about their channel counts (Shape),
    and leaves ``spaces`` free: they take whatever size their other users give them."""

    values: tuple[str, ...]
    spaces: tuple[Space, ...] = ()


class RuleContext:
    """What a rule may ask about values: static shapes and constant contents."""

    def shape(self, value: ir.Value | None) -> tuple[int | None, ...] | None:
        """Static dims (None where symbolic); None where even the rank is unknown."""
        if value is None:
            return None
        if value.const_value is not None:
            return tuple(value.const_value.shape.numpy())
        if value.shape is None:
            return None
        return tuple(d if isinstance(d, int) else None for d in value.shape)

    def constant(self, value: ir.Value | None) -> np.ndarray | None:
        """The value's contents when it is an initializer or Constant output."""
        return constant_array(value)

    @staticmethod
    def attribute(node: ir.Node, key: str, default: Any = None) -> Any:
        attr = node.attributes.get(key)
        return default if attr is None else attr.value


RuleFunction = Callable[[ir.Node, RuleContext], Sequence[Coupling | Barrier | Unconstrained]]

_RULES: dict[tuple[str, str], list[tuple[int, int, RuleFunction]]] = {}


def register_rule(
    *op_types: str, domain: str = "", opsets: tuple[int, int] = (1, 10_000)
) -> Callable[[RuleFunction], RuleFunction]:
    """Decorator: ``function`` is the rule of ``op_types`` for opsets in range."""

    def decorate(function: RuleFunction) -> RuleFunction:
        for op_type in op_types:
            _RULES.setdefault((domain, op_type), []).append((opsets[0], opsets[1], function))
        return function

    return decorate


def find_rule(domain: str, op_type: str, opset: int) -> RuleFunction | None:
    """The rule for this op at this opset, or None (the op is then a barrier).

    Rules are registered when their modules load: import ``find_rule`` from
    :mod:`spa.analysis.rules`, which loads every rule module.
    """
    for low, high, function in _RULES.get(("" if domain == "ai.onnx" else domain, op_type), ()):
        if low <= opset <= high:
            return function
    return None
