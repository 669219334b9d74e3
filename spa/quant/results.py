"""Pieces shared by ``quantize_model``, ``quantize_static_model`` and ``sparsify_model``.

:class:`VerifiedResult` gives their result dataclasses ``passed``, ``cosine``
and ``as_dict``; :func:`file_bytes` measures a model on disk and
:func:`converted_to_opset` stages an opset-converted copy of the input.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from spa.errors import UserError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from spa.verify import VerifyResult

__all__ = ["RewriteResult", "VerifiedResult", "converted_to_opset", "file_bytes"]

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
        return data



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
    """A model's size on disk, its ``.data`` external-data file included."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def converted_to_opset(
    path: Path, staging: Path, *, below: int, version: int, purpose: str, fix: str
) -> Path:
    """``path``, or a copy in ``staging`` converted to opset ``version`` when its
    default-domain opset is below ``below``.

    A conversion failure is a one-line :class:`UserError` naming ``purpose``
    (what needs the newer opset) and ``fix`` (what the user can do instead).
    """
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= below:
        return path
    try:
        converted = onnx.version_converter.convert_version(onnx.load(str(path)), version)
    except Exception as error:  # the converter raises its own C++ error types
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{path}: opset {opset} could not be converted to {version} for {purpose} "
            f"({first}); {fix}"
        ) from None
    out = staging / f"opset{version}.onnx"
    onnx.save_model(converted, str(out), save_as_external_data=converted.ByteSize() > 1_800_000_000)
    logger.info("converted opset %d -> %d for %s", opset, version, purpose)
    return out
