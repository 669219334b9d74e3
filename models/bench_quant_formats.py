"""Are spa's quantized outputs faster than their input on ONNX Runtime CPU, and how do they
compare with ONNX Runtime's own quantizers on the same model and data?

For each test bed: spa weight-only int8/int4 (``--target ort``), spa static INT8 QDQ
(``--target ort`` and ``tensorrt``), ORT ``quantize_dynamic``, ``quantize_static``
(QDQ and QOperator, per channel, on the same calibration feeds) and
``MatMulNBitsQuantizer`` (4 bits, block 32). Each output is measured against the dense
model with :func:`spa.verify.latency.compare_latency` (one thread, interleaved rounds).

    python models/bench_quant_formats.py                     # ~10 min on one busy core
    python models/bench_quant_formats.py --only fashion_cnn orientation --budget 2

Writes ``models/results/quant_formats_latency.md`` (and ``.json``); speedup > 1 = faster.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_cleanup import ort_node_counts

from spa import testbeds
from spa.verify.latency import compare_latency
from spa.workflows.quantize import quantize_model
from spa.workflows.quantize_static import quantize_static_model

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
BEDS = ("fashion_cnn", "orientation", "shakespeare_lm", "minilm", "ocr_rec")
Feeds = list[dict[str, np.ndarray]]


def ort_makers(calibration: Feeds) -> dict[str, Callable[[Path, Path], None]]:
    """ONNX Runtime's own quantizers on ``calibration`` (also used by results_table.py)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    def static(fmt: Any) -> Callable[[Path, Path], None]:
        return lambda source, output: quantize_static(
            str(source), str(output), Reader(), quant_format=fmt, per_channel=True
        )

    def nbits(source: Path, output: Path) -> None:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=32, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(output))

    return {
        "ort quantize_dynamic": lambda s, o: quantize_dynamic(str(s), str(o)),
        "ort quantize_static QDQ": static(QuantFormat.QDQ),
        "ort quantize_static QOperator": static(QuantFormat.QOperator),
        "ort MatMulNBits 4-bit": nbits,
    }


def _spa_makers(calibration: Feeds) -> dict[str, Callable[[Path, Path], None]]:
    return {
        "spa w8 (ort)": lambda s, o: quantize_model(s, o, bits=8, verify=False),
        "spa w4 g32 (ort)": lambda s, o: quantize_model(s, o, bits=4, block=32, verify=False),
        "spa static int8 (ort)": lambda s, o: quantize_static_model(
            s, o, calib=calibration, verify=False, holdout=0.0
        ),
        "spa static int8 (tensorrt)": lambda s, o: quantize_static_model(
            s, o, calib=calibration, verify=False, target="tensorrt", holdout=0.0
        ),
    }


def measure_bed(name: str, folder: Path, budget: float) -> list[dict[str, Any]]:
    bed = testbeds.get(name)
    source = bed.model_path()
    calibration = bed.calibration_feeds(16, seed=0)
    feeds = bed.calibration_feeds(2, seed=1)
    rows = []
    for label, make in {**_spa_makers(calibration), **ort_makers(calibration)}.items():
        output = folder / f"{name}-{label.replace(' ', '_')}.onnx"
        try:
            make(source, output)
            latency = compare_latency(source, output, feeds, budget_s=budget, min_rounds=6)
            same = ort_node_counts(source, folder) == ort_node_counts(output, folder)
            row = {"model": name, "format": label, "speedup": round(latency.speedup, 3),
                   "dense_ms": round(latency.reference_ms, 3),
                   "quantized_ms": round(latency.candidate_ms, 3), "rounds": latency.rounds,
                   "ort_runs_dense_graph": same}  # fmt: skip
        except Exception as error:  # a quantizer that fails on a model is a result too
            row = {
                "model": name,
                "format": label,
                "error": f"{type(error).__name__}: {str(error)[:100]}",
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Quantized formats vs dense on ORT CPU: spa and ONNX Runtime's quantizers",
        "",
        f"Written by `{command}`: compare_latency (1 intra-op thread, interleaved ABBA rounds,",
        "median of per-round ratios, ORT's default optimisation level); speedup > 1 = faster",
        "than the dense input. A/A noise on this shared machine is ±5% to ±25% under load.",
        '"ORT runs the dense graph": after ONNX Runtime\'s own optimisations the quantized model',
        "has the same op counts as the dense one (its integer weights were folded at load), so",
        "its latency is the dense latency and a ratio away from 1 is noise.",
        "",
        "| model | format | speedup | dense ms | quantized ms | rounds | ORT runs the dense graph |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['format']} | error: {row['error']} | | | | |")
        else:
            lines.append(
                f"| {row['model']} | {row['format']} | {row['speedup']:.3f} | {row['dense_ms']} "
                f"| {row['quantized_ms']} | {row['rounds']} | "
                f"{'yes' if row['ort_runs_dense_graph'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="test beds (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of rounds per format")
    parser.add_argument("--output", type=Path, default=RESULTS / "quant_formats_latency.md")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizers log every tensor
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spa-bench-quant-") as tmp:
        for name in args.only or BEDS:
            rows += measure_bed(name, Path(tmp), args.budget)
    command = "python models/bench_quant_formats.py" + (
        f" --only {' '.join(args.only)}" if args.only else ""
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(_table(rows, command), encoding="utf-8")
    args.output.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
