"""``spa optimize --max-drop`` on the real test beds: speedup and task metric against dense.

    PYTHONPATH=models python models/optimize_testbeds.py [BED ...] [--max-drop 1%] [--target tensorrt]

For each bed, the search (spa.workflows.search.optimize_search) gets real
calibration samples from the bed's calibration split (the last quarter held out
by the search) and the bed's task metric on its evaluation split as ``--eval``
(the functions below, higher is better), and writes the chosen model. The
table (models/results/optimize_testbeds.md) lists every candidate the search
measured, with its metric loss, its ORT CPU latency ratio against the dense
model (interleaved in one process, 1 thread) and the decision, then the
chosen model's speedup and metric. The JSON reports go next to it.
``--target tensorrt`` ranks TensorRT's formats by spa's cost model instead
(reports ``optimize_<bed>_tensorrt.json``, table ``optimize_testbeds_tensorrt.md``).

The metrics use a fixed subset of each evaluation split (``LIMITS``) so that a
search stays within minutes on two shared cores; the dense row is measured on
the same subset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.testbeds import get
from spa.workflows.search import optimize_search, parse_max_drop

__all__ = ["fashion_cnn", "main", "minilm", "ocr_rec", "orientation", "voice"]

RESULTS = Path(__file__).resolve().parent / "results"
#: Evaluation subset per bed (what ``evaluate(limit=...)`` counts is bed-specific; None: all).
LIMITS: dict[str, int | None] = {"fashion_cnn": 2000, "minilm": None, "ocr_rec": 60, "orientation": 40, "voice": 40}
#: Calibration samples per bed (a quarter is held out to measure agreement).
SAMPLES = {"fashion_cnn": 64, "minilm": 32, "ocr_rec": 32, "orientation": 32, "voice": 32}
HEADLINE = {"fashion_cnn": "accuracy", "minilm": "worst Spearman / dense of 3 sets", "ocr_rec": "1 - CER",
            "orientation": "accuracy", "voice": "1 - EER"}


def fashion_cnn(path: Path) -> float:
    return get("fashion_cnn").evaluate(path, LIMITS["fashion_cnn"])["accuracy"]


_MINILM_DENSE: dict[str, float] = {}


def minilm(path: Path) -> float:
    """The worst of the three Spearman correlations relative to dense (dense = 1.0),
    so a 1% budget holds on each set, not only on their mean."""
    bed = get("minilm")
    if not _MINILM_DENSE:
        _MINILM_DENSE.update(bed.evaluate(bed.model_path(), LIMITS["minilm"]))
    scores = bed.evaluate(path, LIMITS["minilm"])
    return min(scores[name] / _MINILM_DENSE[name] for name in _MINILM_DENSE)


def ocr_rec(path: Path) -> float:
    return 1.0 - get("ocr_rec").evaluate(path, LIMITS["ocr_rec"])["cer"]


def orientation(path: Path) -> float:
    return get("orientation").evaluate(path, LIMITS["orientation"])["accuracy"]


def voice(path: Path) -> float:
    return 1.0 - get("voice").evaluate(path, LIMITS["voice"])["eer"]


def suffix(target: str) -> str:
    return "" if target == "ort-cpu" else f"_{target}"


def run_bed(name: str, max_drop: float, folder: Path, target: str = "ort-cpu") -> dict[str, Any]:
    bed = get(name)
    feeds = bed.calibration_feeds(SAMPLES[name], 0)
    start = time.perf_counter()
    result = optimize_search(
        bed.model_path(), folder / f"{name}.onnx", calibration=feeds, max_drop=max_drop,
        metric=f"optimize_testbeds:{name}", target=target,
        report_path=RESULTS / f"optimize_{name}{suffix(target)}.json",
        command=f"models/optimize_testbeds.py {name} --target {target}",
    )  # fmt: skip
    print(result.verdict_line, f"({time.perf_counter() - start:.0f}s)", flush=True)
    search: dict[str, Any] = result.report["search"]
    return search


def table(name: str, search: dict[str, Any]) -> list[str]:
    dense = search["metric_dense"]
    lines = [f"### {name} ({HEADLINE[name]}, dense {dense:.4f} on the subset)", "",
             "| candidate | metric | loss | speedup vs dense | MACs | MB | decision |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in search["candidates"]:
        metric = "-" if c["metric_after"] is None else f"{c['metric_after']:.4f}"
        loss = "-" if c["quality_loss"] is None else f"{c['quality_loss']:.2%}"
        speed = "-" if c["speedup"] is None else f"{c['speedup']:.2f}x"
        size = f"{c['bytes'] / 1e6:.2f}" if c["bytes"] else "-"
        macs = f"{c['macs'] / search['input_macs']:.0%}" if c["macs"] and search["input_macs"] else "-"
        verdict = ("**accepted**" if c["accepted"] else "rejected") + f": {c['reason']}"
        lines.append(f"| {c['name']} | {metric} | {loss} | {speed} | {macs} | {size} | {verdict} |")
    chosen = next((c for c in search["candidates"] if c["name"] == search["chosen"]), None)
    if chosen is None:
        lines += ["", "Output: a copy of the input (no candidate within budget and not slower)."]
    else:
        lines += ["", f"Output: **{chosen['name']}**, {chosen['speedup']:.2f}x vs dense, "
                  f"{HEADLINE[name]} {dense:.4f} -> {chosen['metric_after']:.4f} "
                  f"({search['input_bytes'] / 1e6:.2f} MB -> {chosen['bytes'] / 1e6:.2f} MB)."]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("beds", nargs="*", default=list(LIMITS))
    parser.add_argument("--max-drop", default="1%")
    parser.add_argument("--target", default="ort-cpu", choices=("ort-cpu", "tensorrt"))
    parser.add_argument("--table-only", action="store_true", help="Rebuild the table from the reports.")
    args = parser.parse_args(argv)
    max_drop = parse_max_drop(args.max_drop)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in [] if args.table_only else args.beds:
            run_bed(name, max_drop, Path(folder), args.target)
    sections, summary = [], []
    for name in LIMITS:  # every bed with a report, so one bed can be rerun alone
        report = RESULTS / f"optimize_{name}{suffix(args.target)}.json"
        if report.is_file():
            search = json.loads(report.read_text())["search"]
            sections += table(name, search)
            summary.append(summary_row(name, search))
    speed = ("ORT CPU, 1 thread, ratio of the lower-quartile latencies of the dense input and the "
             "candidate measured interleaved (spa.verify.latency)") if args.target == "ort-cpu" else (
             "spa's TensorRT cost model for one H200 (spa.stats.gpu_cost; an estimate, no engine built)")
    header = [
        f"# `spa optimize --max-drop --target {args.target}` on the real test beds", "",
        f"Written by `PYTHONPATH=models python models/optimize_testbeds.py [BED ...] --max-drop 1% "
        f"--target {args.target}` from the JSON reports `optimize_<bed>{suffix(args.target)}.json` next "
        "to this file (rerunning one bed rewrites its report and this table). Loss: relative drop of "
        f"the task metric (evaluation subset of `LIMITS` in the script) against dense; speedup: {speed}; "
        "MACs: share of the input's kept; decision as the search made it.", "",
        "| bed | metric | dense | chosen | metric after | speedup vs dense (re-measured) | MB |",
        "|---|---|---|---|---|---|---|", *summary, "",
    ]  # fmt: skip
    table_path = RESULTS / f"optimize_testbeds{suffix(args.target)}.md"
    table_path.write_text("\n".join(header + sections))
    print(json.dumps({"written": str(table_path)}))
    return 0


def summary_row(name: str, search: dict[str, Any]) -> str:
    chosen = next((c for c in search["candidates"] if c["name"] == search["chosen"]), None)
    dense = f"{search['metric_dense']:.4f}"
    if chosen is None:
        mb = f"{search['input_bytes'] / 1e6:.2f}"
        return f"| {name} | {HEADLINE[name]} | {dense} | copy of the input | {dense} | 1.00x | {mb} |"
    return (f"| {name} | {HEADLINE[name]} | {dense} | {chosen['name']} | {chosen['metric_after']:.4f} "
            f"| {chosen['speedup']:.2f}x ({chosen['confirmed_speedup']:.2f}x) | "
            f"{search['input_bytes'] / 1e6:.2f} -> "
            f"{chosen['bytes'] / 1e6:.2f} |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
