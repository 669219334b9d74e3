"""Sensitivity-aware allocation: per-group output distortion measured on
calibration data, and the MAC budget spent where it distorts least.

For each prunable group and each ratio of :data:`SENSITIVITY_RATIOS`, the
group's lowest-scoring root channels (by the plan's criterion) are masked
(their parameter slices zeroed) *alone*, the model runs on a few calibration
samples in ONNX Runtime, and the distortion is the relative squared error of
the outputs against the dense model, ``sum ||y - y0||^2 / sum ||y0||^2``
(averaged over the float outputs; a ``Softmax``/``LogSoftmax`` output by its
logits, :func:`_expose_logits`; an output of rank >= 3 per feature, each
capped at 1, then averaged, :func:`_distortion`). One session serves every measurement: the
measured parameters become graph inputs, so each variant is only a new feed.

:func:`allocate_by_sensitivity` then removes channels greedily, always taking
the step (a group going to its next measured ratio) with the least added
distortion per MAC saved (first order: a channel saves the MACs of every
weight slice it owns, and its share of the products of activations it
shrinks, as :func:`spa.passes.prune.mac_costs` counts them), until ``ratio``
of the model's MACs are saved, counted exactly (:func:`saved_macs`: a node
read by two pruned groups keeps the product of their kept shares). Groups whose kept counts the
plan rounds to a multiple (``--round-to``) are measured and allocated at counts
that multiple keeps, so the rounding
takes nothing back from the savings the allocation counted. A group whose
distortion at the smallest ratio exceeds ``fragile`` is left whole, with its
reason. The additive model of distortion is the
assumption of layer-wise sensitivity analysis (Li et al., ICLR 2017) and
of the knapsack allocations of HALP (Shen et al., NeurIPS 2022) and
NetAdapt (Yang et al., ECCV 2018); see docs/criteria.md.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnx_ir as ir

from spa.analysis.groups import Group
from spa.analysis.index_maps import IndexMap
from spa.calibration import Feeds, hash_samples
from spa.graph_outputs import declared_shapes, feature_axis, softmax_inputs
from spa.model_io import proto_digest
from spa.ort import create_session
from spa.ort_segments import maybe_segmented
from spa.progress import track

__all__ = [
    "FRAGILE_DISTORTION",
    "SENSITIVITY_RATIOS",
    "AxisShare",
    "CostTerm",
    "GroupSensitivity",
    "MacCosts",
    "RemovalOrder",
    "allocate_by_sensitivity",
    "measure_sensitivity",
    "parameter_costs",
    "saved_macs",
]

logger = logging.getLogger(__name__)

#: Ratios at which each group's distortion is measured; the largest is also the most a group
#: can lose (with 0.5, all-MiniLM-L6-v2 could not lose a quarter of its parameters).
SENSITIVITY_RATIOS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
#: Default threshold: a group whose smallest measured ratio alone moves the
#: outputs by more than this relative squared error is left whole.
FRAGILE_DISTORTION = 0.25
#: Calibration samples the measurement runs on by default.
SENSITIVITY_SAMPLES = 8


@dataclasses.dataclass(frozen=True, eq=False)
class AxisShare:
    """One group's member on one axis of a node's weight (or of an activation a
    product of two activations reads)."""

    group: int
    #: The member's map from the group's root channels to the axis's indices.
    index_map: IndexMap
    #: The axis's length.
    length: int
    #: The share of the axis one root channel removes on average
    #: (``covered / size / length``: a Conv's own filters ``1 / channels``; a
    #: branch of a Concat-rooted group only its own part of the root).
    share: float


#: One node: its MACs, and for each axis that pruned groups reach, their members on it.
CostTerm = tuple[float, list[list[AxisShare]]]


class MacCosts(NamedTuple):
    """A model's MACs as :func:`spa.passes.prune.mac_costs` counts them."""

    #: Group id -> MACs one root channel saves on average, alone (first order).
    per_channel: dict[int, float]
    #: The model's MACs.
    total: float
    #: Every node's MACs and axis members, for the exact saving of a plan
    #: (:func:`saved_macs`).
    terms: list[CostTerm]


