"""The candidates ``spa optimize --max-drop`` builds for ONNX Runtime CPU.

A candidate is a short list of steps applied to the input model, each step an
existing workflow writing a file: cleanup, structured pruning (channel counts
rounded for ORT CPU), and the quantization formats ORT CPU runs with integer
or low-bit kernels. Which ones are worth measuring, and why, is in
docs/optimize.md; this module only builds them.

>>> build_candidate(Candidate("int8-dynamic", (Step("cleanup"), Step("int8-dynamic"))),
...                 "model.onnx", folder, context)  # doctest: +SKIP
PosixPath('.../int8-dynamic.onnx')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spa.model_io import load_model, save_model
from spa.passes.quantize_dynamic import QuantizeDynamicPass
from spa.pruning.allocation import AUTO_ROUND
from spa.verify import VerifyResult
from spa.workflows.optimize import optimize
from spa.workflows.quantize import quantize_model
from spa.workflows.quantize_static import quantize_static_model
from spa.workflows.run import RunOptions, run_pipeline
from spa.workflows.sparsify import sparsify_model

__all__ = [
    "PRUNE_RATIOS",
    "QUANT_FORMATS",
    "TRT_FORMATS",
    "BuildContext",
    "Candidate",
    "Step",
    "build_candidate",
    "formats_for",
    "step_label",
]

#: Channel shares removed per group by the pruning candidates, smallest first.
PRUNE_RATIOS: tuple[float, ...] = (0.125, 0.25, 0.5)

#: Quantization formats for ORT CPU: name -> what it is (docs/optimize.md).
QUANT_FORMATS: dict[str, str] = {
    "int8-dynamic": "com.microsoft.DynamicQuantizeMatMul / DynamicQuantizeLSTM: per-column "
    "INT8 weights, activations quantized at run time (MatMul/Gemm/LSTM)",
    "int8-static": "static INT8 QDQ, calibrated activations, in the full form ORT CPU fuses "
    "into QLinearConv/QGemm/QLinearMatMul/QLinearAdd (DQ on every input, Q on the output)",
    "w4-nbits": "weight-only INT4 (block 32, GPTQ on the calibration samples): MatMul/Gemm in "
    "com.microsoft.MatMulNBits (the Cast form where the latency guard measures that faster), "
    "Conv as INT4 blocks read through Cast/Mul that ORT folds at load",
    "w8-nbits": "weight-only INT8 per output channel (MatMul/Gemm/Conv), read through Cast/Mul "
    "that ORT folds at load",
}
#: The formats tried for ``--target tensorrt`` (TensorRT reads QDQ, block-quantized INT4
#: weights and 2:4 weights).
TRT_FORMATS: dict[str, str] = {
    "int8-qdq": "static INT8 QDQ on weights and activations (INT8 tensor cores)",
    "sparse-2:4": "2:4 sparse weights, SparseGPT on the calibration samples (sparse tensor "
    "cores; build with --sparsity)",
    "w4-qdq": "weight-only INT4 (block 128, symmetric, GPTQ on the calibration samples) in block "
    "DequantizeLinear, opset 21: TensorRT's INT4 weight-only form and what int4-to-plugin turns "
    "into spa's w4a16 plugin (MatMul/Gemm)",
}


def formats_for(target: str) -> dict[str, str]:
    """The quantization formats the search tries on ``target``."""
    return TRT_FORMATS if target == "tensorrt" else QUANT_FORMATS


@dataclasses.dataclass(frozen=True)
class Step:
    """One rewrite: ``kind`` is ``cleanup``, ``prune`` (with ``ratio``) or a
    key of :data:`QUANT_FORMATS`."""

    kind: str
    ratio: float = 0.0


def step_label(step: Step) -> str:
    return f"prune {step.ratio:.1%}".replace(".0%", "%") if step.kind == "prune" else step.kind


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A named list of steps applied to the input in order."""

    name: str
    steps: tuple[Step, ...]


@dataclasses.dataclass
class BuildContext:
    """What every step needs: calibration samples (the held-out ones excluded),
    the pruning policy, the seeded-input keywords and what the checks found."""

    calibration: Sequence[Mapping[str, np.ndarray]]
    criterion: str = "l1"
    allocation: str = "uniform"
    round_to: int = AUTO_ROUND
    seed: int = 0
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Exactness checks of the steps run so far (name -> passed, max|Δ|).
    checks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _record(context: BuildContext, name: str, verification: VerifyResult | None) -> None:
    if verification is not None:
        context.checks[name] = {
            "passed": verification.passed,
            "max_abs_diff": verification.max_abs_diff,
        }


