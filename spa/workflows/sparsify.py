"""``sparsify_model``: the library function behind ``spa sparsify``.

Load -> (convert) -> ``sparsify-2to4`` or ``gqsa`` pass (calibrated when it
asks) -> save -> verify in ORT CPU on seeded inputs -> a :class:`SparsifyResult`
with every node decision, the share of weighted-layer MACs covered, model
bytes before/after and the actual sparsity of the rewritten weights.

Verification is exactness, as for weight-only quantization
(:mod:`spa.workflows.quantize`): the output against the input with each
rewritten weight replaced by what the output stores (2:4: the weight with its
zeros; GQSA: the dense weight its groups decode to), a plugin-form GQSA model
through its reference lowering. The cosine to the float input is measured beside
it (``drift``) and judged only against an explicit ``min_cosine``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx_ir as ir
from typing_extensions import Unpack

from spa.calibration import CalibrationSource
from spa.errors import UserError
from spa.passes.gqsa import GQSAPass, check_gqsa_options
from spa.passes.sparsify import Sparsify2to4Pass
from spa.stats.change import ChangeShare, decisions_share
from spa.stats.coverage import weight_coverage
from spa.verify import VerifyResult
from spa.workflows.recipe_verify import ort_form
from spa.workflows.results import (
    DecodedResult,
    RewriteResult,
    check_decoded,
    file_bytes,
    measure_drift,
)
from spa.workflows.run import PipelineOutcome, RunKeywords, RunOptions, convert_opset, run_pipeline

__all__ = ["PATTERNS", "SparsifyResult", "check_sparsify_options", "sparsify_model"]

PATTERNS = ("2:4", "gqsa")


@dataclasses.dataclass
class SparsifyResult(DecodedResult, RewriteResult):
    """Everything the report shows about one ``sparsify_model`` call."""

    sparsity: float
    seconds: float
    #: The output against the decoded reference (exactness; spa.quant.decoded).
    verification: VerifyResult | None = None
    #: The output against the float input on the same seeded inputs.
    drift: VerifyResult | None = None
    #: The cosine ``drift`` must reach, when the caller set one.
    min_cosine: float | None = None
    #: Agreement with the input on held-out calibration samples (spa.verify.quality).
    quality: dict[str, Any] | None = None
    quality_note: str = ""
    #: Share of params/MACs sparsified and why the rest was left (spa.stats.change).
    change: ChangeShare | None = None

    @property
    def rewritten(self) -> int:
        return sum(1 for decision in self.decisions if decision["action"] != "skipped")


def check_sparsify_options(
    pattern: str, method: str, calib: object | None, sparsity: float | None
) -> None:
    """One-line :class:`UserError` for option combinations that mean nothing."""
    if pattern not in PATTERNS:
        raise UserError(f"pattern '{pattern}': choose one of {', '.join(PATTERNS)}")
    if pattern == "2:4" and sparsity not in (None, 0.5):
        raise UserError(f"--sparsity {sparsity}: 2:4 is always 50%; drop --sparsity or use gqsa")
    if pattern == "gqsa" and method not in ("auto", "magnitude"):
        raise UserError(
            "--method applies to --pattern 2:4; GQSA uses --calib when given (data-free otherwise)"
        )


def _mask_method(method: str, pattern: str, calib: object | None) -> str:
    """The 2:4 mask method ``method`` names: ``auto`` is SparseGPT with calibration data
    (by magnitude, 2:4 took PP-OCRv4 rec's CER 0.014 -> 1.0; SparseGPT 0.021:
    models/results/results_table.md), magnitude without."""
    if method != "auto":
        return method
    return "sparsegpt" if pattern == "2:4" and calib is not None else "magnitude"


def _calibration_line(found: str, requested: str, method: str, calib: object | None) -> str:
    """The pass's calibration label, saying what ``auto`` chose and what data an
    explicit magnitude run leaves unused."""
    if requested == "auto" and method == "sparsegpt":
        return f"{found} (--method auto: sparsegpt, since --calib was given)"
    if method == "magnitude" and calib is not None and found.startswith("not needed"):
        return (
            "not needed (magnitude; the calibration samples measure quality only, "
            "--method sparsegpt would also use them to choose the mask)"
        )
    return found


def _sparsity(decisions: Iterable[Any]) -> float:
    rewritten = [d for d in decisions if d.action != "skipped"]
    elements = sum(d.k * d.n for d in rewritten)
    return sum(d.sparsity * d.k * d.n for d in rewritten) / elements if elements else 0.0


def _build_pass(
    pattern: str, options: dict[str, Any], keep_float: tuple[str, ...] | None
) -> Sparsify2to4Pass | GQSAPass:
    if pattern == "2:4":
        if keep_float is None:
            return Sparsify2to4Pass(options["method"])
        return Sparsify2to4Pass(options["method"], keep_float=keep_float)
    group, sparsity, bits, form, layout = (
        options[key] for key in ("group", "sparsity", "bits", "form", "layout")
    )
    check_gqsa_options(group, sparsity, bits, form, layout)
    return GQSAPass(group, sparsity, bits, form, layout=layout)


def sparsify_model(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    pattern: str = "2:4",
    group: int = 16,
    sparsity: float | None = None,
    bits: int = 4,
    method: str = "auto",
    calib: CalibrationSource | None = None,
    form: str = "reference",
    layout: str = "column",
    verify: bool = True,
    min_cosine: float | None = None,
    keep_float: tuple[str, ...] | None = None,
    **run: Unpack[RunKeywords],
) -> SparsifyResult:
    """2:4-sparsify or GQSA-quantize the weights of ``input_path`` and write
    ``output_path`` (one pass through :func:`spa.workflows.run.run_pipeline`).
    ``verify``: exact against the decoded reference; the cosine to the float input
    is measured beside it and fails the result only below an explicit ``min_cosine``.
    ``keep_float`` (2:4): layer kinds kept dense; None = depthwise, first and last.
    ``layout`` (GQSA): ``column`` or ``tile`` (tile-shared groups for the tensor-core
    kernel w4_gqsa_tile; docs/formats.md (c)). ``method="auto"`` (2:4): SparseGPT when
    ``calib`` is given, magnitude otherwise (GQSA always uses the data when given)."""
    check_sparsify_options(pattern, method, calib, sparsity)
    requested, method = method, _mask_method(method, pattern, calib)
    if pattern == "2:4" and (group, bits, form, layout) != (16, 4, "reference", "column"):
        raise UserError(
            "--group/--bits/--form/--gqsa-layout apply to --pattern gqsa; drop them for 2:4"
        )
    run_options = RunOptions(
        **run, calibration=calib  # magnitude: only its held-out share, for the quality line
    )
    options: dict[str, Any] = {
        "pattern": pattern, "method": method, "seed": run_options.seed,
        **({"group": group, "sparsity": 0.5 if sparsity is None else sparsity,
            "bits": bits, "form": form, "layout": layout} if pattern == "gqsa" else {}),
    }  # fmt: skip
    start = time.perf_counter()
    source, output = Path(input_path), Path(output_path)
    rewrite = _build_pass(pattern, options, keep_float)
    # The reference lowering needs BitwiseAnd (opset 18): the reference form always, and
    # the plugin form when it is verified (through its lowering).
    lowered = pattern == "gqsa" and (form == "reference" or verify)

    def prepare(model: ir.Model) -> ir.Model:
        if not lowered:
            return model
        return convert_opset(
            model, below=18, version=21, purpose="the GQSA reference lowering",
            fix="use --form plugin",
        )  # fmt: skip

    # the plugin form (spa.GroupSparseQuantMatMul) runs in ORT through its reference lowering
    runnable = ort_form if pattern == "gqsa" and form == "plugin" else None

    def check(source: Path, output: Path, outcome: PipelineOutcome) -> VerifyResult:
        return check_decoded(rewrite.decoded, source, output, outcome, run_options, runnable)

    outcome = run_pipeline(
        source, output, [rewrite], run_options, prepare=prepare, verify=check if verify else None,
        runnable=runnable,
    )  # fmt: skip
    drift = measure_drift(source, output, min_cosine, run_options, runnable) if verify else None
    record = outcome.records[0]
    decisions = record.details["decisions"]
    weights = {d.weight for d in decisions if d.action != "skipped"}
    return SparsifyResult(
        output=output, options=options,
        decisions=[decision.as_dict() for decision in decisions],
        statistics=dict(record.statistics),
        calibration=_calibration_line(record.details["calibration"], requested, method, calib),
        mac_coverage=weight_coverage(outcome.before, weights), bytes_before=outcome.input_bytes,
        bytes_after=file_bytes(output), sparsity=_sparsity(decisions),
        seconds=time.perf_counter() - start, verification=outcome.verification,
        drift=drift, min_cosine=min_cosine,
        quality=outcome.quality.as_dict() if outcome.quality else None,
        quality_note=outcome.quality_note,
        change=decisions_share(
            outcome.before, decisions, {d.action for d in decisions if d.action != "skipped"},
            f"op type {{op}} has no {pattern} rule",
        ),
    )  # fmt: skip