class RemovalOrder:
    """Which root channels a group loses first (its lowest-scoring), so that the
    share of each axis a count of them removes is known exactly: a Concat-rooted
    group whose weakest channels sit in one branch shrinks that branch's Conv,
    not all four alike."""

    def __init__(self, orders: Mapping[int, np.ndarray] | None = None) -> None:
        self.orders = dict(orders or {})
        self._removed: dict[int, np.ndarray] = {}

    def fraction(self, entry: AxisShare, count: int) -> float:
        """The share of ``entry``'s axis that removing ``count`` root channels takes."""
        order = self.orders.get(entry.group)
        if order is None or count <= 0:
            return entry.share * count
        cumulative = self._removed.get(id(entry))
        if cumulative is None:
            seen: set[int] = set()
            counts = [0]
            for index in order:
                seen.update(int(i) for i in entry.index_map.forward(np.array([index], dtype=np.int64)))
                counts.append(len(seen))
            cumulative = np.asarray(counts, dtype=np.float64) / entry.length
            self._removed[id(entry)] = cumulative
        return float(cumulative[min(count, len(cumulative) - 1)])


def saved_macs(
    terms: Sequence[CostTerm], removed: Mapping[int, int], order: RemovalOrder | None = None
) -> float:
    """MACs a plan saves (``removed``: root channels removed per group, the first
    ones of ``order``; without it, each counts its average share): each node keeps
    its MACs times, for each axis, the share of it no removed channel took, so a
    node read by two pruned groups keeps the product of their kept shares (first
    order counted its saving twice)."""
    order = order or RemovalOrder()
    saved = 0.0
    for macs, axes in terms:
        keep = 1.0
        for axis in axes:
            gone = sum(order.fraction(entry, removed.get(entry.group, 0)) for entry in axis)
            keep *= max(0.0, 1.0 - gone)
        saved += macs * (1.0 - keep)
    return saved


@dataclasses.dataclass
class GroupSensitivity:
    """Measured distortion of one group at each ratio, and its cost per channel."""

    group: int
    name: str
    size: int
    cost: float
    removed: list[int]
    distortion: list[float]
    skipped: str = ""
    #: The multiple the plan rounds this group's kept count to: ``removed`` holds
    #: counts it keeps exactly, and the allocator takes its last step in these units.
    multiple: int = 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rounded_down(size: int, count: int, multiple: int) -> int:
    """Channels a plan removes when asked for ``count`` of ``size`` and its kept
    count is rounded up to ``multiple`` (or to the whole group)."""
    return size - min(size, math.ceil((size - count) / multiple) * multiple)


