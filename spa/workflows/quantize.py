"""``quantize_model``: the library function behind ``spa quantize``.

Load -> (convert) -> ``quantize-weights`` pass (GPTQ calibrates) -> save -> verify in ORT CPU
on seeded inputs -> a :class:`QuantizeResult` with every node decision,
statistics, the share of weighted-layer MACs covered and model bytes
before/after.

Verification has the exactness meaning it has for every spa rewrite: the output
against the *decoded reference*, the input with each quantized weight replaced by
the values its stored form decodes to (:mod:`spa.quant.decoded`), at a float
tolerance (:data:`spa.workflows.results.DECODED_RTOL`), in ORT sessions without
graph optimizations (the file's semantics, not ORT's fusions). How far
quantization moved the outputs is reported beside it and not judged: the cosine to the float input on the same
seeded inputs (``drift``; a gate only when ``min_cosine`` is given) and, with
calibration data, the agreement on held-out real samples (``quality``). Seeded
random inputs say little about a lossy rewrite: int4 MiniLM keeps its Spearman
on real sentences while random token ids give cos 0.77, and depth alone moves a
healthy int8 ViT below 0.9999.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import onnx_ir as ir
from typing_extensions import Unpack

from spa.calibration import CalibrationSource
from spa.errors import UserError
from spa.passes.quantize import QuantizeWeightsPass, check_quantize_options
from spa.stats.change import ChangeShare, decisions_share
from spa.stats.coverage import mac_coverage
from spa.verify import VerifyResult
from spa.workflows.latency_guard import GuardReport, guard_feeds, guard_weight_only
from spa.workflows.results import (
    DecodedResult,
    RewriteResult,
    check_decoded,
    file_bytes,
    measure_drift,
)
from spa.workflows.run import (
    PipelineOutcome,
    RunKeywords,
    RunOptions,
    convert_opset,
    default_opset_of,
    run_pipeline,
)

logger = logging.getLogger(__name__)

__all__ = ["QuantizeResult", "quantize_model", "weight_method"]

#: What ``method="auto"`` picked, said on the calibration line.
AUTO_GPTQ = "--method auto: gptq, since --calib was given"


@dataclasses.dataclass
class QuantizeResult(DecodedResult, RewriteResult):
    """Everything the report shows about one ``quantize_model`` call."""

    seconds: float
    #: The output against the decoded reference (exactness; spa.quant.decoded).
    verification: VerifyResult | None = None
    #: The output against the float input on the same seeded inputs: how far
    #: quantization moved the outputs; judged only against an explicit ``min_cosine``.
    drift: VerifyResult | None = None
    #: Agreement with the input on held-out calibration samples (spa.verify.quality).
    quality: dict[str, Any] | None = None
    quality_note: str = ""
    #: Share of params/MACs quantized and why the rest was left (spa.stats.change).
    change: ChangeShare | None = None
    #: What the latency guard measured and wrote (spa.workflows.latency_guard), or None.
    latency: dict[str, Any] | None = None
    #: The cosine ``drift`` must reach, when the caller set one.
    min_cosine: float | None = None


def quantize_model(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    bits: int = 4,
    block: int = 128,
    method: str = "auto",
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
    measure agreement with the input). ``verify``: the output against the decoded
    reference (exact to :data:`spa.workflows.results.DECODED_RTOL`), and the
    cosine to the float input measured beside it (``drift``), which fails the
    result only below an explicit ``min_cosine``. ``keep_float``: layer kinds left in float
    (``depthwise``, ``first``, ``last``); None = all three at 4 bits, none at 8.
    On ``target="ort"`` a MatMulNBits output is measured against the input and
    written in the folded Cast form when that is faster (the latency guard,
    :mod:`spa.workflows.latency_guard`); ``allow_slower`` skips it. ``method="auto"``:
    :func:`weight_method`."""
    requested, method = method, weight_method(method, bits, calib)
    check_quantize_options(bits, block, symmetric, method, target)
    start = time.perf_counter()
    source, output = Path(input_path), Path(output_path)
    options = RunOptions(**run, calibration=calib)  # RTN uses it for quality only
    quantizer = QuantizeWeightsPass(
        bits, block, symmetric, method, target, act_order=act_order, keep_float=keep_float
    )
    if method == "rtn" and bits == 4 and calib is not None:
        # the data is there but RTN ignores it: say what GPTQ would do with it (INT4 RTN
        # took PP-OCRv4 rec's CER 0.014 -> 0.18, GPTQ 0.011: models/results/results_table.md)
        quantizer.calibration = (
            "not needed (rtn; the calibration samples measure quality only, "
            "--method gptq would also use them to quantize)"
        )

    def prepare(model: ir.Model) -> ir.Model:
        if target == "ort":
            return _int4_conv_opset(model, quantizer)
        return convert_opset(
            model, below=21, version=21, purpose="block DequantizeLinear", fix="use --target ort"
        )

    def check(source: Path, output: Path, outcome: PipelineOutcome) -> VerifyResult:
        return check_decoded(quantizer.decoded, source, output, outcome, options)

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
    drift = measure_drift(source, output, min_cosine, options) if verify else None
    record = outcome.records[0]
    decisions = record.details["decisions"]
    return QuantizeResult(
        output=output,
        options={"bits": bits, "block": block, "method": method, "symmetric": symmetric,
                 "target": target, "act_order": act_order, "seed": options.seed,
                 "keep_float": list(quantizer.keep_float)},
        decisions=[decision.as_dict() for decision in decisions],
        statistics=dict(record.statistics),
        calibration=(
            f"{record.details['calibration']} ({AUTO_GPTQ})"
            if requested == "auto" and method == "gptq" else record.details["calibration"]
        ),
        mac_coverage=mac_coverage(outcome.before, decisions),
        bytes_before=outcome.input_bytes,
        bytes_after=file_bytes(output),
        seconds=time.perf_counter() - start,
        verification=outcome.verification,
        drift=drift,
        min_cosine=min_cosine,
        quality=outcome.quality.as_dict() if outcome.quality else None,
        quality_note=outcome.quality_note,
        change=decisions_share(
            outcome.before, decisions, {"quantized"},
            f"op type {{op}} not quantizable for --target {target}",
        ),
        latency=guard.as_dict() if guard is not None else None,
    )  # fmt: skip


