"""What a measured GPU run says against the timing model (stdlib only), for
model.py's commands:

    python3 plugins/bench/model.py compare measured.json [predictions.json]
    python3 plugins/bench/model.py bounds [results.json]

``compare`` sets each measured row beside its prediction (and, beside a
run's results, the launch floor against the fitted t0 and what programmatic
dependent launch saved); ``bounds`` judges the goals at the kernels' limits
(bytes, L1, t0) and finds the largest fixed cost per launch at which each
goal is met.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

Row = dict[str, Any]
HERE = Path(__file__).resolve().parent


def _load_model() -> Any:
    """model.py, next to this file (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("spa_bench_model", HERE / "model.py")
    assert spec is not None and spec.loader is not None
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    return model


timing_model = _load_model()


# ---- bounds: the goals at the kernels' limits, whatever their code ----
#
# A row's bound is its kernel's fixed cost per launch (the fitted t0: launch,
# pipeline fill, epilogue, tail) plus the larger of two limits no code change
# moves: the HBM floor (model.py hbm_floor_us: weight, activations and output once at
# the measured bandwidth) and, for the per-column w4_gqsa, the L1 gather
# (model.py GQSA_L1_US: a column's kept groups are distinct groups of k, so each entry
# needs every token's own g activations from L1 or shared memory, 2 B per
# multiply-add, 128 B per clock and SM: any CUDA-core kernel over this format;
# the tensor-core alternative, one mma per 16 columns over the union of their
# groups, pays more in issue than this at 50 % kept: by this project's count,
# about 45 warp instructions per 16 x 16 step, 72 us at 28672x8192 M = 8
# against the L1 gather's 56; an estimate, not compiled). Tensor-core throughput
# is left out (it binds only past M = 64). goals.py on these rows says which
# goals no kernel can meet at the fitted t0, and `bounds` finds the largest
# fixed cost (one t0 for every kernel) at which each goal is met.


def bound_us(kernel: str, k: int, n: int, m: int, g: int = 128, t0: float | None = None) -> float:
    """The least time of one call by the limits above; t0 None: the kernel's fitted fixed cost."""
    if t0 is None:
        t0 = timing_model.GQSA[g]["t0"] if kernel == "w4_gqsa" else timing_model.DENSE["t0"]
    limit = timing_model.hbm_floor_us(kernel, k, n, m)
    if kernel == "w4_gqsa":
        nnz_m = 0.5 * (k // g) * n / 1e6
        limit = max(limit, nnz_m * m * timing_model.GQSA_L1_US * g / 16)
    return t0 + limit


def bound_rows(measured: list[Row], t0: float | None = None) -> list[Row]:
    """One row per measured row with ``us`` at its bound (cuBLAS as measured), and w4_gqsa_tile at every
    w4a16 shape and M (TILE_KEEP of 8 kept)."""
    rows = []
    for r in measured:
        g = r.get("group_size", 128)
        us = bound_us(r["kernel"], r["K"], r["N"], r["M"], g, t0)
        rows.append({**r, "us": round(us, 3), "speedup": round(r["cublas_fp16_us"] / us, 3), "bound": True,
                     "measured_us": r["us"]})  # fmt: skip
        if r["kernel"] == "w4a16":
            rows.append(timing_model.tile_row(rows[-1], bound_us("w4_gqsa_tile", r["K"], r["N"], r["M"], 16, t0), 3))
    return rows


def bounds_report(measured: list[Row], competitors: list[Row] | None) -> str:
    """goals.py's verdicts on the bound rows at the fitted fixed costs, and per goal the largest common
    fixed cost t0 (0-10 us, to 0.01 us) at which the bound rows meet it."""
    goals = timing_model._goals()
    lines = [f"at the fitted fixed costs (t0 {timing_model.DENSE['t0']:.2f} us dense, {timing_model.GQSA[16]['t0']:.2f} us w4_gqsa g = 16):"]
    ran = measured[0].get("card", "") if measured else ""
    if "H200" not in ran:
        lines.insert(0, f"note: these bounds use the H200's read bandwidth ({timing_model.HBM_GBPS:.0f} GB/s) and fitted costs "
                        f"with this run's cuBLAS rows from the {ran or 'unnamed card'}: read them as the H200's")  # fmt: skip
    verdicts = goals.evaluate(bound_rows(measured), competitors)
    for goal, met, detail in verdicts:
        lines.append(f"  {'MET   ' if met else 'NOT MET'} | {goal} | {detail}")

    def met_at(goal: str, t0: float) -> bool:
        return next(ok for name, ok, _ in goals.evaluate(bound_rows(measured, t0), competitors) if name == goal)

    lines.append("the largest fixed cost per launch (every kernel) at which each goal is met at the bound:")
    for goal, _, detail in verdicts:
        if goal == "correctness":
            continue
        if detail.startswith("no "):  # goals.py found nothing to judge (no row, no tinygemm timings)
            lines.append(f"  {goal}: nothing to judge it by ({detail})")
            continue
        if not met_at(goal, 0.0):
            lines.append(f"  {goal}: not even at t0 = 0 (bytes and L1 alone)")
            continue
        lo, hi = 0.0, 10.0
        if met_at(goal, hi):
            lines.append(f"  {goal}: met at any t0 up to {hi:.0f} us")
            continue
        while hi - lo > 0.005:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if met_at(goal, mid) else (lo, mid)
        lines.append(f"  {goal}: t0 <= {lo:.2f} us")
    return "\n".join(lines)


def compare(measured: list[Row], predicted: list[Row]) -> str:
    table = {(p["kernel"], p["K"], p["N"], p["M"], p.get("group_size", 128)): p for p in predicted}
    lines, logs = [], []
    for r in measured:
        p = table.get((r["kernel"], r["K"], r["N"], r["M"], r.get("group_size", 128)))
        if p is None:
            continue
        ratio = r["us"] / p["us"]
        logs.append(abs(math.log(ratio)))
        lines.append(f"{r['kernel']:8} g={r.get('group_size', 128):<3} {r['K']}x{r['N']:<6} M={r['M']:<3} "
                     f"predicted {p['us']:9.2f} us  measured {r['us']:9.2f} us  measured/predicted {ratio:.2f}")  # fmt: skip
    if not logs:
        return "no row in common"
    logs.sort()
    median, worst = math.exp(logs[len(logs) // 2]) - 1, math.exp(logs[-1]) - 1
    within = sum(1 for x in logs if x <= math.log(1.25)) / len(logs)
    lines.append(f"{len(logs)} rows: median |error| {median:.0%}, worst {worst:.0%}, within 25 %: {within:.0%}")
    note = card_note(measured, predicted)
    if note:
        lines.append(note)
    return "\n".join(lines)


def card_note(measured: list[Row], predicted: list[Row]) -> str:
    """A line saying that the run's card is not the one the predictions are for (the model is
    calibrated on the H200: 132 SMs, 4575 GB/s), so the ratios above hold the cards' difference
    too; empty when the cards match."""
    ran, for_card = measured[0].get("card", "?"), predicted[0].get("card", "?") if predicted else "?"
    if ran == for_card:
        return ""
    bandwidth = next((r["hbm_gbps"] for r in measured if r.get("hbm_gbps")), None)
    measured_bw = f"{bandwidth:.0f} GB/s measured" if bandwidth else "its read bandwidth not in the rows"
    return (f"note: the predictions are for the {for_card} ({timing_model.SMS} SMs, {timing_model.HBM_GBPS:.0f} GB/s read); this run is on "
            f"the {ran} ({measured_bw}): the ratios above include the difference between the cards, so they "
            f"do not test the model, whose constants (SMs, bandwidth, fitted costs) are the H200's")  # fmt: skip


def launch_floor_line(floor: Row) -> str:
    """The measured empty-kernel launch against the fitted fixed cost t0 (which also holds the
    pipeline fill, the epilogue and the tail; diagnosis.md §2.5 put the launch alone near 1.4 µs)."""
    grid = floor["empty_grid_us"]
    return (f"launch floor: an empty kernel of {floor['ctas']} CTAs takes {grid:.2f} us in the harness's graphs "
            f"(one warp {floor['empty_warp_us']:.2f} us); the model's t0 is {timing_model.DENSE['t0']:.2f} us, so "
            f"{timing_model.DENSE['t0'] - grid:.2f} us of it is the kernels' own fill, epilogue and tail ({floor['card']})")


def pdl_summary(rows: list[Row], floor: Row | None = None) -> str:
    """The harness's pdl.json: each kernel's time without programmatic dependent launch
    (SPA_PDL=0) over its time with it (the launchers' default on sm_90+, as results.json is
    timed), median and range per kernel, back to back (each launch after one of the same
    kernel, which lets it start at once: the best case) and after a plain kernel (one that
    never triggers it, as most of a network's kernels: the pair's time both ways); the empty
    kernel's launch floor both ways when launch_floor.json has it. The model's t0 was fitted
    on a run without PDL: what PDL takes off it (the median µs saved) shows here, not in the fit."""
    def spread(pairs: list[tuple[float, float]]) -> str:  # (without, with) per row
        ratios = sorted(no / yes for no, yes in pairs)
        saved = sorted(no - yes for no, yes in pairs)
        return (f"{ratios[len(ratios) // 2]:.3f}x ({ratios[0]:.3f}x .. {ratios[-1]:.3f}x; "
                f"median {saved[len(saved) // 2]:.2f} us saved)")  # fmt: skip

    by_kernel: dict[str, list[Row]] = {}
    for r in rows:
        by_kernel.setdefault(r["kernel"] + (f" g={r['group_size']}" if r["kernel"] == "w4_gqsa" else ""), []).append(r)
    lines = ["programmatic dependent launch (pdl.json): time without / with, median (range) per kernel; > 1: PDL is faster"]
    for name, group in sorted(by_kernel.items()):
        line = f"  {name:16} back to back {spread([(r['no_pdl_us'], r['pdl_us']) for r in group])}"
        pairs = [(r["after_plain_kernel_no_pdl_us"], r["after_plain_kernel_pdl_us"]) for r in group
                 if "after_plain_kernel_pdl_us" in r]  # fmt: skip
        lines.append(line + (f", after a plain kernel {spread(pairs)}" if pairs else "") + f" over {len(group)} rows")
    if floor is not None and "empty_grid_pdl_us" in floor:
        lines.append(f"  empty kernel of {floor['ctas']} CTAs: {floor['empty_grid_us']:.2f} us, "
                     f"{floor['empty_grid_pdl_us']:.2f} us with PDL ({floor['card']})")  # fmt: skip
    return "\n".join(lines)
