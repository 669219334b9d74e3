"""Benchmark: W4 weight-only quantization quality, spa vs onnxruntime.quantization.

On the Shakespeare byte-level LM test bed (``models/testbeds/shakespeare_lm.onnx``),
quantizes every MatMul weight to INT4 with block 128 with

* spa: ``spa.quant.quantize_model`` (RTN, and GPTQ with calibration windows
  from the training plays), and
* ONNX Runtime: ``onnxruntime.quantization.matmul_nbits_quantizer.
  MatMulNBitsQuantizer`` with its RTN and GPTQ configurations (same block,
  same symmetry, the same calibration windows) and its default configuration,

then measures held-out perplexity of every model with the same evaluation
code, and each tool's quantization time. Times of the two tools are measured
in the same run and reported as ratios (spa / ORT); they include loading and
saving the model on both sides.

    python benchmarks/quant_quality.py --json bench-out/quant_quality.json
    python benchmarks/quant_quality.py --symmetric --windows 64   # a quicker look
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.workflows.quantize import file_bytes, quantize_model
from spa.testbeds import shakespeare

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "testbeds" / "shakespeare_lm.onnx"


class FeedReader:
    """An ONNX Runtime ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(copy.deepcopy(self.feeds))


def ort_quantize(
    source: Path,
    output: Path,
    algorithm: str,
    symmetric: bool,
    block: int,
    feeds: list[dict[str, np.ndarray]],
) -> float:
    """Quantize with ONNX Runtime's MatMulNBitsQuantizer; seconds taken."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    start = time.perf_counter()
    config: Any
    if algorithm == "rtn":
        config = nbits.RTNWeightOnlyQuantConfig()
    elif algorithm == "gptq":
        config = nbits.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=FeedReader(feeds), block_size=128, percdamp=0.01
        )
    else:
        config = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric)
    quantizer = nbits.MatMulNBitsQuantizer(
        onnx.load(str(source)), block_size=block, is_symmetric=symmetric, algo_config=config
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(output), use_external_data_format=False)
    return time.perf_counter() - start


def spa_quantize(
    source: Path,
    output: Path,
    method: str,
    symmetric: bool,
    block: int,
    feeds: list[dict[str, np.ndarray]],
) -> float:
    start = time.perf_counter()
    quantize_model(
        source,
        output,
        bits=4,
        block=block,
        method=method,
        symmetric=symmetric,
        target="ort",
        calib=feeds if method == "gptq" else None,
        verify=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="symmetric INT4 (default asymmetric, ORT's default)",
    )
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--windows", type=int, default=256, help="held-out windows to evaluate")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    feeds = shakespeare.calibration_feeds(args.calib_samples, args.seq_len, seed=0)
    text = shakespeare.heldout_text()

    def perplexity(path: Path) -> float:
        return shakespeare.perplexity(path, text, seq_len=args.seq_len, max_windows=args.windows)

    rows: list[dict[str, Any]] = [
        {
            "tool": "fp32",
            "method": "-",
            "perplexity": perplexity(args.model),
            "seconds": 0.0,
            "bytes": file_bytes(args.model),
        }
    ]
    with tempfile.TemporaryDirectory(prefix="spa-qq-") as name:
        folder = Path(name)
        for method in ("rtn", "gptq"):
            for tool, run in (("spa", spa_quantize), ("onnxruntime", ort_quantize)):
                output = folder / f"{tool}-{method}.onnx"
                seconds = run(args.model, output, method, args.symmetric, args.block, feeds)
                rows.append(
                    {
                        "tool": tool,
                        "method": method,
                        "perplexity": perplexity(output),
                        "seconds": seconds,
                        "bytes": file_bytes(output),
                    }
                )
        output = folder / "onnxruntime-default.onnx"
        seconds = ort_quantize(args.model, output, "default", args.symmetric, args.block, feeds)
        rows.append(
            {
                "tool": "onnxruntime",
                "method": "default",
                "perplexity": perplexity(output),
                "seconds": seconds,
                "bytes": file_bytes(output),
            }
        )
    by = {(r["tool"], r["method"]): r for r in rows}
    ratios = {
        m: by[("spa", m)]["seconds"] / by[("onnxruntime", m)]["seconds"] for m in ("rtn", "gptq")
    }
    print(f"{'tool':<12} {'method':<8} {'perplexity':>10} {'seconds':>8} {'bytes':>10}")
    for row in rows:
        print(
            f"{row['tool']:<12} {row['method']:<8} {row['perplexity']:>10.4f} "
            f"{row['seconds']:>8.2f} {row['bytes']:>10,}"
        )
    for method, ratio in ratios.items():
        print(f"time spa/onnxruntime ({method}): {ratio:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "model": str(args.model),
            "block": args.block,
            "symmetric": args.symmetric,
            "calib_samples": args.calib_samples,
            "seq_len": args.seq_len,
            "windows": args.windows,
            "rows": rows,
            "time_ratio_spa_over_ort": ratios,
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
