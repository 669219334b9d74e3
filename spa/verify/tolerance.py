"""Tolerance policies: how two outputs are judged equal.

Each policy is a frozen dataclass with ``check(name, reference, candidate)``
returning an :class:`OutputCheck` that carries every error statistic, whether
it passed, and a one-line verdict.

Relative error is ``max|a - b| / max|a|`` (the largest deviation relative to
the reference's largest magnitude), which stays meaningful where individual
reference values are near zero.

``resolution`` (per output, default 0) is the absolute difference below which
two values count as equal whatever the policy (except :class:`Exact`): the
precision of the op that produced the output. A Sigmoid's output lies in
[0, 1] and ONNX Runtime computes it to an absolute error of about one float32
step of 1.0 (1.2e-7), so where every output value is saturated near 0 (a
detector fed random inputs) relative error and cosine compare that noise.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import onnx

from spa.graph_outputs import output_producer

__all__ = [
    "BOUNDED_ACTIVATIONS",
    "RESOLUTION_STEPS",
    "AllClose",
    "CosineMaxAbs",
    "Exact",
    "OutputCheck",
    "Policy",
    "bounded_resolutions",
    "error_statistics",
]

#: Activations whose output is bounded by this magnitude (default domain).
BOUNDED_ACTIVATIONS = {
    "Sigmoid": 1.0,
    "HardSigmoid": 1.0,
    "Tanh": 1.0,
    "Softmax": 1.0,
    "Erf": 1.0,
}
#: Float32 steps of the bound that an output of a bounded activation may differ by.
RESOLUTION_STEPS = 16


def bounded_resolutions(graph: onnx.GraphProto) -> dict[str, float]:
    """Graph output -> its resolution, for each output a bounded activation produces
    (looking through Identity nodes, :func:`spa.graph_outputs.output_producer`;
    :data:`RESOLUTION_STEPS` float32 steps of the bound): a text detector's
    Sigmoid map, saturated near 0 on random inputs, differs by ORT's Sigmoid
    precision (9e-8 at values near 1e-6, 5 % of the largest) after a cleanup
    whose logits agree to 3e-7 of their scale."""
    producers = {name: node for node in graph.node for name in node.output}
    step = RESOLUTION_STEPS * float(np.finfo(np.float32).eps)
    found: dict[str, float] = {}
    for value in graph.output:
        node = output_producer(producers, value.name)
        if node is not None and node.domain in ("", "ai.onnx") and node.op_type in BOUNDED_ACTIVATIONS:
            found[value.name] = step * BOUNDED_ACTIVATIONS[node.op_type]
    return found


@dataclasses.dataclass(frozen=True)
class OutputCheck:
    """The comparison of one output."""

    name: str
    passed: bool
    max_abs_diff: float
    max_rel_diff: float
    cosine: float
    detail: str = ""

    def line(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        text = (
            f"{verdict} | output {self.name} | max|Δ| {self.max_abs_diff:.3g} | "
            f"rel {self.max_rel_diff:.3g} | cos {self.cosine:.6f}"
        )
        return f"{text} | {self.detail}" if self.detail else text

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def error_statistics(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """(max abs diff, relative diff, cosine) of two same-shaped arrays."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cand = np.asarray(candidate, dtype=np.float64).ravel()
    if ref.size == 0:
        return 0.0, 0.0, 1.0
    same_special = (np.isnan(ref) & np.isnan(cand)) | (np.isinf(ref) & (ref == cand))
    with np.errstate(invalid="ignore"):
        diff = np.abs(ref - cand)
    diff[same_special] = 0.0
    diff[np.isnan(diff)] = np.inf  # NaN on one side only
    max_abs = float(diff.max())
    finite_ref = np.abs(ref[np.isfinite(ref)])
    scale = float(finite_ref.max()) if finite_ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    finite = np.isfinite(ref) & np.isfinite(cand)
    norms = float(np.linalg.norm(ref[finite]) * np.linalg.norm(cand[finite]))
    cosine = float(np.dot(ref[finite], cand[finite]) / norms) if norms > 0 else 1.0
    if norms == 0 and max_abs > 0:
        cosine = 0.0
    return max_abs, max_rel, cosine


class Policy(Protocol):
    def check(
        self, name: str, reference: np.ndarray, candidate: np.ndarray, resolution: float = 0.0
    ) -> OutputCheck: ...


def _within_resolution(max_abs: float, resolution: float) -> bool:
    return resolution > 0 and max_abs <= resolution


def _resolution_note(detail: str, max_abs: float, resolution: float) -> str:
    if resolution <= 0:
        return detail
    verdict = "within" if max_abs <= resolution else "above"
    return f"{detail} | {verdict} the output op's resolution {resolution:.2g}"


def _shape_mismatch(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputCheck | None:
    if reference.shape == candidate.shape:
        return None
    detail = f"shape {candidate.shape} != reference {reference.shape}"
    return OutputCheck(name, False, float("inf"), float("inf"), 0.0, detail)


@dataclasses.dataclass(frozen=True)
class Exact:
    """Bit-for-bit equal values (NaN equals NaN)."""

    def check(
        self, name: str, reference: np.ndarray, candidate: np.ndarray, resolution: float = 0.0
    ) -> OutputCheck:
        mismatch = _shape_mismatch(name, reference, candidate)
        if mismatch:
            return mismatch
        max_abs, max_rel, cosine = error_statistics(reference, candidate)
        passed = bool(np.array_equal(reference, candidate, equal_nan=reference.dtype.kind == "f"))
        return OutputCheck(name, passed, max_abs, max_rel, cosine, "exact")


@dataclasses.dataclass(frozen=True)
class AllClose:
    """Passes when the relative error ``max|Δ| / max|ref|`` <= rtol or ``max|Δ|`` <= atol."""

    rtol: float = 1e-5
    atol: float = 0.0

    def check(
        self, name: str, reference: np.ndarray, candidate: np.ndarray, resolution: float = 0.0
    ) -> OutputCheck:
        mismatch = _shape_mismatch(name, reference, candidate)
        if mismatch:
            return mismatch
        max_abs, max_rel, cosine = error_statistics(reference, candidate)
        passed = (
            max_rel <= self.rtol
            or max_abs <= self.atol
            or _within_resolution(max_abs, resolution)
        )
        detail = _resolution_note(f"rtol {self.rtol:g} atol {self.atol:g}", max_abs, resolution)
        return OutputCheck(name, passed, max_abs, max_rel, cosine, detail)


@dataclasses.dataclass(frozen=True)
class CosineMaxAbs:
    """Passes when cosine >= ``min_cosine`` and ``max|Δ|`` <= ``max_abs``."""

    min_cosine: float = 0.999
    max_abs: float = float("inf")

    def check(
        self, name: str, reference: np.ndarray, candidate: np.ndarray, resolution: float = 0.0
    ) -> OutputCheck:
        mismatch = _shape_mismatch(name, reference, candidate)
        if mismatch:
            return mismatch
        max_abs, max_rel, cosine = error_statistics(reference, candidate)
        passed = (
            cosine >= self.min_cosine and max_abs <= self.max_abs
        ) or _within_resolution(max_abs, resolution)
        detail = _resolution_note(
            f"cos >= {self.min_cosine:g}, max|Δ| <= {self.max_abs:g}", max_abs, resolution
        )
        return OutputCheck(name, passed, max_abs, max_rel, cosine, detail)
