"""Pieces shared by ``quantize_model``, ``quantize_static_model`` and ``sparsify_model``.

:class:`VerifiedResult` gives their result dataclasses ``passed``, ``cosine``
and ``as_dict``; :func:`file_bytes` measures a model on disk.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from spa.verify import VerifyResult

__all__ = ["RewriteResult", "VerifiedResult", "file_bytes"]

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
