"""Pruning plans: which root channels each group keeps.

A plan is produced by a policy (ratio, criterion, allocation, round-to,
exclusions), saved as JSON with the model's fingerprint, and applied by the
``apply-plan`` pass. Scores are computed per group from all its parameter
members (``spa.pruning.scores``): a member's per-slice scores are normalised
by their mean, then summed onto the root indices through the member's index
map; ``spa.pruning.allocation`` turns them into kept counts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.analysis.groups import Analysis, Group
from spa.analysis.index_maps import Lookup
from spa.calibration import (
    CalibrationSource,
    ChannelStatistics,
    load_calibration,
    model_inputs,
)
from spa.destinations import write_text_atomic
from spa.errors import UserError
from spa.pruning.allocation import AUTO_ROUND, allocate, group_multiple
from spa.pruning.criteria import ALLOCATIONS, CRITERIA, DATA_ALLOCATIONS, DATA_CRITERIA, REDUCTIONS
from spa.pruning.scores import score_group
from spa.pruning.sensitivity import (
    FRAGILE_DISTORTION,
    SENSITIVITY_SAMPLES,
    CostTerm,
    RemovalOrder,
    allocate_by_sensitivity,
    measure_sensitivity,
    parameter_costs,
)
from spa.pruning.statistics import gather_statistics

__all__ = ["Plan", "make_plan", "member_indices", "plan_for"]

PLAN_FORMAT = "spa-plan/1"


@dataclasses.dataclass
class Plan:
    """Group id -> kept root indices, for the model with ``fingerprint``."""

    fingerprint: str
    kept: dict[int, list[int]]
    sizes: dict[int, int]
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "fingerprint": self.fingerprint,
            "policy": self.policy,
            "groups": {str(g): {"size": self.sizes[g], "kept": k} for g, k in self.kept.items()},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON, atomically (temporary file, then rename)."""
        write_text_atomic(path, json.dumps(self.as_dict(), indent=1) + "\n", "--save-plan")

    @staticmethod
    def load(path: str | os.PathLike[str], analysis: Analysis) -> Plan:
        """Read a plan and check that it belongs to the analysed model."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            groups = {int(g): row for g, row in data["groups"].items()}
            fingerprint = str(data["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{path}: not a spa plan ({error}); save one with --save-plan"
            ) from None
        if fingerprint != analysis.fingerprint:
            raise UserError(
                f"{path}: plan was made for another model (fingerprint {fingerprint}, "
                f"this model {analysis.fingerprint}); re-create it with --save-plan"
            )
        by_id = {group.id: group for group in analysis.groups}
        for group_id, row in groups.items():
            group = by_id.get(group_id)
            kept = row.get("kept", [])
            if (
                group is None
                or not group.prunable
                or row.get("size") != group.size
                or not kept
                or min(kept) < 0
                or max(kept) >= group.size
            ):
                raise UserError(
                    f"{path}: group {group_id} does not match this model's groups; "
                    "re-create the plan with --save-plan"
                )
        return Plan(
            fingerprint,
            {g: sorted(r["kept"]) for g, r in groups.items()},
            {g: r["size"] for g, r in groups.items()},
            data.get("policy", {}),
        )


def _keep_every_member_alive(group: Group, chosen: set[int], scores: np.ndarray) -> set[int]:
    """Add, per member whose channels would all go, its best root channel.

    A Concat input is a window of its group's root: a plan may otherwise keep
    none of its channels, which leaves a zero-sized tensor.
    """
    chosen = set(chosen)
    kept = np.asarray(sorted(chosen), dtype=np.int64)
    for member in group.members:
        rows = Lookup.of(member.index_map).rows
        covering = np.flatnonzero((rows >= 0).any(axis=1))
        if covering.size and not np.isin(covering, kept).any():
            best = int(covering[np.argmax(scores[covering])])
            chosen.add(best)
            kept = np.asarray(sorted(chosen), dtype=np.int64)
    return chosen


def _tie_shared_channels(group: Group, scores: np.ndarray) -> np.ndarray:
    """Give root channels that reach one channel of a member their mean score.

    A member smaller than its root (the two halves of a gated projection that
    meet in one channel by a Mul) loses a channel only when every root channel
    reaching it goes; ranked on their own, the halves would be split and the
    plan would remove far fewer channels than it counts.
    """
    parent = np.arange(group.size)

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = int(parent[index])
        return index

    tied = False
    for member in group.members:
        rows = Lookup.of(member.index_map).rows
        valid = rows >= 0
        targets = rows[valid]
        if np.unique(targets).size == targets.size:
            continue  # one root channel per member channel
        tied = True
        first: dict[int, int] = {}
        for root, target in zip(np.nonzero(valid)[0].tolist(), targets.tolist(), strict=True):
            other = first.setdefault(target, root)
            if other != root:
                parent[find(root)] = find(other)
    if not tied:
        return scores
    classes = np.array([find(i) for i in range(group.size)])
    sums = np.bincount(classes, weights=scores, minlength=group.size)
    counts = np.bincount(classes, minlength=group.size)
    return sums[classes] / counts[classes]


def _excluded(group: Group, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(p.search(m.space[0]) for p in patterns for m in group.members)


def _unit_width(model: ir.Model, group: Group) -> int:
    """Channels per unit of ``group``: in its convolution kernels (parameters of rank 3
    or more) when it has any, else in its widest parameter. An attention head's units
    span head_dim channels of the projections; a convolution's channels are one each,
    even when a Flatten makes each span 9 inputs of the next Gemm (a (128, 576) Gemm
    after 64 channels of 3x3): the Conv's NCHWc blocks are what rounding serves."""
    widths: list[int] = []
    kernels: list[int] = []
    for member in group.parameters:
        value = model.graph.initializers.get(member.space[0])
        if value is None or value.const_value is None or group.size <= 0:
            continue
        shape = value.const_value.shape
        axis = member.space[1]
        if -len(shape) <= axis < len(shape):
            width = max(1, int(shape.numpy()[axis]) // group.size)
            widths.append(width)
            if len(shape) >= 3:
                kernels.append(width)
    if kernels:
        return min(kernels)
    return max(widths, default=1)


def _blocked_units(model: ir.Model, group: Group) -> bool:
    """Does each unit of ``group`` span several output channels of a convolution (a
    GroupNorm group of 2 or 4 channels), so that rounding counts channels, not units?
    (An LSTM's unit spans its 4 gates' rows: no NCHWc blocks there.)"""
    convs = {id(node.inputs[1]) for node in model.graph
             if node.op_type in ("Conv", "ConvTranspose") and not node.domain and len(node.inputs) > 1}  # fmt: skip
    for member in group.parameters:
        value = model.graph.initializers.get(member.space[0])
        if value is None or value.const_value is None or id(value) not in convs or member.space[1] != 0:
            continue
        if int(value.const_value.shape.numpy()[0]) > group.size:
            return True
    return False


def _shape_class(model: ir.Model, group: Group) -> tuple[Any, ...]:
    shapes = []
    for member in group.parameters:
        value = model.graph.initializers.get(member.space[0])
        shape = tuple(value.const_value.shape) if value and value.const_value is not None else ()
        shapes.append((shape, member.space[1]))
    return (group.size, tuple(sorted(shapes)))


def _check_policy(
    ratio: float, criterion: str, round_to: int, reduction: str, allocation: str, cap: float
) -> None:
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--ratio {ratio} is outside [0, 1); e.g. --ratio 0.3 removes 30%")
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    if round_to < 0:
        raise UserError(f"--round-to {round_to}: give 'auto' or a multiple >= 1")
    if reduction not in REDUCTIONS:
        raise UserError(f"unknown reduction '{reduction}'; choose one of {', '.join(REDUCTIONS)}")
    if allocation not in ALLOCATIONS:
        raise UserError(
            f"unknown allocation '{allocation}'; choose one of {', '.join(ALLOCATIONS)}"
        )
    if not 0.0 < cap < 1.0:
        raise UserError(f"--max-group-ratio {cap} is outside (0, 1); e.g. 0.9")


def make_plan(
    model: ir.Model,
    analysis: Analysis,
    *,
    ratio: float,
    criterion: str = "l1",
    seed: int = 0,
    round_to: int = 1,
    exclude: Sequence[str] = (),
    reduction: str = "sum",
    allocation: str = "uniform",
    max_group_ratio: float = 0.9,
    calibration: CalibrationSource | None = None,
    statistics: Mapping[str, ChannelStatistics] | None = None,
    samples: Sequence[Mapping[str, np.ndarray]] | None = None,
    costs: Mapping[int, float] | None = None,
    total_cost: float | None = None,
    fragile: float = FRAGILE_DISTORTION,
    cost_terms: Sequence[CostTerm] | None = None,
) -> Plan:
    """Rank each prunable group's channels by ``criterion`` and keep the counts
    that ``allocation`` gives (see :mod:`spa.pruning`).

    Criteria in ``DATA_CRITERIA`` need ``calibration`` (an ``.npz``, a folder
    of ``.npy`` files, or an iterable of feed dicts) or precomputed
    ``statistics`` (:func:`spa.pruning.statistics.gather_statistics`).

    ``allocation="sensitivity"`` measures each group on ``samples`` (feed
    dicts; else the first samples of ``calibration``) and removes ``ratio`` of
    ``total_cost`` where the outputs move least (``costs``: cost per root
    channel of each group, MACs when the caller knows them, else parameters;
    ``cost_terms``: each node's MACs and owners, for the exact saving of the
    plan, :class:`spa.pruning.sensitivity.MacCosts`); groups above ``fragile``
    stay whole (``policy["skipped"]`` says why).
    """
    _check_policy(ratio, criterion, round_to, reduction, allocation, max_group_ratio)
    try:
        patterns = [re.compile(p) for p in exclude]
    except re.error as error:
        raise UserError(f"--exclude pattern is not a valid regex ({error})") from None
    groups = [g for g in analysis.prunable_groups() if not _excluded(g, patterns)]
    if criterion in DATA_CRITERIA and statistics is None and groups:
        if calibration is None:
            raise UserError(f"criterion {criterion} needs --calib DATA (calibration inputs)")
        statistics = gather_statistics(model, analysis, calibration, full=criterion == "obs")
    rng = np.random.default_rng(seed)
    scores = {
        group.id: _tie_shared_channels(
            group,
            score_group(model, group, criterion, rng, reduction=reduction, statistics=statistics),
        )
        for group in groups
    }
    extra: dict[str, Any] = {}
    multiples = {g.id: group_multiple(g.size, round_to, _unit_width(model, g), _blocked_units(model, g))
                 for g in groups}  # fmt: skip
    keeps: dict[int, int] = {}
    if not groups:
        pass  # nothing to allocate: the report says why nothing changed
    elif allocation in DATA_ALLOCATIONS:
        keeps, extra = _sensitivity_keeps(
            model, groups, scores, samples, calibration, costs, total_cost,
            ratio=ratio, fragile=fragile, max_group_ratio=max_group_ratio, multiples=multiples,
            terms=cost_terms,
        )  # fmt: skip
    else:
        keeps = allocate(
            scores,
            ratio=ratio,
            allocation=allocation,
            max_group_ratio=max_group_ratio,
            round_to=multiples,
            shape_class={g.id: _shape_class(model, g) for g in groups},
        )
    kept: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    for group in groups:
        keep = keeps[group.id]
        if keep >= group.size:
            continue
        order = np.argsort(-scores[group.id], kind="stable")
        chosen = _keep_every_member_alive(
            group, set(int(i) for i in order[:keep]), scores[group.id]
        )
        if len(chosen) >= group.size:
            continue
        kept[group.id] = sorted(chosen)
        sizes[group.id] = group.size
    policy = {
        "ratio": ratio,
        "criterion": criterion,
        "reduction": reduction,
        "seed": seed,
        "round_to": round_to if round_to != AUTO_ROUND else "auto",
        "exclude": list(exclude),
        "allocation": allocation,
        "max_group_ratio": max_group_ratio,
        "calibrated": statistics is not None or bool(extra),
        **extra,
    }
    return Plan(analysis.fingerprint, kept, sizes, policy)


def _sensitivity_keeps(
    model: ir.Model,
    groups: Sequence[Group],
    scores: Mapping[int, np.ndarray],
    samples: Sequence[Mapping[str, np.ndarray]] | None,
    calibration: CalibrationSource | None,
    costs: Mapping[int, float] | None,
    total_cost: float | None,
    *,
    ratio: float,
    fragile: float,
    max_group_ratio: float,
    multiples: Mapping[int, int],
    terms: Sequence[CostTerm] | None = None,
) -> tuple[dict[int, int], dict[str, Any]]:
    """Kept counts of the ``sensitivity`` allocation, and what it measured."""
    if samples is None and calibration is not None:
        feeds = load_calibration(calibration, model_inputs(model))
        samples = list(itertools.islice(feeds, SENSITIVITY_SAMPLES))
    if not samples:
        raise UserError("--allocation sensitivity needs --calib DATA (calibration inputs)")
    if costs is None:
        costs = parameter_costs(model, groups)
    if total_cost is None:
        total_cost = sum(costs.get(g.id, 0.0) * g.size for g in groups)
    measured = measure_sensitivity(
        model, groups, scores, samples, costs, max_group_ratio=max_group_ratio,
        multiples=multiples,
    )  # fmt: skip
    # the plan removes each group's lowest-scoring channels first (plan_for's order)
    order = RemovalOrder({g.id: np.argsort(-scores[g.id], kind="stable")[::-1] for g in groups})
    notes: list[str] = []
    removed = allocate_by_sensitivity(
        measured, ratio=ratio, total_cost=total_cost, fragile=fragile, terms=terms, order=order, notes=notes
    )
    by_id = {g.id: g for g in groups}
    keeps: dict[int, int] = {}
    for g, count in removed.items():
        size, multiple = by_id[g].size, multiples.get(g, 1)
        keeps[g] = min(size, math.ceil((size - count) / multiple) * multiple)
    extra = {
        "fragile": fragile,
        "sensitivity_samples": len(samples),
        "skipped": {str(row.group): row.skipped for row in measured if row.skipped},
        "sensitivity": [row.as_dict() for row in measured],
    }
    if notes:
        extra["allocation_note"] = notes[0]
    return keeps, extra


def plan_for(
    model: ir.Model,
    analysis: Analysis,
    *,
    plan_path: str | os.PathLike[str] | None = None,
    ratio: float = 0.3,
    criterion: str = "l1",
    seed: int = 0,
    round_to: int = 1,
    exclude: Sequence[str] = (),
    **options: Any,
) -> Plan:
    """The saved plan at ``plan_path`` (checked against the model), else a new
    one (``options``: the keyword arguments of :func:`make_plan`)."""
    if plan_path is not None:
        return Plan.load(plan_path, analysis)
    return make_plan(
        model,
        analysis,
        ratio=ratio,
        criterion=criterion,
        seed=seed,
        round_to=round_to,
        exclude=exclude,
        **options,
    )


def member_indices(analysis: Analysis, plan: Plan) -> dict[tuple[str, int], np.ndarray]:
    """Kept indices of every member space of every group the plan prunes."""
    by_id = {group.id: group for group in analysis.groups}
    indices: dict[tuple[str, int], np.ndarray] = {}
    for group_id, kept in plan.kept.items():
        root_kept = np.asarray(kept, dtype=np.int64)
        everything = np.arange(by_id[group_id].size, dtype=np.int64)
        for member in by_id[group_id].members:
            index_map = member.index_map
            # Indices no root channel reaches are not this group's to remove.
            untouched = np.setdiff1d(
                np.arange(index_map.target_size, dtype=np.int64), index_map.forward(everything)
            )
            indices[member.space] = np.union1d(index_map.forward(root_kept), untouched)
    return indices
