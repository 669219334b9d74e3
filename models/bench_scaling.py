"""Scaling benchmark (not a test): spa commands on graphs of 10^3 / 10^4 / 10^5 nodes.

The graph is a chain of blocks ``MatMul(x, W_i) -> Add(b_i) -> Relu`` of width
``--width`` (3 nodes and 2 initializers per block), so the node count, the
initializer count and the number of channel groups all grow with N while each
tensor stays small: time and memory then measure spa, not the weights.

Each command runs in its own process (``python -m spa.cli.main ...``); wall
time and the child's peak RSS (``wait4``) are recorded, and the growth from
one size to the next (time ratio / node ratio: 1 is linear) is printed and
written to ``models/results/scaling.md``.

    python models/bench_scaling.py --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COMMANDS = {
    "inspect": ["inspect", "{model}"],
    "analyze": ["analyze", "{model}"],
    "prune": ["prune", "{model}", "-o", "{out}/pruned.onnx", "--ratio", "0.25"],
    "quantize": ["quantize", "{model}", "-o", "{out}/q.onnx", "--weights", "int8", "--block", "16"],
    "optimize": ["optimize", "{model}", "-o", "{out}/opt.onnx"],
}


def chain_model(nodes: int, width: int, seed: int = 0) -> onnx.ModelProto:
    """A chain of ``nodes // 3`` MatMul/Add/Relu blocks (float32, ``[1, width]``)."""
    rng = np.random.default_rng(seed)
    graph_nodes, initializers = [], []
    current = "x"
    for block in range(max(1, nodes // 3)):
        weight, bias = f"w{block}", f"b{block}"
        scale = 1.0 / np.sqrt(width)
        initializers.append(
            numpy_helper.from_array(
                (rng.standard_normal((width, width)) * scale).astype(np.float32), weight
            )
        )
        initializers.append(numpy_helper.from_array(np.zeros(width, np.float32), bias))
        product, summed, activated = f"m{block}", f"a{block}", f"r{block}"
        graph_nodes += [
            helper.make_node("MatMul", [current, weight], [product], name=f"MatMul_{block}"),
            helper.make_node("Add", [product, bias], [summed], name=f"Add_{block}"),
            helper.make_node("Relu", [summed], [activated], name=f"Relu_{block}"),
        ]
        current = activated
    graph_nodes.append(helper.make_node("Identity", [current], ["y"], name="output"))
    graph = helper.make_graph(
        graph_nodes,
        f"chain{nodes}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def run_command(arguments: list[str], timeout: float) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit code) of one spa command in a child."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "spa.cli.main", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
            return float("inf"), usage.ru_maxrss / 1024, -9
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        error = process.stderr.read().decode(errors="replace") if process.stderr else ""
        print(f"  {' '.join(arguments[:1])} exited {code}: {error.strip()[-300:]}")
    return seconds, usage.ru_maxrss / 1024, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--commands", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "scaling.md"
    )
    args = parser.parse_args()
    args.load_before = os.getloadavg()[0]
    rows: dict[str, list[tuple[int, float, float, int]]] = {c: [] for c in args.commands}
    with tempfile.TemporaryDirectory(prefix="spa-scaling-") as folder:
        for size in args.sizes:
            model_path = Path(folder) / f"chain{size}.onnx"
            proto = chain_model(size, args.width)
            onnx.save(proto, str(model_path))
            nodes = len(proto.graph.node)
            for command in args.commands:
                arguments = [a.format(model=model_path, out=folder) for a in COMMANDS[command]]
                seconds, rss, code = run_command(arguments, args.timeout)
                rows[command].append((nodes, seconds, rss, code))
                print(
                    f"{command:9s} {nodes:>7d} nodes  {seconds:8.2f} s  {rss:8.0f} MiB  exit {code}"
                )
    write_table(rows, args, args.out)


def write_table(
    rows: dict[str, list[tuple[int, float, float, int]]], args: argparse.Namespace, path: Path
) -> None:
    lines = [
        "# Scaling: spa commands against graph size",
        "",
        f"Made by `python models/bench_scaling.py --sizes {' '.join(map(str, args.sizes))} "
        f"--commands {' '.join(args.commands)} --timeout {args.timeout:g}` "
        f"(chain of MatMul/Add/Relu blocks, width {args.width}; one process per command; "
        "peak RSS of the child). *growth* is the time ratio over the node ratio from the "
        "previous size: 1.0 is linear, 10 at a 10x step is quadratic. Each command's "
        "process start (imports) is included, so the smallest size mostly measures "
        f"that. Load average (1 min) {args.load_before:.0f} before, "
        f"{os.getloadavg()[0]:.0f} after, on {os.cpu_count()} cores.",
        "",
        "| command | nodes | seconds | peak RSS MiB | exit | growth |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for command, entries in rows.items():
        previous = None
        for nodes, seconds, rss, code in entries:
            growth = ""
            if previous is not None and previous[1] > 0 and seconds != float("inf"):
                growth = f"{(seconds / previous[1]) / (nodes / previous[0]):.2f}"
            shown = (
                f"{seconds:.2f}" if seconds != float("inf") else f"> {args.timeout:.0f} (stopped)"
            )
            lines.append(f"| {command} | {nodes} | {shown} | {rss:.0f} | {code} | {growth} |")
            previous = (nodes, seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
