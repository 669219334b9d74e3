"""The pruning policy's names, in one table: criteria, reductions, allocations.

Light on purpose (no NumPy), so the CLI can offer the choices without loading
the scorers; :mod:`spa.pruning.scores` implements each criterion named here
and :mod:`spa.pruning.allocation` each allocation.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "ALLOCATIONS",
    "ALLOCATION_TABLE",
    "CRITERIA",
    "CRITERION_TABLE",
    "DATA_ALLOCATIONS",
    "DATA_CRITERIA",
    "REDUCTIONS",
    "Criterion",
]


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One channel-importance criterion (formulas in docs/criteria.md)."""

    name: str
    needs_calibration: bool
    summary: str


CRITERION_TABLE: tuple[Criterion, ...] = (
    Criterion("random", False, "seeded random scores (a baseline)"),
    Criterion("l1", False, "sum of |w| of each channel's slices"),
    Criterion("l2", False, "sum of w^2 of each channel's slices"),
    Criterion("bn_scale", False, "|gamma| of the BatchNorm that scales the channel"),
    Criterion("lamp", False, "structured LAMP: energy over the energy of all larger slices"),
    Criterion("wanda_sp", True, "||X_c|| x |W_c| of the consumers (Wanda-SP)"),
    Criterion("flap", True, "Var(X_c) x ||W_c||^2 of the consumers (FLAP)"),
    Criterion("obs", True, "optimal-brain-surgeon saliency with X^T X of the consumers"),
    Criterion("obspa", False, "OBS with moments propagated from the graph (data-free)"),
)

CRITERIA: tuple[str, ...] = tuple(criterion.name for criterion in CRITERION_TABLE)
DATA_CRITERIA: frozenset[str] = frozenset(c.name for c in CRITERION_TABLE if c.needs_calibration)
REDUCTIONS: tuple[str, ...] = ("sum", "mean", "max")
#: How many channels each group keeps (``spa.pruning.allocation``, ``spa.pruning.sensitivity``).
ALLOCATION_TABLE: tuple[Criterion, ...] = (
    Criterion("uniform", False, "every group loses --ratio of its channels"),
    Criterion("global", False, "one ranking of all groups' normalised scores"),
    Criterion("same-shape", False, "the global ranking within each class of same-shaped groups"),
    Criterion(
        "sensitivity",
        True,
        "--ratio of the MACs removed where the measured output distortion grows least; "
        "fragile groups stay whole",
    ),
)
ALLOCATIONS: tuple[str, ...] = tuple(row.name for row in ALLOCATION_TABLE)
DATA_ALLOCATIONS: frozenset[str] = frozenset(
    row.name for row in ALLOCATION_TABLE if row.needs_calibration
)
