"""Weight updates of the consumers of removed channels (OBS, OBSPA, bias compensation).

For a consumer viewed as ``W [C_in, columns]`` (``y = W^T x``) that loses the
input channels ``S`` and keeps ``K``:

* OBS / OBSPA: ``W_K' = H_KK^-1 H_K: W = W_K + H_KK^-1 H_KS W_S`` minimises
  ``E[(W'^T x_K - W^T x)^2]`` with ``H = E[x x^T]`` (calibration, or the
  data-free proxy); the column form of ``W' = W H[:,K] (H_KK)^-1``. ``H_KK``
  is damped by ``0.01 * mean(diag H_KK)`` in the second form (a ridge towards
  the original weights);
* bias compensation alone: ``b' = b + W_S^T mu_S`` (mean of the removed
  channels through the removed weights);
* both: the affine least-squares solution — the same formula with the
  centred covariance, and ``b' = b + W^T mu - W_K'^T mu_K``; for a Conv the
  uncentred solution and the same residual bias (zero padding makes the
  border taps see 0, not the mean, so the weights keep carrying it).

Updates touch only the kept input rows (and the bias), so zeroing the
removed slices of the updated model is exactly the pruned model. The error of
each layer's output, relative to its output energy, is reported before
(plain removal) and after the update.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.analysis.groups import Analysis
from spa.calibration import MAX_HESSIAN_K, ChannelStatistics
from spa.pruning.consumers import Consumer, consumers_of, find_bias
from spa.pruning.plan import Plan, member_indices
from spa.pruning.proxy import proxy_moments
from spa.pruning.scores import DAMP

logger = logging.getLogger(__name__)

__all__ = ["apply_updates", "compute_updates", "output_error"]


def output_error(
    weight: np.ndarray,
    delta: np.ndarray,
    bias_delta: np.ndarray,
    outputs: np.ndarray,
    moment: np.ndarray,
    mean: np.ndarray,
) -> float:
    """``E||dy||^2 / E||y - b||^2`` for ``dy = delta^T x + bias_delta`` (per-output sums).

    Columns sharing an output (a Conv's kernel taps) see the same channel
    covariance and mean (channel x position Kronecker model).
    """
    covariance = moment - np.outer(mean, mean)

    def energy(change: np.ndarray, shift: np.ndarray) -> float:
        quadratic = ((covariance @ change) * change).sum(axis=0)
        linear = np.bincount(outputs, weights=mean @ change) + shift
        return float(quadratic.sum() + (linear**2).sum())

    reference = energy(weight, np.zeros_like(bias_delta))
    return energy(delta, bias_delta) / reference if reference > 0 else 0.0


def _solve(
    moment: np.ndarray, kept: np.ndarray, removed: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """``W_K + (H_KK + lambda I)^-1 H_KS W_S``: the least-squares update, damped
    towards the original weights (so ``H = I`` leaves ``W_K`` as it is)."""
    block = moment[np.ix_(kept, kept)]
    scale = float(np.mean(np.diag(block))) or 1.0
    damped = block + DAMP * scale * np.eye(len(kept))
    shift = moment[np.ix_(kept, removed)] @ weight[removed]
    return weight[kept] + np.linalg.solve(damped, shift)


def _moments(
    consumer: Consumer, channels: int, statistics: Mapping[str, ChannelStatistics] | None
) -> tuple[np.ndarray, np.ndarray, str] | None:
    stats = None if statistics is None else statistics.get(consumer.data)
    if stats is not None and stats.sums.size == channels:
        if stats.xtx is not None:
            return stats.second_moment, stats.mean, "calibration"
        moment = np.outer(stats.mean, stats.mean)
        np.fill_diagonal(moment, stats.sum_squares / max(stats.rows, 1))
        return moment, stats.mean, "calibration (diagonal)"
    value = consumer.node.inputs[0]
    assert value is not None
    return proxy_moments(value, channels)


def compute_updates(
    model: ir.Model,
    analysis: Analysis,
    plan: Plan,
    *,
    reconstruct: bool,
    bias_compensation: bool,
    statistics: Mapping[str, ChannelStatistics] | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """New arrays for updated initializers, and one error row per updated consumer.

    ``reconstruct`` applies the least-squares update (with calibration moments
    where ``statistics`` holds them, else the data-free proxy).
    """
    updates: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    if not (reconstruct or bias_compensation):
        return updates, rows
    kept_by_space = member_indices(analysis, plan)
    by_id = {group.id: group for group in analysis.groups}
    for group_id in plan.kept:
        for consumer in consumers_of(model, by_id[group_id]):
            row = _update(
                model, consumer, kept_by_space, updates, statistics, reconstruct, bias_compensation
            )
            if row is not None:
                rows.append(row)
    return updates, rows


def _update(
    model: ir.Model,
    consumer: Consumer,
    kept_by_space: Mapping[tuple[str, int], np.ndarray],
    updates: dict[str, np.ndarray],
    statistics: Mapping[str, ChannelStatistics] | None,
    reconstruct: bool,
    bias_compensation: bool,
) -> dict[str, Any] | None:
    value = model.graph.initializers[consumer.weight]
    assert value.const_value is not None
    original = updates.get(consumer.weight, value.const_value.numpy())
    weight = consumer.matrix(original.astype(np.float64))
    channels = weight.shape[0]
    kept = np.asarray(kept_by_space.get(consumer.member.space, np.arange(channels)))
    removed = np.setdiff1d(np.arange(channels), kept)
    if removed.size == 0 or kept.size == 0:
        return None
    if channels > MAX_HESSIAN_K:
        _update_wide(model, consumer, original, removed, updates, statistics, bias_compensation)
        return None
    found = _moments(consumer, channels, statistics)
    assert found is not None
    moment, mean, source = found
    outputs = consumer.outputs_per_column(original)
    bias_name = find_bias(model, consumer.node) if bias_compensation else None
    new = weight.copy()
    new[removed] = 0.0
    count = int(outputs.max()) + 1
    bias_delta: np.ndarray = np.zeros(count)
    if reconstruct and bias_name is not None:
        # A Conv's zero padding breaks "every tap sees the mean": there the weights
        # keep carrying the mean (uncentred solve) and the bias takes the residual.
        centred = consumer.node.op_type != "Conv"
        covariance = moment - np.outer(mean, mean) if centred else moment
        new[kept] = _solve(covariance, kept, removed, weight)
        bias_delta = np.bincount(
            outputs, weights=mean @ weight - mean[kept] @ new[kept], minlength=count
        )
    elif reconstruct:
        new[kept] = _solve(moment, kept, removed, weight)
    elif bias_name is not None:
        bias_delta = np.bincount(outputs, weights=mean[removed] @ weight[removed], minlength=count)
    plain = -np.where(np.isin(np.arange(channels), removed)[:, None], weight, 0.0)
    before = output_error(weight, plain, np.zeros_like(bias_delta), outputs, moment, mean)
    after = output_error(weight, new - weight, bias_delta, outputs, moment, mean)
    # removed rows keep their old values: masking/slicing removes them anyway
    stored = weight.copy()
    stored[kept] = new[kept]
    updates[consumer.weight] = consumer.from_matrix(stored, original)
    if bias_name is not None:
        _add_to_bias(model, updates, bias_name, bias_delta)
    return {
        "layer": consumer.node.name or consumer.weight,
        "weight": consumer.weight,
        "removed_inputs": int(removed.size),
        "kept_inputs": int(kept.size),
        "moments": source,
        "bias": bias_name,
        "error_before": before,
        "error_after": after,
    }


def _update_wide(
    model: ir.Model,
    consumer: Consumer,
    original: np.ndarray,
    removed: np.ndarray,
    updates: dict[str, np.ndarray],
    statistics: Mapping[str, ChannelStatistics] | None,
    bias_compensation: bool,
) -> None:
    """A consumer of more than :data:`spa.calibration.MAX_HESSIAN_K` inputs (VGG's first
    fully connected layer reads 25088): no C x C moment, so no least-squares update; with
    bias compensation and a measured mean, the bias takes the removed inputs' mean output."""
    name = consumer.node.name or consumer.weight
    weight = consumer.matrix(original.astype(np.float64))
    stats = None if statistics is None else statistics.get(consumer.data)
    bias_name = find_bias(model, consumer.node) if bias_compensation else None
    if bias_name is None or stats is None or stats.sums.size != weight.shape[0]:
        logger.info("%s: %d inputs > %d, weights not reconstructed", name, len(weight), MAX_HESSIAN_K)
        return
    outputs = consumer.outputs_per_column(original)
    count = int(outputs.max()) + 1
    delta = np.bincount(outputs, weights=stats.mean[removed] @ weight[removed], minlength=count)
    _add_to_bias(model, updates, bias_name, delta)
    logger.info("%s: %d inputs > %d, bias compensation only", name, len(weight), MAX_HESSIAN_K)


def _add_to_bias(model: ir.Model, updates: dict[str, np.ndarray], name: str, delta: np.ndarray) -> None:
    """``updates[name]``: the bias (as updated so far) plus ``delta``, where it is not zero."""
    if not np.any(delta):
        return
    value = model.graph.initializers[name]
    assert value.const_value is not None
    bias = updates.get(name, value.const_value.numpy())
    updates[name] = (bias.astype(np.float64) + delta).astype(bias.dtype)


def apply_updates(model: ir.Model, updates: Mapping[str, np.ndarray]) -> None:
    """Write the updated arrays into ``model``'s initializers (same shapes and dtypes)."""
    for name, array in updates.items():
        value = model.graph.initializers[name]
        assert value.const_value is not None
        dtype = value.const_value.dtype
        value.const_value = ir.Tensor(np.ascontiguousarray(array), dtype=dtype, name=name)
