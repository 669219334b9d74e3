"""ONNX Runtime session creation against graph size (not a test).

Isolates the superlinear step ``models/bench_scaling.py`` finds in the commands
that run ORT (verify, and every writing command's verification): CPU seconds of
``InferenceSession(...)`` alone, graph optimizations off, single thread, for a
chain of ``Relu`` (no initializers) and a chain of ``Add(x, b_i)`` (one 16-float
initializer per node).

    OMP_NUM_THREADS=1 python models/bench_ort_sessions.py --sizes 10000 30000 60000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def chain(nodes: int, with_initializers: bool) -> bytes:
    """``nodes`` Relu nodes, or Add nodes each adding its own initializer, in a chain."""
    graph_nodes, initializers = [], []
    for index in range(nodes):
        source = f"v{index}" if index else "x"
        target = f"v{index + 1}" if index + 1 < nodes else "y"
        if with_initializers:
            initializers.append(numpy_helper.from_array(np.zeros(16, np.float32), f"b{index}"))
            graph_nodes.append(helper.make_node("Add", [source, f"b{index}"], [target]))
        else:
            graph_nodes.append(helper.make_node("Relu", [source], [target]))
    graph = helper.make_graph(
        graph_nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


def session_seconds(model: bytes) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    start = time.process_time()
    ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 60000])
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}")
    for with_initializers in (False, True):
        label = "Add + initializer" if with_initializers else "Relu"
        previous = None
        for size in args.sizes:
            seconds = session_seconds(chain(size, with_initializers))
            growth = ""
            if previous is not None:
                growth = f"  growth {(seconds / previous[1]) / (size / previous[0]):.2f}"
            print(f"{label:18s} {size:>7d} nodes  session cpu {seconds:6.2f} s{growth}", flush=True)
            previous = (size, seconds)


if __name__ == "__main__":
    main()
