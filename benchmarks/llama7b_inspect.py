"""Benchmark: ``spa inspect`` and ``spa analyze`` on a Llama-2-7B-shaped fp16 model
(~13 GB external data).

Writes a decoder with Llama-2-7B's shapes and op structure (embedding Gather,
RMSNorm decomposed as Cast/Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul, rotary
embeddings with Slice/Neg/Concat, causal attention with MatMul/Softmax/MatMul
and a Trilu mask, SwiGLU MLP, LM head; opset 18) whose weights are streamed to
``model.onnx.data`` from a tiled 64 MB block of seeded noise, so memory stays
small. Then runs ``python -m spa.cli.main inspect`` (and ``compute_stats``) in
subprocesses under ``/usr/bin/time -v`` and reports wall time and peak RSS.

    python benchmarks/llama7b_inspect.py                 # full size, ~13 GB on disk
    python benchmarks/llama7b_inspect.py --layers 1 --hidden 256 --intermediate 512 \\
        --vocab 1000 --heads 4                           # a seconds-long check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["LlamaConfig", "main", "run_measured", "write_llama_model"]

GOAL_SECONDS = 10.0
GOAL_RSS_BYTES = 2 * 2**30
_ALIGN = 4096
_BLOCK_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    layers: int = 32
    hidden: int = 4096
    intermediate: int = 11008
    heads: int = 32
    vocab: int = 32000
    max_positions: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def weight_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every fp16 weight, in file order."""
        h, i = self.hidden, self.intermediate
        shapes: list[tuple[str, tuple[int, ...]]] = [
            ("model.embed_tokens.weight", (self.vocab, h)),
            ("model.rotary.cos_cache", (self.max_positions, self.head_dim // 2)),
            ("model.rotary.sin_cache", (self.max_positions, self.head_dim // 2)),
        ]
        for layer in range(self.layers):
            prefix = f"model.layers.{layer}"
            shapes += [
                (f"{prefix}.input_layernorm.weight", (h,)),
                (f"{prefix}.self_attn.q_proj.weight", (h, h)),
                (f"{prefix}.self_attn.k_proj.weight", (h, h)),
                (f"{prefix}.self_attn.v_proj.weight", (h, h)),
                (f"{prefix}.self_attn.o_proj.weight", (h, h)),
                (f"{prefix}.post_attention_layernorm.weight", (h,)),
                (f"{prefix}.mlp.gate_proj.weight", (h, i)),
                (f"{prefix}.mlp.up_proj.weight", (h, i)),
                (f"{prefix}.mlp.down_proj.weight", (i, h)),
            ]
        return [*shapes, ("model.norm.weight", (h,)), ("lm_head.weight", (h, self.vocab))]


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[TensorProto] = []

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"/{name}", **attrs))
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        self.constants.append(numpy_helper.from_array(array, name))
        return name


def _rms_norm(g: _GraphBuilder, x: str, weight: str, p: str) -> str:
    x32 = g.op("Cast", [x], f"{p}/cast_in", to=TensorProto.FLOAT)
    square = g.op("Pow", [x32, "two"], f"{p}/pow")
    mean = g.op("ReduceMean", [square, "axis_last"], f"{p}/mean", keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [mean, "eps"], f"{p}/add_eps")], f"{p}/sqrt")
    normed = g.op("Mul", [x32, g.op("Reciprocal", [std], f"{p}/rsqrt")], f"{p}/scale")
    return g.op(
        "Mul", [weight, g.op("Cast", [normed], f"{p}/cast_out", to=TensorProto.FLOAT16)], f"{p}/out"
    )


def _rope(g: _GraphBuilder, x: str, p: str) -> str:
    first = g.op("Slice", [x, "zero", "half", "axis_last"], f"{p}/x1")
    second = g.op("Slice", [x, "half", "big", "axis_last"], f"{p}/x2")
    rotated = g.op("Concat", [g.op("Neg", [second], f"{p}/neg"), first], f"{p}/rot", axis=-1)
    return g.op(
        "Add",
        [g.op("Mul", [x, "cos"], f"{p}/mul_cos"), g.op("Mul", [rotated, "sin"], f"{p}/mul_sin")],
        f"{p}/out",
    )


def _attention(g: _GraphBuilder, x: str, w: str, p: str) -> str:
    heads = {}
    for part in ("q", "k", "v"):
        flat = g.op("MatMul", [x, f"{w}.{part}_proj.weight"], f"{p}/{part}_proj")
        split = g.op("Reshape", [flat, "heads_shape"], f"{p}/{part}_heads")
        heads[part] = g.op("Transpose", [split], f"{p}/{part}_bnsh", perm=[0, 2, 1, 3])
    query, key = _rope(g, heads["q"], f"{p}/q_rope"), _rope(g, heads["k"], f"{p}/k_rope")
    key_t = g.op("Transpose", [key], f"{p}/k_t", perm=[0, 1, 3, 2])
    scores = g.op("Mul", [g.op("MatMul", [query, key_t], f"{p}/qk"), "scale"], f"{p}/scaled")
    probs = g.op("Softmax", [g.op("Add", [scores, "mask"], f"{p}/masked")], f"{p}/softmax", axis=-1)
    context = g.op("MatMul", [probs, heads["v"]], f"{p}/pv")
    merged = g.op("Transpose", [context], f"{p}/bshd", perm=[0, 2, 1, 3])
    flat = g.op("Reshape", [merged, "hidden_shape"], f"{p}/merge")
    return g.op("MatMul", [flat, f"{w}.o_proj.weight"], f"{p}/o_proj")


