"""``optimize_search``: the fastest (or smallest) model within a quality budget —
the library behind ``spa optimize --max-drop``.

The search (docs/optimize.md) measures every candidate twice, on the real
data the user gave: quality on the held-out part of ``--calib`` (the task
metric with ``--eval``, else agreement with the input) and latency against
the input on the target (:func:`spa.verify.latency.compare_latency`,
interleaved). Candidates are tried cheapest-first in two rounds:

1. one technique each: cleanup; pruning at increasing channel shares (a share
   that breaks the budget ends the pruning ladder, as in NetAdapt); each
   quantization format ORT CPU has kernels for (on the cleaned model when
   cleanup was not slower, else on the input);
2. combinations: the largest pruning share within budget, then each
   quantization format that was within budget and not slower on its own.

A candidate is accepted when its quality loss is within ``max_drop`` and,
unless ``allow_slower``, it is not slower than the input; for the latency
objective it must also be faster than the input by more than the timing noise
(:data:`NOISE`: a model that runs as fast as its input is no gain, and any
quality it lost is a loss). A step that leaves its model unchanged (a weight
format with no weight it applies to, such as MatMulNBits on a convolutional
network) is not measured: it would only measure noise. The output is the
accepted candidate best for the objective; when none is accepted it is a copy
of the input, and the result says so.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spa.calibration import CalibrationSource
from spa.errors import UserError
from spa.model_io import external_data_files, load_model, same_graph, save_model, stored_bytes
from spa.progress import progress_bar
from spa.pruning.allocation import AUTO_ROUND
from spa.stats import report as reporting
from spa.verify.latency import ESTIMATED, TARGETS, compare_latency
from spa.verify.quality import OutputKinds, Quality, load_metric, measure_quality
from spa.workflows.executor import Executor, LocalExecutor
from spa.workflows.latency_guard import NOISE
from spa.workflows.results import file_bytes
from spa.workflows.run import split_holdout
from spa.workflows.search_cache import SearchCache, hash_file, hash_samples
from spa.workflows.search_space import (
    PRUNE_RATIOS,
    BuildContext,
    Candidate,
    Step,
    build_candidate,
    formats_for,
    step_label,
)

__all__ = [
    "OBJECTIVES",
    "CandidateResult",
    "SearchResult",
    "choose",
    "decide",
    "optimize_search",
    "parse_max_drop",
    "parse_time_budget",
    "quality_loss",
    "render_candidates",
]

logger = logging.getLogger(__name__)

OBJECTIVES = ("latency", "size")
_CLEANUP = Candidate("cleanup", (Step("cleanup"),))


@dataclasses.dataclass
class CandidateResult:
    """One measured candidate and the decision on it."""

    name: str
    steps: list[str]
    quality_loss: float | None = None
    quality: dict[str, Any] | None = None
    metric_after: float | None = None
    speedup: float | None = None
    latency_line: str = ""
    bytes: int = 0
    params: int = 0
    macs: int = 0
    checks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    accepted: bool = False
    reason: str = ""
    seconds: float = 0.0
    #: Speedup measured again when the candidate was about to be chosen.
    confirmed_speedup: float | None = None
    path: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("path")
        return values


@dataclasses.dataclass
class SearchResult:
    """What :func:`optimize_search` measured, decided and wrote."""

    output: Path
    candidates: list[CandidateResult]
    chosen: CandidateResult | None
    report: dict[str, Any]
    verdict_line: str


def parse_max_drop(text: str) -> float:
    """``"1%"`` or ``"0.01"`` -> 0.01 (a one-line error for anything else)."""
    value = text.strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        number = -1.0
    if not value.endswith("%") and number >= 1:
        number = -1.0
    if not 0.0 <= number < 1.0:
        raise UserError(f"--max-drop {text}: give a share like 1% or 0.01 (at least 0, below 100%)")
    return number


def parse_time_budget(text: str | None) -> float | None:
    """``"10m"``, ``"90s"``, ``"1h"`` or seconds -> seconds (None: no budget)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--time-budget {text}: write a duration such as 90s, 10m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


QUALITY_MEASURE = (
    "1 - top-1 agreement (class scores), else 1 - the lower of the cosine and the feature cosine"
)


