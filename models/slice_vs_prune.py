"""Slicing against spa's own head+MLP pruning at equal parameter count, and both combined.

Used by ``models/slice_shakespeare.py`` (the comparison table of
``models/results/slice_shakespeare.md``). For each slicing ratio ``r`` the PCA-sliced model
(one shared basis) sets a parameter budget; then, with no fine-tuning:

* **prune**: ``spa prune`` of heads and MLP channels of the dense model, the prune ratio found by
  bisection so that the parameter count is the largest one not above the budget; criteria
  ``lamp`` with ``global`` allocation (data-free) and ``obs`` (calibrated, OBS reconstruction);
* **slice+prune**: one plan, ``slice_model(ratio=r/2, prune=PruneAfterSlice(x, ...))``: half the
  slicing, then heads and MLP channels of the sliced model, ``x`` bisected to the same budget.

Every model's ORT CPU latency is measured against the dense model interleaved
(:func:`spa.verify.latency.compare_latency`, one thread, batch 1 x 128 bytes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.stats.report import compute_stats
from spa.testbeds import shakespeare
from spa.verify.latency import compare_latency
from spa.workflows.prune import prune_model
from spa.workflows.slice import PruneAfterSlice, slice_model

__all__ = ["PRUNE_POLICIES", "comparison_rows"]

#: (label, criterion, allocation) of the pruning compared with slicing.
PRUNE_POLICIES = (("lamp global", "lamp", "global"), ("obs", "obs", "uniform"))


def _params(path: Path) -> int:
    return compute_stats(path).params


def _smallest_ratio_within(params_at: Callable[[float], int], budget: int, steps: int) -> float:
    """The smallest ratio (to 2^-steps) whose parameter count is <= budget."""
    low, high = 0.0, 0.95
    for _ in range(steps):
        middle = (low + high) / 2
        if params_at(middle) <= budget:
            high = middle
        else:
            low = middle
    return high


def _measured(path: Path, dense: Path, windows: int, feeds: list) -> dict[str, Any]:
    latency = compare_latency(dense, path, feeds, threads=1, min_rounds=20, budget_s=3.0)
    return {
        "params": _params(path),
        "macs": compute_stats(path).total_macs,
        "perplexity": shakespeare.perplexity(path, max_windows=windows),
        "speedup": latency.speedup,
        "latency_ms": latency.candidate_ms,
        "dense_ms": latency.reference_ms,
    }


def comparison_rows(
    dense: Path, ratios: tuple[float, ...], folder: Path, calibration: list, windows: int,
    steps: int = 7, log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows {ratio, method, criterion, prune_ratio, params, macs, perplexity, speedup, ...}."""
    feeds = calibration[:4]
    rows: list[dict[str, Any]] = []
    probe = folder / "probe.onnx"
    for ratio in ratios:
        sliced = folder / f"slice-{ratio}.onnx"
        slice_model(dense, sliced, ratio=ratio, calibration=calibration, exactness=False)
        row = {"ratio": ratio, "method": "slice", "criterion": "pca", "prune_ratio": 0.0}
        rows.append({**row, **_measured(sliced, dense, windows, feeds)})
        log(str(rows[-1]))
        budget = rows[-1]["params"]
        for label, criterion, allocation in PRUNE_POLICIES:

            def pruned_params(x: float, c: str = criterion, a: str = allocation) -> int:
                prune_model(
                    dense, probe, ratio=x, criterion="l1" if c == "obs" else c, allocation=a
                )
                return _params(probe)

            x = _smallest_ratio_within(pruned_params, budget, steps)
            output = folder / f"prune-{label}-{ratio}.onnx"
            prune_model(dense, output, ratio=x, criterion=criterion, allocation=allocation,
                        calibration=calibration if criterion == "obs" else None)  # fmt: skip
            row = {"ratio": ratio, "method": "prune", "criterion": label, "prune_ratio": x}
            rows.append({**row, **_measured(output, dense, windows, feeds)})
            log(str(rows[-1]))
            half = folder / f"slice-{ratio / 2}.onnx"
            if not half.exists():
                slice_model(dense, half, ratio=ratio / 2, calibration=calibration, exactness=False)

            def combined_params(
                x: float, c: str = criterion, a: str = allocation, h: Path = half
            ) -> int:
                prune_model(h, probe, ratio=x, criterion="l1" if c == "obs" else c, allocation=a)
                return _params(probe)

            x = _smallest_ratio_within(combined_params, budget, steps)
            output = folder / f"slice-prune-{label}-{ratio}.onnx"
            slice_model(dense, output, ratio=ratio / 2, calibration=calibration, exactness=False,
                        prune=PruneAfterSlice(x, criterion=criterion, allocation=allocation))  # fmt: skip
            row = {"ratio": ratio, "method": "slice+prune", "criterion": label, "prune_ratio": x,
                   "slice_ratio": ratio / 2}  # fmt: skip
            rows.append({**row, **_measured(output, dense, windows, feeds)})
            log(str(rows[-1]))
    return rows
