"""Read-only analysis: channel spaces, index maps, groups and plans.

>>> model = spa.model_io.load_model("model.onnx")  # doctest: +SKIP
>>> analysis = analyze(prepare(model))  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from spa.analysis.groups import Analysis, Group, Member, analyze, model_fingerprint

__all__ = ["Analysis", "Group", "Member", "analyze", "model_fingerprint", "prepare"]

logger = logging.getLogger(__name__)


def prepare(model: ir.Model) -> ir.Model:
    """Make a model analysable, in place: Constant nodes become initializers
    (so their channels can be sliced) and shapes are inferred."""
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    result = common_passes.ShapeInferencePass(strict_mode=True)(model)
    if not result.modified:
        common_passes.ShapeInferencePass(strict_mode=False)(model)
    return model