def quality_loss(
    quality: Quality, metric_dense: float | None, metric_after: float | None
) -> tuple[float, str]:
    """(loss, what it is). With a task metric (higher is better): its relative
    drop from the dense model. Without: the worst output's disagreement, ``1 -
    top-1 agreement`` for class scores, else ``1 -`` the lower of the cosine and
    the feature cosine (:class:`spa.verify.quality.OutputAgreement`)."""
    if metric_dense is not None and metric_after is not None:
        scale = abs(metric_dense) or 1.0
        return (metric_dense - metric_after) / scale, "relative drop of the task metric"
    losses = [1.0 - o.agreement for o in quality.outputs]
    return max(losses, default=0.0), QUALITY_MEASURE


def resolution_note(results: Sequence[CandidateResult], max_drop: float, metric: str | None) -> str | None:
    """Why a budget may be finer than the measurement can see: top-1 agreement counted
    on so few held-out rows that one changed prediction exceeds ``max_drop`` (Magika's
    file types with 50 held-out files: 2% per file against a 1% budget). None with a
    task metric or where the measure resolves the budget."""
    if metric is not None:
        return None
    for result in results:
        for output in (result.quality or {}).get("outputs", []):
            rows = output.get("top1_rows")
            if rows and 1 / rows > max_drop:
                return (
                    f"top-1 agreement of '{output['name']}' is counted on {rows} held-out rows: one "
                    f"changed prediction is {1 / rows:.2%}, above --max-drop {max_drop:.2%}, so every "
                    "candidate that changes one is rejected; give more --calib samples (or a larger "
                    "--holdout), or a task metric with --eval"
                )
    return None


def decide(
    result: CandidateResult, max_drop: float, allow_slower: bool, margin: float = 0.0
) -> tuple[bool, str]:
    """Accept ``result`` when its quality loss is within ``max_drop`` and, unless
    ``allow_slower``, it is not slower than the input (speedup >= 1) and faster by
    at least ``margin`` (:func:`speedup_margin`: the timing noise, when the objective
    is latency and latency is measured)."""
    if result.quality_loss is None or result.speedup is None:
        return False, result.reason or "not measured"
    failed = [name for name, check in result.checks.items() if not check["passed"]]
    if failed:
        return False, f"exactness check failed: {', '.join(failed)}"
    if result.quality_loss > max_drop:
        return False, f"quality loss {result.quality_loss:.2%} > budget {max_drop:.2%}"
    if result.speedup < 1.0 and not allow_slower:
        noise = ", within timing noise" if result.speedup >= 1.0 - NOISE else ""
        return False, f"slower than the input ({result.speedup:.3f}x{noise})"
    if result.speedup < 1.0 + margin and not allow_slower:
        return False, (
            f"no faster than the input within timing noise ({result.speedup:.3f}x < {1.0 + margin:.2f}x)"
        )
    return True, f"quality loss {result.quality_loss:.2%} <= {max_drop:.2%}, {result.speedup:.3f}x"


def speedup_margin(objective: str, target: str) -> float:
    """How much faster than the input a candidate must measure to count as faster:
    :data:`NOISE` for the latency objective on a target where latency is measured
    (ORT); 0 for ``size`` (not slower suffices) and for TensorRT's cost model,
    whose estimates carry no noise."""
    return NOISE if objective == "latency" and target not in ESTIMATED else 0.0


def choose(results: Sequence[CandidateResult], objective: str) -> CandidateResult | None:
    """The accepted candidate best for ``objective``: the highest speedup
    (``latency``), or the fewest bytes, then the highest speedup (``size``)."""
    accepted = [r for r in results if r.accepted and r.speedup is not None]
    if not accepted:
        return None
    if objective == "size":
        return min(accepted, key=lambda r: (r.bytes, -(r.speedup or 0.0)))
    return max(accepted, key=lambda r: r.speedup or 0.0)


@dataclasses.dataclass
class _Measure:
    """How candidates are measured: the input, held-out feeds, metric, target."""

    source: Path
    holdout: list[Mapping[str, np.ndarray]]
    metric_name: str | None
    metric_dense: float | None
    target: str
    latency_budget_s: float
    shapes: dict[str, tuple[int, ...]]
    kinds: OutputKinds | None = None  # the input's outputs, read once

    def latency(self, result: CandidateResult, path: Path) -> None:
        """Latency against the input on the target, here (never two at once)."""
        comparison = compare_latency(
            self.source, path, self.holdout[:4], target=self.target, budget_s=self.latency_budget_s
        )
        result.speedup, result.latency_line = comparison.speedup, comparison.line()


