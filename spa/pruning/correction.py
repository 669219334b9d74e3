"""Per-channel statistics correction of the layers that read pruned channels:
what re-estimating BatchNorm statistics does, done on folded graphs.

Removing input channels of a layer shifts the mean and the spread of each of
its output channels. A BatchNorm after the layer would re-normalise them if
its running statistics were re-estimated on the pruned network; in an
exported graph the BatchNorm is folded into the layer's weight and bias, so
spa does the same thing to the layer: with ``mu_d, sigma_d`` the dense
model's per-channel mean and standard deviation of the layer's output
(bias included), and ``mu_p, sigma_p`` those of the pruned model on the same
calibration samples,

    y' = s (y - mu_p) + mu_d,   s = clip(sigma_d / sigma_p, 1/4, 4)

which is ``W' = s W`` (per output channel) and ``b' = s (b - mu_p) + mu_d``.
A layer without a bias gets one first (``add_missing_biases``). The dense
statistics are measured before pruning (on the kept output channels), the
pruned ones on the pruned model itself, so downstream layers see the
corrected upstream ones only in a later round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.analysis.groups import Analysis, Group
from spa.calibration import ChannelStatistics
from spa.pruning.consumers import consumers_of, find_bias

__all__ = ["CorrectionTarget", "apply_correction", "correction_targets", "slice_statistics"]

#: Largest factor the spread of one channel may be scaled by (and 1 / it the smallest).
MAX_SCALE = 4.0


@dataclasses.dataclass(frozen=True)
class CorrectionTarget:
    """One layer to correct: its output value (bias included), channel axis, weight, bias."""

    layer: str
    value: str
    axis: int
    weight: str
    weight_axis: int
    bias: str


def _target(model: ir.Model, node: ir.Node) -> CorrectionTarget | None:
    bias = find_bias(model, node)
    weight = node.inputs[1]
    if bias is None or weight is None or weight.name is None:
        return None
    output = node.outputs[0]
    if node.op_type == "MatMul":  # the bias is a following Add: correct its output
        output = next(iter(output.uses()))[0].outputs[0]
    if node.op_type == "Conv":
        axis, weight_axis = 1, 0
    elif node.op_type == "Gemm":
        transposed = node.attributes.get("transB")
        axis, weight_axis = -1, 0 if transposed is not None and transposed.value else 1
    else:
        axis, weight_axis = -1, 1
    return CorrectionTarget(
        node.name or weight.name, output.name or "", axis, weight.name, weight_axis, bias
    )


def correction_targets(model: ir.Model, groups: list[Group]) -> list[CorrectionTarget]:
    """The layers reading channels of ``groups`` (one per node), with a bias to correct into."""
    nodes = {id(c.node): c.node for group in groups for c in consumers_of(model, group)}
    found = (_target(model, node) for node in nodes.values())
    return [target for target in found if target is not None and target.value]


def slice_statistics(
    statistics: Mapping[str, ChannelStatistics],
    analysis: Analysis,
    kept: Mapping[tuple[str, int], np.ndarray],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Value -> (mean, std) of the dense statistics, on the channels the plan keeps."""
    del analysis  # the kept indices already name every pruned activation space
    sliced: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for value, stats in statistics.items():
        mean, std = stats.mean, np.sqrt(np.maximum(stats.variance, 0.0))
        for (name, _axis), indices in kept.items():
            if name == value and len(indices) < len(mean):
                mean, std = mean[indices], std[indices]
        sliced[value] = (mean, std)
    return sliced


def _private_bias(model: ir.Model, target: CorrectionTarget) -> str:
    """The target's bias, copied first if other layers read the same initializer
    (deduplication merges equal biases, e.g. the zero ones spa added)."""
    value = model.graph.initializers[target.bias]
    uses = list(value.uses())
    if len(uses) <= 1:
        return target.bias
    for node, index in uses:
        if node.outputs and node.outputs[0].name == target.value:
            assert value.const_value is not None
            name = f"{target.layer}.spa_corrected_bias"
            copy = ir.Value(
                name=name, const_value=ir.Tensor(value.const_value.numpy().copy(), name=name)
            )
            copy.shape, copy.type = value.shape, value.type
            model.graph.register_initializer(copy)
            node.replace_input_with(index, copy)
            return name
    return target.bias


def apply_correction(
    model: ir.Model,
    targets: list[CorrectionTarget],
    dense: Mapping[str, tuple[np.ndarray, np.ndarray]],
    pruned: Mapping[str, ChannelStatistics],
) -> list[dict[str, Any]]:
    """Correct each target's weight and bias in place; one row per corrected layer."""
    rows = []
    for target in targets:
        if target.value not in dense or target.value not in pruned:
            continue
        mean_d, std_d = dense[target.value]
        stats = pruned[target.value]
        mean_p, std_p = stats.mean, np.sqrt(np.maximum(stats.variance, 0.0))
        if mean_p.shape != mean_d.shape:
            continue
        ratio = np.divide(std_d, std_p, out=np.ones_like(std_d), where=std_p > 1e-12)
        scale = np.clip(ratio, 1.0 / MAX_SCALE, MAX_SCALE)
        bias_name = _private_bias(model, target)
        weight_value = model.graph.initializers[target.weight]
        bias_value = model.graph.initializers[bias_name]
        assert weight_value.const_value is not None and bias_value.const_value is not None
        weight = weight_value.const_value.numpy()
        bias = bias_value.const_value.numpy()
        shape = [1] * weight.ndim
        shape[target.weight_axis] = -1
        new_weight = (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)
        new_bias = (scale * (bias.astype(np.float64) - mean_p) + mean_d).astype(bias.dtype)
        weight_value.const_value = ir.Tensor(new_weight, name=target.weight)
        bias_value.const_value = ir.Tensor(new_bias, name=bias_name)
        shift = float(np.sqrt(np.mean((mean_p - mean_d) ** 2)) / (np.mean(std_d) or 1.0))
        rows.append({
            "layer": target.layer, "value": target.value,
            "mean_shift": shift, "scale_min": float(scale.min()), "scale_max": float(scale.max()),
        })  # fmt: skip
    return rows
