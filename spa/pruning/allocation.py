"""How many channels each group keeps: uniform, global, or per shape class.

* ``uniform``: every group keeps ``ceil(size * (1 - ratio))``;
* ``global``: each group's scores are divided by their mean, all channels of
  all groups are ranked together, and the lowest ``ratio`` of all channels go;
* ``same-shape``: the global ranking, within each class of groups with the
  same channel count and the same parameter shapes (e.g. the MLPs of all
  transformer layers), each class losing ``ratio`` of its channels.

``sensitivity`` measures each group on calibration data and lives in
:mod:`spa.pruning.sensitivity`.

No group loses more than ``max_group_ratio`` of its channels, and kept counts
are rounded up to a multiple of ``round_to`` (:func:`group_multiple`; with
:data:`AUTO_ROUND`, a multiple of 8 in groups of 64 or more channels).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping

import numpy as np

from spa.pruning.criteria import ALLOCATIONS

__all__ = ["AUTO_ROUND", "allocate", "group_multiple"]

#: ``round_to`` value (``--round-to auto``) for the per-group rule of :func:`group_multiple`.
AUTO_ROUND = 0
#: With AUTO_ROUND, groups of at least AUTO_MIN_SIZE channels (a multiple of AUTO_MULTIPLE)
#: keep a multiple of AUTO_MULTIPLE.
AUTO_MULTIPLE, AUTO_MIN_SIZE = 8, 64


def group_multiple(size: int, round_to: int) -> int:
    """The multiple a group of ``size`` channels keeps: ``round_to``, or with
    :data:`AUTO_ROUND` 8 in groups of 64 or more channels whose size is a multiple of
    8, 1 in the others. ONNX Runtime's CPU kernels (MLAS) pack GEMM and Conv
    channels in blocks of 8/16: a 10%-pruned ImageNet classifier with odd counts ran
    1.7-1.9x slower than its input, with multiples of 8 0.975x (issue 12's
    measurement). Small groups (attention heads, test models) are left exact: a
    multiple of 8 there would keep them whole."""
    if round_to != AUTO_ROUND:
        return round_to
    return AUTO_MULTIPLE if size >= AUTO_MIN_SIZE and size % AUTO_MULTIPLE == 0 else 1


def _rounded(size: int, keep: int, round_to: int, floor: int) -> int:
    multiple = group_multiple(size, round_to)
    keep = math.ceil(max(keep, floor, 1) / multiple) * multiple
    return int(min(size, max(keep, 1)))


def _ranked(scores: Mapping[int, np.ndarray], ratio: float, cap: float) -> dict[int, int]:
    """Kept count per group from one ranking of per-group-normalised scores."""
    total = sum(len(s) for s in scores.values())
    budget = round(total * ratio)
    entries: list[tuple[float, int]] = []
    for group_id, values in scores.items():
        mean = float(np.mean(values)) if len(values) else 0.0
        normalised = values / mean if mean > 0 else np.zeros_like(values)
        entries.extend((float(v), group_id) for v in normalised)
    entries.sort(key=lambda item: item[0])
    limit = {g: math.floor(len(s) * cap) for g, s in scores.items()}
    removed: dict[int, int] = defaultdict(int)
    count = 0
    for _, group_id in entries:
        if count >= budget:
            break
        if removed[group_id] < min(limit[group_id], len(scores[group_id]) - 1):
            removed[group_id] += 1
            count += 1
    return {g: len(s) - removed[g] for g, s in scores.items()}


def allocate(
    scores: Mapping[int, np.ndarray],
    *,
    ratio: float,
    allocation: str = "uniform",
    max_group_ratio: float = 0.9,
    round_to: int = 1,
    shape_class: Mapping[int, Hashable] | None = None,
) -> dict[int, int]:
    """Kept channels per group id (``scores``: group id -> root-channel scores)."""
    assert allocation in ALLOCATIONS and allocation != "sensitivity", allocation
    floors = {g: math.ceil(len(s) * (1.0 - max_group_ratio)) for g, s in scores.items()}
    if allocation == "uniform":
        wanted = {g: math.ceil(len(s) * (1.0 - ratio)) for g, s in scores.items()}
    elif allocation == "global":
        wanted = _ranked(scores, ratio, max_group_ratio)
    else:
        classes: dict[Hashable, dict[int, np.ndarray]] = defaultdict(dict)
        for group_id, values in scores.items():
            key = shape_class[group_id] if shape_class else len(values)
            classes[key][group_id] = values
        wanted = {}
        for members in classes.values():
            wanted.update(_ranked(members, ratio, max_group_ratio))
    return {g: _rounded(len(scores[g]), wanted[g], round_to, floors[g]) for g in scores}
