"""``optimize``: load, run a recipe, save, verify, report — the library behind
``spa optimize``.

>>> from spa.workflows.optimize import optimize  # doctest: +SKIP
>>> result = optimize("model.onnx", "out.onnx", recipe="cleanup")  # doctest: +SKIP
>>> result.verdict_line  # doctest: +SKIP
'PASSED | cleanup | params 25.6M → 25.5M (-0%) | max|Δ| 0.04 (rel 5e-07) | 1.3s'

A recipe whose passes rewrite weights by design (``quantize-weights``,
``sparsify-2to4``, ``gqsa``) is verified against its decoded reference instead
(:mod:`spa.workflows.recipe_verify`), as ``spa quantize`` is.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from typing_extensions import Unpack

from spa.analysis.defaults import DEFAULT_PRUNABLE_IO
from spa.calibration import CalibrationSource
from spa.model_io import load_proto
from spa.pass_manager import PassRecord, SpaPass
from spa.passes.correct_statistics import CorrectStatisticsPass
from spa.passes.prune import PrunePass
from spa.pruning.sensitivity import FRAGILE_DISTORTION
from spa.stats import report as reporting
from spa.stats.change import (
    BIAS_REASON,
    ChangeShare,
    change_share,
    node_outcomes,
    rewritten_weights,
)
from spa.stats.inspect import human_count
from spa.verify import AllClose, Policy, VerifyResult, input_specs, make_feeds, verify_models
from spa.verify.quality import quality_verdict
from spa.workflows.prune import prune_report, verify_prune
from spa.workflows.recipe_verify import (
    ORT_FORM_NOTE,
    DecodedCheck,
    check_decoded_recipe,
    decoded_snapshots,
    holds_spa_ops,
    ort_form,
)
from spa.workflows.recipes import Recipe, build_passes, load_recipe
from spa.workflows.run import PipelineOutcome, RunKeywords, RunOptions, Snapshot, run_pipeline

__all__ = ["OptimizeResult", "optimize"]


@dataclasses.dataclass
class OptimizeResult:
    """What :func:`optimize` did: output path, pass records, checks, report."""

    output: Path
    records: list[PassRecord]
    verification: VerifyResult | None
    report: dict[str, Any]
    summary_table: str
    verdict_line: str
    prune_verification: VerifyResult | None = None
    #: Mask equivalence of each prune step inside the recipe, at that step's output.
    step_verifications: list[VerifyResult] = dataclasses.field(default_factory=list)
    #: A recipe that rewrote weights: ``verification`` is against its decoded
    #: reference; this adds the drift to the recipe's input (spa.workflows.recipe_verify).
    decoded: DecodedCheck | None = None
    #: Why a recipe that rewrote weights was compared with its input instead.
    verification_note: str = ""


def _verdict_line(
    recipe: str, report: dict[str, Any], verification: VerifyResult | None, seconds: float,
    decoded: DecodedCheck | None = None, note: str = "",
) -> str:  # fmt: skip
    before, after = report["before"]["params"], report["after"]["params"]
    change = (after - before) / before * 100 if before else 0.0
    params = f"params {human_count(before)} → {human_count(after)} ({change:+.0f}%)"
    quality = quality_verdict(report.get("quality"), report.get("quality_note", ""))
    if verification is None:
        return f"DONE | {recipe} | {params} | not verified | {quality} | {seconds:.1f}s"
    if decoded is not None:
        verdict = "PASSED" if decoded.passed else "FAILED"
        return f"{verdict} | {recipe} | {params} | {decoded.decoded_verdict()} | {quality} | {seconds:.1f}s"
    verdict = "PASSED" if verification.passed else "FAILED"
    fallback = f" | decoded reference not used: {note}" if note else ""
    return (
        f"{verdict} | {recipe} | {params} | max|Δ| {verification.max_abs_diff:.1g} (rel {verification.max_rel_diff:.1g}){fallback} | {quality} "
        f"| {seconds:.1f}s"
    )


def _skip_reasons(records: Sequence[PassRecord]) -> dict[str, str]:
    """Node name -> why a pass of the recipe skipped it ("int4-to-plugin: K=256 N=10: ..."),
    from the decisions deciding passes record; a later pass's reason wins."""
    reasons: dict[str, str] = {}
    for record in records:
        for decision in record.details.get("decisions", ()):
            fields = (
                decision if isinstance(decision, dict)
                else {key: getattr(decision, key, "") for key in ("action", "node", "reason")}
            )  # fmt: skip
            node, reason = str(fields.get("node") or ""), str(fields.get("reason") or "")
            if fields.get("action") == "skipped" and node and reason:
                reasons[node] = f"{record.name}: {reason}"
    return reasons


