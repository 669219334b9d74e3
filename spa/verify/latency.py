"""Latency of a rewritten model against its input, measured on the target runtime.

The machines spa runs on are noisy, so a latency claim is always a *ratio of
two models measured in one process, interleaved*: each round runs the input
and the output once each, in alternating order (ABBA), so both models see the
same stretch of machine time. Interference from other processes only ever adds
time, and on a shared machine it hits a run or two at random rather than both
models of a round alike (on two cores shared by six jobs, the median of
per-round ratios of one pair of models ranged 0.98x-1.22x between two
measurements), so each model's latency is the *lower quartile* of its runs and
the ratio is taken between those: the typical uncontended run, without
betting on a single lucky one as a minimum would. At one thread (the default)
a run is timed by the calling thread's CPU time (``time.thread_time``: ORT
runs a one-thread session on the caller), which leaves out the time the
process waits for a core: on the shared machine at load 20-40, one candidate
pair measured 1.60x and, minutes later, 1.15x by wall-clock time. With more
threads, wall-clock time. The median of the
per-round ratios is kept as ``median_ratio`` for comparison. Each model is
warmed up for a few runs first (ORT allocates its arena and packs weights on
the first runs).

Sessions use ORT's default optimisation level (what a user gets), one
intra-op thread unless asked otherwise (so that two sessions do not fight
over cores), and the same feeds for both models.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spa.ort import create_session

__all__ = ["TARGETS", "LatencyComparison", "compare_latency"]

#: Targets whose latency spa can measure on this machine, or estimate (ESTIMATED).
TARGETS = ("ort-cpu", "tensorrt")
#: Targets spa cannot run here, with what stands in for a measurement.
ESTIMATED = {
    "tensorrt": "estimated by spa's TensorRT cost model for an NVIDIA H200 "
    "(spa.stats.gpu_cost), not measured",
}
_WARMUP_RUNS = 3


@dataclass(frozen=True)
class LatencyComparison:
    """Lower-quartile latencies (ms) of the input and the output, and their ratio.

    ``speedup`` > 1 means the output is faster (input time / output time).
    """

    target: str
    reference_ms: float
    candidate_ms: float
    speedup: float
    rounds: int
    threads: int
    #: Median of the per-round ratios (the estimator before the lower quartile).
    median_ratio: float = 0.0
    #: What stands in for a measurement on a target spa cannot run (else empty).
    estimate: str = ""

    @property
    def slower(self) -> bool:
        return self.speedup < 1.0

    def line(self) -> str:
        if self.estimate:
            return (
                f"latency on {self.target} {self.estimate}: {1e3 * self.reference_ms:.1f} us -> "
                f"{1e3 * self.candidate_ms:.1f} us, {self.speedup:.2f}x"
            )
        return (
            f"latency on {self.target} ({self.threads} thread{'s' if self.threads != 1 else ''}, "
            f"{self.rounds} interleaved rounds): {self.reference_ms:.3f} ms -> "
            f"{self.candidate_ms:.3f} ms, {self.speedup:.2f}x"
        )


def _timed(session: Any, feeds: Mapping[str, np.ndarray], clock: Callable[[], float]) -> float:
    start = clock()
    session.run(None, dict(feeds))
    return clock() - start


def _estimated(
    reference: str | os.PathLike[str] | bytes,
    candidate: str | os.PathLike[str] | bytes,
    feed: Mapping[str, np.ndarray],
    target: str,
) -> LatencyComparison:
    """Both models through the cost model at the shapes of ``feed``."""
    import onnx

    from spa.stats.gpu_cost import estimate_latency

    shapes = {name: tuple(np.shape(value)) for name, value in feed.items()}
    seconds = []
    for model in (reference, candidate):
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        seconds.append(estimate_latency(proto, shapes).seconds)
    return LatencyComparison(
        target=target, reference_ms=1e3 * seconds[0], candidate_ms=1e3 * seconds[1],
        speedup=seconds[0] / max(seconds[1], 1e-15), rounds=0, threads=0,
        estimate=ESTIMATED[target],
    )  # fmt: skip


def compare_latency(
    reference: str | os.PathLike[str] | bytes,
    candidate: str | os.PathLike[str] | bytes,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    target: str = "ort-cpu",
    threads: int = 1,
    min_rounds: int = 10,
    max_rounds: int = 200,
    budget_s: float = 5.0,
) -> LatencyComparison:
    """Measure ``candidate`` against ``reference`` on ``target``, interleaved.

    Runs a warm-up of each model (three runs), then rounds (each feed of ``feeds`` in turn)
    until ``budget_s`` seconds have passed and at least ``min_rounds`` rounds
    were taken, or ``max_rounds`` rounds were taken.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown latency target {target!r}; choose one of {', '.join(TARGETS)}")
    if not feeds:
        raise ValueError("compare_latency needs at least one feed")
    if target in ESTIMATED:
        return _estimated(reference, candidate, feeds[0], target)
    sessions = [create_session(model, threads=threads) for model in (reference, candidate)]
    for session in sessions:
        for index in range(max(_WARMUP_RUNS, min(len(feeds), 2))):
            session.run(None, dict(feeds[index % len(feeds)]))
    # one intra-op thread: ORT runs on the calling thread, whose CPU time leaves out
    # the time other processes hold the core; with a pool, wall-clock time
    clock = time.thread_time if threads == 1 else time.perf_counter
    ratios: list[float] = []
    times: tuple[list[float], list[float]] = ([], [])
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
        feed = feeds[rounds % len(feeds)]
        order = (0, 1) if rounds % 2 == 0 else (1, 0)
        measured = [0.0, 0.0]
        for index in order:
            measured[index] = _timed(sessions[index], feed, clock)
        times[0].append(measured[0])
        times[1].append(measured[1])
        ratios.append(measured[0] / max(measured[1], 1e-12))
        rounds += 1
    reference_s, candidate_s = _lower_quartile(times[0]), _lower_quartile(times[1])
    return LatencyComparison(
        target=target,
        reference_ms=1e3 * reference_s,
        candidate_ms=1e3 * candidate_s,
        speedup=reference_s / max(candidate_s, 1e-12),
        rounds=rounds,
        threads=threads,
        median_ratio=statistics.median(ratios),
    )


def _lower_quartile(values: Sequence[float]) -> float:
    return float(np.quantile(np.asarray(values, dtype=np.float64), 0.25))
