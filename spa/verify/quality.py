"""Quality on real data: how closely a rewritten model agrees with its input on
held-out calibration samples, and an optional task metric the user plugs in.

Exactness checks (tolerances, mask equivalence) say a rewrite did what it
meant to; they say nothing about what a user keeps. This module measures that,
task-agnostically, on samples the passes never saw:

* per output, over all held-out samples: the cosine of the flattened outputs
  and the relative error ``max|Δ| / max|reference|``;
* for an output that looks like class scores (float, rank >= 2, last axis of
  2 or more): **top-1 agreement**, the share of rows whose arg-max agrees;
* for a sequence or detector output (rank >= 3, last axis of 2 or more), the
  same agreement per position, which is what a decoder's token choice or a
  detector's per-anchor class choice depends on.

``--eval module:function`` adds the user's own metric: ``function(path)`` takes
a model file and returns a number (higher is better), computed on the input
and on the output.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spa.errors import UserError
from spa.ort_segments import open_session
from spa.verify.runner import run_model

__all__ = ["OutputAgreement", "Quality", "load_metric", "measure_quality", "quality_verdict"]


@dataclasses.dataclass
class OutputAgreement:
    """Agreement of one output over the held-out samples."""

    name: str
    cosine: float
    max_rel_diff: float
    top1_agreement: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Quality:
    """What the held-out samples (and the task metric, if any) say about a rewrite."""

    samples: int
    outputs: list[OutputAgreement]
    metric: str | None = None
    metric_before: float | None = None
    metric_after: float | None = None

    @property
    def cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def line(self) -> str:
        """``quality on 8 held-out samples: top-1 agree 97.5% | cos 0.9981``."""
        parts = [f"quality on {self.samples} held-out samples:"]
        if self.top1_agreement is not None:
            parts.append(f"top-1 agree {self.top1_agreement:.1%} |")
        parts.append(f"cos {self.cosine:.4f}")
        if self.metric is not None and self.metric_before is not None:
            parts.append(f"| {self.metric} {self.metric_before:.4g} -> {self.metric_after:.4g}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "outputs": [output.as_dict() for output in self.outputs],
            "metric": self.metric,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
        }


def _is_class_scores(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) and array.ndim >= 2 and array.shape[-1] >= 2


class _Accumulator:
    """Streams one output's agreement statistics over samples."""

    def __init__(self) -> None:
        self.dot = self.norm_a = self.norm_b = 0.0
        self.max_abs = self.max_ref = 0.0
        self.agree = self.rows = 0
        self.classes = True

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        a = np.asarray(reference, dtype=np.float64).ravel()
        b = np.asarray(candidate, dtype=np.float64).ravel()
        finite = np.isfinite(a) & np.isfinite(b)
        self.dot += float(a[finite] @ b[finite])
        self.norm_a += float(a[finite] @ a[finite])
        self.norm_b += float(b[finite] @ b[finite])
        self.max_abs = max(self.max_abs, float(np.abs(a - b).max(initial=0.0)))
        self.max_ref = max(self.max_ref, float(np.abs(a[finite]).max(initial=0.0)))
        self.classes = self.classes and _is_class_scores(np.asarray(reference))
        if self.classes:
            ref_top = np.asarray(reference).argmax(axis=-1).ravel()
            cand_top = np.asarray(candidate).argmax(axis=-1).ravel()
            self.agree += int((ref_top == cand_top).sum())
            self.rows += int(ref_top.size)

    def result(self, name: str) -> OutputAgreement:
        denominator = np.sqrt(self.norm_a * self.norm_b)
        cosine = self.dot / denominator if denominator > 0 else float(self.norm_a == self.norm_b)
        relative = self.max_abs / self.max_ref if self.max_ref > 0 else float(self.max_abs > 0)
        top1 = self.agree / self.rows if self.classes and self.rows else None
        return OutputAgreement(name, float(cosine), float(relative), top1)


def measure_quality(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    holdout: Iterable[Mapping[str, np.ndarray]],
    *,
    metric: Callable[[Path], float] | None = None,
    metric_name: str | None = None,
    session: Callable[[Path], Any] | None = None,
    adapt: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> Quality:
    """Run both models on every held-out feed and measure their agreement.

    Outputs are matched by name; an output whose shape differs between the two
    models is left out of the agreement. ``adapt`` maps the reference's arrays
    to what the candidate reads and writes (a pruned KV cache with fewer heads,
    :func:`spa.verify.mask.io_adapter`): it is applied to the candidate's feeds
    and to the reference's outputs. ``session`` makes the ORT sessions
    (default: :func:`spa.ort_segments.open_session`: one session, or a chain of
    segment sessions for a very large graph).
    """
    make = session or open_session
    reference_session, candidate_session = make(Path(reference)), make(Path(candidate))
    accumulators: dict[str, _Accumulator] = {}
    samples = 0
    for feed in holdout:
        expected = run_model(reference_session, feed)
        actual = run_model(candidate_session, adapt(dict(feed)) if adapt else feed)
        if adapt:
            expected = adapt(expected)
        for name, value in expected.items():
            if name in actual and actual[name].shape == value.shape:
                accumulators.setdefault(name, _Accumulator()).add(value, actual[name])
        samples += 1
    quality = Quality(samples, [acc.result(name) for name, acc in accumulators.items()])
    if metric is not None:
        quality.metric = metric_name or getattr(metric, "__name__", "metric")
        quality.metric_before = float(metric(Path(reference)))
        quality.metric_after = float(metric(Path(candidate)))
    return quality


def load_metric(spec: str) -> Callable[[Path], float]:
    """``module:function`` -> the function (a one-line error naming what is missing)."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise UserError(f"--eval {spec}: write it as module:function, e.g. mymetrics:top1")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(
            f"--eval {spec}: cannot import '{module_name}' ({error}); put it on PYTHONPATH"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"--eval {spec}: '{module_name}' has no function '{function_name}'")
    return function


def quality_verdict(quality: Mapping[str, Any] | None, note: str) -> str:
    """The verdict line's quality part, from :meth:`Quality.as_dict` (or the note
    saying why it was not measured): ``quality top-1 97.5% cos 0.9981 (8 held out)``."""
    if not quality:
        return note or "quality not measured"
    parts = ["quality"]
    if quality.get("top1_agreement") is not None:
        parts.append(f"top-1 {quality['top1_agreement']:.1%}")
    if quality.get("samples"):
        parts.append(f"cos {quality['cosine']:.4f} ({quality['samples']} held out)")
    if quality.get("metric") is not None:
        parts.append(
            f"{quality['metric']} {quality['metric_before']:.4g} -> {quality['metric_after']:.4g}"
        )
    return " ".join(parts)
