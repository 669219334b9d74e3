"""spa's rewrite passes, installed as ``spa.passes``.

Importing this package registers every pass with :mod:`spa.pass_manager`, so
recipes and the CLI can name them (``spa optimize --print-passes``).
"""

from __future__ import annotations

from spa.passes.batchnorm import FoldBatchNormPass
from spa.passes.cleanup import (
    EliminateDeadCodePass,
    FlushSubnormalsPass,
    InferShapesPass,
    RemoveIdentityPass,
    RemoveUnusedInitializersPass,
    TopologicalSortPass,
)
from spa.passes.constant_folding import FoldConstantsPass
from spa.passes.correct_statistics import CorrectStatisticsPass
from spa.passes.factorize import FactorizeEmbeddingsPass
from spa.passes.gqsa import GQSAPass, GQSAToReferencePass, ReferenceToGQSAPass
from spa.passes.plugins import GQSAToPluginPass, Int4ToPluginPass, PluginToOrtPass
from spa.passes.prune import PrunePass
from spa.passes.quantize import (
    MatMulNBitsToCastPass,
    MatMulNBitsToQDQPass,
    QDQToMatMulNBitsPass,
    QuantizeWeightsPass,
)
from spa.passes.quantize_dynamic import QuantizeDynamicPass
from spa.passes.quantize_static import QuantizeStaticPass
from spa.passes.slice import RotateSlicePass, RotationInvariantPass
from spa.passes.sparsify import Sparsify2to4Pass

__all__ = [
    "CLEANUP_PIPELINE",
    "CorrectStatisticsPass",
    "EliminateDeadCodePass",
    "FactorizeEmbeddingsPass",
    "FlushSubnormalsPass",
    "FoldBatchNormPass",
    "FoldConstantsPass",
    "GQSAPass",
    "GQSAToPluginPass",
    "GQSAToReferencePass",
    "InferShapesPass",
    "Int4ToPluginPass",
    "MatMulNBitsToCastPass",
    "MatMulNBitsToQDQPass",
    "PluginToOrtPass",
    "PrunePass",
    "QDQToMatMulNBitsPass",
    "QuantizeDynamicPass",
    "QuantizeStaticPass",
    "QuantizeWeightsPass",
    "ReferenceToGQSAPass",
    "RemoveIdentityPass",
    "RemoveUnusedInitializersPass",
    "RotateSlicePass",
    "RotationInvariantPass",
    "Sparsify2to4Pass",
    "TopologicalSortPass",
]

#: The passes of the built-in ``cleanup`` recipe, in order. Shapes first (Shape
#: folding reads them); constants before no-op removal, so a Reshape whose
#: target folds to the input's own shape goes too; BatchNorm folding before dead
#: code, which removes what folding left unused; subnormal weights (folded or not) to
#: zero; shapes again at the end, for the value_info the rewrites made stale.
CLEANUP_PIPELINE: tuple[str, ...] = (
    "infer-shapes",
    "fold-constants",
    "remove-identity",
    "fold-batchnorm",
    "eliminate-dead-code",
    "remove-unused-initializers",
    "flush-subnormals",
    "infer-shapes",
)
