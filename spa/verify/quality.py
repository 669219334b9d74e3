"""Quality on real data: how closely a rewritten model agrees with its input on
held-out calibration samples, and an optional task metric the user plugs in.

Exactness checks (tolerances, mask equivalence) say a rewrite did what it
meant to; they say nothing about what a user keeps. This module measures that,
task-agnostically, on samples the passes never saw:

* per output, over all held-out samples: the cosine of the flattened outputs
  and the relative error ``max|Δ| / max|reference|``;
* for an output that holds class scores along its last axis (float, last axis
  of 2 or more, and either computed by a classifier head,
  :func:`spa.graph_outputs.class_score_outputs`, or a probability distribution
  over that axis, as a decomposed softmax writes it): **top-1 agreement**, the
  share of rows whose arg-max agrees; per position for a sequence (a decoder's
  token, a CTC symbol);
* for any other output of rank >= 3: the **feature cosine**, the mean over the
  features of its feature axis (of axis 1 and the last, the one the graph
  declares with a fixed size, :func:`spa.graph_outputs.feature_axis`) of each
  feature's cosine over everything else. One flattened cosine is ruled by the
  output's largest values: a YOLO head's box coordinates (up to the image
  size) next to its class scores (at most 1). A YOLOv8n pruned to 0 of its 14
  detections kept a flattened cosine of 0.9998 and a feature cosine of 0.72;
  each feature counts once here.

``--eval module:function`` adds the user's own metric: ``function(path)`` takes
a model file and returns a number (higher is better), computed on the input
and on the output.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.errors import UserError
from spa.graph_outputs import class_score_outputs, declared_shapes, feature_axis
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
    #: Mean over the features of ``feature_axis`` of each one's cosine (rank >= 3
    #: outputs without class scores), else None.
    feature_cosine: float | None = None
    feature_axis: int | None = None
    #: How many rows (samples, or positions of a sequence) the top-1 agreement
    #: counts: one changed prediction moves it by 1 / top1_rows.
    top1_rows: int | None = None

    @property
    def agreement(self) -> float:
        """One number for this output: top-1 agreement for class scores, else the
        lower of the cosine and the feature cosine."""
        if self.top1_agreement is not None:
            return self.top1_agreement
        if self.feature_cosine is not None:
            return min(self.cosine, self.feature_cosine)
        return self.cosine

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

    @property
    def feature_cosine(self) -> float | None:
        values = [o.feature_cosine for o in self.outputs if o.feature_cosine is not None]
        return min(values) if values else None

    def line(self) -> str:
        """``quality on 8 held-out samples: top-1 agree 97.5% | cos 0.9981``."""
        parts = [f"quality on {self.samples} held-out samples:"]
        if self.top1_agreement is not None:
            parts.append(f"top-1 agree {self.top1_agreement:.1%} |")
        if self.feature_cosine is not None:
            parts.append(f"feature cos {self.feature_cosine:.4f} |")
        parts.append(f"cos {self.cosine:.4f}")
        if self.metric is not None and self.metric_before is not None:
            parts.append(f"| {self.metric} {self.metric_before:.4g} -> {self.metric_after:.4g}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "feature_cosine": self.feature_cosine,
            "outputs": [output.as_dict() for output in self.outputs],
            "metric": self.metric,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
        }


def _has_classes(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) and array.ndim >= 2 and array.shape[-1] >= 2


def _is_distribution(array: np.ndarray) -> bool:
    """Non-negative rows that sum to 1 along the last axis (probabilities)."""
    values = np.asarray(array, dtype=np.float64)
    return bool(
        values.size
        and np.all(values >= 0.0)
        and np.allclose(values.sum(axis=-1), 1.0, rtol=0.0, atol=1e-3)
    )


class _Accumulator:
    """Streams one output's agreement statistics over samples; ``classes``: the
    graph computes class scores on the last axis (None: look at the values),
    provided it has ``width`` entries where that is given."""

    def __init__(
        self,
        classes: bool | None = None,
        declared: tuple[int | None, ...] | None = None,
        width: int | None = None,
    ) -> None:
        self.dot = self.norm_a = self.norm_b = 0.0
        self.max_abs = self.max_ref = 0.0
        self.agree = self.rows = 0
        self.classes = classes
        self.declared = declared
        self.width = width
        self.axis: int | None = None
        self.shape: tuple[int, ...] | None = None
        self.feature: np.ndarray | None = None  # per feature: dot, |a|^2, |b|^2

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        reference, candidate = np.asarray(reference), np.asarray(candidate)
        if self.shape is None:
            self.shape = reference.shape
            if self.width is not None and reference.shape[-1:] != (self.width,):
                self.classes = None  # regrouped: the last axis is no longer the product's N
            if not _has_classes(reference):
                self.classes = False
            elif not self.classes:
                self.classes = _is_distribution(reference)
            self.axis = None if self.classes else feature_axis(reference.shape, self.declared)
            if self.axis is not None:
                self.feature = np.zeros((3, reference.shape[self.axis]))
        a = reference.astype(np.float64)
        b = candidate.astype(np.float64)
        known_a, known_b = np.isfinite(a), np.isfinite(b)
        finite = known_a & known_b
        if np.any(known_a & ~known_b):
            self.max_abs = math.inf  # the candidate lost values the reference has
        a, b = np.where(finite, a, 0.0), np.where(finite, b, 0.0)
        self.dot += float(np.sum(a * b))
        self.norm_a += float(np.sum(a * a))
        self.norm_b += float(np.sum(b * b))
        self.max_abs = max(self.max_abs, float(np.abs(a - b).max(initial=0.0)))
        self.max_ref = max(self.max_ref, float(np.abs(a).max(initial=0.0)))
        if self.axis is not None and reference.shape[self.axis] != self.shape[self.axis]:
            self.feature, self.axis = None, None  # features differ between samples: cosine alone
        if self.feature is not None and self.axis is not None:
            rows_a = np.moveaxis(a, self.axis, 0).reshape(a.shape[self.axis], -1)
            rows_b = np.moveaxis(b, self.axis, 0).reshape(b.shape[self.axis], -1)
            self.feature += np.stack([
                np.einsum("ij,ij->i", rows_a, rows_b),
                np.einsum("ij,ij->i", rows_a, rows_a),
                np.einsum("ij,ij->i", rows_b, rows_b),
            ])  # fmt: skip
        if self.classes:
            ref_top = reference.argmax(axis=-1).ravel()
            cand_top = candidate.argmax(axis=-1).ravel()
            self.agree += int((ref_top == cand_top).sum())
            self.rows += int(ref_top.size)

    def result(self, name: str) -> OutputAgreement:
        cosine = _cosine(self.dot, self.norm_a, self.norm_b)
        relative = self.max_abs / self.max_ref if self.max_ref > 0 else float(self.max_abs > 0)
        top1 = self.agree / self.rows if self.classes and self.rows else None
        feature = None
        if self.feature is not None:
            feature = float(np.mean([_cosine(*column) for column in self.feature.T]))
        rows = self.rows if top1 is not None else None
        return OutputAgreement(name, cosine, float(relative), top1, feature, self.axis, rows)


def _cosine(dot: float, norm_a: float, norm_b: float) -> float:
    denominator = np.sqrt(norm_a * norm_b)
    return float(dot / denominator) if denominator > 0 else float(norm_a == norm_b)


@dataclasses.dataclass(frozen=True)
class OutputKinds:
    """What the reference graph says of its outputs: class scores (with the width
    their last axis must have, :func:`spa.graph_outputs.class_score_outputs`) and
    declared shapes. Read once per reference: a search measures every candidate
    against the same one."""

    classes: dict[str, int | None]
    declared: dict[str, tuple[int | None, ...] | None]

    @classmethod
    def of(cls, reference: str | os.PathLike[str]) -> OutputKinds:
        graph = onnx.load(str(reference), load_external_data=False)
        return cls(class_score_outputs(graph), declared_shapes(graph))


def measure_quality(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    holdout: Iterable[Mapping[str, np.ndarray]],
    *,
    metric: Callable[[Path], float] | None = None,
    metric_name: str | None = None,
    session: Callable[[Path], Any] | None = None,
    adapt: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    kinds: OutputKinds | None = None,
) -> Quality:
    """Run both models on every held-out feed and measure their agreement.

    Outputs are matched by name; an output whose shape differs between the two
    models is left out of the agreement. ``adapt`` maps the reference's arrays
    to what the candidate reads and writes (a pruned KV cache with fewer heads,
    :func:`spa.verify.mask.io_adapter`): it is applied to the candidate's feeds
    and to the reference's outputs. ``session`` makes the ORT sessions
    (default: :func:`spa.ort_segments.open_session`: one session, or a chain of
    segment sessions for a very large graph). ``kinds``: the reference's
    :class:`OutputKinds` when the caller has them (read from its graph otherwise).
    """
    make = session or open_session
    reference_session, candidate_session = make(Path(reference)), make(Path(candidate))
    kinds = kinds or OutputKinds.of(reference)
    classes, declared = kinds.classes, kinds.declared
    accumulators: dict[str, _Accumulator] = {}
    samples = 0
    for feed in holdout:
        expected = run_model(reference_session, feed)
        actual = run_model(candidate_session, adapt(dict(feed)) if adapt else feed)
        if adapt:
            expected = adapt(expected)
        for name, value in expected.items():
            if name in actual and actual[name].shape == value.shape:
                accumulator = accumulators.setdefault(
                    name, _Accumulator(name in classes or None, declared.get(name), classes.get(name))
                )
                accumulator.add(value, actual[name])
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
    if quality.get("feature_cosine") is not None:
        parts.append(f"feature cos {quality['feature_cosine']:.4f}")
    if quality.get("samples"):
        parts.append(f"cos {quality['cosine']:.4f} ({quality['samples']} held out)")
    if quality.get("metric") is not None:
        parts.append(
            f"{quality['metric']} {quality['metric_before']:.4g} -> {quality['metric_after']:.4g}"
        )
    return " ".join(parts)
