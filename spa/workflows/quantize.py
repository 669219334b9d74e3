"""``quantize_model``: the library function behind ``spa quantize``.

Load -> (convert) -> ``quantize-weights`` pass (GPTQ calibrates) -> save -> verify in ORT CPU
on seeded inputs (cosine and max|Δ| against the original) -> a
:class:`QuantizeResult` with every node decision, statistics, the share of
MatMul/Gemm/Conv MACs covered and model bytes before/after.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import onnx_ir as ir
from typing_extensions import Unpack

from spa.calibration import CalibrationSource
from spa.passes.quantize import QuantizeWeightsPass, check_quantize_options
from spa.stats.change import ChangeShare, decisions_share
from spa.stats.coverage import mac_coverage
from spa.verify import CosineMaxAbs, VerifyResult, verify_models
from spa.workflows.latency_guard import GuardReport, guard_feeds, guard_weight_only
from spa.workflows.results import RewriteResult, file_bytes
from spa.workflows.run import PipelineOutcome, RunKeywords, RunOptions, convert_opset, run_pipeline

__all__ = ["QuantizeResult", "default_min_cosine", "quantize_model"]


@dataclasses.dataclass
class QuantizeResult(RewriteResult):
    """Everything the report shows about one ``quantize_model`` call."""

    seconds: float
    verification: VerifyResult | None = None
    #: Agreement with the input on held-out calibration samples (spa.verify.quality).
    quality: dict[str, Any] | None = None
    quality_note: str = ""
    #: Share of params/MACs quantized and why the rest was left (spa.stats.change).
    change: ChangeShare | None = None
    #: What the latency guard measured and wrote (spa.workflows.latency_guard), or None.
    latency: dict[str, Any] | None = None


def default_min_cosine(bits: int) -> float:
    """The verification threshold used unless the caller gives one."""
    return 0.9999 if bits >= 8 else 0.98


def quantize_model(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    bits: int = 4,
    block: int = 128,
    method: str = "rtn",
    symmetric: bool = True,
    target: str = "ort",
    calib: CalibrationSource | None = None,
    act_order: bool = False,
    verify: bool = True,
    min_cosine: float | None = None,
    keep_float: tuple[str, ...] | None = None,
    allow_slower: bool = False,
    **run: Unpack[RunKeywords],
) -> QuantizeResult:
    """Quantize the MatMul/Gemm weights of ``input_path`` and write ``output_path``
    (the ``quantize-weights`` pass through :func:`spa.workflows.run.run_pipeline`;
    GPTQ's Hessians come from ``calib``; with either method its held-out samples
    measure agreement with the input). ``keep_float``: layer kinds left in float
    (``depthwise``, ``first``, ``last``); None = all three at 4 bits, none at 8.
    On ``target="ort"`` a MatMulNBits output is measured against the input and
    written in the folded Cast form when that is faster (the latency guard,
    :mod:`spa.workflows.latency_guard`); ``allow_slower`` skips it."""
    check_quantize_options(bits, block, symmetric, method, target)
    start = time.perf_counter()
    source, output = Path(input_path), Path(output_path)
    options = RunOptions(**run, calibration=calib)  # RTN uses it for quality only
    quantizer = QuantizeWeightsPass(
        bits, block, symmetric, method, target, act_order=act_order, keep_float=keep_float
    )

    def prepare(model: ir.Model) -> ir.Model:
        if target == "ort":
            return model
        return convert_opset(
            model, below=21, version=21, purpose="block DequantizeLinear", fix="use --target ort"
        )

    def check(source: Path, output: Path, outcome: PipelineOutcome) -> VerifyResult:
        threshold = min_cosine if min_cosine is not None else default_min_cosine(bits)
        policy = CosineMaxAbs(min_cosine=threshold)
        return verify_models(source, output, policy=policy, seed=options.seed, **options.inputs)

    guard: GuardReport | None = None

    def after_save(model: ir.Model, outcome: PipelineOutcome) -> None:
        nonlocal guard
        if allow_slower or not quantizer.wrote_nbits:
            return
        feeds = guard_feeds(source, calib, options.seed, options.inputs)
        guard = guard_weight_only(source, output, model, feeds)
        if guard.chosen == "Cast":
            details = outcome.records[0].details
            details["decisions"] = _mark_folded(details["decisions"])

    outcome = run_pipeline(
        source, output, [quantizer], options, prepare=prepare,
        verify=check if verify else None, after_save=after_save,
    )  # fmt: skip
    record = outcome.records[0]
    decisions = record.details["decisions"]
    return QuantizeResult(
        output=output,
        options={"bits": bits, "block": block, "method": method, "symmetric": symmetric,
                 "target": target, "act_order": act_order, "seed": options.seed,
                 "keep_float": list(quantizer.keep_float)},
        decisions=[decision.as_dict() for decision in decisions],
        statistics=dict(record.statistics),
        calibration=record.details["calibration"],
        mac_coverage=mac_coverage(outcome.before, decisions),
        bytes_before=outcome.input_bytes,
        bytes_after=file_bytes(output),
        seconds=time.perf_counter() - start,
        verification=outcome.verification,
        quality=outcome.quality.as_dict() if outcome.quality else None,
        quality_note=outcome.quality_note,
        change=decisions_share(
            outcome.before, decisions, {"quantized"},
            f"op type {{op}} not quantizable for --target {target}",
        ),
        latency=guard.as_dict() if guard is not None else None,
    )  # fmt: skip


def _mark_folded(decisions: list[Any]) -> list[Any]:
    """The decisions, each MatMul/Gemm one saying the guard wrote the folded Cast form."""
    note = "written in the Cast form ORT folds at load (latency guard)"
    return [
        dataclasses.replace(d, reason=f"{d.reason}; {note}" if d.reason else note)
        if d.action == "quantized" and d.op_type in ("MatMul", "Gemm") else d
        for d in decisions
    ]  # fmt: skip
