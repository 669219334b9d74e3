"""``prune_model``: analyze, plan, slice, verify by mask equivalence — the
library behind ``spa prune``.

Verification follows DESIGN.md: the original model with every removed
parameter slice zeroed (the *masked* reference) and the physically pruned
model must give the same outputs on seeded inputs.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from typing_extensions import Unpack

from spa.analysis import Analysis, analyze, prepare
from spa.analysis.defaults import DEFAULT_PRUNABLE_IO
from spa.calibration import CalibrationSource
from spa.errors import UserError
from spa.model_io import iter_graph_protos, load_model, load_proto, save_model
from spa.pass_manager import PassRecord, SpaPass
from spa.passes.correct_statistics import CorrectStatisticsPass
from spa.passes.factorize import FactorizeEmbeddingsPass
from spa.passes.prune import PrunePass
from spa.pruning.allocation import AUTO_ROUND
from spa.pruning.plan import Plan
from spa.pruning.sensitivity import FRAGILE_DISTORTION, SENSITIVITY_SAMPLES
from spa.stats import report as reporting
from spa.stats.change import ChangeShare, change_share
from spa.stats.inspect import human_count, value_info
from spa.verify import AllClose, Policy, VerifyResult
from spa.verify.mask import verify_masked
from spa.verify.quality import quality_verdict
from spa.workflows.latency_guard import guard_feeds, guard_pruned
from spa.workflows.run import RunKeywords, RunOptions, Snapshot, run_pipeline

__all__ = [
    "PruneResult",
    "analyze_file",
    "prune_change",
    "prune_model",
    "prune_report",
    "verify_prune",
]


@dataclasses.dataclass
class PruneResult:
    """What :func:`prune_model` did."""

    output: Path
    analysis: Analysis
    plan: Plan
    statistics: dict[str, int | float]
    verification: VerifyResult | None
    report: dict[str, Any]
    verdict_line: str
    records: list[PassRecord] = dataclasses.field(default_factory=list)
    #: Share of params/MACs pruned and why the rest was left (spa.stats.change).
    change: ChangeShare | None = None


def analyze_file(
    path: str | os.PathLike[str], prunable_io: str | None = DEFAULT_PRUNABLE_IO
) -> Analysis:
    """Groups of the model at ``path`` (weights stay memory-mapped)."""
    return analyze(prepare(load_model(path)), prunable_io)


def prune_model(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ratio: float = 0.3,
    criterion: str = "l1",
    round_to: int = AUTO_ROUND,
    exclude: Sequence[str] = (),
    plan_path: str | os.PathLike[str] | None = None,
    save_plan: str | os.PathLike[str] | None = None,
    verify: bool = False,
    policy: Policy | None = None,
    report_path: str | os.PathLike[str] | None = None,
    command: str | None = None,
    prunable_io: str | None = DEFAULT_PRUNABLE_IO,
    reduction: str = "sum",
    allocation: str = "uniform",
    max_group_ratio: float = 0.9,
    calibration: CalibrationSource | None = None,
    bias_compensation: bool = False,
    fragile: float = FRAGILE_DISTORTION,
    correct_statistics: int = 0,
    sensitivity_samples: int = SENSITIVITY_SAMPLES,
    sequential_stages: int = 0,
    embedding_rank: float | None = None,
    target: str | None = None,
    allow_slower: bool = False,
    **run: Unpack[RunKeywords],
) -> PruneResult:
    """Prune ``model`` into ``output``; a model whose groups are all frozen is
    written unchanged (the report says why).

    ``criterion`` and ``allocation`` pick the channels (see
    :func:`spa.pruning.plan.make_plan`); ``round_to`` the multiple each group keeps
    (default: 16 in channel groups of >= 32, 8 in groups of 16-31,
    :func:`spa.pruning.allocation.group_multiple`); ``calibration`` (an ``.npz``, a
    folder of ``.npy`` files or an iterable of feed dicts) feeds the
    activation criteria and the ``sensitivity`` allocation (groups whose measured
    distortion on ``sensitivity_samples`` calibration samples exceeds ``fragile`` stay
    whole). ``sequential_stages`` > 0 measures the statistics of the weight updates
    (``obs``, ``bias_compensation``) in that many stages, each on the model
    pruned up to it. ``correct_statistics`` rounds of
    :class:`spa.passes.correct_statistics.CorrectStatisticsPass` follow the prune
    (mask equivalence then checks the model before them). ``embedding_rank``
    factorizes the vocabulary tables last (:class:`spa.passes.factorize.FactorizeEmbeddingsPass`;
    not exact, so mask equivalence checks the pruned model before it and quality
    is measured on the output). ``obs``/``obspa`` and
    ``bias_compensation`` update the
    consumers' kept weights before slicing; the verifier masks the updated
    model, so it stays exact. The ``prune`` pass runs through
    :func:`spa.workflows.run.run_pipeline` (per-pass lines, ``dump_dir``).
    ``target="ort"`` measures the output against the input on ONNX Runtime CPU and
    refuses one slower beyond noise (:func:`spa.workflows.latency_guard.guard_pruned`)
    unless ``allow_slower``.
    """
    start = time.perf_counter()
    model, output = Path(model), Path(output)
    if target not in (None, "ort"):
        raise UserError(f"--target {target}: spa prune measures on 'ort' (ONNX Runtime CPU) only")
    options = RunOptions(**run, calibration=calibration)
    prune_pass = PrunePass(
        ratio, criterion, options.seed, round_to, tuple(exclude),
        None if plan_path is None else str(plan_path),
        save_plan=None if save_plan is None else str(save_plan), reduction=reduction,
        allocation=allocation, max_group_ratio=max_group_ratio,
        bias_compensation=bias_compensation, prunable_io=prunable_io, keep_reference=verify,
        fragile=fragile, correct_statistics=correct_statistics > 0,
        sensitivity_samples=sensitivity_samples, sequential=sequential_stages,
    )  # fmt: skip
    passes: list[SpaPass] = [prune_pass]
    passes += [CorrectStatisticsPass(prune_pass) for _ in range(correct_statistics)]
    factorize = FactorizeEmbeddingsPass(embedding_rank) if embedding_rank is not None else None
    passes += [factorize] if factorize is not None else []
    with tempfile.TemporaryDirectory(prefix="spa-prune-") as staging:
        after_prune = len(passes) > 1  # the output is not the pruned model alone
        pruned = Path(staging) / "pruned.onnx" if after_prune else output
        instruments = [Snapshot(1, pruned)] if after_prune and verify else []
        outcome = run_pipeline(model, output, passes, options, instruments=instruments)
        details = outcome.details("prune")
        plan = details["plan"]
        checked = verify and bool(plan.kept)
        verification = verify_prune(details, pruned, policy, options) if checked else None
        if verify and not plan.kept:
            # Nothing pruned (every group frozen, or rounding kept every channel): the
            # check still validates the model (ONNX's checker; custom-domain ops pass),
            # so an invalid input fails here instead of being written back with exit 0.
            _check_valid(output, model)
    analysis = details["analysis"]
    factorized = factorize is not None and outcome.records[-1].modified
    if not plan.kept and not factorized:
        # nothing to prune: write the input as it was, not its analysis-ready form
        save_model(outcome.model_before(model), output, input_path=model)
    guard = None
    if target == "ort" and (plan.kept or factorized) and (verification is None or verification.passed):
        feeds = guard_feeds(model, calibration, options.seed, options.inputs)
        guard = guard_pruned(model, output, feeds, allow_slower=allow_slower)
    before = reporting.compute_stats(
        outcome.before, shapes=options.shapes, dims=options.dims, base_dir=model.resolve().parent
    )
    after = reporting.compute_stats(output, shapes=options.shapes, dims=options.dims)
    statistics_out = outcome.records[0].statistics
    report = prune_report(details, before, after, verification)
    report["correction"] = [
        {"round": record.index - 1, **row}
        for record in outcome.records[1:]
        for row in record.details.get("correction", [])
    ]
    report["factorization"] = (
        [d.as_dict() for d in factorize.decisions] if factorize is not None else None
    )
    report["quality"] = outcome.quality.as_dict() if outcome.quality else None
    report["quality_note"] = outcome.quality_note
    change = prune_change(details, outcome.before)
    report["change"] = change.as_dict()
    report["interface"] = interface_changes(outcome.before, load_proto(output))
    report = {
        **reporting.build_report(
            command=command or f"spa.workflows.prune.prune_model({str(model)!r}, {str(output)!r})",
            seeds={"plan": options.seed, "inputs": options.seed},
            before=before,
            after=after,
            passes=[{"name": "prune", "statistics": statistics_out}],
            verification=verification.as_dict() if verification else None,
            latency=guard.as_dict() if guard else None,
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
        outcome.records,
        change,
    )


def interface_changes(before: onnx.ModelProto, after: onnx.ModelProto) -> list[dict[str, Any]]:
    """Graph inputs and outputs whose fixed sizes the prune changed (``--prunable-io``: a KV
    cache that lost heads), as ``{"name", "before", "after"}``; a symbolic dim renamed by
    shape inference (``total`` -> ``past + seq``) is no change."""
    found = []
    old = {v.name: list(value_info(v).shape or ()) for v in (*before.graph.input, *before.graph.output)}
    for value in (*after.graph.input, *after.graph.output):
        was, now = old.get(value.name), list(value_info(value).shape or ())
        if was is None or (len(was) == len(now) and all(
            a == b or isinstance(a, str) or isinstance(b, str) for a, b in zip(was, now, strict=True)
        )):  # fmt: skip
            continue
        found.append({"name": value.name, "before": was, "after": now})
    return found


def interface_line(changes: list[dict[str, Any]]) -> str:
    """One line naming the graph inputs/outputs that changed shape, or '' when none did."""
    if not changes:
        return ""

    def shape(dims: list[int | str]) -> str:
        return "[" + ", ".join(str(d) for d in dims) + "]"

    first = changes[0]
    more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
    return (
        f"interface: {len(changes)} graph input(s)/output(s) changed shape ({first['name']} "
        f"{shape(first['before'])} -> {shape(first['after'])}{more}; per value in --report): whatever "
        "feeds them, such as a KV cache, must use the new sizes; --prunable-io '' keeps them whole"
    )


#: Priority of a weight's outcome when several groups hold it (lower wins).
_PRIORITY = {"": 0, "frozen": 1, "not prunable": 2, "kept": 3}


def prune_change(details: dict[str, Any], before: onnx.ModelProto) -> ChangeShare:
    """Share of ``before`` (the model before the ``prune`` pass) the pass pruned, and
    why each other weight was left: its group frozen (with the reason), a group
    that cannot be pruned, or a group kept whole by the plan."""
    analysis: Analysis = details["analysis"]
    plan: Plan = details["plan"]
    outcomes: dict[str, tuple[int, str]] = {}
    for group in analysis.groups:
        kept = plan.kept.get(group.id)
        if kept is not None and len(kept) < group.size:
            kind, reason = "", ""
        elif group.frozen:
            kind, reason = "frozen", f"frozen group: {group.frozen_reasons[0]}"
        elif not group.prunable:
            kind, reason = "not prunable", "group not prunable (one channel or no activation)"
        else:
            kind, reason = "kept", "group kept whole by the plan (ratio, allocation, --exclude)"
        for member in group.parameters:
            name = member.space[0]
            if name not in outcomes or _PRIORITY[kind] < outcomes[name][0]:
                outcomes[name] = (_PRIORITY[kind], reason)
    reasons = {name: reason for name, (_, reason) in outcomes.items()}
    main_inputs = {name for node in before.graph.node for name in node.input}
    for body in list(iter_graph_protos(before.graph))[1:]:
        for node in body.node:
            for name in node.input:
                if name and name not in reasons and name not in main_inputs:
                    reasons[name] = "read only inside an If/Loop/Scan body: spa prunes the main graph"
    return change_share(before, reasons, "op type {op}: its weights belong to no channel group")


def _check_valid(path: Path, shown: object) -> None:
    """ONNX's checker on the model written at ``path``, and a default-domain opset ONNX
    knows (ONNX Runtime refuses others); errors name ``shown``, the input."""
    known = onnx.defs.onnx_opset_version()
    for entry in onnx.load(str(path), load_external_data=False).opset_import:
        if entry.domain in ("", "ai.onnx") and not 1 <= entry.version <= known:
            raise UserError(
                f"{shown}: opset {entry.version} of the default domain is not one ONNX knows (1..{known}); "
                "export the model with a released opset"
            )
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.shape_inference.InferenceError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{shown}: not a valid ONNX model ({message}); check it with `spa inspect`") from None


def verify_prune(
    details: dict[str, Any], pruned: Path, policy: Policy | None, options: RunOptions
) -> VerifyResult | None:
    """Mask equivalence of the model at ``pruned`` (None when nothing was pruned:
    an unchanged model needs no check)."""
    plan: Plan = details["plan"]
    if not plan.kept:
        return None
    return verify_masked(
        details["reference"], pruned, details["analysis"], plan, policy or AllClose(rtol=1e-4),
        seed=options.seed, **options.inputs,
    )  # fmt: skip


def prune_report(
    details: dict[str, Any], before: Any, after: Any, verification: VerifyResult | None
) -> dict[str, Any]:
    """The prune-specific part of a report, from the ``prune`` pass's details."""
    analysis: Analysis = details["analysis"]
    plan: Plan = details["plan"]
    with_parameters = analysis.counted_groups()  # as `spa analyze` counts them
    frozen = [g for g in with_parameters if g.frozen]
    return {
        "params_before": before.params,
        "params_after": after.params,
        "macs_before": before.total_macs,
        "macs_after": after.total_macs,
        "groups_total": len(with_parameters),
        "groups_pruned": len(plan.kept),
        "groups_frozen": len(frozen),
        "frozen_reasons": analysis.frozen_reason_counts(frozen),
        "plan": plan.policy,
        "verify": None
        if verification is None
        else {
            "passed": verification.passed,
            "max_abs_diff": verification.max_abs_diff,
            "max_rel_diff": verification.max_rel_diff,
        },
        "reconstruction": details["reconstruction"],
        "biases_added": details["biases_added"],
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
    quality = quality_verdict(report.get("quality"), report.get("quality_note", ""))
    measured = [m["speedup"] for m in (report.get("latency") or {}).get("measured", [])]
    if measured:  # spa prune --target ort
        text += f" | {statistics.median(measured):.2f}x on ort-cpu"
    tables = [d for d in report.get("factorization") or [] if d["action"] == "factorized"]
    if tables:
        ranks = ", ".join(f"rank {d['rank']} ({d['energy']:.0%} energy)" for d in tables)
        text += f" | embeddings factorized: {ranks}, not exact"
    if report["groups_pruned"] == 0:
        if tables:
            return f"DONE | {text} | {quality} | {seconds:.1f}s"
        return f"NOTHING TO DO | {text} | {quality} | {seconds:.1f}s"
    if verification is None:
        return f"DONE | {text} | not verified | {quality} | {seconds:.1f}s"
    verdict = "PASSED" if verification.passed else "FAILED"
    return f"{verdict} | {text} | max|Δ| {verification.max_abs_diff:.1g} (rel {verification.max_rel_diff:.1g}) | {quality} | {seconds:.1f}s"
