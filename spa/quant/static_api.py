"""``quantize_static_model``: the library function behind ``spa quantize --activations``.

Load -> (convert to opset 21 when FLOAT8 needs it) -> ``quantize-static`` pass
(calibration in ORT) -> save -> verify in ORT CPU on seeded inputs (cosine and
max|Δ| against the original) -> a :class:`StaticQuantizeResult` with every node
decision, the calibration method and sample count, the share of MatMul/Gemm/Conv
MACs covered and model bytes before/after.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from spa.quant.calibration import CalibrationSource
from spa.quant.ir_format import default_opset
from spa.quant.macs import covered_share
from spa.quant.results import VerifiedResult, converted_to_opset, file_bytes
from spa.verify import CosineMaxAbs, VerifyResult, verify_models

__all__ = ["DEFAULT_MIN_COSINE", "StaticQuantizeResult", "quantize_static_model", "static_mac_coverage"]

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

    @property
    def random_calibration(self) -> bool:
        from spa.quant.static import RANDOM_CALIBRATION

        return self.calibration == RANDOM_CALIBRATION


def static_mac_coverage(model: onnx.ModelProto, quantized_nodes: set[str]) -> float:
    """Share of MatMul/Gemm/Conv MACs in nodes named in ``quantized_nodes``."""
    return covered_share(model, lambda node: node.name in quantized_nodes)


def _has_half_floats(path: Path) -> bool:
    """Any float16/bfloat16 graph input or initializer (then QuantizeLinear needs opset 19)."""
    proto = onnx.load(str(path), load_external_data=False)
    half = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return any(t.data_type in half for t in proto.graph.initializer) or any(
        value.type.tensor_type.elem_type in half for value in proto.graph.input
    )


def _basic_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _verify_basic(
    source: Path, output: Path, policy: CosineMaxAbs, seed: int, inputs: Mapping[str, Any]
) -> VerifyResult:
    """One seeded comparison with ORT graph optimizations at BASIC.

    ONNX Runtime 1.32's CPU EXTENDED/ALL optimizations change the numbers of
    FLOAT8 QDQ models (tv-resnet18: output cosine 0.64 at ALL, 0.997 at BASIC
    and with optimizations off), and reject opset-21 INT8 QDQ MatMul + bias Add
    (their MatMul+Add->Gemm rewrite makes a QuantizeLinear whose output_dtype
    disagrees with its zero point), so those models are checked at BASIC,
    which keeps every Q/DQ node as written.
    """
    from spa.model_io import load_proto
    from spa.verify import input_specs, make_feeds, run_model

    feeds = make_feeds(input_specs(load_proto(source)), seed=seed, **inputs)
    expected = run_model(_basic_session(source), feeds)
    actual = run_model(_basic_session(output), feeds)
    checks = [policy.check(name, value, actual[name]) for name, value in expected.items()]
    return VerifyResult(checks=checks, seed=seed, samples=1)


def quantize_static_model(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    activations: str = "int8",
    weights: str | None = None,
    calib: CalibrationSource | None = None,
    calib_method: str = "minmax",
    percentile: float = 99.99,
    max_calibration_samples: int | None = None,
    quantize_norms: bool = False,
    quantize_bmm: bool = False,
    quantize_residual_matmul: bool = False,
    seed: int = 0,
    verify: bool = True,
    min_cosine: float | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
) -> StaticQuantizeResult:
    """Static INT8/FP8 QDQ of ``input_path`` written to ``output_path``."""
    from spa.model_io import load_model, save_model
    from spa.passes.quantize_static import (
        QuantizeStaticPass,
        check_static_options,
        required_opset,
    )

    check_static_options(activations, weights, calib_method, percentile)
    start = time.perf_counter()
    source, output = Path(input_path), Path(output_path)
    load_model(source)  # one-line errors for bad files before anything else runs
    with tempfile.TemporaryDirectory(prefix="spa-static-") as folder:
        needed = required_opset(activations, half=_has_half_floats(source))
        prepared = converted_to_opset(
            source, Path(folder), below=needed, version=needed, purpose="QDQ",
            fix="convert the model yourself or use --activations int8",
        )  # fmt: skip
        model = load_model(prepared)
        quantizer = QuantizeStaticPass(
            activations, weights, calib=calib, calib_method=calib_method,
            percentile=percentile, max_samples=max_calibration_samples,
            quantize_norms=quantize_norms, quantize_bmm=quantize_bmm,
            quantize_residual_matmul=quantize_residual_matmul, seed=seed,
            shapes=shapes, dims=dims, int_ranges=int_ranges,
        )  # fmt: skip
        result = quantizer(model)
        output_opset = default_opset(result.model)
        quantized = {d.node for d in quantizer.decisions if d.action == "quantized"}
        coverage = static_mac_coverage(onnx.load(str(prepared), load_external_data=False), quantized)
        save_model(result.model, output, input_path=source)
    verification, verified_at = None, ""
    if verify:
        policy = CosineMaxAbs(min_cosine=min_cosine if min_cosine is not None else DEFAULT_MIN_COSINE)
        inputs = {"shapes": shapes, "dims": dims, "int_ranges": int_ranges}
        if activations == "fp8" or output_opset >= _QDQ_OPSET:
            verification = _verify_basic(source, output, policy, seed, inputs)
            verified_at = "basic"
        else:
            verification = verify_models(source, output, policy=policy, seed=seed, **inputs)  # type: ignore[arg-type]
            verified_at = "all"
    return StaticQuantizeResult(
        output=output,
        options={"activations": activations, "weights": quantizer.weights,
                 "calib_method": calib_method, "percentile": percentile,
                 "quantize_norms": quantize_norms, "quantize_bmm": quantize_bmm,
                 "quantize_residual_matmul": quantize_residual_matmul, "seed": seed},
        decisions=[decision.as_dict() for decision in quantizer.decisions],
        statistics=dict(getattr(result, "statistics", {})),
        calibration=quantizer.calibration,
        calibration_method=calib_method,
        calibration_samples=quantizer.calibration_samples,
        mac_coverage=coverage,
        bytes_before=file_bytes(source),
        bytes_after=file_bytes(output),
        seconds=time.perf_counter() - start,
        verification=verification,
        verification_optimization=verified_at,
    )  # fmt: skip
