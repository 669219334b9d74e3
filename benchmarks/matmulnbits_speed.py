"""Benchmark: W4 MatMulNBits vs the fp32 model in ONNX Runtime CPU.

Builds a stack of Llama-7B-shaped MLP blocks (``x @ W_up [K, F] -> Relu ->
@ W_down [F, K]``, default K = 4096, F = 11008) with seeded weights,
quantizes every MatMul weight with ``spa.quant.quantize_model`` (RTN, INT4,
block 128, target ``ort`` = ``com.microsoft.MatMulNBits``), and times the
fp32 and the quantized model in the same process, interleaved, at each number
of rows M. The quantized model runs twice: as written (fp32 activations,
``accuracy_level`` 0) and with ``accuracy_level=4`` (ORT quantizes the
activations to int8 inside the kernel), a setting users can pick at export.

    python benchmarks/matmulnbits_speed.py --rows 1 16 --json bench-out/matmulnbits.json

The figure to quote is the ratio fp32 / quantized from one run; absolute
times depend on the machine's load.
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
from onnx import TensorProto, helper, numpy_helper

from spa.workflows.quantize import file_bytes, quantize_model
from spa.verify import create_session


def mlp_stack(path: Path, hidden: int, inner: int, blocks: int, seed: int) -> Path:
    """``blocks`` Relu MLPs of Llama-7B width, weights N(0, 0.02), saved at ``path``."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = "x"
    for index in range(blocks):
        up, down = f"w_up_{index}", f"w_down_{index}"
        initializers += [
            numpy_helper.from_array(
                (rng.standard_normal((hidden, inner)) * 0.02).astype(np.float32), up
            ),
            numpy_helper.from_array(
                (rng.standard_normal((inner, hidden)) * 0.02).astype(np.float32), down
            ),
        ]
        nodes += [
            helper.make_node("MatMul", [current, up], [f"h_{index}"], name=f"up_{index}"),
            helper.make_node("Relu", [f"h_{index}"], [f"a_{index}"], name=f"relu_{index}"),
            helper.make_node("MatMul", [f"a_{index}", down], [f"y_{index}"], name=f"down_{index}"),
        ]
        current = f"y_{index}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "mlp_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", hidden])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    return path


def with_accuracy_level(source: Path, target: Path, level: int) -> Path:
    model = onnx.load(str(source))
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])
    onnx.save_model(model, str(target), save_as_external_data=True, location=f"{target.name}.data")
    return target


def time_models(models: dict[str, Path], rows: int, hidden: int, runs: int) -> dict[str, float]:
    sessions = {name: create_session(path) for name, path in models.items()}
    feed = {"x": np.random.default_rng(1).standard_normal((rows, hidden), dtype=np.float32)}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm-up
        session.run(None, feed)
    for _ in range(runs):  # interleaved, so load changes hit every model alike
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--inner", type=int, default=11008)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spa-bench-") as name:
        folder = Path(name)
        dense = mlp_stack(folder / "fp32.onnx", args.hidden, args.inner, args.blocks, seed=0)
        result = quantize_model(
            dense, folder / "w4.onnx", bits=4, block=128, method="rtn", target="ort", verify=False
        )
        models = {
            "fp32": dense,
            "w4": result.output,
            "w4_acc4": with_accuracy_level(result.output, folder / "w4_acc4.onnx", 4),
        }
        rows_out = []
        for rows in args.rows:
            ms = time_models(models, rows, args.hidden, args.runs)
            row = {
                "rows": rows,
                **{f"{k}_ms": round(v, 3) for k, v in ms.items()},
                "speedup_w4": round(ms["fp32"] / ms["w4"], 2),
                "speedup_w4_acc4": round(ms["fp32"] / ms["w4_acc4"], 2),
            }
            rows_out.append(row)
            print(
                f"M={rows:>3}  fp32 {ms['fp32']:8.2f} ms  W4 {ms['w4']:8.2f} ms "
                f"({row['speedup_w4']:.2f}x)  W4 acc4 {ms['w4_acc4']:8.2f} ms "
                f"({row['speedup_w4_acc4']:.2f}x)"
            )
        summary = {
            "shape": {"hidden": args.hidden, "inner": args.inner, "blocks": args.blocks},
            "bytes": {"fp32": file_bytes(dense), "w4": file_bytes(result.output)},
            "onnxruntime": __import__("onnxruntime").__version__,
            "rows": rows_out,
        }
        print(f"bytes fp32 {summary['bytes']['fp32']:,} -> W4 {summary['bytes']['w4']:,}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