@dataclasses.dataclass
class _Task:
    """One candidate to build and measure for quality, as an executor receives it."""

    candidate: Candidate
    source: Path
    folder: Path
    context: BuildContext
    built: dict[tuple[Step, ...], Path]
    holdout: list[Mapping[str, np.ndarray]]
    metric: str | None
    metric_dense: float | None
    shapes: dict[str, tuple[int, ...]]
    kinds: OutputKinds | None = None


def _evaluate(task: _Task) -> dict[str, Any]:
    """Build ``task.candidate`` and measure its quality and size (in an executor:
    this process, a local worker or a Ray worker). Errors become a ``reason``."""
    start = time.perf_counter()
    context = dataclasses.replace(task.context, checks={})
    built = dict(task.built)
    figures: dict[str, Any] = {"path": None, "checks": {}, "built": {}, "reason": ""}
    try:
        path = build_candidate(task.candidate, task.source, task.folder, context, built)
        figures.update(path=path, checks=dict(context.checks),
                       built={k: v for k, v in built.items() if k not in task.built})  # fmt: skip
        steps = task.candidate.steps
        base = built.get(steps[:-1], task.source) if len(steps) > 1 else task.source
        if steps[-1].kind != "cleanup" and same_graph(base, path):
            figures["reason"] = (
                f"changed nothing: {step_label(steps[-1])} found no weight it applies to "
                "(not measured)"
            )
            figures["seconds"] = time.perf_counter() - start
            return figures
        quality = measure_quality(task.source, path, task.holdout, kinds=task.kinds)
        metric_after = float(load_metric(task.metric)(path)) if task.metric else None
        loss, _ = quality_loss(quality, task.metric_dense, metric_after)
        details = quality.as_dict()
        if task.metric:
            details.update(metric=task.metric, metric_before=task.metric_dense,
                           metric_after=metric_after)  # fmt: skip
        stats = reporting.compute_stats(path, shapes=task.shapes)
        figures.update(quality_loss=loss, quality=details, metric_after=metric_after,
                       bytes=file_bytes(path), params=stats.params, macs=stats.total_macs)  # fmt: skip
    except UserError as error:
        figures["reason"] = f"could not be built: {error}"
    except Exception as error:  # one broken candidate must not end the search
        first = str(error).splitlines()[0] if str(error) else ""
        figures["reason"] = f"failed: {type(error).__name__}: {first}"
        figures["traceback"] = traceback.format_exc()
    figures["seconds"] = time.perf_counter() - start
    return figures


def _round_to_field(round_to: int) -> int | str:
    return "auto" if round_to == AUTO_ROUND else round_to


def _prune_name(ratio: float) -> str:
    return f"prune {ratio * 100:g}%"


def _ladder(passed: list[float]) -> Iterator[float]:
    """Pruning shares to try: :data:`PRUNE_RATIOS` upwards until one breaks the
    budget (a larger share only loses more: NetAdapt's one-step-at-a-time
    descent), then once halfway between the last share within budget (or 0)
    and the first that broke it. ``passed`` is filled by the caller."""
    for ratio in PRUNE_RATIOS:
        yield ratio
        if not passed or passed[-1] != ratio:
            below = passed[-1] if passed else 0.0
            yield (below + ratio) / 2
            return


def _plan(
    done: list[CandidateResult], max_drop: float, formats: Sequence[str], allow_slower: bool
) -> Iterator[list[Candidate]]:
    """The candidates in batches of independent ones (an executor may run a batch
    at once); each batch is planned after the earlier ones were measured."""
    yield [_CLEANUP]
    # The cleaned model is the base of the quantized candidates only when cleanup
    # itself was not slower (ORT fuses a cleaned MiniLM differently, 0.92-0.95x).
    clean = (Step("cleanup"),) if (done[0].speedup or 0.0) >= 1.0 else ()
    pruned: list[float] = []
    for ratio in _ladder(pruned):
        yield [Candidate(_prune_name(ratio), (Step("prune", ratio),))]
        last = done[-1]
        if last.quality_loss is not None and last.quality_loss <= max_drop:
            pruned.append(ratio)
    if formats:
        yield [Candidate(name, (*clean, Step(name))) for name in formats]
    quant_ok = [r for r in done if r.steps[-1] in formats and r.quality_loss is not None
                and r.quality_loss <= max_drop and ((r.speedup or 0.0) >= 1.0 or allow_slower)]  # fmt: skip
    for ratio in reversed(sorted(pruned)[-2:]):
        if not quant_ok:
            break
        yield [
            Candidate(
                f"{_prune_name(ratio)} + {quant.name}", (Step("prune", ratio), Step(quant.name))
            )
            for quant in quant_ok
        ]
        if any(r.accepted for r in done[-len(quant_ok) :]):
            break  # the largest share combined within budget: done


