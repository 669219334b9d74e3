"""``prune_model``: analyze, plan, slice, verify by mask equivalence — the
library behind ``spa prune``.

Verification follows DESIGN.md: the original model with every removed
parameter slice zeroed (the *masked* reference) and the physically pruned
model must give the same outputs on seeded inputs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.analysis import Analysis, analyze, prepare
from spa.analysis.defaults import DEFAULT_PRUNABLE_IO
from spa.analysis.plan import Plan, member_indices, plan_for
from spa.criteria import DATA_CRITERIA
from spa.criteria.calibrate import gather_statistics
from spa.errors import UserError
from spa.inspect import human_count
from spa.model_io import load_model, save_model
from spa.quant.calibration import CalibrationSource
from spa.verify import AllClose, Policy, VerifyResult, verify_models

__all__ = ["PruneResult", "analyze_file", "prune_model"]


@dataclasses.dataclass
class PruneResult:
    """What :func:`prune_model` did."""

    output: Path
    analysis: Analysis
    plan: Plan
    statistics: dict[str, int]
    verification: VerifyResult | None
    report: dict[str, Any]
    verdict_line: str


def analyze_file(
    path: str | os.PathLike[str], prunable_io: str | None = DEFAULT_PRUNABLE_IO
) -> Analysis:
    """Groups of the model at ``path`` (weights stay memory-mapped)."""
    return analyze(prepare(load_model(path)), prunable_io)


def _verify_masked(
    model: Path,
    output: Path,
    analysis: Analysis,
    plan: Plan,
    policy: Policy,
    reference: ir.Model | None = None,
    **feeds: Any,
) -> VerifyResult:
    """``reference``: the model the plan was applied to, when it is not ``model``
    as loaded (weights updated by reconstruction, biases added)."""
    from spa.passes.prune import mask_model

    masked = reference if reference is not None else prepare(load_model(model))
    mask_model(masked, analysis, plan)
    io_names = {v.name for v in (*masked.graph.inputs, *masked.graph.outputs)}
    io_slices = {
        space: kept
        for space, kept in member_indices(analysis, plan).items()
        if space[0] in io_names
    }

    def adapt(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Slice KV-cache inputs/outputs to the heads the pruned model keeps."""
        adapted = dict(arrays)
        for (value_name, axis), kept in io_slices.items():
            if value_name in adapted:
                adapted[value_name] = np.take(adapted[value_name], kept, axis=axis)
        return adapted

    with tempfile.TemporaryDirectory(prefix="spa-mask-") as folder:
        masked_path = save_model(masked, Path(folder) / "masked.onnx")
        return verify_models(
            masked_path, output, policy=policy, adapt=adapt if io_slices else None, **feeds
        )


