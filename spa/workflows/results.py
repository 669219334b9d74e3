"""Pieces shared by ``quantize_model``, ``quantize_static_model`` and ``sparsify_model``.

:class:`VerifiedResult` gives their result dataclasses ``passed``, ``cosine``
and ``as_dict``; :class:`DecodedResult` the same for the weight rewrites verified
against their decoded reference (:func:`check_decoded`, :func:`verify_decoded`)
with the distance to the float input measured beside it (:func:`measure_drift`);
:func:`file_bytes` measures a model on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir
    from _typeshed import DataclassInstance

    from spa.verify import Policy, VerifyResult
    from spa.workflows.run import PipelineOutcome, RunOptions

__all__ = [
    "DECODED_RTOL",
    "DecodedResult",
    "RewriteResult",
    "VerifiedResult",
    "check_decoded",
    "file_bytes",
    "measure_drift",
    "verify_decoded",
]

#: Exactness tolerance against the decoded reference: max|Δ| / max|reference| per
#: output, the room float kernels need to sum in another order (the pruning check's).
DECODED_RTOL = 1e-4

logger = logging.getLogger(__name__)


class VerifiedResult:
    """Mixin for a result dataclass with an ``output`` path and an optional ``verification``."""

    output: Path
    verification: VerifyResult | None

    @property
    def passed(self) -> bool:
        return self.verification is None or self.verification.passed

    @property
    def cosine(self) -> float | None:
        if self.verification is None or not self.verification.checks:
            return None
        return min(check.cosine for check in self.verification.checks)

    def as_dict(self) -> dict[str, Any]:
        instance: DataclassInstance = self  # type: ignore[assignment]
        data = dataclasses.asdict(instance)
        data["output"] = str(self.output)
        data["verification"] = None if self.verification is None else self.verification.as_dict()
        data["passed"] = self.passed
        change = getattr(self, "change", None)
        if change is not None:
            data["change"] = change.as_dict()
        return data


class DecodedResult(VerifiedResult):
    """Mixin for a weight rewrite's result: ``verification`` is the exactness check
    against the decoded reference, ``drift`` the comparison with the float input
    (judged only against an explicit ``min_cosine``), and ``cosine`` reads ``drift``."""

    drift: VerifyResult | None
    min_cosine: float | None

    @property
    def drift_gate(self) -> str | None:
        """What ``drift`` is judged by (``cos >= 0.99``), or None: measured, not judged."""
        return None if self.min_cosine is None else f"cos >= {self.min_cosine:g}"

    @property
    def passed(self) -> bool:
        exact = self.verification is None or self.verification.passed
        gated = self.drift_gate is None or self.drift is None or self.drift.passed
        return exact and gated

    def decoded_verdict(self) -> str:
        """``decoded weights exact (rel 2e-07) | cos 0.99981 to float (seeded inputs)``:
        the verdict-line part of the exactness check and the drift."""
        verification = self.verification
        if verification is None:
            return "not verified"
        state = "exact" if verification.passed else "MISMATCH"
        text = f"decoded weights {state} (rel {verification.max_rel_diff:.1g})"
        cosine = self.cosine
        if cosine is None:
            return text
        gate = ""
        if self.drift_gate is not None and self.drift is not None and not self.drift.passed:
            floor = self.min_cosine
            gate = f" < {floor:g}" if floor is not None else f" (needs {self.drift_gate})"
        return f"{text} | cos {cosine:.5f}{gate} to float (seeded inputs)"

    @property
    def cosine(self) -> float | None:
        """The lowest output cosine to the float input (seeded inputs), when measured;
        a Softmax output counts by its logits (random inputs often make its
        probabilities one-hot, where one flipped argmax reads as cos 0)."""
        from spa.verify import PRE_SOFTMAX

        if self.drift is None or not self.drift.checks:
            return None
        checks = {check.name: check for check in self.drift.checks}
        return min(
            checks.get(name + PRE_SOFTMAX, check).cosine
            for name, check in checks.items()
            if not name.endswith(PRE_SOFTMAX)
        )

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data["drift"] = None if self.drift is None else self.drift.as_dict()
        return data


def _unoptimized(model: Any, **options: Any) -> Any:
    """An ORT session without graph optimizations: the exactness check runs what the
    file says. ORT's optimizer may fuse ``DequantizeLinear -> MatMul`` into
    MatMulNBits with int8 activations (its default accuracy level), a second,
    runtime loss that the comparison with the float input measures (``drift``)."""
    from spa.verify import create_session

    return create_session(model, **{**options, "optimization": "none"})


def check_decoded(
    decoded: Mapping[str, Callable[[], np.ndarray]],
    source: Path,
    output: Path,
    outcome: PipelineOutcome,
    options: RunOptions,
    runnable: Callable[[Path, Path], Path] | None = None,
) -> VerifyResult:
    """The output against the decoded reference of the model the passes read
    (``source`` as the pipeline loaded it): :func:`verify_decoded`."""
    return verify_decoded(outcome.model_before(source), source, decoded, output, options, runnable)


def verify_decoded(
    model: ir.Model,
    model_path: Path,
    decoded: Mapping[str, Callable[[], np.ndarray]],
    output: Path,
    options: RunOptions,
    runnable: Callable[[Path, Path], Path] | None = None,
) -> VerifyResult:
    """The output against the decoded reference: ``model``, the model the rewriting
    pass read (loaded from ``model_path``, whose folder holds its external weights),
    with the weights named in ``decoded`` replaced by their decoded values
    (:mod:`spa.quant.decoded`), exact to :data:`DECODED_RTOL`, both run without ORT
    graph optimizations (each as the file ``runnable(path, folder)`` gives ORT in its
    place, when given). Every pass after the rewrite must be exact too."""
    from spa.model_io import save_model
    from spa.quant.decoded import decoded_model
    from spa.verify import AllClose, verify_models

    with tempfile.TemporaryDirectory(prefix="spa-decoded-") as folder:
        reference = decoded_model(model, decoded)
        path = save_model(reference, Path(folder) / "decoded.onnx", input_path=model_path)
        if runnable is not None:
            path, output = runnable(path, Path(folder) / "reference"), runnable(output, Path(folder))
        return verify_models(
            path, output, policy=AllClose(rtol=DECODED_RTOL), seed=options.seed,
            session=_unoptimized, **options.inputs,
        )  # fmt: skip


def measure_drift(
    source: Path,
    output: Path,
    min_cosine: float | None,
    options: RunOptions,
    runnable: Callable[[Path, Path], Path] | None = None,
    *,
    policy: Policy | None = None,
) -> VerifyResult:
    """The output against the float input on the same seeded inputs: every check
    passes unless ``min_cosine`` is given and an output's cosine falls below it
    (or, given ``policy``, unless an output fails that policy instead).
    ``runnable(path, folder)``: the file ORT runs in each one's place."""
    from spa.verify import CosineMaxAbs, verify_models

    gate = policy or CosineMaxAbs(min_cosine=min_cosine if min_cosine is not None else -1.0)
    with tempfile.TemporaryDirectory(prefix="spa-drift-") as folder:
        if runnable is not None:
            source, output = runnable(source, Path(folder) / "reference"), runnable(output, Path(folder))
        return verify_models(source, output, policy=gate, seed=options.seed, **options.inputs)


@dataclasses.dataclass
class RewriteResult(VerifiedResult):
    """The leading fields (in report order) of the weight-rewrite results of
    ``quantize_model`` and ``sparsify_model``; each adds its own after them."""

    output: Path
    options: dict[str, Any]
    decisions: list[dict[str, Any]]
    statistics: dict[str, int | float]
    calibration: str
    mac_coverage: float
    bytes_before: int
    bytes_after: int


def file_bytes(path: Path) -> int:
    """The size on disk of a model spa wrote, its ``.data`` external-data file
    included (an input's external data may have any name: see
    :func:`spa.model_io.stored_bytes`)."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
