"""Helpers for analyzer tests: build a model from ONNX text with seeded
weights, and check mask equivalence of a random plan in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from spa.analysis import Analysis, analyze, prepare
from spa.passes.prune import apply_plan
from spa.pruning.plan import Plan, make_plan
from spa.verify import input_specs, make_feeds
from spa.verify.mask import mask_model, masked_relative_error


def model_from_text(
    text: str,
    weights: dict[str, tuple[int, ...]],
    seed: int = 0,
    constants: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Parse ONNX text and add random float32 initializers of the given shapes
    (plus exact ``constants``). A name containing "var" gets positive values."""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, shape in weights.items():
        array = rng.standard_normal(shape).astype(np.float32)
        if "var" in name:
            array = np.abs(array) + 0.5
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    for name, array in (constants or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model)
    return model


def analysis_of(proto: onnx.ModelProto) -> tuple[ir.Model, Analysis]:
    model = prepare(ir.serde.deserialize_model(proto))
    return model, analyze(model)


def group_with(analysis: Analysis, value: str, axis: int):
    for group in analysis.groups:
        if any(member.space == (value, axis) for member in group.members):
            return group
    raise AssertionError(f"no group holds ({value!r}, {axis})")


def mask_equivalence(
    proto: onnx.ModelProto, ratio: float = 0.5, seed: int = 0, dims: dict[str, int] | None = None,
    int_ranges: dict[str, tuple[int, int]] | None = None,
) -> tuple[Analysis, Plan, float]:
    """Prune by a random plan; return the largest relative error against the masked model
    (``int_ranges``: integer inputs drawn from ``[low, high)``)."""
    model, analysis = analysis_of(proto)
    plan = make_plan(model, analysis, ratio=ratio, criterion="random", seed=seed)
    masked = prepare(ir.serde.deserialize_model(proto))
    mask_model(masked, analysis, plan)
    apply_plan(model, analysis, plan)
    feeds = make_feeds(input_specs(proto), seed=seed, dims=dims or {}, int_ranges=int_ranges)
    return analysis, plan, masked_relative_error(masked, model, feeds)
