"""Benchmark: how far each pruning criterion moves a model's outputs.

Prunes a zoo model at one ratio with every criterion (and bias compensation
where it applies), then measures the relative output error
``||y_pruned - y_dense|| / ||y_dense||`` on held-out seeded inputs. The
calibration inputs are drawn the same way as the held-out ones (other seeds).
Zoo weights are regenerated from their statistics and the inputs are random,
so the figures compare criteria on one model; they are not accuracy.

    python benchmarks/criteria_output_error.py --model tv-resnet18 --ratio 0.3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

RUNS = [
    ("random", False),
    ("l1", False),
    ("l2", False),
    ("lamp", False),
    ("bn_scale", False),
    ("obspa", False),
    ("obspa", True),
    ("wanda_sp", False),
    ("flap", True),
    ("obs", False),
    ("obs", True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tv-resnet18")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--calib", type=int, default=8, help="Calibration batches.")
    parser.add_argument("--held-out", type=int, default=4, help="Evaluation batches.")
    parser.add_argument("--allocation", default="uniform")
    parser.add_argument(
        "--dim", action="append", default=[], metavar="NAME=SIZE", help="Symbolic input dims."
    )
    args = parser.parse_args()

    from spa.workflows.prune import prune_model
    from spa.verify import input_specs, make_feeds
    from spa.ort import create_session

    with tempfile.TemporaryDirectory(prefix="spa-bench-") as folder:
        dense = Path(folder) / "dense.onnx"
        spa_cli = [sys.executable, "-m", "spa.cli.main", "zoo", "get", args.model, "-o"]
        subprocess.run([*spa_cli, str(dense)], check=True, capture_output=True)
        specs = input_specs(onnx.load(str(dense), load_external_data=False))
        dims = {k: int(v) for k, v in (item.split("=") for item in args.dim)}
        calibration = [make_feeds(specs, seed=100 + i, dims=dims) for i in range(args.calib)]
        held_out = [make_feeds(specs, seed=i, dims=dims) for i in range(args.held_out)]
        session = create_session(dense)
        reference = [session.run(None, feed)[0] for feed in held_out]
        print(f"{args.model}, ratio {args.ratio}, allocation {args.allocation}")
        print(
            f"{'criterion':10s} {'bias':5s} {'params':>8s} {'rel. output error':>17s} {'time':>6s}"
        )
        for criterion, bias in RUNS:
            out = Path(folder) / f"{criterion}-{bias}.onnx"
            start = time.perf_counter()
            result = prune_model(
                dense,
                out,
                ratio=args.ratio,
                criterion=criterion,
                calibration=calibration,
                bias_compensation=bias,
                allocation=args.allocation,
            )
            seconds = time.perf_counter() - start
            pruned = create_session(out)
            errors = [
                np.linalg.norm(pruned.run(None, feed)[0] - ref) / np.linalg.norm(ref)
                for feed, ref in zip(held_out, reference, strict=True)
            ]
            kept = result.report["params_after"] / result.report["params_before"]
            print(
                f"{criterion:10s} {'yes' if bias else 'no':5s} {kept:8.1%} "
                f"{float(np.mean(errors)):17.4f} {seconds:5.1f}s"
            )


if __name__ == "__main__":
    main()
