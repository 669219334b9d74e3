"""Pruning plans: which root channels each group keeps.

A plan is produced by a policy (ratio, criterion, round-to, exclusions),
saved as JSON with the model's fingerprint, and applied by the
``apply-plan`` pass. Scores are computed per group from all its parameter
members: a member's per-slice norms are normalised by their mean, then summed
onto the root indices through the member's index map.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.analysis.groups import Analysis, Group
from spa.analysis.index_maps import Lookup
from spa.errors import UserError

__all__ = [
    "CRITERIA",
    "Plan",
    "kept_count",
    "make_plan",
    "member_indices",
    "plan_for",
    "score_group",
]

CRITERIA = ("random", "l1", "l2")
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
        path = Path(path)
        if not path.parent.is_dir():
            raise UserError(f"{path}: folder '{path.parent}' does not exist; create it first")
        staged = path.with_name(f".{path.name}.tmp")
        staged.write_text(json.dumps(self.as_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(staged, path)

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


def _member_array(model: ir.Model, name: str) -> np.ndarray | None:
    value = model.graph.initializers.get(name)
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def score_group(
    model: ir.Model, group: Group, criterion: str, rng: np.random.Generator
) -> np.ndarray:
    """One importance score per root channel (higher = more important)."""
    if criterion == "random":
        return rng.random(group.size)
    power = 1 if criterion == "l1" else 2
    scores = np.zeros(group.size)
    for member in group.parameters:
        array = _member_array(model, member.space[0])
        if array is None or array.ndim == 0:
            continue
        moved = np.moveaxis(np.abs(array.astype(np.float64)) ** power, member.space[1], 0)
        per_slice = moved.reshape(moved.shape[0], -1).sum(axis=1)
        mean = per_slice.mean()
        if mean > 0:
            per_slice = per_slice / mean
        rows = Lookup.of(member.index_map).rows
        padded = np.append(per_slice, 0.0)  # index -1 reads the padding 0
        scores += padded[np.where(rows >= 0, rows, -1)].sum(axis=1)
    return scores


def kept_count(size: int, ratio: float, round_to: int) -> int:
    """Channels kept: ``size * (1 - ratio)`` rounded up to a multiple of ``round_to``."""
    keep = math.ceil(size * (1.0 - ratio) / round_to) * round_to
    return int(min(size, max(round_to, keep, 1)))


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


def _excluded(group: Group, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(p.search(m.space[0]) for p in patterns for m in group.members)


def make_plan(
    model: ir.Model,
    analysis: Analysis,
    *,
    ratio: float,
    criterion: str = "l1",
    seed: int = 0,
    round_to: int = 1,
    exclude: Sequence[str] = (),
) -> Plan:
    """Uniform ratio per prunable group, ranked by ``criterion``."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--ratio {ratio} is outside [0, 1); e.g. --ratio 0.3 removes 30%")
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    if round_to < 1:
        raise UserError(f"--round-to {round_to} must be >= 1")
    try:
        patterns = [re.compile(p) for p in exclude]
    except re.error as error:
        raise UserError(f"--exclude pattern is not a valid regex ({error})") from None
    rng = np.random.default_rng(seed)
    kept: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    for group in analysis.prunable_groups():
        if _excluded(group, patterns):
            continue
        keep = kept_count(group.size, ratio, round_to)
        scores = score_group(model, group, criterion, rng)
        if keep >= group.size:
            continue
        order = np.argsort(-scores, kind="stable")
        chosen = _keep_every_member_alive(group, set(int(i) for i in order[:keep]), scores)
        if len(chosen) >= group.size:
            continue
        kept[group.id] = sorted(chosen)
        sizes[group.id] = group.size
    policy = {
        "ratio": ratio,
        "criterion": criterion,
        "seed": seed,
        "round_to": round_to,
        "exclude": list(exclude),
    }
    return Plan(analysis.fingerprint, kept, sizes, policy)


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
) -> Plan:
    """The saved plan at ``plan_path`` (checked against the model), else a new one."""
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
