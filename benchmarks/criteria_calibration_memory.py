"""Benchmark: calibration for the pruning criteria keeps memory bounded.

Builds an MLP block ``x[B, T, D] -> MatMul(D, 4D) -> Relu -> MatMul(4D, D)``
and gathers the statistics ``obs`` needs (``X^T X`` of both consumer inputs,
``spa.pruning.statistics.gather_statistics``) from few and from many
calibration batches, each in a fresh subprocess. It prints the peak RSS of
each run and the bytes the exposed activations would take if they were kept:
the peak must not grow with the number of batches.

    python benchmarks/criteria_calibration_memory.py               # D=512, 8 vs 64 batches
    python benchmarks/criteria_calibration_memory.py --dim 128 --few 2 --many 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def write_model(path: Path, dim: int) -> None:
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[B, T, D] x) => (float[B, T, D] y) {
            h0 = MatMul (x, w1)
            h = Relu (h0)
            y = MatMul (h, w2)
        }"""
    )
    rng = np.random.default_rng(0)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(rng.standard_normal((dim, 4 * dim)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((4 * dim, dim)).astype(np.float32), "w2"),
        ]
    )
    onnx.save(model, str(path))


def measure(path: Path, batches: int, batch: int, tokens: int) -> None:
    """Child process: gather statistics and print peak RSS as JSON."""
    from spa.analysis import analyze, prepare
    from spa.pruning.statistics import gather_statistics
    from spa.model_io import load_model

    model = prepare(load_model(path))
    width = model.graph.initializers["w1"].const_value.shape[0]  # type: ignore[union-attr]

    def feeds():  # generated lazily: the source never holds all batches either
        rng = np.random.default_rng(1)
        for _ in range(batches):
            yield {"x": rng.standard_normal((batch, tokens, width)).astype(np.float32)}

    stats = gather_statistics(model, analyze(model), feeds(), full=True)
    rows = {name: s.rows for name, s in stats.items()}
    stored = sum(
        batches * batch * tokens * s.sums.size * 4 for s in stats.values()
    )  # float32 activations if they were kept
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {"batches": batches, "peak_rss": peak, "activations_bytes": stored, "rows": rows}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--few", type=int, default=8)
    parser.add_argument("--many", type=int, default=64)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "BATCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(Path(args.child[0]), int(args.child[1]), args.batch, args.tokens)
        return
    with tempfile.TemporaryDirectory(prefix="spa-bench-") as folder:
        path = Path(folder) / "mlp.onnx"
        write_model(path, args.dim)
        results = []
        for batches in (args.few, args.many):
            command = [sys.executable, __file__, "--child", str(path), str(batches)]
            command += ["--batch", str(args.batch), "--tokens", str(args.tokens)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    mib = 2**20
    for row in results:
        print(
            f"{row['batches']:4d} batches: peak RSS {row['peak_rss'] / mib:7.1f} MiB | "
            f"activations if stored {row['activations_bytes'] / mib:8.1f} MiB"
        )
    ratio = results[1]["peak_rss"] / results[0]["peak_rss"]
    print(f"peak RSS ratio many/few: {ratio:.2f} (batches ratio {args.many / args.few:.0f})")


if __name__ == "__main__":
    main()
