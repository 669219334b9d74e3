"""``sparsify_model``: the library function behind ``spa sparsify``.

Load -> (calibrate) -> ``sparsify-2to4`` or ``gqsa`` pass -> save -> verify in
ORT CPU on seeded inputs (cosine against the original; a plugin-form GQSA
model is verified through its reference lowering) -> a :class:`SparsifyResult`
with every node decision, the share of MatMul/Gemm/Conv MACs covered, model
bytes before/after and the actual sparsity of the rewritten weights.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import onnx

from spa.errors import UserError
from spa.quant.api import weight_input_hessians
from spa.quant.calibration import CalibrationSource
from spa.quant.macs import weight_coverage
from spa.quant.results import RewriteResult, converted_to_opset, file_bytes
from spa.verify import CosineMaxAbs, VerifyResult, verify_models

__all__ = ["PATTERNS", "SparsifyResult", "check_sparsify_options", "sparsify_model"]

PATTERNS = ("2:4", "gqsa")


@dataclasses.dataclass
class SparsifyResult(RewriteResult):
    """Everything the report shows about one ``sparsify_model`` call."""

    sparsity: float
    seconds: float
    verification: VerifyResult | None = None

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
    if pattern == "gqsa" and method != "magnitude":
        raise UserError(
            "--method applies to --pattern 2:4; GQSA uses --calib when given (data-free otherwise)"
        )
    if pattern == "2:4" and method == "magnitude" and calib is not None:
        raise UserError(
            "--calib is used by --method sparsegpt or --pattern gqsa; add one or drop it"
        )


def _sparsity(decisions: Iterable[Any]) -> float:
    rewritten = [d for d in decisions if d.action != "skipped"]
    elements = sum(d.k * d.n for d in rewritten)
    return sum(d.sparsity * d.k * d.n for d in rewritten) / elements if elements else 0.0


def _build_pass(pattern: str, options: dict[str, Any], hessians: Any) -> Any:
    from spa.passes.gqsa import GQSAPass, check_gqsa_options
    from spa.passes.sparsify import Sparsify2to4Pass

    if pattern == "2:4":
        return Sparsify2to4Pass(options["method"], hessians=hessians)
    check_gqsa_options(options["group"], options["sparsity"], options["bits"], options["form"])
    return GQSAPass(
        options["group"], options["sparsity"], options["bits"], options["form"], hessians=hessians
    )


def _verified_copy(output: Path, form: str, folder: Path) -> Path:
    """The model ORT can run: the output itself, or its reference lowering."""
    if form != "plugin":
        return output
    from spa.model_io import load_model, save_model
    from spa.passes.gqsa import GQSAToReferencePass

    model = load_model(output)
    GQSAToReferencePass()(model)
    return save_model(model, folder / "reference.onnx")


def sparsify_model(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    pattern: str = "2:4",
    group: int = 16,
    sparsity: float | None = None,
    bits: int = 4,
    method: str = "magnitude",
    calib: CalibrationSource | None = None,
    form: str = "reference",
    seed: int = 0,
    verify: bool = True,
    min_cosine: float = 0.9,
    max_calibration_samples: int | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
) -> SparsifyResult:
    """2:4-sparsify or GQSA-quantize the weights of ``input_path`` and write ``output_path``."""
    from spa.model_io import load_model, save_model

    check_sparsify_options(pattern, method, calib, sparsity)
    if pattern == "2:4" and (group, bits, form) != (16, 4, "reference"):
        raise UserError("--group/--bits/--form apply to --pattern gqsa; drop them for 2:4")
    options: dict[str, Any] = {
        "pattern": pattern, "method": method, "seed": seed,
        **({"group": group, "sparsity": 0.5 if sparsity is None else sparsity,
            "bits": bits, "form": form} if pattern == "gqsa" else {}),
    }  # fmt: skip
    start = time.perf_counter()
    source, output = Path(input_path), Path(output_path)
    load_model(source)  # one-line errors for bad files before anything else runs
    with tempfile.TemporaryDirectory(prefix="spa-sparsify-") as folder:
        # The reference lowering needs BitwiseAnd (opset 18): the reference form always, and
        # the plugin form when it is verified (through its lowering).
        lowered = pattern == "gqsa" and (form == "reference" or verify)
        prepared = source
        if lowered:
            prepared = converted_to_opset(
                source, Path(folder), below=18, version=21,
                purpose="the GQSA reference lowering", fix="use --form plugin",
            )  # fmt: skip
        wants_data = method == "sparsegpt" or pattern == "gqsa"
        hessians = None
        if wants_data and calib is not None:
            hessians = weight_input_hessians(prepared, calib, max_calibration_samples)
        model = load_model(prepared)
        rewrite = _build_pass(pattern, options, hessians)
        result = rewrite(model)
        weights = {d.weight for d in rewrite.decisions if d.action != "skipped"}
        coverage = weight_coverage(onnx.load(str(prepared), load_external_data=False), weights)
        save_model(result.model, output, input_path=source)
        verification = None
        if verify:
            verification = verify_models(
                source, _verified_copy(output, form if pattern == "gqsa" else "", Path(folder)),
                policy=CosineMaxAbs(min_cosine=min_cosine), seed=seed, shapes=shapes, dims=dims,
                int_ranges=int_ranges,
            )  # fmt: skip
    return SparsifyResult(
        output=output, options=options,
        decisions=[decision.as_dict() for decision in rewrite.decisions],
        statistics=dict(result.statistics), calibration=rewrite.calibration,
        mac_coverage=coverage, bytes_before=file_bytes(source), bytes_after=file_bytes(output),
        sparsity=_sparsity(rewrite.decisions), seconds=time.perf_counter() - start,
        verification=verification,
    )  # fmt: skip
