"""``optimize``: load, run a recipe, save, verify, report — the library behind
``spa optimize``.

>>> from spa.optimize import optimize  # doctest: +SKIP
>>> result = optimize("model.onnx", "out.onnx", recipe="cleanup")  # doctest: +SKIP
>>> result.verdict_line  # doctest: +SKIP
'PASSED | cleanup | params 25.6M → 25.5M (-0%) | max|Δ| 2e-07 | 1.3s'
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spa.inspect import human_count
from spa.model_io import load_model, load_proto, save_model
from spa.pass_manager import DumpInstrument, Instrument, PassRecord, SpaPass, run_passes
from spa.recipes import Recipe, build_passes, load_recipe
from spa.verify import AllClose, Policy, VerifyResult, input_specs, make_feeds, verify_models

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


def _verdict_line(
    recipe: str, report: dict[str, Any], verification: VerifyResult | None, seconds: float
) -> str:
    before, after = report["before"]["params"], report["after"]["params"]
    change = (after - before) / before * 100 if before else 0.0
    params = f"params {human_count(before)} → {human_count(after)} ({change:+.0f}%)"
    if verification is None:
        return f"DONE | {recipe} | {params} | not verified | {seconds:.1f}s"
    verdict = "PASSED" if verification.passed else "FAILED"
    return (
        f"{verdict} | {recipe} | {params} | max|Δ| {verification.max_abs_diff:.1g} | {seconds:.1f}s"
    )


def optimize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    recipe: str | Recipe = "cleanup",
    passes: Sequence[SpaPass] | None = None,
    verify: bool = True,
    policy: Policy | None = None,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    dump_dir: str | os.PathLike[str] | None = None,
    latency_runs: int = 0,
    command: str | None = None,
    on_pass_end: Callable[[PassRecord, int], None] | None = None,
    prune: float | None = None,
    criterion: str = "l1",
    round_to: int = 1,
    **prune_options: Any,
) -> OptimizeResult:
    """Optimize ``model`` into ``output`` with ``recipe`` and return what happened.

    The input file is never modified. With ``prune`` (a ratio) the model is
    first structurally pruned (see :func:`spa.prune.prune_model`, verified by
    mask equivalence), then the recipe runs on the pruned model;
    ``prune_options`` go to it (``reduction``, ``allocation``,
    ``max_group_ratio``, ``calibration``, ``bias_compensation``). With
    ``verify`` the recipe's output is compared with its input in ONNX Runtime
    on seeded inputs under ``policy`` (default relative error <= 1e-5); a
    failed comparison is reported, not raised.
    """
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="spa-optimize-") as staging:
        pruning = None
        source = Path(model)
        if prune is not None:
            from spa.prune import prune_model

            pruning = prune_model(
                model,
                Path(staging) / "pruned.onnx",
                ratio=prune,
                criterion=criterion,
                seed=seed,
                round_to=round_to,
                **prune_options,
                verify=verify,
                shapes=shapes,
                dims=dims,
                int_ranges=int_ranges,
            )
            source = pruning.output
        result = _optimize(
            Path(model),
            source,
            output,
            recipe=recipe,
            passes=passes,
            verify=verify,
            policy=policy,
            seed=seed,
            shapes=shapes,
            dims=dims,
            int_ranges=int_ranges,
            dump_dir=dump_dir,
            latency_runs=latency_runs,
            command=command,
            on_pass_end=on_pass_end,
        )
    if pruning is not None:
        result.prune_verification = pruning.verification
        result.report["prune"] = {k: v for k, v in pruning.report.items() if k not in result.report}
        if pruning.verification is not None and not pruning.verification.passed:
            result.verdict_line = result.verdict_line.replace("PASSED", "FAILED", 1)
    if report_path is not None:
        from spa.report import write_report

        write_report(result.report, Path(report_path))
    return result


def _optimize(
    original: Path,
    model: Path,
    output: Path,
    *,
    recipe: str | Recipe,
    passes: Sequence[SpaPass] | None,
    verify: bool,
    policy: Policy | None,
    seed: int,
    shapes: Mapping[str, tuple[int, ...]] | None,
    dims: Mapping[str, int] | None,
    int_ranges: Mapping[str, tuple[int, int]] | None,
    dump_dir: str | os.PathLike[str] | None,
    latency_runs: int,
    command: str | None,
    on_pass_end: Callable[[PassRecord, int], None] | None,
) -> OptimizeResult:
    """The recipe stage: ``model`` (maybe already pruned from ``original``) -> ``output``."""
    from spa import report as reporting

    start = time.perf_counter()
    loaded = load_recipe(recipe) if isinstance(recipe, str) else recipe
    pass_list = list(passes) if passes is not None else build_passes(loaded)
    proto = load_proto(model)
    before = reporting.compute_stats(original, shapes=shapes, dims=dims)
    ir_model = load_model(model)
    instruments: list[Instrument] = [DumpInstrument(dump_dir)] if dump_dir else []
    records = run_passes(ir_model, pass_list, instruments=instruments, on_pass_end=on_pass_end)
    save_model(ir_model, output, input_path=original)
    after = reporting.compute_stats(output, shapes=shapes, dims=dims)
    verification = None
    if verify:
        verification = verify_models(
            model,
            output,
            policy=policy or AllClose(),
            seed=seed,
            shapes=shapes,
            dims=dims,
            int_ranges=int_ranges,
        )
    latency = None
    if latency_runs > 0:
        feeds = make_feeds(
            input_specs(proto), seed=seed, shapes=shapes, dims=dims, int_ranges=int_ranges
        )
        latency = {
            "before": reporting.measure_latency(original, feeds, runs=latency_runs),
            "after": reporting.measure_latency(output, feeds, runs=latency_runs),
        }
    report = reporting.build_report(
        command=command
        or f"spa.optimize.optimize({str(original)!r}, {str(output)!r}, recipe={loaded.name!r})",
        seeds={"inputs": seed},
        before=before,
        after=after,
        passes=[record.as_dict() for record in records],
        verification=verification.as_dict() if verification else None,
        latency=latency,
    )
    report["recipe"] = loaded.name
    seconds = time.perf_counter() - start
    return OptimizeResult(
        output=output,
        records=records,
        verification=verification,
        report=report,
        summary_table=reporting.render_comparison(reporting.compare(before, after)),
        verdict_line=_verdict_line(loaded.name, report, verification, seconds),
    )