def _mlp(g: _GraphBuilder, x: str, w: str, p: str) -> str:
    gate = g.op("MatMul", [x, f"{w}.gate_proj.weight"], f"{p}/gate_proj")
    up = g.op("MatMul", [x, f"{w}.up_proj.weight"], f"{p}/up_proj")
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}/sigmoid")], f"{p}/silu")
    gated = g.op("Mul", [silu, up], f"{p}/gated")
    return g.op("MatMul", [gated, f"{w}.down_proj.weight"], f"{p}/down_proj")


def _shared_inputs(g: _GraphBuilder, config: LlamaConfig) -> None:
    """Constants, the causal mask and the rotary tables every layer reads."""
    g.const("two", np.array(2.0, np.float32))
    g.const("eps", np.array(1e-5, np.float32))
    g.const("axis_last", np.array([-1], np.int64))
    g.const("axis_head", np.array([1], np.int64))
    g.const("zero", np.array([0], np.int64))
    g.const("one", np.array(1, np.int64))
    g.const("half", np.array([config.head_dim // 2], np.int64))
    g.const("big", np.array([2**62], np.int64))
    g.const("heads_shape", np.array([0, 0, config.heads, config.head_dim], np.int64))
    g.const("hidden_shape", np.array([0, 0, config.hidden], np.int64))
    g.const("scale", np.array(config.head_dim**-0.5, np.float16))
    seq = g.op("Shape", ["input_ids"], "seq_len", start=1, end=2)
    square = g.op("Concat", [seq, seq], "mask_shape", axis=0)
    fill = helper.make_tensor("fill", TensorProto.FLOAT16, [1], [-65504.0])
    full = g.op("ConstantOfShape", [square], "mask_full", value=fill)
    g.op("Trilu", [full, "one"], "mask", upper=1)
    for table in ("cos", "sin"):
        rows = g.op("Gather", [f"model.rotary.{table}_cache", "position_ids"], f"{table}_rows")
        both = g.op("Concat", [rows, rows], f"{table}_full", axis=-1)
        g.op("Unsqueeze", [both, "axis_head"], table)


def build_graph(config: LlamaConfig) -> tuple[onnx.ModelProto, list[TensorProto]]:
    """The model proto (weights not attached) and its weight tensors (dims only)."""
    g = _GraphBuilder()
    _shared_inputs(g, config)
    hidden = g.op("Gather", ["model.embed_tokens.weight", "input_ids"], "embed")
    for layer in range(config.layers):
        w, p = f"model.layers.{layer}", f"layers.{layer}"
        normed = _rms_norm(g, hidden, f"{w}.input_layernorm.weight", f"{p}/input_norm")
        hidden = g.op(
            "Add", [hidden, _attention(g, normed, f"{w}.self_attn", f"{p}/attn")], f"{p}/res1"
        )
        normed = _rms_norm(g, hidden, f"{w}.post_attention_layernorm.weight", f"{p}/post_norm")
        hidden = g.op("Add", [hidden, _mlp(g, normed, f"{w}.mlp", f"{p}/mlp")], f"{p}/res2")
    normed = _rms_norm(g, hidden, "model.norm.weight", "final_norm")
    g.op("MatMul", [normed, "lm_head.weight"], "logits")
    weights = []
    for name, shape in config.weight_shapes():
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT16, dims=shape)
        weights.append(tensor)
    graph = helper.make_graph(
        g.nodes,
        "llama2_7b_shaped",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT16, ["batch", "sequence", config.vocab]
            )
        ],
        initializer=g.constants,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="spa-benchmark"
    )
    model.ir_version = 9
    return model, weights


