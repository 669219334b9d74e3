"""Pruning policy over the analyzer's groups: criteria, allocation, plans,
calibration statistics and weight reconstruction.

See docs/criteria.md for the formulas and the data-free (OBSPA) derivation.
The criterion table is :mod:`spa.pruning.criteria` (light to import).
"""

from __future__ import annotations

from spa.pruning.criteria import ALLOCATIONS, CRITERIA, DATA_CRITERIA, REDUCTIONS

__all__ = ["ALLOCATIONS", "CRITERIA", "DATA_CRITERIA", "REDUCTIONS"]
