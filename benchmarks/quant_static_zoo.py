"""Static INT8/FP8 QDQ over the zoo: cosine to fp32, MAC coverage, bytes, CPU latency ratio.

For each zoo model (or those named with --models): quantize with
``quantize_static_model`` (calibration: 8 seeded random feeds, seeds 1000+, kept
apart from the verification feed, seed 0), then record the worst output cosine,
the MatMul/Gemm/Conv MAC coverage, bytes before -> after, counts of quantized /
skipped / float nodes, and, with --latency, the ORT CPU latency ratio
quantized / fp32 measured in the same run (median of --runs, one thread).
Failures are recorded with their first line, not raised.

    python benchmarks/quant_static_zoo.py --json result.json
    python benchmarks/quant_static_zoo.py --models tv-resnet18 hf-bert --kind fp8 --latency
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx


def _latency(path: Path, feeds: dict[str, Any], runs: int, basic: bool) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if basic:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {value.name for value in session.get_inputs()}
    feeds = {key: value for key, value in feeds.items() if key in wanted}
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_one(name: str, kind: str, method: str, latency: bool, runs: int) -> dict[str, Any]:
    from spa import zoo
    from spa.workflows.quantize_static import quantize_static_model
    from spa.verify import input_specs, make_feeds

    row: dict[str, Any] = {"model": name, "kind": kind, "method": method}
    with tempfile.TemporaryDirectory(prefix="spa-qzoo-") as folder:
        source, output = Path(folder) / "model.onnx", Path(folder) / "q.onnx"
        proto = zoo.load(name)
        onnx.save(proto, str(source))
        specs = input_specs(proto)
        calib = [make_feeds(specs, seed=1000 + index) for index in range(8)]
        try:
            result = quantize_static_model(
                source, output, activations=kind, calib=calib, calib_method=method
            )
        except Exception as error:  # recorded, the sweep goes on
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            return row
        stats = result.statistics
        row.update(
            cosine=result.cosine, passed=result.passed, mac_coverage=round(result.mac_coverage, 4),
            bytes_before=result.bytes_before, bytes_after=result.bytes_after,
            quantized=stats.get("nodes_quantized"), skipped=stats.get("nodes_skipped"),
            float=stats.get("nodes_float"), qdq_pairs=stats.get("qdq_pairs"),
            verified_at=result.verification_optimization, seconds=round(result.seconds, 2),
        )  # fmt: skip
        if latency:
            feeds = make_feeds(specs, seed=0)
            basic = result.verification_optimization == "basic"
            fp32 = _latency(source, feeds, runs, basic)
            quantized = _latency(output, feeds, runs, basic)
            row.update(latency_fp32_ms=fp32 * 1e3, latency_ratio=quantized / fp32)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="zoo names (default: every zoo model)")
    parser.add_argument("--kind", choices=["int8", "fp8"], default="int8")
    parser.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax")
    parser.add_argument("--latency", action="store_true", help="also time fp32 vs quantized")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    from spa import zoo

    names = args.models or [entry.name for entry in zoo.entries()]
    rows = []
    for name in names:
        row = run_one(name, args.kind, args.method, args.latency, args.runs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = [row["model"] for row in rows if "error" in row or not row.get("passed")]
    print(f"{len(rows) - len(failed)}/{len(rows)} passed; failed: {failed}", file=sys.stderr)


if __name__ == "__main__":
    main()