def _rounded_up(size: int, count: int, multiple: int) -> int:
    """The fewest channels, ``count`` or more, that a plan keeping multiples of
    ``multiple`` can remove (kept rounded down to the multiple)."""
    return size - ((size - count) // multiple) * multiple


def _removed_counts(size: int, ratios: Sequence[float], cap: float, multiple: int = 1) -> list[int]:
    """Channels removed at each ratio, on the counts a plan rounded to ``multiple``
    can keep (the nearer of the two around ``size * ratio``), increasing, at most
    ``cap`` of the group and never all of it."""
    limit = min(math.floor(size * cap), size - 1)
    counts: list[int] = []
    for ratio in ratios:
        count = min(max(1, round(size * ratio)), limit)
        low, high = _rounded_down(size, count, multiple), _rounded_up(size, count, multiple)
        choices = [n for n in (low, high) if 1 <= n <= limit]
        if not choices:
            continue
        count = min(choices, key=lambda n: (abs(n - size * ratio), -n))
        if not counts or count > counts[-1]:
            counts.append(count)
    return counts


def _member_removed(group: Group, removed_roots: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
    """Member space -> indices the removed root channels reach (and no kept one does)."""
    kept_roots = np.setdiff1d(np.arange(group.size), removed_roots)
    spaces: dict[tuple[str, int], np.ndarray] = {}
    for member in group.parameters:
        gone = np.asarray(member.index_map.forward(removed_roots), dtype=np.int64)
        stays = np.asarray(member.index_map.forward(kept_roots), dtype=np.int64)
        spaces[member.space] = np.setdiff1d(gone, stays)
    return spaces


def _with_weight_inputs(model: ir.Model, names: set[str]) -> onnx.ModelProto:
    """The model with initializers ``names`` turned into graph inputs."""
    proto = ir.serde.serialize_model(model)
    graph_inputs = {value.name for value in proto.graph.input}
    kept = []
    for tensor in proto.graph.initializer:
        if tensor.name in names and tensor.name not in graph_inputs:
            proto.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
        else:
            kept.append(tensor)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return proto


#: Suffix of the extra output holding the input of a (Log)Softmax graph output.
_LOGITS = " (logits)"


def _expose_logits(proto: onnx.ModelProto) -> dict[str, str]:
    """Add, for every graph output a ``Softmax``/``LogSoftmax`` computes (looking
    through Identity nodes after it, :func:`spa.graph_outputs.softmax_inputs`,
    the finder ``spa verify``'s pre-softmax checks use), its input as an extra
    output; returns output name -> extra output name. Distortion is measured on
    logits: a confident classifier's or CTC recogniser's probabilities barely
    move (their relative squared error stays near 0) while the arg-max of its
    uncertain rows, which decides the task metric, flips."""
    extra: dict[str, str] = {}
    for output, logits in softmax_inputs(proto).items():
        exposed = output + _LOGITS
        proto.graph.node.append(onnx.helper.make_node("Identity", [logits], [exposed]))
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(exposed))
        extra[output] = exposed
    return extra


def _distortion(
    reference: list[list[np.ndarray]],
    outputs: list[list[np.ndarray]],
    declared: Sequence[tuple[int | None, ...] | None] = (),
) -> float:
    """Mean over outputs of ``sum ||y - y0||^2 / sum ||y0||^2`` over the samples; an
    output of rank >= 3 per feature of its feature axis
    (:func:`spa.graph_outputs.feature_axis`, from its ``declared`` shape), each
    feature's share capped at 1 (replaced by noise of its own size) and the
    shares averaged: a detector's box coordinates would otherwise hide its class
    scores. Samples whose feature count differs leave that output pooled."""
    shares = []
    for position in range(len(reference[0])):
        shape = reference[0][position].shape
        axis = feature_axis(tuple(shape), declared[position] if position < len(declared) else None)
        if axis is not None and any(want[position].shape[axis] != shape[axis] for want in reference):
            axis = None
        error = energy = np.zeros(1 if axis is None else shape[axis])
        for want, got in zip(reference, outputs, strict=True):
            expected = want[position].astype(np.float64)
            squared = (got[position].astype(np.float64) - expected) ** 2
            rest = None if axis is None else tuple(i for i in range(expected.ndim) if i != axis)
            error = error + np.sum(squared, axis=rest)
            energy = energy + np.sum(expected**2, axis=rest)
        if axis is None:
            total, power = float(error.sum()), float(energy.sum())
            shares.append(total / power if power > 0 else (0.0 if total == 0 else math.inf))
            continue
        per_feature = np.where(energy > 0, error / np.where(energy > 0, energy, 1.0), error > 0)
        shares.append(float(np.mean(np.minimum(per_feature, 1.0))))
    return float(np.mean(shares)) if shares else 0.0


def measure_sensitivity(
    model: ir.Model,
    groups: Sequence[Group],
    scores: Mapping[int, np.ndarray],
    samples: Sequence[Feeds],
    costs: Mapping[int, float],
    *,
    ratios: Sequence[float] = SENSITIVITY_RATIOS,
    max_group_ratio: float = 0.9,
    multiples: Mapping[int, int] | None = None,
) -> list[GroupSensitivity]:
    """Distortion of the outputs when each group alone loses its lowest-scoring
    channels at each of ``ratios``, on ``samples`` (see the module docstring).
    ``multiples``: group id -> the multiple its kept count is rounded to; each
    ratio is measured at the nearest count the rounded plan can remove."""
    multiples = multiples or {}
    names = {member.space[0] for group in groups for member in group.parameters}
    names &= set(model.graph.initializers)
    weights = {
        name: model.graph.initializers[name].const_value.numpy()  # type: ignore[union-attr]
        for name in names
    }
    proto = _with_weight_inputs(model, names)
    key = _measurement_key(proto, weights, groups, scores, samples, costs, ratios, max_group_ratio, multiples)
    if key in _MEASURED:  # a search pruning one model at several ratios measures it once
        logger.info("sensitivity: the measurement of this model, scores and samples is reused")
        return [dataclasses.replace(row, removed=list(row.removed), distortion=list(row.distortion))
                for row in _MEASURED[key]]  # fmt: skip
    declared = declared_shapes(proto)  # before the logits: a Softmax output's is theirs
    logits = _expose_logits(proto)
    # A very large graph runs as a chain of segment sessions (spa.ort_segments).
    session = maybe_segmented(proto, create_session, Path.cwd()) or create_session(
        proto.SerializeToString()
    )
    del proto
    wanted = [value.name for value in session.get_inputs() if value.name not in names]
    outputs = [out.name for out in session.get_outputs()]
    exposed = set(logits.values())
    compared = [  # each float output, a (Log)Softmax one by its logits
        out.name for out in session.get_outputs() if "float" in out.type and out.name not in exposed
    ]
    floats = [outputs.index(logits.get(name, name)) for name in compared]
    shapes = [declared.get(name) for name in compared]
    feeds = [{name: np.asarray(sample[name]) for name in wanted} for sample in samples]

    def run(arrays: Mapping[str, np.ndarray]) -> list[list[np.ndarray]]:
        results = []
        for feed in feeds:
            values = session.run(None, {**feed, **arrays})
            results.append([np.asarray(values[i]) for i in floats])
        return results

    reference = run(weights)
    measured = []
    for group in track(groups, total=len(groups), description="sensitivity"):
        order = np.argsort(scores[group.id], kind="stable")  # lowest first
        multiple = max(1, int(multiples.get(group.id, 1)))
        counts = _removed_counts(group.size, ratios, max_group_ratio, multiple)
        distortions = []
        for count in counts:
            masked = dict(weights)
            for (name, axis), removed in _member_removed(group, order[:count]).items():
                if name not in masked or removed.size == 0:
                    continue
                array = masked[name].copy()
                index: list[Any] = [slice(None)] * array.ndim
                index[axis] = removed
                array[tuple(index)] = 0
                masked[name] = array
            distortions.append(_distortion(reference, run(masked), shapes))
        measured.append(
            GroupSensitivity(
                group.id, group.root[0], group.size, float(costs.get(group.id, 0.0)),
                counts, distortions, multiple=multiple,
            )
        )  # fmt: skip
    while len(_MEASURED) >= _MEASURED_KEPT:
        del _MEASURED[next(iter(_MEASURED))]
    _MEASURED[key] = [dataclasses.replace(row, removed=list(row.removed), distortion=list(row.distortion))
                      for row in measured]  # fmt: skip
    return measured


#: Measurements of this process by :func:`_measurement_key` (the last few): the
#: search builds its pruning candidates at several ratios from one model, and
#: the measurement does not depend on the ratio (on PP-OCRv5's detector it was
#: 64 of the 89 s each candidate took).
_MEASURED: dict[str, list[GroupSensitivity]] = {}
_MEASURED_KEPT = 4


def _measurement_key(
    proto: onnx.ModelProto,
    weights: Mapping[str, np.ndarray],
    groups: Sequence[Group],
    scores: Mapping[int, np.ndarray],
    samples: Sequence[Feeds],
    costs: Mapping[int, float],
    ratios: Sequence[float],
    max_group_ratio: float,
    multiples: Mapping[int, int],
) -> str:
    """A digest of everything a measurement depends on: the graph and every weight
    (:func:`spa.model_io.proto_digest`, and the weights lifted to inputs), the
    scores, the samples and the options."""
    digest = proto_digest(proto)
    for array in [*(weights[name] for name in sorted(weights)), *(scores[g.id] for g in groups)]:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(hash_samples(samples).encode())
    options = ([(g.id, g.size, float(costs.get(g.id, 0.0)), int(multiples.get(g.id, 1))) for g in groups],
               list(ratios), max_group_ratio)  # fmt: skip
    digest.update(repr(options).encode())
    return digest.hexdigest()


def parameter_costs(model: ir.Model, groups: Sequence[Group]) -> dict[int, float]:
    """Parameters per root channel of each group (the cost when MACs are not known)."""
    costs: dict[int, float] = {}
    for group in groups:
        total = 0.0
        for member in group.parameters:
            value = model.graph.initializers.get(member.space[0])
            if value is None or value.const_value is None:
                continue
            total += value.const_value.size / max(group.size, 1)
        costs[group.id] = total
    return costs


def allocate_by_sensitivity(
    measured: Sequence[GroupSensitivity],
    *,
    ratio: float,
    total_cost: float,
    fragile: float = FRAGILE_DISTORTION,
    terms: Sequence[CostTerm] | None = None,
    order: RemovalOrder | None = None,
    notes: list[str] | None = None,
) -> dict[int, int]:
    """Channels removed per group: the greedy knapsack over measured steps
    (least added distortion per cost saved first) until ``ratio * total_cost``
    is saved. The last step, taken in part, stops at the first count at or past
    the budget that the plan keeps once rounded to the group's ``multiple`` (the
    plan rounds kept counts up, so a count off the multiple would save less than
    charged); one that would land farther past the budget than it falls short
    waits while other groups' steps can close the gap, and the plan it would
    have made is kept instead when its summed distortion is lower (a line in
    ``notes`` says so). Marks fragile groups' ``skipped`` with the reason.

    The order of steps uses each group's first-order cost; with ``terms``
    (:class:`MacCosts`) and ``order`` (the channels each group loses first) what
    has been saved is counted exactly (:func:`saved_macs`), so the plan meets
    its MAC target: first-order accounting counts a node read by two pruned
    groups (a Conv whose input and output channels both go) as saving for each,
    and spreads a Concat-rooted group's removed channels over its branches alike
    where its weakest channels may sit in one; it stopped short (PP-OCRv4's
    recogniser 24.5 % removed for 25 %, its detector 8.8 % for 10 %)."""
    budget = ratio * total_cost
    removed = {row.group: 0 for row in measured}
    level = {row.group: -1 for row in measured}
    by_id = {row.group: row for row in measured}
    by_group: dict[int, list[CostTerm]] = {}
    for term in terms or ():
        for group in {entry.group for axis in term[1] for entry in axis}:
            by_group.setdefault(group, []).append(term)
    heap: list[tuple[float, int]] = []

    def push(row: GroupSensitivity) -> None:
        step = level[row.group] + 1
        if step >= len(row.removed) or row.cost <= 0:
            return
        before_count = row.removed[step - 1] if step > 0 else 0
        before = row.distortion[step - 1] if step > 0 else 0.0
        saved = (row.removed[step] - before_count) * row.cost
        if saved <= 0:
            return
        added = max(row.distortion[step] - before, 0.0)
        heapq.heappush(heap, (added / saved, row.group))

    def gain(group: int, count: int) -> float:
        """What moving ``group`` from its current count to ``count`` saves."""
        if terms is None:
            return (count - removed[group]) * by_id[group].cost
        touched = by_group.get(group, [])
        return saved_macs(touched, {**removed, group: count}, order) - saved_macs(touched, removed, order)

    for row in measured:
        if row.distortion and row.distortion[0] > fragile:
            row.skipped = (
                f"fragile: losing {row.removed[0]} of {row.size} channels alone changes the "
                f"outputs by {row.distortion[0]:.3g} (relative squared error > {fragile:g})"
            )
            continue
        push(row)
    spent = 0.0

    def first_count_past_budget(group_id: int, count: int) -> tuple[int, float]:
        """The first count up to ``count`` whose rounded plan reaches the budget."""
        row = by_id[group_id]
        low, high = removed[group_id] + 1, count
        while low < high:
            middle = (low + high) // 2
            rounded = min(count, _rounded_up(row.size, middle, row.multiple))
            if spent + gain(group_id, rounded) >= budget:
                high = middle
            else:
                low = middle + 1
        count = min(count, _rounded_up(row.size, low, row.multiple))
        return count, gain(group_id, count)

    def take(group_id: int, count: int, saved: float) -> None:
        nonlocal spent
        spent += saved
        removed[group_id] = count
        level[group_id] += 1
        push(by_id[group_id])

    def distortion_of(plan: Mapping[int, int]) -> float:
        """The measured distortions summed over groups (linear between measured counts)."""
        total = 0.0
        for group_id, count in plan.items():
            row, below, before = by_id[group_id], 0, 0.0
            for at, value in zip(row.removed, row.distortion, strict=True):
                if count <= at:
                    total += before + (value - before) * (count - below) / max(at - below, 1)
                    break
                below, before = at, value
            else:
                total += before
        return total

    # A last step that lands farther past the budget than it falls short (a
    # coarse rounding: 16 of a 32-channel group can be half of two layers) is
    # set aside while other groups' steps can close the gap; if they cannot,
    # the set-aside step that overshoots least is taken, so the target is met.
    # A plan a set-aside step would have made is kept instead when it measured
    # less distortion than the plan nearer the target (it removes more and
    # changes the outputs less).
    set_aside: dict[int, int] = {}
    farther: list[tuple[dict[int, int], float]] = []
    while heap and spent < budget:
        _, group_id = heapq.heappop(heap)
        count = by_id[group_id].removed[level[group_id] + 1]
        saved = gain(group_id, count)
        if spent + saved > budget:  # the last step, in part
            count, saved = first_count_past_budget(group_id, count)
            if spent + saved - budget > budget - spent:
                set_aside[group_id] = count
                farther.append(({**removed, group_id: count}, spent + saved))
                continue
        take(group_id, count, saved)
    if spent < budget and set_aside:
        steps = [(*first_count_past_budget(group, count), group) for group, count in set_aside.items()]
        count, saved, group_id = min(steps, key=lambda step: (step[1], step[2]))
        take(group_id, count, saved)
    if spent >= budget and farther:
        options = [(distortion_of(plan), saved, plan) for plan, saved in farther]
        lowest, saved, plan = min(options, key=lambda option: option[:2])
        nearest = distortion_of(removed)
        if lowest < nearest:
            message = (
                f"sensitivity allocation: saving {saved / total_cost:.1%} of the cost where "
                f"{ratio:.1%} was asked: the plan nearest the target ({spent / total_cost:.1%}) "
                f"measured more distortion ({nearest:.3g}) than this one ({lowest:.3g})"
            )
            # a plan a quarter past the ask is worth a warning; nearer, a note in the report
            logger.log(logging.WARNING if saved > 1.25 * budget else logging.INFO, "%s", message)
            if notes is not None:
                notes.append(message)
            removed.update(plan)
            spent = saved
    if spent < budget:
        whole = sum(1 for row in measured if row.skipped)
        logger.warning(
            "sensitivity allocation saved %.3g of the %.3g asked: every other group is at its "
            "largest measured ratio, and %d fragile group(s) stay whole (raise --fragile to "
            "prune them)", spent, budget, whole,
        )  # fmt: skip
    return removed
