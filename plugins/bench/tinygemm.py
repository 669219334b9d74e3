"""Time torch's tinygemm W4A16 (`torch._weight_int4pack_mm`, group 128) and
cuBLAS FP16 (`torch.nn.functional.linear`) on the harness's shapes and M, the
way the harness times spa's kernels: CUDA graphs of 20 launches rotating over
weight copies that together exceed 2x L2, replayed 5 times.

    python3 plugins/bench/tinygemm.py OUT.json [--quick]

Writes {"gpu", "torch", "rows": [{K, N, M, cublas_fp16_us, tinygemm_w4_us,
tinygemm_speedup, tinygemm_max_rel_err}]}: the format goals.py reads for G3c.
tinygemm takes BF16 activations (its only CUDA type), so its rows are BF16
while cuBLAS and spa's timing rows are FP16; the bytes moved are the same.
Exits 0 with a SKIPPED line where torch or a CUDA device is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (5120, 5120), (5120, 13824), (13824, 5120),
          (8192, 8192), (8192, 28672), (28672, 8192)]  # fmt: skip  (harness.cu kShapes)
MS = [1, 2, 4, 8, 16, 32, 64]
GROUP, INNER_K_TILES, LAUNCHES, REPLAYS = 128, 8, 20, 5


def time_graph(torch: Any, launch: Any, copies: int) -> float:
    """Mean µs of launch(copy) over a captured graph of LAUNCHES launches, replayed REPLAYS times."""
    side = torch.cuda.Stream()  # warm up off the default stream, as torch's graph capture asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in range(copies):
            launch(c)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(LAUNCHES):
            launch(i % copies)
    graph.replay()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPLAYS):
        graph.replay()
    stop.record()
    stop.synchronize()
    return 1000.0 * start.elapsed_time(stop) / (LAUNCHES * REPLAYS)


def int4_weight(torch: Any, k: int, n: int, seed: int) -> tuple[Any, Any, Any]:
    """(tinygemm packed weight, scales_and_zeros, dequantized BF16 W^T [N, K]) of a random INT4 weight."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda", generator=gen)
    scales = (torch.rand((k // GROUP, n), device="cuda", generator=gen) * 0.018 + 0.002).to(torch.bfloat16)
    # tinygemm dequantizes (q - 8) * scale + zero; zero = 0 gives spa's symmetric INT4.
    scales_and_zeros = torch.stack([scales, torch.zeros_like(scales)], dim=2).contiguous()
    packed = torch._convert_weight_to_int4pack(((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8), INNER_K_TILES)
    dense = ((q - 8).to(torch.float32) * scales.float().t().repeat_interleave(GROUP, dim=1)).to(torch.bfloat16)
    return packed, scales_and_zeros, dense


def measure_shape(torch: Any, k: int, n: int, l2: int) -> list[dict[str, Any]]:
    copies16 = max(2, 2 * l2 // (2 * k * n) + 1)
    w16 = [torch.randn((n, k), device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies16)]
    copies4 = max(2, 2 * l2 // (k * n // 2) + 1)
    weights = [int4_weight(torch, k, n, seed) for seed in range(copies4)]
    rows = []
    for m in MS:
        x16 = torch.randn((m, k), device="cuda", dtype=torch.float16)
        xb = x16.to(torch.bfloat16)
        packed, sz, dense = weights[0]
        got = torch._weight_int4pack_mm(xb, packed, GROUP, sz).float()
        want = xb.float() @ dense.float().t()
        err = ((got - want).abs().max() / want.abs().max()).item()
        cublas = time_graph(torch, lambda c, x=x16: torch.nn.functional.linear(x, w16[c]), copies16)
        tiny = time_graph(torch, lambda c, x=xb: torch._weight_int4pack_mm(x, weights[c][0], GROUP, weights[c][1]),
                          copies4)  # fmt: skip
        print(f"tinygemm K={k:<6} N={n:<6} M={m:<3} {tiny:8.2f} us | cuBLAS fp16 {cublas:8.2f} us | "
              f"speedup {cublas / tiny:.2f}x | max_rel_err {err:.2e}")  # fmt: skip
        rows.append({"K": k, "N": n, "M": m, "cublas_fp16_us": round(cublas, 3), "tinygemm_w4_us": round(tiny, 3),
                     "tinygemm_speedup": round(cublas / tiny, 3), "tinygemm_max_rel_err": err})  # fmt: skip
    return rows


def measure(torch: Any, quick: bool) -> list[dict[str, Any]]:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for k, n in SHAPES[:2] if quick else SHAPES:
        rows += measure_shape(torch, k, n, l2)
        torch.cuda.empty_cache()  # the shape's weights are gone with measure_shape's frame
    return rows


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: tinygemm.py OUT.json [--quick]", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("SKIPPED | tinygemm | torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("SKIPPED | tinygemm | torch sees no CUDA device")
        return 0
    if not hasattr(torch, "_weight_int4pack_mm"):
        print(f"SKIPPED | tinygemm | torch {torch.__version__} has no _weight_int4pack_mm")
        return 0
    rows = measure(torch, "--quick" in argv)
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}
    Path(argv[1]).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
