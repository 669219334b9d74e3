"""Op rules: the registry and every rule module.

Importing this package registers every rule (one module per op family);
:mod:`spa.analysis.rules.registry` holds the table and imports no rule module,
so rule modules import the registry and nothing imports back.
"""

from __future__ import annotations

from spa.analysis.rules import (  # noqa: F401  (each module registers its rules)
    attention,
    contrib,
    elementwise,
    layers,
    ops,
    reshape,
    shape,
)
from spa.analysis.rules.registry import (
    Barrier,
    Coupling,
    RuleContext,
    RuleFunction,
    Space,
    Unconstrained,
    find_rule,
    name,
    register_rule,
    unknown_shapes,
)

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
