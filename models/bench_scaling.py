"""Scaling benchmark (not a test): spa commands on graphs of 10^3 / 10^4 / 10^5 nodes.

The graph is a chain of blocks ``MatMul(x, W_i) -> Add(b_i) -> Relu`` of width
``--width`` (3 nodes and 2 initializers per block), so the node count, the
initializer count and the number of channel groups all grow with N while each
tensor stays small: time and memory then measure spa, not the weights.

Each command runs in its own process (``python -m spa.cli.main ...``); wall
time, the child's CPU time (user + system, from ``wait4``) and its peak RSS
are recorded. The growth from one size to the next (ratio of CPU time net of
the command's fixed cost / node ratio: 1 is linear, 10 at a 10x step is
quadratic) is printed and written to ``models/results/scaling.md``. CPU time,
not wall time, because the benchmark machine is shared: wall time grows with
the load average, CPU time only with the work (and, more weakly, with cache
contention). The fixed cost is the CPU time of the same command on a 30-node
chain (imports, ORT start-up), measured first.

``slice`` needs a pre-norm residual stream, which the chain does not have: it
runs on :func:`prenorm_model` of the same node count (an embedding ``Gather``,
then blocks ``x + MatMul(Relu(MatMul(LayerNorm(x))))``, 5 nodes and 4
initializers each), with 8 calibration samples for its PCA.

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
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COMMANDS = {
    "inspect": ["inspect", "{model}"],
    "analyze": ["analyze", "{model}"],
    "prune": ["prune", "{model}", "-o", "{out}/pruned.onnx", "--ratio", "0.25"],
    "quantize": ["quantize", "{model}", "-o", "{out}/q.onnx", "--weights", "int8", "--block", "16"],
    "optimize": ["optimize", "{model}", "-o", "{out}/opt.onnx"],
    "sparsify": ["sparsify", "{model}", "-o", "{out}/sparse.onnx"],
    "verify": ["verify", "{model}", "{model}"],
    "slice": ["slice", "{prenorm}", "-o", "{out}/sliced.onnx", "--ratio", "0.25", "--calib",
              "{calib}"],
}  # fmt: skip

#: Node count of the chain whose run gives each command's fixed cost.
BASELINE_NODES = 30
#: Net CPU seconds below which a size is no base for a growth figure.
MIN_NET_CPU = 0.4


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


def prenorm_model(nodes: int, width: int, seed: int = 0) -> onnx.ModelProto:
    """A pre-norm residual stream of about ``nodes`` nodes: ``Gather`` embedding, blocks
    ``x + MatMul(Relu(MatMul(LayerNorm(x), W1)), W2)``, a final LayerNorm and head."""
    rng = np.random.default_rng(seed)
    vocabulary = 64

    def tensor(name: str, shape: tuple[int, ...], scale: float, offset: float = 0.0) -> None:
        values = offset + scale * rng.standard_normal(shape)
        initializers.append(numpy_helper.from_array(values.astype(np.float32), name))

    graph_nodes = [helper.make_node("Gather", ["embedding", "ids"], ["x0"])]
    initializers: list[onnx.TensorProto] = []
    tensor("embedding", (vocabulary, width), 1.0)
    current = "x0"
    for block in range(max(1, (nodes - 3) // 5)):
        tensor(f"gamma{block}", (width,), 0.1, 1.0)
        tensor(f"beta{block}", (width,), 0.1)
        tensor(f"up{block}", (width, 2 * width), 1.0 / np.sqrt(width))
        tensor(f"down{block}", (2 * width, width), 0.5 / np.sqrt(2 * width))
        graph_nodes += [
            helper.make_node("LayerNormalization", [current, f"gamma{block}", f"beta{block}"],
                             [f"n{block}"], axis=-1),
            helper.make_node("MatMul", [f"n{block}", f"up{block}"], [f"u{block}"]),
            helper.make_node("Relu", [f"u{block}"], [f"r{block}"]),
            helper.make_node("MatMul", [f"r{block}", f"down{block}"], [f"d{block}"]),
            helper.make_node("Add", [current, f"d{block}"], [f"x{block + 1}"]),
        ]  # fmt: skip
        current = f"x{block + 1}"
    tensor("gamma_final", (width,), 0.0, 1.0)
    tensor("beta_final", (width,), 0.0)
    tensor("head", (width, vocabulary), 1.0 / np.sqrt(width))
    graph_nodes += [
        helper.make_node("LayerNormalization", [current, "gamma_final", "beta_final"], ["nf"],
                         axis=-1),
        helper.make_node("MatMul", ["nf", "head"], ["logits"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        graph_nodes,
        f"prenorm{nodes}",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, vocabulary])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


class Run(NamedTuple):
    """One command on one model: wall and CPU seconds, peak RSS in MiB, exit code."""

    wall: float
    cpu: float
    rss: float
    code: int


def run_command(arguments: list[str], timeout: float) -> Run:
    """Run one spa command in a child process and measure it."""
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
            return Run(float("inf"), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, -9)
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        error = process.stderr.read().decode(errors="replace") if process.stderr else ""
        print(f"  {' '.join(arguments[:1])} exited {code}: {error.strip()[-300:]}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code)


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
    rows: dict[str, list[tuple[int, Run]]] = {command: [] for command in args.commands}
    baseline: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="spa-scaling-") as folder:
        for size in [BASELINE_NODES, *args.sizes]:
            model_path = Path(folder) / f"chain{size}.onnx"
            prenorm_path, calib = Path(folder) / f"prenorm{size}.onnx", Path(folder) / "calib.npz"
            # Built in a child process: a child's peak RSS (ru_maxrss) starts from its
            # parent's at fork, so this process must never hold the large models.
            subprocess.run([sys.executable, __file__, "--build", str(size), str(args.width),
                            folder, "slice" if "slice" in args.commands else ""], check=True)  # fmt: skip
            nodes = int((Path(folder) / f"chain{size}.nodes").read_text())
            for command in args.commands:
                arguments = [
                    a.format(model=model_path, out=folder, prenorm=prenorm_path, calib=calib)
                    for a in COMMANDS[command]
                ]
                run = run_command(arguments, args.timeout)
                if size == BASELINE_NODES:
                    baseline[command] = run.cpu
                    continue
                rows[command].append((nodes, run))
                print(
                    f"{command:9s} {nodes:>7d} nodes  wall {run.wall:8.2f} s  "
                    f"cpu {run.cpu:8.2f} s  {run.rss:8.0f} MiB  exit {run.code}",
                    flush=True,
                )
    write_table(rows, baseline, args, args.out)


def write_table(
    rows: dict[str, list[tuple[int, Run]]],
    baseline: dict[str, float],
    args: argparse.Namespace,
    path: Path,
) -> None:
    lines = [
        "# Scaling: spa commands against graph size",
        "",
        f"Made by `python models/bench_scaling.py --sizes {' '.join(map(str, args.sizes))} "
        f"--commands {' '.join(args.commands)} --timeout {args.timeout:g}` "
        f"(chain of MatMul/Add/Relu blocks, width {args.width}; slice: a pre-norm chain of the "
        "same size, `prenorm_model`; one process per command). "
        "*cpu* is the child's user + system time, *fixed* the same command's CPU time on a "
        f"{BASELINE_NODES}-node chain (imports, ORT start-up); *growth* is the ratio of "
        "cpu - fixed over the node ratio from the previous size (left out when the "
        f"previous size's cpu - fixed is under {MIN_NET_CPU:g} s, i.e. noise): 1.0 is "
        "linear, 10 at a 10x step is quadratic; a stopped run gives a lower bound. Wall time is shown but depends on the load: "
        f"load average (1 min) {args.load_before:.0f} before, {os.getloadavg()[0]:.0f} "
        f"after, on {os.cpu_count()} cores.",
        "",
        "| command | nodes | wall s | cpu s | fixed cpu s | peak RSS MiB | exit | growth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for command, entries in rows.items():
        fixed = baseline.get(command, 0.0)
        previous: tuple[int, float] | None = None
        for nodes, run in entries:
            net = run.cpu - fixed
            stopped = run.code == -9
            growth = ""
            if previous is not None:
                # a stopped run's CPU time is a lower bound, hence its growth too
                value = (net / previous[1]) / (nodes / previous[0])
                growth = f"≥ {value:.2f}" if stopped else f"{value:.2f}"
            wall = f"> {args.timeout:.0f} (stopped)" if stopped else f"{run.wall:.2f}"
            lines.append(
                f"| {command} | {nodes} | {wall} | {run.cpu:.2f} | {fixed:.2f} | "
                f"{run.rss:.0f} | {run.code} | {growth} |"
            )
            # below MIN_NET_CPU seconds the net time is noise around the fixed cost
            previous = (nodes, net) if net >= MIN_NET_CPU and not stopped else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def build(size: int, width: int, folder: Path, with_prenorm: bool) -> None:
    """Write the chain (and the pre-norm model with its calibration) for one size."""
    proto = chain_model(size, width)
    onnx.save(proto, str(folder / f"chain{size}.onnx"))
    (folder / f"chain{size}.nodes").write_text(str(len(proto.graph.node)))
    if with_prenorm:
        onnx.save(prenorm_model(size, 2 * width), str(folder / f"prenorm{size}.onnx"))
        np.savez(folder / "calib.npz", ids=np.random.default_rng(1).integers(0, 64, size=(8, 1, 8)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        build(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5] == "slice")
        raise SystemExit(0)
    main()