def prune_model(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ratio: float = 0.3,
    criterion: str = "l1",
    seed: int = 0,
    round_to: int = 1,
    exclude: Sequence[str] = (),
    plan_path: str | os.PathLike[str] | None = None,
    save_plan: str | os.PathLike[str] | None = None,
    verify: bool = False,
    policy: Policy | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    command: str | None = None,
    prunable_io: str | None = DEFAULT_PRUNABLE_IO,
    reduction: str = "sum",
    allocation: str = "uniform",
    max_group_ratio: float = 0.9,
    calibration: CalibrationSource | None = None,
    bias_compensation: bool = False,
) -> PruneResult:
    """Prune ``model`` into ``output``; a model whose groups are all frozen is
    written unchanged (the report says why).

    ``criterion`` and ``allocation`` pick the channels (see
    :func:`spa.analysis.plan.make_plan`); ``calibration`` (an ``.npz``, a
    folder of ``.npy`` files or an iterable of feed dicts) feeds the
    activation criteria. ``obs``/``obspa`` and ``bias_compensation`` update the
    consumers' kept weights before slicing; the verifier masks the updated
    model, so it stays exact.
    """
    from spa import report as reporting
    from spa.criteria.consumers import remove_zero_biases
    from spa.criteria.reconstruct import apply_updates, compute_updates
    from spa.passes.prune import apply_plan

    start = time.perf_counter()
    model, output = Path(model), Path(output)
    ir_model = prepare(load_model(model))
    analysis = analyze(ir_model, prunable_io)
    created: list[ir.Node] = []
    added = 0  # biases added and kept (nonzero after compensation)
    if bias_compensation:
        analysis, created = _with_biases(ir_model, analysis, prunable_io)
    statistics = None
    if calibration is not None and (
        criterion in DATA_CRITERIA or (bias_compensation and criterion != "obspa")
    ):
        statistics = gather_statistics(ir_model, analysis, calibration, full=criterion == "obs")
    elif criterion in DATA_CRITERIA:
        raise UserError(f"criterion {criterion} needs --calib DATA (calibration inputs)")
    plan = plan_for(
        ir_model,
        analysis,
        plan_path=plan_path,
        ratio=ratio,
        criterion=criterion,
        seed=seed,
        round_to=round_to,
        exclude=exclude,
        reduction=reduction,
        allocation=allocation,
        max_group_ratio=max_group_ratio,
        statistics=statistics,
    )
    plan.policy["bias_compensation"] = bias_compensation
    if save_plan is not None:
        plan.save(save_plan)
    updates, reconstruction = compute_updates(
        ir_model,
        analysis,
        plan,
        reconstruct=criterion in ("obs", "obspa"),
        bias_compensation=bias_compensation,
        statistics=statistics if criterion != "obspa" else None,
    )
    apply_updates(ir_model, updates)
    reference = None
    if verify and plan.kept and (updates or created):
        reference = ir.from_proto(ir.to_proto(ir_model))  # updated, before slicing
    if plan.kept:
        statistics_out = apply_plan(ir_model, analysis, plan)
        added = len(created) - remove_zero_biases(ir_model, created)
    else:  # nothing to prune: write the input as it was, not its analysis-ready form
        statistics_out = {"groups_pruned": 0}
        ir_model = load_model(model)
    save_model(ir_model, output, input_path=model)
    feeds = {"shapes": shapes, "dims": dims, "int_ranges": int_ranges}
    verification = None
    if verify and plan.kept:  # an unchanged model needs no check
        policy = policy or AllClose(rtol=1e-4)
        verification = _verify_masked(
            model, output, analysis, plan, policy, reference, seed=seed, **feeds
        )
    before = reporting.compute_stats(model, shapes=shapes, dims=dims)
    after = reporting.compute_stats(output, shapes=shapes, dims=dims)
    report = _prune_report(analysis, plan, before, after, verification)
    report["reconstruction"] = reconstruction
    report["biases_added"] = added
    report = {
        **reporting.build_report(
            command=command or f"spa.prune.prune_model({str(model)!r}, {str(output)!r})",
            seeds={"plan": seed, "inputs": seed},
            before=before,
            after=after,
            passes=[{"name": "prune", "statistics": statistics_out}],
            verification=verification.as_dict() if verification else None,
            latency=None,
        ),
        **report,
    }
    if report_path is not None:
        reporting.write_report(report, Path(report_path))
    seconds = time.perf_counter() - start
    return PruneResult(
        output,
        analysis,
        plan,
        statistics_out,
        verification,
        report,
        _verdict(report, verification, seconds),
    )


def _with_biases(
    model: ir.Model, analysis: Analysis, prunable_io: str | None
) -> tuple[Analysis, list[ir.Node]]:
    """Give every consumer of a prunable group a bias of its own to compensate
    into (zero if it had none), and analyse again."""
    from spa.criteria.consumers import add_missing_biases, consumers_of

    nodes = {id(c.node): c.node for g in analysis.prunable_groups() for c in consumers_of(model, g)}
    created = add_missing_biases(model, list(nodes.values()))
    return analyze(model, prunable_io), created  # new biases and private copies join groups


def _prune_report(
    analysis: Analysis, plan: Plan, before: Any, after: Any, verification: VerifyResult | None
) -> dict[str, Any]:
    with_parameters = [g for g in analysis.groups if g.parameters]
    return {
        "params_before": before.params,
        "params_after": after.params,
        "macs_before": before.total_macs,
        "macs_after": after.total_macs,
        "groups_total": len(with_parameters),
        "groups_pruned": len(plan.kept),
        "groups_frozen": sum(1 for g in with_parameters if g.frozen),
        "frozen_reasons": analysis.frozen_reason_counts(),
        "plan": plan.policy,
        "verify": None
        if verification is None
        else {
            "passed": verification.passed,
            "max_abs_diff": verification.max_abs_diff,
            "max_rel_diff": verification.max_rel_diff,
        },
    }


def _verdict(report: dict[str, Any], verification: VerifyResult | None, seconds: float) -> str:
    before, after = report["params_before"], report["params_after"]
    change = (after - before) / before * 100 if before else 0.0
    macs_b, macs_a = report["macs_before"], report["macs_after"]
    text = (
        f"prune | params {human_count(before)} → {human_count(after)} ({change:+.0f}%) | "
        f"MACs {human_count(macs_b)} → {human_count(macs_a)} | groups {report['groups_pruned']}/"
        f"{report['groups_total']} pruned"
    )
    if verification is None:
        return f"DONE | {text} | not verified | {seconds:.1f}s"
    verdict = "PASSED" if verification.passed else "FAILED"
    return f"{verdict} | {text} | max|Δ| {verification.max_abs_diff:.1g} | {seconds:.1f}s"
