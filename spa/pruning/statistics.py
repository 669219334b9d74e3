"""Calibration statistics for the criteria: only the consumers' inputs, streamed."""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

from spa.analysis.groups import Analysis, Group
from spa.calibration import (
    CalibrationSource,
    ChannelStatistics,
    collect_channel_statistics,
    load_calibration,
    model_inputs,
)
from spa.pruning.consumers import consumers_of

__all__ = ["gather_statistics", "needed_values"]


def needed_values(model: ir.Model, groups: Iterable[Group]) -> dict[str, int]:
    """Activation name -> channel axis, for every consumer input of ``groups``."""
    values: dict[str, int] = {}
    for group in groups:
        for consumer in consumers_of(model, group):
            values[consumer.data] = consumer.channel_axis
    return values


def gather_statistics(
    model: ir.Model,
    analysis: Analysis,
    calibration: CalibrationSource,
    *,
    full: bool,
    max_samples: int | None = None,
) -> dict[str, ChannelStatistics]:
    """Per-channel statistics (``X^T X`` too with ``full``) of the consumers' inputs."""
    values = needed_values(model, analysis.prunable_groups())
    feeds = load_calibration(calibration, model_inputs(model))
    proto = ir.serde.serialize_model(model)
    return collect_channel_statistics(proto, values, feeds, full=full, max_samples=max_samples)
