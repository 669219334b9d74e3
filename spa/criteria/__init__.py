"""Importance criteria, weight reconstruction and ratio allocation for pruning.

See docs/criteria.md for the formulas and the data-free (OBSPA) derivation.
"""

from spa.criteria.allocation import ALLOCATIONS, allocate
from spa.criteria.scores import CRITERIA, DATA_CRITERIA, REDUCTIONS, score_group

__all__ = ["ALLOCATIONS", "CRITERIA", "DATA_CRITERIA", "REDUCTIONS", "allocate", "score_group"]