_STORED = ("quality_loss", "quality", "metric_after", "speedup", "latency_line", "bytes",
           "params", "macs", "checks", "reason", "seconds")  # fmt: skip


def _measure_batch(
    batch: Sequence[tuple[Candidate, CandidateResult]], measure: _Measure, context: BuildContext,
    folder: Path, built: dict[tuple[Step, ...], Path], cache: SearchCache | None,
    executor: Executor,
) -> None:  # fmt: skip
    """Build and measure each candidate into its result (or take both from ``cache``):
    building and quality through ``executor``, latency here, one at a time."""
    pending = []
    for candidate, result in batch:
        stored = cache.load(result.steps) if cache else None
        if stored is None:
            pending.append((candidate, result))
            continue
        figures, result.path = stored
        for name in _STORED:
            setattr(result, name, figures.get(name))
        built[candidate.steps] = result.path
        result.reason = "from cache"
    tasks = [
        _Task(
            candidate,
            measure.source,
            folder,
            context,
            dict(built),
            measure.holdout,
            measure.metric_name,
            measure.metric_dense,
            measure.shapes,
            measure.kinds,
        )
        for candidate, _ in pending
    ]
    for (candidate, result), figures in zip(pending, executor.map(_evaluate, tasks), strict=True):
        built.update(figures["built"])
        result.path, result.checks = figures["path"], figures["checks"]
        for name in ("quality_loss", "quality", "metric_after", "bytes", "params", "macs"):
            if name in figures:
                setattr(result, name, figures[name])
        result.reason, result.seconds = figures["reason"], figures["seconds"]
        if "traceback" in figures:
            # the table says why; the traceback is for -vv (a bug report)
            logger.warning("candidate %s %s (traceback with -vv)", candidate.name, result.reason)
            logger.debug("candidate %s failed:\n%s", candidate.name, figures["traceback"])
        if result.reason or result.path is None:
            continue
        start = time.perf_counter()
        try:
            measure.latency(result, result.path)
        except UserError as error:
            result.reason = f"could not be built: {error}"
        result.seconds += time.perf_counter() - start
        if cache is not None and result.speedup is not None:
            cache.store(
                result.steps, {name: getattr(result, name) for name in _STORED}, result.path
            )


def _run_candidates(
    measure: _Measure, context: BuildContext, folder: Path, max_drop: float,
    allow_slower: bool, deadline: float | None, cache: SearchCache | None = None,
    executor: Executor | None = None, objective: str = "latency",
) -> list[CandidateResult]:  # fmt: skip
    results: list[CandidateResult] = []
    built: dict[tuple[Step, ...], Path] = {}
    formats = list(formats_for(measure.target))
    executor = executor or LocalExecutor()
    total = 2 + len(PRUNE_RATIOS) + len(formats) + 2
    with progress_bar(total=total, description="candidates") as advance:
        for batch in _plan(results, max_drop, formats, allow_slower):
            todo = []
            for candidate in batch:
                result = CandidateResult(candidate.name, [step_label(s) for s in candidate.steps])
                results.append(result)
                late = deadline is not None and time.monotonic() > deadline
                if late and candidate is not _CLEANUP:
                    result.reason = "not measured: time budget spent"
                else:
                    todo.append((candidate, result))
            _measure_batch(todo, measure, context, folder, built, cache, executor)
            for _, result in todo:
                cached = result.reason == "from cache"
                result.accepted, result.reason = decide(
                    result, max_drop, allow_slower, speedup_margin(objective, measure.target)
                )
                result.reason += " (from cache)" if cached else ""
                logger.info("%s: %s", result.name, result.reason)
            advance(len(batch))
    return results


