"""Model statistics, before/after comparisons and the JSON report.

:func:`compute_stats` counts parameters, weight bytes by dtype, nodes by op
type and MACs per op family (:mod:`spa.stats.macs` says what each family counts) at
concrete input shapes, without reading weight bytes. :func:`compare` and
:func:`render_comparison` give the before/after table the CLI prints;
:func:`build_report` and :func:`write_report` give the JSON file, whose first
keys are always ``command``, ``versions`` and ``seeds`` so a run can be
reproduced from the report alone. :func:`measure_latency` times ONNX Runtime
on the CPU (imported only when called).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.destinations import write_text_atomic
from spa.errors import UserError
from spa.model_io import load_proto
from spa.stats.inspect import (
    human_bytes,
    human_count,
    iter_graph_protos,
    op_key,
    weight_summary,
)
from spa.stats.macs import FAMILIES, count_macs
from spa.stats.shape_facts import concrete_input_shapes

__all__ = [
    "Comparison",
    "ComparisonRow",
    "ModelStats",
    "build_report",
    "compare",
    "compute_stats",
    "measure_latency",
    "render_comparison",
    "versions",
    "write_report",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelStats:
    """Size and compute of one model at concrete input shapes."""

    params: int
    initializer_count: int
    bytes_by_dtype: dict[str, int]
    macs_by_family: dict[str, int]
    node_count: int
    nodes_by_op: dict[str, int]
    input_shapes: dict[str, list[int]]
    macs_unknown: dict[str, str]
    shape_inference: str

    @property
    def total_macs(self) -> int:
        return sum(self.macs_by_family.values())

    @property
    def weight_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["weight_bytes"] = self.weight_bytes
        data["total_macs"] = self.total_macs
        return data


def compute_stats(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> ModelStats:
    """Statistics of ``model`` (a proto or a path) at concrete input shapes.

    Dynamic dims come from ``shapes`` (whole shape per input name) or ``dims``
    (size per symbolic dim name); any other symbolic dim is 1. ``base_dir`` is
    the folder of a proto's external data (a path gives it); it is only used to
    read small external shape constants, never weights.
    """
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        proto = load_proto(model)
        base_dir = base_dir if base_dir is not None else Path(model).resolve().parent
    initializer_count, params, bytes_by_dtype = weight_summary(proto)
    nodes: collections.Counter[str] = collections.Counter()
    for graph in iter_graph_protos(proto.graph):
        nodes.update(op_key(node.domain, node.op_type) for node in graph.node)
    macs = count_macs(
        proto,
        shapes=shapes,
        dims=dims,
        base_dir=Path(base_dir) if base_dir is not None else None,
    )
    concrete = concrete_input_shapes(proto.graph, shapes, dims)
    return ModelStats(
        params=params,
        initializer_count=initializer_count,
        bytes_by_dtype=bytes_by_dtype,
        macs_by_family=macs.by_family,
        node_count=sum(nodes.values()),
        nodes_by_op=dict(sorted(nodes.items(), key=lambda kv: (-kv[1], kv[0]))),
        input_shapes={name: list(shape) for name, shape in concrete.items()},
        macs_unknown=macs.unknown,
        shape_inference=macs.inference,
    )


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """One metric before and after; ``kind`` is ``count`` or ``bytes`` (for rendering)."""

    metric: str
    before: int
    after: int
    kind: str = "count"

    @property
    def ratio(self) -> float | None:
        """``after / before``; None when ``before`` is 0."""
        return self.after / self.before if self.before else None

    @property
    def change_percent(self) -> float | None:
        ratio = self.ratio
        return None if ratio is None else (ratio - 1.0) * 100.0

    def as_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "ratio": self.ratio}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Before/after rows: params, weight bytes, MACs (total and per family), nodes."""

    rows: tuple[ComparisonRow, ...]

    def row(self, metric: str) -> ComparisonRow:
        for row in self.rows:
            if row.metric == metric:
                return row
        raise KeyError(metric)

    def as_dict(self) -> dict[str, Any]:
        return {row.metric: row.as_dict() for row in self.rows}


