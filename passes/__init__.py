"""spa's rewrite passes, installed as ``spa.passes``.

Importing this package registers every pass with :mod:`spa.pass_manager`, so
recipes and the CLI can name them (``spa optimize --print-passes``).
"""

from __future__ import annotations

from spa.passes.prune import PrunePass
from spa.passes.quantize import MatMulNBitsToQDQPass, QDQToMatMulNBitsPass, QuantizeWeightsPass

__all__ = [
    "MatMulNBitsToQDQPass",
    "PrunePass",
    "QDQToMatMulNBitsPass",
    "QuantizeWeightsPass",
]
