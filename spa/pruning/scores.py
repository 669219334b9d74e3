"""Group importance scores: one number per root channel (higher = keep).

Every criterion scores each parameter member of a group separately (one
value per slice along the member's axis), normalises it by its mean, and sums
it onto the root indices through the member's index map. Activation-based
criteria (``wanda_sp``, ``flap``, ``obs``, ``obspa``) score the group's
*consumers* (weights that read the channels on their input axis, see
:mod:`spa.pruning.consumers`); a group without one falls back to ``l2``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from spa.analysis.groups import Group, Member
from spa.analysis.index_maps import Lookup
from spa.calibration import MAX_HESSIAN_K, ChannelStatistics
from spa.model_io import read_array
from spa.pruning.consumers import Consumer, consumers_of
from spa.pruning.criteria import CRITERIA
from spa.pruning.proxy import proxy_moments

__all__ = ["DAMP", "damped_inverse_diagonal", "score_group"]

DAMP = 0.01


def _reduce(values: np.ndarray, reduction: str, axis: int = 1) -> np.ndarray:
    if reduction == "mean":
        return values.mean(axis=axis)
    if reduction == "max":
        return values.max(axis=axis)
    return values.sum(axis=axis)


def _array(model: ir.Model, name: str) -> np.ndarray | None:
    value = model.graph.initializers.get(name)
    if value is None or value.const_value is None:
        return None
    return read_array(value.const_value, np.float64)


def _onto_root(per_slice: np.ndarray, member: Member, size: int, reduction: str) -> np.ndarray:
    """Normalise a member's per-slice values by their mean and gather them per root index."""
    mean = per_slice.mean() if per_slice.size else 0.0
    if mean > 0:
        per_slice = per_slice / mean
    rows = Lookup.of(member.index_map).rows
    if rows.shape[0] != size:
        return np.zeros(size)
    valid = rows >= 0
    if reduction == "max":
        padded = np.append(per_slice, -np.inf)
        gathered = padded[np.where(valid, rows, -1)].max(axis=1)
        return np.where(valid.any(axis=1), gathered, 0.0)
    padded = np.append(per_slice, 0.0)  # index -1 reads the padding 0
    total = padded[np.where(valid, rows, -1)].sum(axis=1)
    if reduction == "mean":
        return total / np.maximum(valid.sum(axis=1), 1)
    return total


def _magnitude(array: np.ndarray, axis: int, power: int, reduction: str) -> np.ndarray:
    moved = np.moveaxis(np.abs(array) ** power, axis, 0)
    return _reduce(moved.reshape(moved.shape[0], -1), reduction)


def _lamp(array: np.ndarray, axis: int, reduction: str) -> np.ndarray:
    """Structured LAMP: a slice's squared norm over the sum of all slices not smaller."""
    energy = _magnitude(array, axis, 2, reduction)
    order = np.argsort(energy, kind="stable")
    tail = np.cumsum(energy[order][::-1])[::-1]  # sum over slices ranked at or above
    scores = np.empty_like(energy)
    scores[order] = energy[order] / np.maximum(tail, 1e-30)
    return scores


def _is_bn_scale(model: ir.Model, name: str) -> bool:
    value = model.graph.initializers.get(name)
    if value is None:
        return False
    return any(
        node.op_type == "BatchNormalization" and node.domain == "" and index == 1
        for node, index in value.uses()
    )


def damped_inverse_diagonal(moment: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Diagonal of ``(H + damp * mean(diag H) * I)^-1``."""
    scale = float(np.mean(np.diag(moment))) or 1.0
    damped = moment + damp * scale * np.eye(moment.shape[0])
    return np.diag(np.linalg.inv(damped))


def _consumer_scores(
    model: ir.Model,
    consumer: Consumer,
    criterion: str,
    statistics: Mapping[str, ChannelStatistics] | None,
) -> np.ndarray | None:
    array = _array(model, consumer.weight)
    if array is None:
        return None
    matrix = consumer.matrix(array)  # [C_in, columns]
    channels = matrix.shape[0]
    if criterion == "obspa":
        if channels > MAX_HESSIAN_K:  # no C x C moment (spa.calibration.MAX_HESSIAN_K): H = I
            return (matrix**2).sum(axis=1)
        value = consumer.node.inputs[0]
        assert value is not None
        moment, _, _ = proxy_moments(value, channels)
        return (matrix**2).sum(axis=1) / damped_inverse_diagonal(moment)
    stats = None if statistics is None else statistics.get(consumer.data)
    if stats is None or stats.sums.size != channels:
        return None
    if criterion == "wanda_sp":
        return stats.norms * np.abs(matrix).sum(axis=1)
    if criterion == "flap":
        return stats.variance * (matrix**2).sum(axis=1)
    # obs: saliency of removing channel c with optimal compensation of the rest
    if stats.xtx is None:  # statistics gathered without X^T X: its diagonal
        return (matrix**2).sum(axis=1) * stats.sum_squares / max(stats.rows, 1)
    return (matrix**2).sum(axis=1) / damped_inverse_diagonal(stats.second_moment)


def score_group(
    model: ir.Model,
    group: Group,
    criterion: str,
    rng: np.random.Generator,
    *,
    reduction: str = "sum",
    statistics: Mapping[str, ChannelStatistics] | None = None,
) -> np.ndarray:
    """One importance score per root channel of ``group`` (higher = more important)."""
    assert criterion in CRITERIA, criterion
    if criterion == "random":
        return rng.random(group.size)
    scores = np.zeros(group.size)
    if criterion in ("wanda_sp", "flap", "obs", "obspa"):
        used = False
        for consumer in consumers_of(model, group):
            per_slice = _consumer_scores(model, consumer, criterion, statistics)
            if per_slice is not None:
                scores += _onto_root(per_slice, consumer.member, group.size, "sum")
                used = True
        if used:
            return scores
        criterion = "l2"  # no consumer weight to score: magnitude
    if criterion == "bn_scale":
        scales = [m for m in group.parameters if _is_bn_scale(model, m.space[0])]
        if scales:
            for member in scales:
                array = _array(model, member.space[0])
                if array is not None:
                    scores += _onto_root(np.abs(array.reshape(-1)), member, group.size, reduction)
            return scores
        criterion = "l2"
    for member in group.parameters:
        array = _array(model, member.space[0])
        if array is None or array.ndim == 0:
            continue
        if criterion == "lamp":
            per_slice = _lamp(array, member.space[1], reduction)
        else:
            power = 1 if criterion == "l1" else 2
            per_slice = _magnitude(array, member.space[1], power, reduction)
        scores += _onto_root(per_slice, member, group.size, reduction)
    return scores
