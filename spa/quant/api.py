"""``quantize_model``: the library function behind ``spa quantize``.

Load -> (calibrate) -> ``quantize-weights`` pass -> save -> verify in ORT CPU
on seeded inputs (cosine and max|Δ| against the original) -> a
:class:`QuantizeResult` with every node decision, statistics, the share of
MatMul/Gemm/Conv MACs covered and model bytes before/after.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from spa.quant.calibration import CalibrationSource, collect_hessians, load_calibration
from spa.quant.macs import mac_coverage
from spa.quant.results import RewriteResult, converted_to_opset, file_bytes
from spa.verify import CosineMaxAbs, VerifyResult, verify_models

__all__ = [
    "QuantizeResult",
    "default_min_cosine",
    "file_bytes",
    "quantize_model",
    "weight_input_hessians",
]


@dataclasses.dataclass
class QuantizeResult(RewriteResult):
    """Everything the report shows about one ``quantize_model`` call."""

    seconds: float
    verification: VerifyResult | None = None


def default_min_cosine(bits: int) -> float:
    """The verification threshold used unless the caller gives one."""
    return 0.9999 if bits >= 8 else 0.98


def _target_activations(model: onnx.ModelProto) -> list[str]:
    initializers = {tensor.name for tensor in model.graph.initializer}
    names = []
    for node in model.graph.node:
        is_target = node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx")
        if is_target and len(node.input) > 1 and node.input[1] in initializers:
            names.append(node.input[0])
    return names


def weight_input_hessians(
    path: Path, calib: CalibrationSource, max_samples: int | None
) -> dict[str, Any]:
    """Hessian ``2 X^T X / rows`` of the activation input of every constant-weight
    MatMul/Gemm of the model at ``path``, from the calibration feeds ``calib``."""
    model = onnx.load(str(path))
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value.name for value in model.graph.input if value.name not in initializers]
    feeds = load_calibration(calib, inputs)
    statistics = collect_hessians(model, _target_activations(model), feeds, max_samples=max_samples)
    return {name: entry.hessian for name, entry in statistics.items()}


def _opset_ready(path: Path, target: str, staging: Path) -> Path:
    """For QDQ targets, a copy of the model converted to opset 21 when it is older."""
    if target == "ort":
        return path
    return converted_to_opset(
        path, staging, below=21, version=21, purpose="block DequantizeLinear", fix="use --target ort"
    )


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
    seed: int = 0,
    act_order: bool = False,
    verify: bool = True,
    min_cosine: float | None = None,
    max_calibration_samples: int | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
) -> QuantizeResult:
    """Quantize the MatMul/Gemm weights of ``input_path`` and write ``output_path``."""
    import tempfile

    from spa.model_io import load_model, save_model
    from spa.passes.quantize import QuantizeWeightsPass, check_quantize_options

    check_quantize_options(bits, block, symmetric, method, target)
    start = time.perf_counter()
    source, output = Path(input_path), Path(output_path)
    load_model(source)  # one-line errors for bad files before anything else runs
    with tempfile.TemporaryDirectory(prefix="spa-quant-") as folder:
        prepared = _opset_ready(source, target, Path(folder))
        hessians = None
        if method == "gptq" and calib is not None:
            hessians = weight_input_hessians(prepared, calib, max_calibration_samples)
        model = load_model(prepared)
        quantizer = QuantizeWeightsPass(
            bits, block, symmetric, method, target, hessians=hessians, act_order=act_order
        )
        result = quantizer(model)
        coverage = mac_coverage(
            onnx.load(str(prepared), load_external_data=False), quantizer.decisions
        )
        save_model(result.model, output, input_path=source)
    verification = None
    if verify:
        policy = CosineMaxAbs(
            min_cosine=min_cosine if min_cosine is not None else default_min_cosine(bits)
        )
        verification = verify_models(
            source,
            output,
            policy=policy,
            seed=seed,
            shapes=shapes,
            dims=dims,
            int_ranges=int_ranges,
        )
    return QuantizeResult(
        output=output,
        options={"bits": bits, "block": block, "method": method, "symmetric": symmetric,
                 "target": target, "act_order": act_order, "seed": seed},
        decisions=[decision.as_dict() for decision in quantizer.decisions],
        statistics=dict(result.statistics) if hasattr(result, "statistics") else {},
        calibration=quantizer.calibration,
        mac_coverage=coverage,
        bytes_before=file_bytes(source),
        bytes_after=file_bytes(output),
        seconds=time.perf_counter() - start,
        verification=verification,
    )  # fmt: skip
