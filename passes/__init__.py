"""spa's rewrite passes, installed as ``spa.passes``.

Importing this package registers every pass with :mod:`spa.pass_manager`, so
recipes and the CLI can name them (``spa optimize --print-passes``).
"""

from __future__ import annotations

from spa.passes.cleanup import (
    EliminateDeadCodePass,
    InferShapesPass,
    RemoveIdentityPass,
    RemoveUnusedInitializersPass,
)
from spa.passes.folding import FoldBatchNormPass, FoldConstantsPass
from spa.passes.prune import PrunePass
from spa.passes.quantize import MatMulNBitsToQDQPass, QDQToMatMulNBitsPass, QuantizeWeightsPass

__all__ = [
    "CLEANUP_PIPELINE",
    "EliminateDeadCodePass",
    "FoldBatchNormPass",
    "FoldConstantsPass",
    "InferShapesPass",
    "MatMulNBitsToQDQPass",
    "PrunePass",
    "QDQToMatMulNBitsPass",
    "QuantizeWeightsPass",
    "RemoveIdentityPass",
    "RemoveUnusedInitializersPass",
]

#: The passes of the built-in ``cleanup`` recipe, in order.
CLEANUP_PIPELINE: tuple[str, ...] = (
    "infer-shapes",
    "remove-identity",
    "fold-constants",
    "fold-batchnorm",
    "eliminate-dead-code",
    "remove-unused-initializers",
    "infer-shapes",
)