def _confirm(
    results: Sequence[CandidateResult], objective: str, measure: _Measure, allow_slower: bool
) -> CandidateResult | None:
    """The best candidate that is still not slower when measured once more (picking
    the best of noisy measurements favours lucky ones); a candidate that now
    measures slower is rejected and the next best is tried."""
    while (chosen := choose(results, objective)) is not None:
        if allow_slower or chosen.path is None:
            return chosen
        again = compare_latency(measure.source, chosen.path, measure.holdout[:4],
                                target=measure.target, budget_s=measure.latency_budget_s)  # fmt: skip
        chosen.confirmed_speedup = again.speedup
        if again.speedup >= 1.0:
            return chosen
        chosen.accepted = False
        chosen.reason = (
            f"slower when measured again ({chosen.speedup:.3f}x, then {again.speedup:.3f}x)"
        )
    return None


def _write_output(source: Path, output: Path, chosen: CandidateResult | None) -> None:
    if chosen is not None and chosen.path is not None:
        save_model(load_model(chosen.path), output, input_path=source)
        return
    model = load_model(source)
    if external_data_files(model):
        save_model(model, output, input_path=source)
    else:
        shutil.copyfile(source, output)  # the input itself, byte for byte


def render_candidates(candidates: Sequence[CandidateResult], input_macs: int = 0) -> str:
    """One line per candidate: quality loss, speedup, MACs kept, size, decision and why."""
    lines = [
        f"{'candidate':34s} {'quality loss':>12s} {'speedup':>8s} {'MACs':>6s} {'MB':>8s}  decision"
    ]
    for result in candidates:
        loss = "-" if result.quality_loss is None else f"{result.quality_loss:.2%}"
        speed = "-" if result.speedup is None else f"{result.speedup:.2f}x"
        macs = f"{result.macs / input_macs:.0%}" if input_macs and result.macs else "-"
        size = f"{result.bytes / 1e6:.2f}" if result.bytes else "-"
        verdict = "accepted" if result.accepted else "rejected"
        lines.append(
            f"{result.name:34s} {loss:>12s} {speed:>8s} {macs:>6s} {size:>8s}  {verdict}: {result.reason}"
        )
    return "\n".join(lines)


def _summary(candidates: Sequence[CandidateResult], chosen: CandidateResult | None,
             source_bytes: int, seconds: float) -> str:  # fmt: skip
    if chosen is None:
        rewrites = [c for c in candidates if c.name != "cleanup"]
        if rewrites and all(c.reason.startswith("changed nothing") for c in rewrites):
            why = ("nothing here that spa rewrites: every pruning and quantization candidate "
                   "changed nothing (no float MatMul/Gemm/Conv weight they apply to), and the "
                   "cleanup was not faster")  # fmt: skip
        else:
            why = "no candidate was within the quality budget and not slower"
        return (
            f"UNCHANGED | {why}; wrote a copy of the input | {len(candidates)} candidates | "
            f"{seconds:.0f}s"
        )
    size = f"{source_bytes / 1e6:.2f} MB → {chosen.bytes / 1e6:.2f} MB"
    return (
        f"OPTIMIZED | {chosen.name} | {chosen.speedup:.2f}x vs input | {size} | "
        f"quality loss {chosen.quality_loss:.2%} | {len(candidates)} candidates | {seconds:.0f}s"
    )


def _holdout(
    source: Path, calibration: CalibrationSource, share: float
) -> tuple[list[Mapping[str, np.ndarray]], list[Mapping[str, np.ndarray]]]:
    calib, held, note = split_holdout(calibration, load_model(source), share)
    if not held:
        raise UserError(
            f"--max-drop needs held-out samples to measure quality ({note.split(': ', 1)[-1]}); "
            "give --calib with at least 4 samples and --holdout above 0"
        )
    return list(calib or []), held


