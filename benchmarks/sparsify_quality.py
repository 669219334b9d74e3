"""Output quality of ``spa sparsify`` variants on a zoo model, measured in one run.

For one zoo model (default ``hf-opt``, random-init weights): calibration feeds
(seeds 100..) and held-out feeds (seeds 0..) drawn the same way (token ids in
the registry's range); every variant is written with
:func:`spa.workflows.sparsify.sparsify_model` and run in ONNX Runtime CPU on the
held-out feeds. Prints, per variant: nodes rewritten, MAC coverage, sparsity,
bytes after / before, the relative output error ``||y - y0||^2 / ||y0||^2`` and
cosine against the original (first output), and wall time as a ratio to the
magnitude 2:4 run.

    python benchmarks/sparsify_quality.py --model hf-opt --samples 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa import zoo
from spa.workflows.sparsify import sparsify_model
from spa.verify import create_session, input_specs, make_feeds

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("2:4 magnitude", {"pattern": "2:4", "method": "magnitude"}),
    ("2:4 sparsegpt", {"pattern": "2:4", "method": "sparsegpt", "calibrated": True}),
    ("gqsa g16 50% data-free", {"pattern": "gqsa"}),
    ("gqsa g16 50% calibrated", {"pattern": "gqsa", "calibrated": True}),
]


def _feeds(proto: onnx.ModelProto, name: str, seeds: range) -> list[dict[str, np.ndarray]]:
    ranges = {
        spec.name: (spec.low, spec.high)
        for spec in zoo.entry(name).inputs
        if spec.low is not None and spec.high is not None
    }
    specs = input_specs(proto)
    return [make_feeds(specs, seed=seed, int_ranges=ranges) for seed in seeds]  # type: ignore[arg-type]


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = create_session(path)
    return np.concatenate([np.asarray(session.run(None, feed)[0]).ravel() for feed in feeds])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hf-opt")
    parser.add_argument("--samples", type=int, default=32, help="calibration feeds")
    parser.add_argument("--eval", type=int, default=8, help="held-out feeds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="spa-bench-") as folder:
        source = Path(folder) / "model.onnx"
        zoo.materialize(args.model, source)
        proto = onnx.load(str(source))
        calibration = _feeds(proto, args.model, range(100, 100 + args.samples))
        held_out = _feeds(proto, args.model, range(args.eval))
        reference = _outputs(source, held_out)
        base_seconds = None
        for label, options in VARIANTS:
            options = dict(options)
            calibrated = options.pop("calibrated", False)
            out = Path(folder) / f"{len(rows)}.onnx"
            result = sparsify_model(
                source, out, calib=calibration if calibrated else None, verify=False, **options
            )
            actual = _outputs(out, held_out)
            error = float(np.sum((actual - reference) ** 2) / np.sum(reference**2))
            cosine = float(actual @ reference / np.linalg.norm(actual) / np.linalg.norm(reference))
            base_seconds = base_seconds or result.seconds
            rows.append({
                "variant": label, "rewritten": result.rewritten,
                "mac_coverage": result.mac_coverage, "sparsity": result.sparsity,
                "bytes_ratio": result.bytes_after / result.bytes_before,
                "relative_error": error, "cosine": cosine,
                "time_ratio": result.seconds / base_seconds, "calibration": result.calibration,
            })  # fmt: skip
            print(
                f"{label:26s} nodes {result.rewritten:3d} | MACs {result.mac_coverage:6.1%} | "
                f"sparsity {result.sparsity:5.1%} | bytes x{rows[-1]['bytes_ratio']:.3f} | "
                f"rel.err {error:.4f} | cos {cosine:.5f} | time x{rows[-1]['time_ratio']:.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
