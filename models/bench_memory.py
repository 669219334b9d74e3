"""Peak memory of spa's commands on a model larger than 2 GB (a benchmark, not a test).

Builds an MLP of ``--layers`` MatMul layers, ``--width`` wide, float32, with
its weights in external data (default 36 layers x 2048 x 8192 = 2.4 GB; the
largest tensor is 64 MiB), then runs each command in its own process and
reads that process's peak resident set size (``ru_maxrss`` of the child).
The goal (issue 15): peak RSS <= 2 x the largest tensor + 1 GiB for int4
quantization. Results go to ``models/results/memory.md`` and ``.json``.

    python models/bench_memory.py [--layers 36] [--width 2048] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1024 * 1024
NOTE = """\
Verification runs both models in ONNX Runtime, which reads external weights
into memory. A model with more than 512 MiB of weights is verified as a chain
of segment sessions of at most 256 MiB of weights each, one open at a time
(`spa.ort_segments`), so a verified run adds about one segment to the peak,
not the whole model (before that change the verified int4 run peaked at 2881
MiB). The verified int4 row exits 3 because round-to-nearest int4 on a random
36-layer ReLU MLP compounds past the default cosine; the memory figure is what
matters here. Before the streaming fixes (same model): prune 2661 MiB, quantize
1113 MiB, verified quantize 3104 MiB.
"""


def build(path: Path, layers: int, width: int) -> int:
    """An MLP x -> (MatMul, Relu) * layers, weights alternating [w, 4w] and [4w, w].

    Returns the size of its largest tensor in bytes."""
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    current = "x"
    for index in range(layers):
        shape = (width, 4 * width) if index % 2 == 0 else (4 * width, width)
        weight = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{index}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"m{index}"]))
        nodes.append(helper.make_node("Relu", [f"m{index}"], [f"r{index}"]))
        current = f"r{index}"
    nodes[-1] = helper.make_node("Identity", [f"m{layers - 1}"], ["y"])
    graph = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return width * 4 * width * 4


def peak_rss(command: list[str]) -> tuple[int, float, int]:
    """Exit code, seconds and peak RSS (bytes) of ``command`` run in a fresh child."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "print(code, time.perf_counter() - start,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=False
    )
    code, seconds, kib = run.stdout.strip().splitlines()[-1].split()
    if int(code) != 0:
        print(run.stderr[-2000:], file=sys.stderr)
    return int(code), float(seconds), int(kib) * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--keep", type=Path, help="build the model in this folder and keep it")
    parser.add_argument("--only", action="append", help="run the commands starting with this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spa-memory-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / "big.onnx"
        if (folder / "big.onnx.data").is_file() and args.keep:
            largest = args.width * 4 * args.width * 4  # built before with these sizes
        else:
            largest = build(model, args.layers, args.width)
        total = (model.parent / (model.name + ".data")).stat().st_size
        spa = [sys.executable, "-m", "spa.cli.main"]
        commands = {
            "inspect": [*spa, "inspect", str(model)],
            "analyze": [*spa, "analyze", str(model)],
            "quantize int4 --no-verify": [
                *spa, "quantize", str(model), "-o", str(folder / "q4.onnx"),
                "--weights", "int4", "--no-verify",
            ],
            "quantize int4 (verified)": [
                *spa, "quantize", str(model), "-o", str(folder / "q4v.onnx"), "--weights", "int4",
            ],
            "verify (the model against itself)": [*spa, "verify", str(model), str(model)],
            "prune 0.25 --no-verify": [
                *spa, "prune", str(model), "-o", str(folder / "p.onnx"), "--ratio", "0.25",
            ],
            "optimize --no-verify": [
                *spa, "optimize", str(model), "-o", str(folder / "o.onnx"), "--no-verify",
            ],
        }  # fmt: skip
        rows = []
        for name, command in commands.items():
            if args.only and not any(name.startswith(prefix) for prefix in args.only):
                continue
            code, seconds, rss = peak_rss(command)
            budget = 2 * largest + 1024 * MiB
            rows.append(
                {
                    "command": name,
                    "exit": code,
                    "seconds": round(seconds, 1),
                    "peak_rss_mib": round(rss / MiB),
                    "budget_mib": round(budget / MiB),
                    "within": rss <= budget,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    facts = {
        "model": f"{args.layers} MatMul layers, {args.width}x{4 * args.width} float32",
        "weights_mib": round(total / MiB),
        "largest_tensor_mib": round(largest / MiB),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    (RESULTS / "memory.json").write_text(json.dumps(facts, indent=2) + "\n")
    lines = [
        "# Peak memory on a model larger than 2 GB",
        "",
        f"Model: {facts['model']}, weights {facts['weights_mib']} MiB in external data, "
        f"largest tensor {facts['largest_tensor_mib']} MiB. Budget (issue 15): "
        "2 x largest tensor + 1 GiB. Written by `python models/bench_memory.py`.",
        "",
        "| command | exit | seconds | peak RSS (MiB) | budget (MiB) | within |",
        "|---|---|---|---|---|---|",
    ]
    lines_after = ["", *NOTE.splitlines()]
    for row in rows:
        lines.append(
            f"| {row['command']} | {row['exit']} | {row['seconds']} | {row['peak_rss_mib']} | "
            f"{row['budget_mib']} | {'yes' if row['within'] else 'no'} |"
        )
    (RESULTS / "memory.md").write_text("\n".join(lines + lines_after) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
