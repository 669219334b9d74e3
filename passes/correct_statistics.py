"""Per-channel statistics correction after structured pruning.

:class:`CorrectStatisticsPass` follows a :class:`spa.passes.prune.PrunePass`
created with ``correct_statistics=True``. That pass measured, on the dense
model, the per-channel mean and spread of the outputs of every layer that
reads pruned channels; this pass asks for the same statistics on the pruned
model (the pipeline measures them, on the calibration part of ``--calib``)
and folds ``y' = s (y - mu_p) + mu_d`` into each layer's weight and bias
(:mod:`spa.pruning.correction`): the effect of re-estimating BatchNorm
statistics, on graphs whose BatchNorms are folded.

Several instances in a row are *rounds*: each measures the model as the
previous round left it, so a layer sees its corrected predecessors.

Cases handled: Conv (bias input), Gemm (C), MatMul followed by an Add of a
1-D constant; a bias shared with other layers is copied first. Layers with
no statistics (not in the prune pass's request) are left alone. Not
registered for recipes: it needs the prune pass it follows.
"""

from __future__ import annotations

import onnx_ir as ir

from spa.calibration import CalibrationRequest, CalibrationResult, ChannelStatistics
from spa.pass_manager import SpaPass, SpaPassResult
from spa.passes.prune import PrunePass
from spa.pruning.correction import apply_correction

__all__ = ["CorrectStatisticsPass"]


class CorrectStatisticsPass(SpaPass):
    """Match the pruned layers' per-channel output statistics to the dense model's."""

    name = "correct-statistics"
    summary = "Per-channel mean/spread of pruned layers' outputs matched to the dense model"
    fidelity = "lossy"

    def __init__(self, prune: PrunePass) -> None:
        super().__init__()
        self._prune = prune
        self._pruned: dict[str, ChannelStatistics] = {}

    def calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        if self._prune.correction is None:
            return None
        targets, _ = self._prune.correction
        return CalibrationRequest(channels={t.value: t.axis for t in targets})

    def use_calibration(self, result: CalibrationResult) -> None:
        self._pruned = result.channels

    def call(self, model: ir.Model) -> SpaPassResult:
        if self._prune.correction is None or not self._pruned:
            return SpaPassResult(model, False, {"layers_corrected": 0}, {"correction": []})
        targets, dense = self._prune.correction
        rows = apply_correction(model, targets, dense, self._pruned)
        statistics: dict[str, int | float] = {"layers_corrected": len(rows)}
        return SpaPassResult(model, bool(rows), statistics, {"correction": rows})
