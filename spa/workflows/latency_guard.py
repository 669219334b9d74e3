"""The latency guard: no ``spa quantize`` output slower than its input on ORT CPU by accident
(and, with ``--target ort``, no ``spa prune`` output: :func:`guard_pruned`).

A quantized model only pays off on ONNX Runtime when ORT has a faster kernel for
it at the model's shapes, and that depends on the layer sizes, the batch and the
CPU: ``com.microsoft.MatMulNBits`` at M = 1 on a 576x128 layer ran 0.90x of the
float model on this project's CPU, static INT8 of a 0.07 ms CNN 0.81x, the same
static form on MiniLM 1.62x (``models/results/results_table.md``). So when an
output for ``--target ort`` holds a kernel form (MatMulNBits, static Q/DQ), it is
measured against its input (:func:`spa.verify.latency.compare_latency`: one
thread, interleaved rounds, on two calibration samples or, without them, two
seeded feeds) and, when slower:

* weight-only: the MatMulNBits layers are rewritten into the form ORT folds at
  session load (:class:`spa.passes.quantize.MatMulNBitsToCastPass`; the same
  integers and dequantized values, the float kernels at run time). It is kept
  when it measures faster than the MatMulNBits form; the file stays small;
* static INT8: the quantized layers with the fewest multiply-adds go back to
  float, half of the remaining ones at a time (the Q/DQ cost of a layer is
  about its activations, the saving about its MACs), until the model measures
  not slower; if even the largest layer alone is slower, nothing is written
  and the command fails with that measurement.

``allow_slower`` (``--allow-slower``) skips the guard and keeps the requested
form. Every measurement goes into the report (:class:`GuardReport`), so the
choice can be checked: noise on a shared machine moves a ratio by a few per
cent, and a model whose true ratio is 1.0 is measured on either side of it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from spa.calibration import CalibrationSource, load_calibration, model_inputs
from spa.errors import UserError
from spa.model_io import save_model
from spa.ort import create_session
from spa.pass_manager import PassRecord
from spa.passes.quantize import MatMulNBitsToCastPass
from spa.verify import input_specs, make_feeds
from spa.verify.latency import LatencyComparison, compare_latency
from spa.verify.runner import run_error

__all__ = [
    "GuardReport",
    "guard_feeds",
    "guard_pruned",
    "guard_static",
    "guard_weight_only",
    "halving_steps",
]

#: Seconds of interleaved rounds per comparison (at least MIN_ROUNDS rounds).
BUDGET_S = 1.5
MIN_ROUNDS = 6
MAX_ROUNDS = 200
#: Feeds each comparison cycles through.
FEEDS = 2
#: A pruned model's first ratio below 1.0 is measured this many times more; the median decides.
RECHECKS = 2
#: Repeated comparisons of one pair differ by up to about 3 % on a shared machine: a pruned
#: model whose median ratio is within this of 1.0 is written, with the measurement.
NOISE = 0.03

Feeds = list[Mapping[str, np.ndarray]]


@dataclasses.dataclass
class GuardReport:
    """What the guard measured and what it wrote."""

    #: ``[{"form": ..., "speedup": ..., "line": ...}]`` in the order measured.
    measured: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: The form written (a label from ``measured``), or "" when nothing was.
    chosen: str = ""
    #: One line for the report.
    note: str = ""

    def add(self, form: str, comparison: LatencyComparison) -> LatencyComparison:
        self.measured.append(
            {"form": form, "speedup": round(comparison.speedup, 4), "line": comparison.line()}
        )
        return comparison

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def guard_feeds(
    source: Path,
    calibration: CalibrationSource | None,
    seed: int,
    inputs: Mapping[str, Any],
) -> Feeds:
    """Two feeds to time on: the first calibration samples (real shapes and values)
    or, without them, seeded feeds at the shapes verification uses."""
    proto = onnx.load(str(source), load_external_data=False)
    if calibration is not None:
        samples = (
            load_calibration(calibration, model_inputs(proto))
            if isinstance(calibration, str | os.PathLike)
            else calibration
        )
        feeds: Feeds = [dict(sample) for sample in itertools.islice(iter(samples), FEEDS)]
        if feeds:
            return feeds
    specs = input_specs(proto)
    return [make_feeds(specs, seed=seed + 101 + index, **inputs) for index in range(FEEDS)]


def measure_form(source: Path, candidate: Path, feeds: Feeds) -> LatencyComparison:
    """``candidate`` against ``source`` on ORT CPU, one thread, interleaved; a model
    ORT cannot run on ``feeds`` is a one-line :class:`UserError` (with the dims hint
    verification gives)."""
    try:
        return compare_latency(
            source, candidate, feeds, budget_s=BUDGET_S, min_rounds=MIN_ROUNDS,
            max_rounds=MAX_ROUNDS,
        )  # fmt: skip
    except UserError:
        raise
    except Exception as error:  # ORT raises its own Fail/InvalidArgument types
        raise run_error(source, create_session(source), feeds[0], error) from None


def halving_steps(layers: Sequence[tuple[str, int]]) -> list[frozenset[str]]:
    """Layer names to keep float at each step: ``layers`` (name, MACs) sorted by
    MACs, then the smaller half, three quarters... up to all but the largest one."""
    ordered = [name for name, _ in sorted(layers, key=lambda item: (item[1], item[0]))]
    steps, kept = [], len(ordered)
    while kept > 1:
        kept = kept // 2 if kept > 2 else 1
        steps.append(frozenset(ordered[: len(ordered) - kept]))
    return steps


def _remove_output(output: Path) -> None:
    for path in (output, output.with_name(output.name + ".data")):  # what save_model wrote
        path.unlink(missing_ok=True)


def guard_pruned(source: Path, output: Path, feeds: Feeds, *, allow_slower: bool) -> GuardReport:
    """Measure a pruned model against its input (``spa prune --target ort``). A pruned
    model computes less, yet can run slower: channel counts off ORT's NCHWc blocks,
    or subnormal weights (both handled by default, ``--round-to auto`` and
    ``flush-subnormals``, but a model outside the zoo may find another way). A
    first ratio below 1.0 is measured :data:`RECHECKS` more times; a median below
    ``1 - NOISE`` removes the output and raises :class:`UserError`, unless
    ``allow_slower``."""
    report = GuardReport()
    ratios = [report.add("pruned", measure_form(source, output, feeds)).speedup]
    if ratios[0] < 1.0:
        ratios += [
            report.add("pruned, again", measure_form(source, output, feeds)).speedup
            for _ in range(RECHECKS)
        ]
    median = float(np.median(ratios))
    times = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
    if median >= 1.0 - NOISE or allow_slower:
        report.chosen = "pruned"
        why = "" if median >= 1.0 else (" (within noise)" if median >= 1.0 - NOISE else
                                         ", slower: kept by --allow-slower")  # fmt: skip
        report.note = f"latency on ort-cpu: {median:.2f}x of the input{why} (measured {times})"
        return report
    _remove_output(output)
    raise UserError(
        f"the pruned model measured {median:.2f}x of its input on ort-cpu (median of {times}); "
        "nothing written. Prune fewer channels (--ratio), keep ORT's channel blocks "
        "(--round-to 16), or give --allow-slower to write it anyway"
    )


def describe(comparison: LatencyComparison) -> str:
    return (
        f"{comparison.speedup:.2f}x of the input "
        f"({comparison.reference_ms:.3f} -> {comparison.candidate_ms:.3f} ms)"
    )


def guard_weight_only(source: Path, output: Path, model: ir.Model, feeds: Feeds) -> GuardReport:
    """Measure the MatMulNBits output; when slower, measure the folded Cast form of the
    same weights (``model``, the in-memory output, is converted in place) and write it
    over ``output`` when it is faster."""
    report = GuardReport()
    kernel = report.add("MatMulNBits", measure_form(source, output, feeds))
    if kernel.speedup >= 1.0:
        report.chosen = "MatMulNBits"
        report.note = f"latency guard on ort-cpu: MatMulNBits {describe(kernel)}; kept"
        return report
    MatMulNBitsToCastPass()(model)
    with tempfile.TemporaryDirectory(prefix="spa-guard-") as folder:
        staged = save_model(model, Path(folder) / output.name, input_path=source)
        folded = report.add("Cast", measure_form(source, staged, feeds))
    if folded.speedup <= kernel.speedup:
        report.chosen = "MatMulNBits"
        report.note = (
            f"latency guard on ort-cpu: MatMulNBits {describe(kernel)}, the folded Cast form "
            f"no faster ({folded.speedup:.2f}x); kept MatMulNBits"
        )
        return report
    save_model(model, output, input_path=source)
    report.chosen = "Cast"
    report.note = (
        f"latency guard on ort-cpu: MatMulNBits measured {describe(kernel)}; wrote the same "
        f"integers in the Cast form ORT folds at load, {describe(folded)} "
        "(the file stays small; --allow-slower keeps MatMulNBits)"
    )
    return report


#: Rebuilds the static model with the named layers kept float: (model, pass records).
Rebuild = Callable[[frozenset[str]], tuple[ir.Model, list[PassRecord]]]


def guard_static(
    source: Path,
    output: Path,
    layers: Sequence[tuple[str, int]],
    rebuild: Rebuild,
    feeds: Feeds,
) -> tuple[GuardReport, list[PassRecord] | None]:
    """Measure the static Q/DQ output; while slower, keep the smallest quantized
    layers float (:func:`halving_steps`), rebuilt by ``rebuild`` and measured again.
    Returns the report and the records of the model written over ``output`` (None
    when the first one stayed). Raises :class:`UserError` (and removes ``output``)
    when no step measures not slower."""
    report = GuardReport()
    first = report.add("all layers", measure_form(source, output, feeds))
    if first.speedup >= 1.0:
        report.chosen = "all layers"
        report.note = f"latency guard on ort-cpu: static Q/DQ {describe(first)}; kept"
        return report, None
    best = first
    for keep in halving_steps(layers):
        model, records = rebuild(keep)
        label = f"{len(layers) - len(keep)} of {len(layers)} layers"
        with tempfile.TemporaryDirectory(prefix="spa-guard-") as folder:
            staged = save_model(model, Path(folder) / output.name, input_path=source)
            comparison = report.add(label, measure_form(source, staged, feeds))
        best = max(best, comparison, key=lambda c: c.speedup)
        if comparison.speedup >= 1.0:
            save_model(model, output, input_path=source)
            report.chosen = label
            report.note = (
                f"latency guard on ort-cpu: static Q/DQ on every layer measured "
                f"{describe(first)}; kept the {len(keep)} smallest of {len(layers)} quantized "
                f"layers float: {describe(comparison)} (--allow-slower keeps them all)"
            )
            return report, records
    _remove_output(output)
    raise UserError(
        f"static INT8 measured slower than the input on ort-cpu with every layer subset tried "
        f"(best {best.speedup:.2f}x, {len(report.measured)} measurements): ONNX Runtime's integer "
        "kernels do not pay off at this model's sizes; nothing written. Use --weights int8 "
        "(weight-only, folded at load) or --allow-slower to write it anyway"
    )