def optimize_search(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    calibration: CalibrationSource,
    max_drop: float,
    target: str = "ort-cpu",
    objective: str = "latency",
    allow_slower: bool = False,
    time_budget_s: float | None = None,
    holdout: float = 0.25,
    metric: str | None = None,
    criterion: str = "obs",
    allocation: str = "sensitivity",
    round_to: int = AUTO_ROUND,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
    latency_budget_s: float = 3.0,
    cache: str | os.PathLike[str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    command: str | None = None,
    executor: Executor | None = None,
) -> SearchResult:
    """Search candidates for ``model`` on ``target`` and write the best one within
    ``max_drop`` for ``objective`` to ``output`` (module docstring; docs/optimize.md).

    ``calibration`` are real samples; the last ``holdout`` share of them is kept
    out of every calibration and measures quality. ``metric`` is a task metric
    ``module:function`` (model path -> number, higher is better). ``cache``
    is a folder of measured candidates (:mod:`spa.workflows.search_cache`) a
    rerun resumes from. Pruning
    candidates use ``criterion``/``allocation`` (default OBS scores from the
    calibration samples, allocated by measured sensitivity, so a share is of the
    model's MACs) and keep multiples of ``round_to`` (default: the rule of ``spa prune
    --round-to auto``, :func:`spa.pruning.allocation.group_multiple`).
    ``executor`` builds candidates and measures their quality
    (:mod:`spa.workflows.executor`; default: this process); latency is always
    measured here, one candidate at a time.
    """
    if target not in TARGETS:
        raise UserError(
            f"--target {target}: spa ranks candidates on {', '.join(TARGETS)} only; use --target ort-cpu"
        )
    if objective not in OBJECTIVES:
        raise UserError(f"--objective {objective}: choose one of {', '.join(OBJECTIVES)}")
    start = time.perf_counter()
    source, output = Path(model), Path(output)
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    metric_function = load_metric(metric) if metric else None
    calib, held = _holdout(source, calibration, holdout)
    metric_dense = float(metric_function(source)) if metric_function else None
    feed_shapes = {name: tuple(np.asarray(value).shape) for name, value in held[0].items()}
    measure = _Measure(source, held, metric, metric_dense, target,
                       latency_budget_s, dict(shapes or feed_shapes), OutputKinds.of(source))  # fmt: skip
    before = reporting.compute_stats(source, shapes=measure.shapes)
    inputs = {"shapes": shapes, "dims": dims, "int_ranges": int_ranges}
    context = BuildContext(calib, criterion, allocation, round_to, seed, inputs)
    store = None
    if cache is not None:
        store = SearchCache(Path(cache), {
            "model": hash_file(source), "calibration": hash_samples(calib),
            "holdout": hash_samples(held), "metric": metric, "target": target,
            "criterion": criterion, "allocation": allocation, "round_to": _round_to_field(round_to), "seed": seed,
            "inputs": inputs, "latency_budget_s": latency_budget_s, "quality_measure": QUALITY_MEASURE,
            # what each format's candidate is (a builder that changes says so here: 2:4 by SparseGPT)
            "formats": formats_for(target),
        })  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="spa-search-") as staging:
        results = _run_candidates(
            measure, context, Path(staging), max_drop, allow_slower, deadline, store, executor,
            objective,
        )
        chosen = _confirm(results, objective, measure, allow_slower)
        _write_output(source, output, chosen)
    _, measure_text = quality_loss(Quality(0, []), metric_dense, 0.0 if metric else None)
    seconds = time.perf_counter() - start
    input_bytes = stored_bytes(source, load_model(source))
    verdict = _summary(results, chosen, input_bytes, seconds)
    report = {
        "command": command or f"spa.workflows.search.optimize_search({str(source)!r}, {str(output)!r})",
        "versions": reporting.versions(),
        "search": {
            "target": target, "objective": objective, "max_drop": max_drop,
            "allow_slower": allow_slower, "time_budget_s": time_budget_s,
            "executor": (executor or LocalExecutor()).description,
            "quality_measure": measure_text, "metric": metric, "metric_dense": metric_dense,
            "resolution_note": resolution_note(results, max_drop, metric),
            "calibration_samples": len(calib), "holdout_samples": len(held),
            "pruning": {"criterion": criterion, "allocation": allocation, "round_to": _round_to_field(round_to)},
            "input_bytes": input_bytes, "input_params": before.params,
            "input_macs": before.total_macs,
            "candidates": [result.as_dict() for result in results],
            "chosen": chosen.name if chosen else None,
            "output": "candidate" if chosen else "copy of the input",
            "seconds": seconds,
        },
        "verdict": verdict,
    }  # fmt: skip
    if report_path is not None:
        reporting.write_report(report, Path(report_path))
    return SearchResult(output, results, chosen, report, verdict)