def compare(before: ModelStats, after: ModelStats) -> Comparison:
    """Rows for every metric; MAC families appear when either side has some."""
    rows = [
        ComparisonRow("params", before.params, after.params),
        ComparisonRow("weights", before.weight_bytes, after.weight_bytes, "bytes"),
        ComparisonRow("MACs", before.total_macs, after.total_macs),
    ]
    for family in FAMILIES:
        old, new = before.macs_by_family.get(family, 0), after.macs_by_family.get(family, 0)
        if old or new:
            rows.append(ComparisonRow(f"  {family}", old, new))
    rows.append(ComparisonRow("nodes", before.node_count, after.node_count))
    return Comparison(tuple(rows))


def _format(value: int, kind: str) -> str:
    return human_bytes(value) if kind == "bytes" else human_count(value)


def _change(row: ComparisonRow) -> str:
    percent = row.change_percent
    if percent is None:
        return "new" if row.after else "="
    if row.after == row.before:
        return "="
    return f"{percent:+.0f}%" if abs(percent) >= 1 else f"{percent:+.2f}%"


def render_comparison(comparison: Comparison) -> str:
    """A compact table: ``metric  before → after  change%``, one row per metric."""
    cells = [
        (row.metric, _format(row.before, row.kind), _format(row.after, row.kind), _change(row))
        for row in comparison.rows
    ]
    widths = [
        max(len(cell[i]) for cell in [("metric", "before", "after", ""), *cells]) for i in range(4)
    ]
    lines = [f"{'metric'.ljust(widths[0])}  {'before'.rjust(widths[1])} → after"]
    for metric, old, new, change in cells:
        lines.append(
            f"{metric.ljust(widths[0])}  {old.rjust(widths[1])} → {new.ljust(widths[2])}  "
            f"({change})"
        )
    return "\n".join(line.rstrip() for line in lines)


def _distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    """Versions of spa and the libraries that shape its results (no heavy imports)."""
    from spa import __version__

    return {
        "spa": __version__,
        "onnx": onnx.__version__,
        "onnx_ir": _distribution_version("onnx-ir", "onnx_ir"),
        "onnxruntime": _distribution_version("onnxruntime", "onnxruntime-gpu"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def build_report(
    command: str,
    seeds: Mapping[str, int],
    before: ModelStats,
    after: ModelStats,
    passes: Sequence[Mapping[str, Any]],
    verification: Mapping[str, Any] | None,
    latency: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The report as a dict; keys start with ``command``, ``versions``, ``seeds``."""
    return {
        "command": command,
        "versions": versions(),
        "seeds": dict(seeds),
        "before": before.as_dict(),
        "after": after.as_dict(),
        "change": compare(before, after).as_dict(),
        "passes": [dict(record) for record in passes],
        "verification": None if verification is None else dict(verification),
        "latency": None if latency is None else dict(latency),
    }


def _json_default(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_report(
    report: Mapping[str, Any], path: str | os.PathLike[str], flag: str = "--report"
) -> Path:
    """Write ``report`` as JSON at ``path`` atomically (temp file, then rename); never
    over an input model or its data (``flag`` names the option in the error)."""
    text = json.dumps(report, indent=2, default=_json_default, allow_nan=True) + "\n"
    return write_text_atomic(path, text, flag)


def measure_latency(
    path: str | os.PathLike[str],
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int = 10,
    warmup: int = 2,
    threads: int | None = None,
) -> dict[str, float | int]:
    """Time ONNX Runtime CPU inference of ``path`` on ``feeds``.

    Returns ``median_ms``, ``p90_ms``, ``min_ms``, ``runs`` and ``warmup``.
    """
    if runs < 1 or warmup < 0:
        raise UserError(f"latency needs runs >= 1 and warmup >= 0, got {runs} and {warmup}")
    from spa.ort import import_onnxruntime

    ort = import_onnxruntime()

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    inputs = dict(feeds)
    for _ in range(warmup):
        session.run(None, inputs)
    times_ms: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, inputs)
        times_ms.append((time.perf_counter() - start) * 1000.0)
    result: dict[str, float | int] = {
        "median_ms": statistics.median(times_ms),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "min_ms": min(times_ms),
        "runs": runs,
        "warmup": warmup,
    }
    logger.info("latency of %s: %s", path, result)
    return result
