"""Read plugins/bench/results.json against the goals of issue 6 (stdlib only).

    python3 plugins/bench/goals.py [results.json]

G1: w4a16 4096x11008 at M=1 <= 10.5 us (H100).
G3: w4a16 >= 3.0x cuBLAS FP16 for every M <= 16 on shapes with K*N >= 16M;
    never slower than cuBLAS for M <= 64.
G4: w4_sp24 >= 1.25x our w4a16 for M <= 32.
G5: w4_gqsa (50% groups kept, g = 16: spa's default) >= 1.4x our w4a16 for M <= 8;
    "G5 g=32" reads the g = 32 rows the same way. By bytes alone g = 16 is
    bounded at 1.38x (0.516 / 0.375 B per weight), g = 32 at 1.65x.
Correctness: every row's max_rel_err <= 2e-3.
Prints one verdict line per goal; exit 0 when all are met.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _index(rows: list[Row]) -> dict[tuple[str, int, int, int], Row]:
    return {(r["kernel"], r["K"], r["N"], r["M"]): r for r in rows}


def _ratio_goal(rows: list[Row], candidates: list[Row], max_m: int, minimum: float) -> tuple[bool, str]:
    table = _index([r for r in rows if r["kernel"] == "w4a16"])
    worst: tuple[float, str] = (float("inf"), "no rows")
    for r in candidates:
        if r["M"] > max_m:
            continue
        base = table.get(("w4a16", r["K"], r["N"], r["M"]))
        if base is None:
            continue
        ratio = base["us"] / r["us"]
        worst = min(worst, (ratio, f"{r['K']}x{r['N']} M={r['M']}"))
    return worst[0] >= minimum, f"worst {worst[0]:.2f}x at {worst[1]} (goal >= {minimum}x)"


def evaluate(rows: list[Row]) -> list[tuple[str, bool, str]]:
    """(goal, met, detail) for every goal."""
    verdicts = []
    errors = [r["max_rel_err"] for r in rows]
    worst_err = max(errors, default=float("inf"))
    verdicts.append(("correctness", worst_err <= 2e-3, f"worst max_rel_err {worst_err:.2e} (<= 2e-3)"))
    g1 = _index(rows).get(("w4a16", 4096, 11008, 1))
    verdicts.append(("G1", g1 is not None and g1["us"] <= 10.5, f"{g1['us']:.2f} us (<= 10.5)" if g1 else "no row"))
    dense = [r for r in rows if r["kernel"] == "w4a16"]
    big = [r for r in dense if r["M"] <= 16 and r["K"] * r["N"] >= 16 * 2**20]
    worst_big = min(big, key=lambda r: r["speedup"], default=None)
    worst_all = min(dense, key=lambda r: r["speedup"], default=None)
    verdicts.append((
        "G3a", worst_big is not None and worst_big["speedup"] >= 3.0,
        f"worst {worst_big['speedup']:.2f}x at {worst_big['K']}x{worst_big['N']} M={worst_big['M']} (>= 3.0x, M <= 16)" if worst_big else "no row",
    ))  # fmt: skip
    verdicts.append((
        "G3b", worst_all is not None and worst_all["speedup"] >= 1.0,
        f"worst {worst_all['speedup']:.2f}x at {worst_all['K']}x{worst_all['N']} M={worst_all['M']} (>= 1.0x, M <= 64)" if worst_all else "no row",
    ))  # fmt: skip
    verdicts.append(("G4", *_ratio_goal(rows, [r for r in rows if r["kernel"] == "w4_sp24"], 32, 1.25)))
    for g, goal in ((16, "G5"), (32, "G5 g=32")):
        gqsa = [r for r in rows if r["kernel"] == "w4_gqsa" and r.get("group_size", 16) == g]
        if gqsa or g == 16:
            verdicts.append((goal, *_ratio_goal(rows, gqsa, 8, 1.4)))
    return verdicts


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("results.json")
    if not path.is_file():
        print(f"FAILED | goals | no {path}: the harness wrote no timing rows")
        return 1
    rows = json.loads(path.read_text())
    card = rows[0]["card"] if rows else "no rows"
    verdicts = evaluate(rows)
    for goal, met, detail in verdicts:
        print(f"{'PASSED' if met else 'FAILED'} | {goal} | {detail} | {card}")
    return 0 if all(met for _, met, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
