"""Benchmark: ResNet-50 pruned to about half its MACs, ORT CPU speed vs dense.

Prunes a zoo ResNet-50 with ``round_to=8`` at the smallest uniform ratio that
brings its MACs to ``--mac-fraction`` of dense (bisection over the ratio), then
times dense and pruned in ONNX Runtime in the same process, interleaved, at
each batch size, and prints the speed-up as a ratio (the figure to quote; the
absolute times depend on the machine's load).

    python benchmarks/prune_resnet50_speed.py --batches 1 8 --json bench-out/resnet50.json

The onnx-wheel ResNet-50 is exported at batch 1; the script makes its batch
axis dynamic (graph input/output dim 0 and the Reshape before the classifier)
so larger batches can be timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from spa import zoo
from spa.analysis import analyze, prepare
from spa.pruning.plan import make_plan
from spa.model_io import load_model, save_model
from spa.passes.prune import apply_plan
from spa.stats.report import compute_stats
from spa.verify import create_session


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symbolic batch on inputs/outputs; Reshape targets that pin batch 1 copy it (0)."""
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    targets = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
    for tensor in model.graph.initializer:
        if tensor.name in targets:
            shape = onnx.numpy_helper.to_array(tensor).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                tensor.CopyFrom(onnx.numpy_helper.from_array(shape, tensor.name))
    return model


def prune_to(source: Path, output: Path, ratio: float, round_to: int) -> None:
    model = prepare(load_model(source))
    analysis = analyze(model)
    plan = make_plan(model, analysis, ratio=ratio, criterion="l1", round_to=round_to)
    apply_plan(model, analysis, plan)
    save_model(model, output, input_path=source)


def ratio_for_macs(source: Path, folder: Path, fraction: float, round_to: int) -> tuple[float, float]:
    """Smallest ratio whose pruned MACs are <= fraction of dense (bisection)."""
    dense = compute_stats(source).total_macs
    low, high, best = 0.0, 0.9, (0.9, 0.0)
    for _ in range(8):
        middle = (low + high) / 2
        prune_to(source, folder / "probe.onnx", middle, round_to)
        share = compute_stats(folder / "probe.onnx").total_macs / dense
        if share <= fraction:
            high, best = middle, (middle, share)
        else:
            low = middle
    return best


def time_pair(dense: Path, pruned: Path, batch: int, runs: int) -> dict[str, float]:
    sessions = {"dense": create_session(dense), "pruned": create_session(pruned)}
    name = sessions["dense"].get_inputs()[0].name
    feed = {name: np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)}
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    for _ in range(runs):  # interleaved, so load changes hit both alike
        for key, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[key].append(time.perf_counter() - start)
    dense_ms = statistics.median(times["dense"]) * 1e3
    pruned_ms = statistics.median(times["pruned"]) * 1e3
    return {"batch": batch, "dense_ms": dense_ms, "pruned_ms": pruned_ms,
            "speedup": dense_ms / pruned_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="onnx-resnet50")
    parser.add_argument("--mac-fraction", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spa-bench-") as tmp:
        folder = Path(tmp)
        source = folder / "dense.onnx"
        onnx.save(dynamic_batch(zoo.load(args.model)), str(source))
        ratio, share = ratio_for_macs(source, folder, args.mac_fraction, args.round_to)
        prune_to(source, folder / "pruned.onnx", ratio, args.round_to)
        rows = [time_pair(source, folder / "pruned.onnx", b, args.runs) for b in args.batches]
    result = {"model": args.model, "ratio": ratio, "mac_share": share, "round_to": args.round_to,
              "rows": rows}
    print(f"{args.model}: ratio {ratio:.3f} -> MACs {share:.1%} of dense (round-to {args.round_to})")
    for row in rows:
        print(f"  batch {row['batch']}: dense {row['dense_ms']:.1f} ms, pruned "
              f"{row['pruned_ms']:.1f} ms, speed-up {row['speedup']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
