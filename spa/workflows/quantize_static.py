"""``quantize_static_model``: the library function behind ``spa quantize --activations``.

Load -> (convert to the opset QDQ needs) -> ``fold-batchnorm`` -> ``quantize-static`` pass (its
ranges calibrated by the pipeline) -> save -> verify in ORT CPU on seeded inputs (cosine and
max|Δ| against the original) -> a :class:`StaticQuantizeResult` with every node
decision, the calibration method and sample count, the share of MatMul/Gemm/Conv
MACs covered and model bytes before/after.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from typing_extensions import Unpack

from spa.calibration import CalibrationSource
from spa.model_io import iter_graph_protos, load_model, load_proto
from spa.ort import create_session
from spa.pass_manager import PassRecord, run_passes
from spa.passes.batchnorm import FoldBatchNormPass
from spa.passes.quantize_static import (
    WEIGHTED,
    QuantizeStaticPass,
    check_static_options,
    required_opset,
)
from spa.quant.static import RANDOM_CALIBRATION
from spa.stats.change import ChangeShare, decisions_share, rewritten_weights
from spa.stats.coverage import covered_share, node_macs, value_shapes
from spa.verify import CosineMaxAbs, VerifyResult, verify_models
from spa.workflows.latency_guard import GuardReport, guard_feeds, guard_static
from spa.workflows.results import VerifiedResult, file_bytes
from spa.workflows.run import (
    PipelineOutcome,
    RunKeywords,
    RunOptions,
    convert_opset,
    default_opset_of,
    finish_for_save,
    run_pipeline,
)

__all__ = [
    "DEFAULT_MIN_COSINE",
    "StaticQuantizeResult",
    "quantize_static_model",
    "static_mac_coverage",
]

DEFAULT_MIN_COSINE = 0.99
_QDQ_OPSET = 21


@dataclasses.dataclass
class StaticQuantizeResult(VerifiedResult):
    """Everything the report shows about one ``quantize_static_model`` call."""

    output: Path
    options: dict[str, Any]
    decisions: list[dict[str, Any]]
    statistics: dict[str, int | float]
    calibration: str
    calibration_method: str
    calibration_samples: int
    mac_coverage: float
    bytes_before: int
    bytes_after: int
    seconds: float
    verification: VerifyResult | None = None
    #: ORT graph optimization level of the verification sessions ("all" or "basic").
    verification_optimization: str = ""
    #: Agreement with the input on held-out calibration samples (spa.verify.quality).
    quality: dict[str, Any] | None = None
    quality_note: str = ""
    #: Share of params/MACs quantized and why the rest was left (spa.stats.change).
    change: ChangeShare | None = None
    #: What the latency guard measured and wrote (spa.workflows.latency_guard), or None.
    latency: dict[str, Any] | None = None

    @property
    def random_calibration(self) -> bool:
        return self.calibration == RANDOM_CALIBRATION


def static_mac_coverage(model: onnx.ModelProto, quantized_nodes: set[str]) -> float:
    """Share of weighted-layer MACs in nodes named in ``quantized_nodes``."""
    return covered_share(model, lambda node: node.name in quantized_nodes)


def _has_half_floats(model: ir.Model) -> bool:
    """Any float16/bfloat16 graph input or initializer (then QuantizeLinear needs opset 19)."""
    half = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    values = [*model.graph.initializers.values(), *model.graph.inputs]
    return any(value.dtype in half for value in values)


#: ORT sessions at BASIC graph optimization (see :func:`_verify_basic` for why).
_basic_session = functools.partial(create_session, optimization="basic")


def _verify_basic(
    source: Path, output: Path, policy: CosineMaxAbs, seed: int, inputs: Mapping[str, Any]
) -> VerifyResult:
    """One seeded comparison with ORT graph optimizations at BASIC.

    ONNX Runtime 1.32's CPU EXTENDED/ALL optimizations change the numbers of
    FLOAT8 QDQ models (tv-resnet18: output cosine 0.64 at ALL, 0.997 at BASIC
    and with optimizations off), and reject opset-21 INT8 QDQ MatMul + bias Add
    (their MatMul+Add->Gemm rewrite makes a QuantizeLinear whose output_dtype
    disagrees with its zero point), so those models are checked at BASIC,
    which keeps every Q/DQ node as written. Feeds as :func:`verify_models`
    (both branches of an input-selected ``If``).
    """
    return verify_models(source, output, policy=policy, seed=seed, session=_basic_session, **inputs)


def _folded(outcome: PipelineOutcome, source: Path, output: Path) -> list[str]:
    """Weights ``fold-batchnorm`` rewrote or removed (BatchNorm parameters, Conv weights)."""
    if not outcome.records[0].modified:
        return []
    outcomes = rewritten_weights(
        outcome.before, load_proto(output), "kept",
        before_dir=source.resolve().parent, after_dir=output.resolve().parent,
    )  # fmt: skip
    return [name for name, reason in outcomes.items() if not reason]


def quantize_static_model(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    activations: str = "int8",
    weights: str | None = None,
    calib: CalibrationSource | None = None,
    calib_method: str = "minmax",
    percentile: float = 99.99,
    quantize_norms: bool = False,
    quantize_bmm: bool = False,
    quantize_residual_matmul: bool = False,
    target: str = "ort",
    verify: bool = True,
    min_cosine: float | None = None,
    allow_slower: bool = False,
    **run: Unpack[RunKeywords],
) -> StaticQuantizeResult:
    """Static INT8/FP8 QDQ of ``input_path`` written to ``output_path`` (the
    ``quantize-static`` pass through :func:`spa.workflows.run.run_pipeline`,
    calibrated on ``calib`` or, without it, on seeded random inputs). ``target``:
    ``ort`` (INT8 activations stored as UINT8 with zero point 128, the form ONNX
    Runtime CPU runs; verified at ORT's default level) or ``tensorrt`` (INT8 with
    zero point 0). INT8 for ``ort`` is measured against the input on ORT CPU and,
    when slower, its smallest quantized layers are left float until it is not (the
    latency guard, :mod:`spa.workflows.latency_guard`); ``allow_slower`` skips it."""
    check_static_options(activations, weights, calib_method, percentile)
    start = time.perf_counter()
    source, output = Path(input_path), Path(output_path)
    options = RunOptions(**run, calibration=calib)
    quantizer = QuantizeStaticPass(
        activations, weights, calib_method=calib_method, percentile=percentile,
        quantize_norms=quantize_norms, quantize_bmm=quantize_bmm,
        quantize_residual_matmul=quantize_residual_matmul, target=target,
    )  # fmt: skip

    def prepare(model: ir.Model) -> ir.Model:
        needed = required_opset(activations, half=_has_half_floats(model))
        return convert_opset(
            model, below=needed, version=needed, purpose="QDQ",
            fix="convert the model yourself or use --activations int8",
        )  # fmt: skip

    verified_at = ""

    def check(source: Path, output: Path, outcome: PipelineOutcome) -> VerifyResult:
        nonlocal verified_at
        threshold = min_cosine if min_cosine is not None else DEFAULT_MIN_COSINE
        policy = CosineMaxAbs(min_cosine=threshold)
        output_opset = default_opset_of(load_model(output))
        if activations == "fp8" or (output_opset >= _QDQ_OPSET and target == "tensorrt"):
            verified_at = "basic"
            return _verify_basic(source, output, policy, options.seed, options.inputs)
        verified_at = "all"
        return verify_models(source, output, policy=policy, seed=options.seed, **options.inputs)

    guard: GuardReport | None = None

    def after_save(model: ir.Model, outcome: PipelineOutcome) -> None:
        nonlocal guard
        if allow_slower or not quantizer.ort_form:
            return
        decisions = outcome.records[-1].details["decisions"]
        names = [
            d.node for d in decisions if d.action == "quantized" and ("", d.op_type) in WEIGHTED
        ]
        if not names:
            return
        shapes = value_shapes(outcome.before)
        macs = {
            node.name: node_macs(node, shapes)
            for graph in iter_graph_protos(outcome.before.graph) for node in graph.node
        }  # fmt: skip

        def rebuild(keep: frozenset[str]) -> tuple[ir.Model, list[PassRecord]]:
            again = QuantizeStaticPass(**{**quantizer.options(), "keep_float": keep})
            again.use_ranges_of(quantizer)
            fresh = outcome.model_before(source)
            records = run_passes(fresh, [FoldBatchNormPass(), again])
            finish_for_save(fresh, outcome.before)  # as run_pipeline does before saving
            return fresh, records

        feeds = guard_feeds(source, calib, options.seed, options.inputs)
        layers = [(name, macs.get(name, 0)) for name in names]
        guard, records = guard_static(source, output, layers, rebuild, feeds)
        if records is not None:
            outcome.records = records

    # BatchNorm folded first: the Conv's quantized weight then carries it, where a
    # BatchNorm after a Conv reading a DequantizeLinear weight stays unfused in ORT
    outcome = run_pipeline(
        source, output, [FoldBatchNormPass(), quantizer], options, prepare=prepare,
        verify=check if verify else None,
        session=_basic_session,  # as verification, for the reason _verify_basic gives
        after_save=after_save,
    )  # fmt: skip
    record = outcome.records[-1]
    decisions = record.details["decisions"]
    quantized = {d.node for d in decisions if d.action == "quantized"}
    return StaticQuantizeResult(
        output=output,
        options={"activations": activations, "weights": quantizer.weights,
                 "calib_method": calib_method, "percentile": percentile,
                 "quantize_norms": quantize_norms, "quantize_bmm": quantize_bmm,
                 "quantize_residual_matmul": quantize_residual_matmul, "seed": options.seed,
                 "target": target},
        decisions=[decision.as_dict() for decision in decisions],
        statistics=dict(record.statistics),
        calibration=record.details["calibration"],
        calibration_method=calib_method,
        calibration_samples=int(record.statistics.get("calibration_samples", 0)),
        mac_coverage=static_mac_coverage(outcome.before, quantized),
        bytes_before=outcome.input_bytes,
        bytes_after=file_bytes(output),
        seconds=time.perf_counter() - start,
        verification=outcome.verification,
        quality=outcome.quality.as_dict() if outcome.quality else None,
        quality_note=outcome.quality_note,
        verification_optimization=verified_at,
        change=decisions_share(
            outcome.before, decisions, {"quantized"}, "op type {op} has no static QDQ placement",
            also_changed=_folded(outcome, source, output),
        ),
        latency=guard.as_dict() if guard is not None else None,
    )  # fmt: skip