def weight_method(method: str, bits: int, calib: CalibrationSource | None) -> str:
    """The method ``method`` names: ``auto`` is GPTQ at 4 bits when calibration data is
    given, RTN otherwise. At 4 bits the data decides whether a model survives: RTN took
    PP-OCRv4 rec's CER 0.014 -> 0.18 where GPTQ kept 0.011 (models/results/results_table.md);
    at 8 bits RTN stays close to dense on the test beds (the same table) and keeps the
    Cast form ORT folds at load (GPTQ at 8 bits writes MatMulNBits)."""
    if method != "auto":
        return method
    return "gptq" if bits == 4 and calib is not None else "rtn"


def _mark_folded(decisions: list[Any]) -> list[Any]:
    """The decisions, each MatMul/Gemm one saying the guard wrote the folded Cast form."""
    note = "written in the Cast form ORT folds at load (latency guard)"
    return [
        dataclasses.replace(d, reason=f"{d.reason}; {note}" if d.reason else note)
        if d.action == "quantized" and d.op_type in ("MatMul", "Gemm") else d
        for d in decisions
    ]  # fmt: skip


def _int4_conv_opset(model: ir.Model, quantizer: QuantizeWeightsPass) -> ir.Model:
    """``--target ort`` at 4 bits: a model below opset 21 holding Conv or LSTM/GRU/RNN
    layers to quantize, converted to opset 21 (INT4 tensors, which their Cast form reads).
    A model the converter fails on is kept as it is: those layers stay float with that
    reason."""
    if quantizer.bits != 4 or default_opset_of(model) >= 21:
        return model
    if not (quantizer.conv_layers(model) or quantizer.recurrent_layers(model)):
        return model
    try:
        return convert_opset(
            model, below=21, version=21, purpose="INT4 Conv weights",
            fix="its Conv layers stay float",
        )  # fmt: skip
    except UserError as error:
        logger.warning("%s", error)
        return model
