"""`spa prune` with its defaults, exact channel counts (--round-to 1) vs --round-to auto, on ORT CPU.

    OMP_NUM_THREADS=1 nice python models/bench_round_to.py [BED ...]

For each real test bed: ``prune_model`` with the command's defaults (``l1``, uniform allocation)
at ``--ratio`` 0.1 and 0.25, once with ``round_to=1`` and once with the default
``round_to=AUTO_ROUND`` (multiples of 16 in groups of 32+ channels, of 8 in groups of 16-31,
``spa.pruning.allocation.group_multiple``); each output is timed against the dense model with
``spa.verify.latency.compare_latency`` (one thread, interleaved rounds, lower quartiles) on two
calibration feeds of the bed. Writes ``models/results/round_to.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from spa import testbeds
from spa.pruning.allocation import AUTO_ROUND
from spa.stats.report import compute_stats
from spa.verify.latency import compare_latency
from spa.workflows.prune import prune_model

RESULTS = Path(__file__).parent / "results"
BEDS = ("ocr_rec", "ocr_det", "orientation", "voice", "fashion_cnn", "minilm")
RATIOS = (0.1, 0.25)


def run_bed(name: str, folder: Path, budget: float) -> list[dict[str, Any]]:
    bed = testbeds.get(name)
    dense = bed.model_path()
    feeds = bed.calibration_feeds(1 if name == "minilm" else 2, 1)
    shapes = {key: tuple(value.shape) for key, value in feeds[0].items()}
    dense_macs = compute_stats(dense, shapes=shapes).total_macs
    rows = []
    for ratio in RATIOS:
        for label, round_to in (("exact (--round-to 1)", 1), ("auto (default)", AUTO_ROUND)):
            output = folder / f"{name}-{ratio}-{round_to}.onnx"
            prune_model(dense, output, ratio=ratio, round_to=round_to, shapes=shapes)
            macs = compute_stats(output, shapes=shapes).total_macs
            latency = compare_latency(dense, output, feeds, budget_s=budget, min_rounds=6)
            rows.append({"bed": name, "ratio": ratio, "round_to": label,
                         "macs_removed": round(1 - macs / dense_macs, 4),
                         "speedup": round(latency.speedup, 3), "rounds": latency.rounds,
                         "dense_ms": round(latency.reference_ms, 3),
                         "ms": round(latency.candidate_ms, 3)})  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# `spa prune` defaults: exact channel counts vs `--round-to auto`, ORT CPU",
        "",
        "Written by `python models/bench_round_to.py` (settings in its docstring). Speedup = "
        "dense ms / pruned ms (one thread, interleaved rounds, lower quartiles; > 1 is faster; "
        "repeated runs of one pair differ by a few per cent).",
        "",
        "| bed | ratio | rounding | MACs removed | speedup vs dense | dense ms | pruned ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['bed']} | {row['ratio']} | {row['round_to']} | "
                     f"{row['macs_removed']:.1%} | {row['speedup']:.2f}x | {row['dense_ms']} | "
                     f"{row['ms']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("beds", nargs="*", default=list(BEDS))
    parser.add_argument("--budget", type=float, default=3.0, help="latency seconds per output")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spa-round-to-") as folder:
        for name in args.beds:
            rows += run_bed(name, Path(folder), args.budget)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "round_to.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "round_to.md").write_text(render(rows))
    print(render(rows))


if __name__ == "__main__":
    main()