def _recipe_change(
    before: onnx.ModelProto, before_dir: Path, output: Path, recipe: str, records: Sequence[PassRecord] = ()
) -> ChangeShare:
    """Share of the model (as the recipe got it) whose weights the recipe rewrote; a weight
    left as it was takes the reason a pass gave for skipping its node, where one did."""
    generic = f"no pass of the {recipe} recipe changed it"
    after = load_proto(output)
    outcomes = rewritten_weights(
        before, after, generic, before_dir=before_dir, after_dir=output.resolve().parent,
    )  # fmt: skip
    for weight, reason in node_outcomes(before, _skip_reasons(records)).items():
        if outcomes.get(weight) == generic and reason not in ("", BIAS_REASON):
            outcomes[weight] = reason
    return change_share(before, outcomes, generic)


def optimize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    recipe: str | Recipe = "cleanup",
    passes: Sequence[SpaPass] | None = None,
    verify: bool = True,
    policy: Policy | None = None,
    report_path: str | os.PathLike[str] | None = None,
    latency_runs: int = 0,
    command: str | None = None,
    prune: float | None = None,
    criterion: str = "l1",
    round_to: int = 1,
    calibration: CalibrationSource | None = None,
    reduction: str = "sum",
    allocation: str = "uniform",
    max_group_ratio: float = 0.9,
    bias_compensation: bool = False,
    fragile: float = FRAGILE_DISTORTION,
    correct_statistics: int = 0,
    sequential_stages: int = 0,
    prunable_io: str | None = DEFAULT_PRUNABLE_IO,
    **run: Unpack[RunKeywords],
) -> OptimizeResult:
    """Optimize ``model`` into ``output`` with ``recipe`` and return what happened.

    The input file is never modified. With ``prune`` (a ratio) a ``prune``
    pass runs first (``criterion``, ``round_to``, ``reduction``, ``allocation``,
    ``max_group_ratio``, ``bias_compensation``, ``fragile``, ``sequential_stages`` (its
    ``sequential``), ``prunable_io`` as :class:`spa.passes.prune.PrunePass`;
    verified by mask equivalence), then ``correct_statistics`` rounds of
    :class:`spa.passes.correct_statistics.CorrectStatisticsPass`, then the recipe on the
    pruned model. Passes
    that ask for statistics get them from ``calibration``. With ``verify`` the
    recipe's output is compared with its input in ONNX Runtime on seeded inputs
    under ``policy`` (default relative error <= 1e-5); a failed comparison is
    reported, not raised. A recipe whose passes rewrote weights (weight-only
    quantization, 2:4, GQSA) is instead checked exact against its decoded reference,
    its drift to the input judged only by an explicit ``policy``
    (:mod:`spa.workflows.recipe_verify`; ``decoded`` in the result).
    """
    start = time.perf_counter()
    source, output = Path(model), Path(output)
    loaded = load_recipe(recipe) if isinstance(recipe, str) else recipe
    pass_list: list[SpaPass] = list(passes) if passes is not None else build_passes(loaded)
    options = RunOptions(**run, calibration=calibration)
    seed, shapes, dims = options.seed, options.shapes, options.dims
    # passes before the recipe's own: the pruner and its statistics corrections
    recipe_start = 1 + correct_statistics if prune is not None else 0
    if prune is not None:
        pruner = PrunePass(
            prune, criterion, seed, round_to, reduction=reduction, allocation=allocation,
            max_group_ratio=max_group_ratio, bias_compensation=bias_compensation,
            keep_reference=verify, fragile=fragile, correct_statistics=correct_statistics > 0,
            sequential=sequential_stages, prunable_io=prunable_io,
        )  # fmt: skip
        corrections = [CorrectStatisticsPass(pruner) for _ in range(correct_statistics)]
        pass_list[:0] = [pruner, *corrections]
    # prune steps of the recipe itself: each checked by mask equivalence on its own
    # output (a snapshot), as spa prune and spa slice --prune do
    first = 1 if prune is not None else 0
    recipe_prunes = [
        index for index, spa_pass in enumerate(pass_list[first:], start=first + 1)
        if isinstance(spa_pass, PrunePass)
    ]  # fmt: skip
    if verify:
        for index in recipe_prunes:
            step = pass_list[index - 1]
            assert isinstance(step, PrunePass)
            step.keep_reference = True
    with tempfile.TemporaryDirectory(prefix="spa-optimize-") as staging:
        pruned = Path(staging) / "pruned.onnx"
        corrected = Path(staging) / "corrected.onnx" if correct_statistics else pruned
        instruments = [Snapshot(1, pruned)] if prune is not None else []
        if prune is not None and correct_statistics:
            instruments.append(Snapshot(1 + correct_statistics, corrected))
        snapshots = {index: Path(staging) / f"step-{index}.onnx" for index in recipe_prunes}
        instruments += (
            [Snapshot(index, path) for index, path in snapshots.items()] if verify else []
        )
        # the models the decoded reference may be built on, and the checks' other ends
        models_after = {0: source, **snapshots}
        if prune is not None:
            models_after |= {1: pruned, recipe_start: corrected}
        for index in decoded_snapshots(pass_list, recipe_start) if verify else []:
            if index not in models_after:
                models_after[index] = Path(staging) / f"before-{index + 1}.onnx"
                instruments.append(Snapshot(index, models_after[index]))
        prune_verification: list[VerifyResult | None] = [None]
        step_checks: list[VerifyResult] = []
        decoded: list[DecodedCheck | None] = [None]
        note = [""]

        def check(source: Path, output: Path, outcome: PipelineOutcome) -> VerifyResult:
            reference = source
            if prune is not None:
                prune_verification[0] = verify_prune(
                    outcome.records[0].details, pruned, None, options
                )
                reference = corrected
            for index, path in snapshots.items():
                result = verify_prune(outcome.records[index - 1].details, path, None, options)
                if result is not None:
                    step_checks.append(result)
            found = check_decoded_recipe(
                pass_list, recipe_start, models_after, outcome, output, options, policy
            )
            if isinstance(found, str):
                note[0] = found
            elif found is not None and found.verification is not None:
                decoded[0] = found
                return found.verification
            with tempfile.TemporaryDirectory(prefix="spa-ort-form-") as folder:
                return verify_models(
                    ort_form(reference, Path(folder) / "reference"), ort_form(output, Path(folder)),
                    policy=policy or AllClose(), seed=seed, **options.inputs,
                )  # fmt: skip

        outcome = run_pipeline(
            source, output, pass_list, options, instruments=instruments,
            verify=check if verify else None, runnable=ort_form,
        )  # fmt: skip
        base_dir = source.resolve().parent
        before = reporting.compute_stats(
            outcome.before, shapes=shapes, dims=dims, base_dir=base_dir
        )
        after = reporting.compute_stats(output, shapes=shapes, dims=dims)
        prune_part = None
        if prune is not None:
            after_prune = reporting.compute_stats(pruned, shapes=shapes, dims=dims)
            prune_part = prune_report(
                outcome.records[0].details, before, after_prune, prune_verification[0]
            )
    records = outcome.records[1:] if prune is not None else outcome.records
    spa_ops = (verify or latency_runs > 0) and holds_spa_ops(output)
    latency, latency_note = None, ""
    if latency_runs > 0 and spa_ops:
        latency_note = "not measured: the output holds spa ops that TensorRT runs, not ONNX Runtime"
    elif latency_runs > 0:
        feeds = make_feeds(input_specs(outcome.before), seed=seed, **options.inputs)
        latency = {
            "before": reporting.measure_latency(source, feeds, runs=latency_runs),
            "after": reporting.measure_latency(output, feeds, runs=latency_runs),
        }
    verification = outcome.verification
    report = reporting.build_report(
        command=command
        or f"spa.workflows.optimize.optimize({str(source)!r}, {str(output)!r}, recipe={loaded.name!r})",
        seeds={"inputs": seed},
        before=before,
        after=after,
        passes=[record.as_dict() for record in records],
        verification=verification.as_dict() if verification else None,
        latency=latency,
    )
    report["recipe"] = loaded.name
    if latency_note:
        report["latency_note"] = latency_note
    if verify and spa_ops:
        report["verified_form"] = ORT_FORM_NOTE
    if decoded[0] is not None:
        report["decoded"] = decoded[0].as_dict()
    if note[0]:
        report["verification_note"] = f"decoded reference not used: {note[0]}"
    change = _recipe_change(outcome.before, base_dir, output, loaded.name, records)
    report["change"] = change.as_dict()
    report["quality"] = outcome.quality.as_dict() if outcome.quality else None
    report["quality_note"] = outcome.quality_note
    if prune_part is not None:
        report["prune"] = prune_part
    if step_checks:
        report["recipe_prune_checks"] = [check.as_dict() for check in step_checks]
    if report_path is not None:
        reporting.write_report(report, Path(report_path))
    seconds = time.perf_counter() - start
    verdict = _verdict_line(loaded.name, report, verification, seconds, decoded[0], note[0])
    if step_checks:
        worst = max(check.max_rel_diff for check in step_checks)
        verdict += f" | recipe prune steps: mask equivalence max rel {worst:.1g}"
    failed_prune = prune_verification[0] is not None and not prune_verification[0].passed
    if failed_prune or not all(check.passed for check in step_checks):
        verdict = verdict.replace("PASSED", "FAILED", 1)
    return OptimizeResult(
        output=output,
        records=outcome.records,
        verification=verification,
        report=report,
        summary_table="\n".join(
            [
                reporting.render_comparison(reporting.compare(before, after)),
                *change.lines(f"spa optimize --recipe {loaded.name}"),
            ]
        ),
        verdict_line=verdict,
        prune_verification=prune_verification[0],
        step_verifications=step_checks,
        decoded=decoded[0],
        verification_note=note[0],
    )