def _run_keywords(context: BuildContext) -> dict[str, Any]:
    return {"seed": context.seed, "holdout": 0.0, **context.inputs}


def _cleanup(source: Path, output: Path, context: BuildContext) -> None:
    result = optimize(source, output, recipe="cleanup", verify=True, **_run_keywords(context))
    _record(context, "cleanup", result.verification)


def _prune(source: Path, output: Path, context: BuildContext, ratio: float) -> None:
    # Graph inputs and outputs keep their shapes (prunable_io=None): a candidate is measured
    # on the user's samples, which have the input's shapes, and must drop in where the input
    # ran (a serving loop allocates a KV cache by the model's heads). `spa prune` shrinks caches.
    result = optimize(
        source, output, recipe="cleanup", verify=True, prune=ratio, round_to=context.round_to,
        criterion=context.criterion, allocation=context.allocation, prunable_io=None,
        calibration=list(context.calibration), **_run_keywords(context),
    )  # fmt: skip
    _record(context, "prune (mask equivalence)", result.prune_verification)
    _record(context, "cleanup after prune", result.verification)


def _dynamic(source: Path, output: Path, context: BuildContext) -> None:
    options = RunOptions(seed=context.seed, holdout=0.0, **context.inputs)
    run_pipeline(source, output, [QuantizeDynamicPass()], options)


def _static(source: Path, output: Path, context: BuildContext) -> None:
    quantize_static_model(
        source, output, calib=list(context.calibration), verify=False,
        allow_slower=True,  # the search measures every candidate itself
        **_run_keywords(context),
    )  # fmt: skip


def _weight_only(source: Path, output: Path, context: BuildContext, bits: int) -> None:
    # INT4: GPTQ (MatMul/Gemm inputs, Conv patches); RTN INT4 Conv blocks took PP-OCRv4 rec's
    # CER 0.014 -> 0.18 where GPTQ kept 0.011 (models/results/results_table.md)
    # The latency guard stays on: where MatMulNBits measures slower (a CNN's Gemm head) it
    # writes the same integers in the folded Cast form, which the search then measures.
    gptq = bits == 4 and bool(context.calibration)
    quantize_model(
        source, output, bits=bits, block=32, target="ort", verify=False,
        method="gptq" if gptq else "rtn", calib=list(context.calibration) if gptq else None,
        **_run_keywords(context),
    )  # fmt: skip


def _apply(step: Step, source: Path, output: Path, context: BuildContext) -> None:
    if step.kind == "cleanup":
        _cleanup(source, output, context)
    elif step.kind == "prune":
        _prune(source, output, context, step.ratio)
    elif step.kind == "int8-dynamic":
        _dynamic(source, output, context)
    elif step.kind == "int8-static":
        _static(source, output, context)
    elif step.kind == "int8-qdq":
        quantize_static_model(
            source, output, calib=list(context.calibration), target="tensorrt", verify=False,
            **_run_keywords(context),
        )  # fmt: skip
    elif step.kind == "sparse-2:4":
        sparsify_model(
            source, output, method="sparsegpt", calib=list(context.calibration), verify=False,
            **_run_keywords(context),
        )  # fmt: skip
    elif step.kind == "w4-qdq":
        result = quantize_model(
            source, output, bits=4, block=128, method="gptq", target="tensorrt",
            calib=list(context.calibration), verify=False, **_run_keywords(context),
        )  # fmt: skip
        if all(decision["action"] == "skipped" for decision in result.decisions):
            # no weight fits (K % 128, first/last layers): the input as it was, not its
            # opset-21 conversion, so the search sees that nothing changed
            save_model(load_model(source), output, input_path=source)
    elif step.kind in ("w4-nbits", "w8-nbits"):
        _weight_only(source, output, context, 4 if step.kind == "w4-nbits" else 8)
    else:
        raise ValueError(f"unknown step {step.kind!r}")


def build_candidate(
    candidate: Candidate,
    source: str | os.PathLike[str],
    folder: Path,
    context: BuildContext,
    built: dict[tuple[Step, ...], Path],
) -> Path:
    """Apply ``candidate``'s steps to ``source`` in ``folder``; ``built`` maps
    step prefixes already written to their files, so shared prefixes (the
    cleanup, a pruned model that is then quantized) are built once."""
    current = Path(source)
    done: tuple[Step, ...] = ()
    for step in candidate.steps:
        done = (*done, step)
        if done in built:
            current = built[done]
            continue
        output = folder / f"{len(built):02d}-{'+'.join(map(step_label, done))}.onnx".replace(" ", "")
        _apply(step, current, output, context)
        built[done] = current = output
    return current