def write_llama_model(out: Path, config: LlamaConfig, seed: int = 0) -> Path:
    """Write ``out/model.onnx`` and stream its weights to ``out/model.onnx.data``."""
    out.mkdir(parents=True, exist_ok=True)
    model, weights = build_graph(config)
    rng = np.random.default_rng(seed)
    block = (rng.standard_normal(_BLOCK_BYTES // 2, dtype=np.float32) * 0.02).astype(np.float16)
    raw = memoryview(block.tobytes())
    data_name = "model.onnx.data"
    offset = 0
    with open(out / data_name, "wb") as stream:
        for index, tensor in enumerate(weights):
            length = int(np.prod(tensor.dims)) * 2
            start = (index * 4099 * 2) % (len(raw) // 2)  # vary content between tensors
            remaining = length
            while remaining:
                piece = raw[start : start + min(remaining, len(raw) - start)]
                stream.write(piece)
                remaining -= len(piece)
                start = 0
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", offset), ("length", length)):
                tensor.external_data.add(key=key, value=str(value))
            offset += length
            padding = -offset % _ALIGN
            stream.write(b"\0" * padding)
            offset += padding
    model.graph.initializer.extend(weights)
    path = out / "model.onnx"
    onnx.save(model, str(path))
    return path


def run_measured(command: list[str]) -> dict[str, Any]:
    """Run ``command``; wall seconds, peak RSS bytes (``/usr/bin/time -v`` if present), stdout."""
    timer = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    wrapped = [timer, "-v", *command] if timer else command
    start = time.perf_counter()
    done = subprocess.run(wrapped, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )
    # Without GNU time: the largest child so far (this one, if it is the first).
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    for line in done.stderr.splitlines():
        if timer and "Maximum resident set size" in line:
            rss = int(line.rsplit(":", 1)[1]) * 1024
    return {"seconds": seconds, "peak_rss_bytes": rss, "stdout": done.stdout}


_STATS_SNIPPET = (
    "import json, sys; from spa.stats.report import compute_stats; "
    "s = compute_stats(sys.argv[1], dims={'batch': 1, 'sequence': 128}); "
    "print(json.dumps({'params': s.params, 'macs': s.macs_by_family, 'bytes': s.bytes_by_dtype}))"
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/spa-llama7b"))
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--max-positions", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Write the figures here as JSON.")
    parser.add_argument("--keep", action="store_true", help="Keep the model files.")
    parser.add_argument("--no-stats", action="store_true", help="Skip timing compute_stats.")
    parser.add_argument("--no-analyze", action="store_true", help="Skip timing `spa analyze`.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    config = LlamaConfig(
        args.layers, args.hidden, args.intermediate, args.heads, args.vocab, args.max_positions
    )
    weight_bytes = sum(int(np.prod(shape)) * 2 for _, shape in config.weight_shapes())
    args.out.mkdir(parents=True, exist_ok=True)
    needed = int(weight_bytes * 1.1) + 2**30
    free = shutil.disk_usage(args.out).free
    if free < needed:
        print(
            f"error: {args.out} has {free / 1e9:.1f} GB free, the model needs {needed / 1e9:.1f} GB; use --out elsewhere"
        )
        return 1
    start = time.perf_counter()
    path = write_llama_model(args.out, config, seed=args.seed)
    write_seconds = time.perf_counter() - start
    try:
        inspect = run_measured([sys.executable, "-m", "spa.cli.main", "inspect", str(path)])
        stats = (
            None
            if args.no_stats
            else run_measured([sys.executable, "-c", _STATS_SNIPPET, str(path)])
        )
        analyze = (
            None
            if args.no_analyze
            else run_measured([sys.executable, "-m", "spa.cli.main", "analyze", str(path)])
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)
    result: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "weight_bytes": weight_bytes,
        "write_seconds": round(write_seconds, 2),
        "inspect_seconds": round(inspect["seconds"], 3),
        "inspect_peak_rss_bytes": inspect["peak_rss_bytes"],
        "inspect_output": inspect["stdout"],
        "goal": {"seconds": GOAL_SECONDS, "peak_rss_bytes": GOAL_RSS_BYTES},
    }
    if stats is not None:
        result["stats_seconds"] = round(stats["seconds"], 3)
        result["stats_peak_rss_bytes"] = stats["peak_rss_bytes"]
        result["stats"] = json.loads(stats["stdout"].strip().splitlines()[-1])
    if analyze is not None:
        result["analyze_seconds"] = round(analyze["seconds"], 3)
        result["analyze_peak_rss_bytes"] = analyze["peak_rss_bytes"]
        result["analyze_output"] = analyze["stdout"]
    measured = [inspect] + ([analyze] if analyze is not None else [])
    passed = all(
        m["seconds"] <= GOAL_SECONDS and m["peak_rss_bytes"] <= GOAL_RSS_BYTES for m in measured
    )
    result["passed"] = passed
    line = (
        f"{'PASSED' if passed else 'FAILED'} | inspect llama7b-shaped ({config.layers} layers, "
        f"{weight_bytes / 2**30:.1f} GiB fp16 external) | {inspect['seconds']:.2f} s | "
        f"peak RSS {inspect['peak_rss_bytes'] / 2**20:.0f} MiB | written in {write_seconds:.0f} s"
    )
    if stats is not None:
        line += f" | stats {stats['seconds']:.2f} s, {stats['peak_rss_bytes'] / 2**20:.0f} MiB"
    if analyze is not None:
        line += (
            f" | analyze {analyze['seconds']:.2f} s, {analyze['peak_rss_bytes'] / 2**20:.0f} MiB"
        )
    print(line)
    hidden = {"inspect_output", "analyze_output"}
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if passed else 2


if __name__ == "__main__":
    sys.exit(main())
