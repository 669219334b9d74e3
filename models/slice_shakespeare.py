"""SliceGPT on the Shakespeare LM test bed: held-out perplexity at 10/20/25/30% slicing.

    python models/slice_shakespeare.py                      # both tables, ~15 min on two cores
    python models/slice_shakespeare.py --tables compare     # only slicing vs pruning

For each ratio the hidden size of ``models/testbeds/shakespeare_lm.onnx`` (192) is sliced by
``spa.workflows.slice.slice_model`` (PCA of the residual stream on ``--calib-samples`` windows of
the training text; ``D'`` a multiple of 8) and, as a control, by a random rotation at the same
``D'``; PCA with one basis per norm (the paper's form, shortcut matrices on the skips) too,
measured at once on the unsliced model or sequentially (each norm on the model whose earlier norms
are already sliced, the paper's algorithm), and
``rotation="none"``: the hidden channels of least energy pruned without rotation (the baseline;
``--tables slicing --rotations none`` recomputes only those rows).
Perplexity is measured on the evenly spread held-out windows of ``docs/testbeds.md``
(``--windows``, 128 bytes each). The second table (``models/slice_vs_prune.py``) sets
slicing against spa's head+MLP pruning at equal parameter count and against slicing + pruning in
one plan, with ORT CPU latency ratios measured interleaved; the plot is
``slice_shakespeare.png`` (needs matplotlib). Writes ``models/results/slice_shakespeare.{md,json}``;
a table not asked for in ``--tables`` is kept from the JSON already there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.slice_vs_prune import comparison_rows
from spa.testbeds import shakespeare
from spa.workflows.slice import slice_model

__all__ = ["main"]

MODEL = Path(__file__).resolve().parent / "testbeds" / "shakespeare_lm.onnx"
RESULTS = Path(__file__).resolve().parent / "results"
RATIOS = (0.1, 0.2, 0.25, 0.3)


def _row(
    ratio: float, rotation: str, bases: str, folder: Path, calibration: list, windows: int
) -> dict:
    output = folder / f"sliced-{rotation}-{bases.replace(' ', '')}-{ratio}.onnx"
    result = slice_model(
        MODEL, output, ratio=ratio, rotation=rotation, bases=bases.split(",")[0],
        sequential=bases.endswith("sequential"), calibration=calibration, round_to=8,
        exactness=False, seed=0,
    )  # fmt: skip
    summary = result.report["slice"]
    return {
        "ratio": ratio,
        "rotation": rotation,
        "bases": bases,
        "hidden": result.hidden_after,
        "params": summary["params_after"],
        "macs": summary["macs_after"],
        "variance_kept": summary["variance_kept"],
        "perplexity": shakespeare.perplexity(output, max_windows=windows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=128, help="held-out windows (128 bytes)")
    parser.add_argument("--calib-samples", type=int, default=128, help="training windows for PCA")
    parser.add_argument("--tables", default="slicing,compare", help="slicing, compare, or both")
    parser.add_argument("--rotations", default="pca,random,none",
                        help="slicing rows to (re)compute; the others are kept from the JSON")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tables = set(args.tables.split(","))
    calibration = shakespeare.calibration_feeds(args.calib_samples, seed=0)
    previous_path = args.out / "slice_shakespeare.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    rows, compare = previous.get("rows", []), previous.get("compare", [])
    with tempfile.TemporaryDirectory(prefix="spa-slice-bench-") as tmp:
        if "slicing" in tables:
            rotations = set(args.rotations.split(","))
            kept = [row for row in rows if row["rotation"] not in rotations | {"dense"}]
            fresh = _slicing_rows(Path(tmp), calibration, args.windows, rotations)
            rows = sorted(
                kept + fresh, key=lambda row: (row["ratio"], _ORDER.index(row["rotation"]))
            )
        if "compare" in tables:
            compare = comparison_rows(MODEL, RATIOS, Path(tmp), calibration, args.windows)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"windows": args.windows, "calib_samples": args.calib_samples, "seq_len": 128,
                "round_to": 8, "model": "models/testbeds/shakespeare_lm.onnx"}  # fmt: skip
    text = json.dumps({"settings": settings, "rows": rows, "compare": compare}, indent=2) + "\n"
    (args.out / "slice_shakespeare.json").write_text(text)
    markdown = _table(rows, settings) + _compare_table(compare, rows) + _memory_table(args.out)
    if compare and _plot(compare, rows, args.out / "slice_shakespeare.png"):
        markdown += "\n![perplexity against parameters](slice_shakespeare.png)\n"
    (args.out / "slice_shakespeare.md").write_text(markdown)
    print(markdown)
    return 0


_ORDER = ("dense", "pca", "random", "none")
_VARIANTS = (("pca", "shared"), ("pca", "per-norm"), ("pca", "per-norm, sequential"),
             ("random", "shared"), ("none", "shared"))  # fmt: skip


def _slicing_rows(folder: Path, calibration: list, windows: int, rotations: set[str]) -> list[dict]:
    dense = slice_model(MODEL, folder / "exact.onnx", ratio=0.0, rotation="random", exactness=True)
    assert dense.exactness is not None
    rows = [{"ratio": 0.0, "rotation": "dense", "bases": "", "hidden": 192,
             "params": dense.report["slice"]["params_before"],
             "macs": dense.report["slice"]["macs_before"], "variance_kept": 1.0,
             "perplexity": shakespeare.perplexity(MODEL, max_windows=windows),
             "exact_rotation_max_rel": dense.exactness.max_rel_diff}]  # fmt: skip
    for ratio in RATIOS:
        for rotation, bases in (v for v in _VARIANTS if v[0] in rotations):
            rows.append(_row(ratio, rotation, bases, folder, calibration, windows))
            print(rows[-1], flush=True)
    return rows


def _compare_table(compare: list[dict], rows: list[dict]) -> str:
    if not compare:
        return ""
    dense = next(row for row in rows if row["rotation"] == "dense")
    lines = [
        "",
        "## Slicing against head+MLP pruning at equal parameter count",
        "",
        "`python models/slice_shakespeare.py --tables compare` (`models/slice_vs_prune.py`). "
        "Each slicing ratio sets the parameter budget; `prune` removes heads and MLP channels "
        "of the dense model (ratio bisected to the largest count not above the budget); "
        "`slice+prune` slices half the ratio and prunes the rest in one plan. Latency: ORT CPU, "
        "one thread, batch 1 x 128 bytes, median of per-round ratios against the dense model, "
        f"interleaved (dense {compare[0]['dense_ms']:.2f} ms). Dense perplexity "
        f"{dense['perplexity']:.3f}, {dense['params'] / 1e6:.3f}M params.",
        "",
        "| budget (slicing) | method | criterion | slice / prune ratio | params | MACs/token "
        "| perplexity | speed-up (ORT CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in compare:
        shares = f"{row.get('slice_ratio', row['ratio'] if row['method'] == 'slice' else 0):.3g}"
        shares += f" / {row['prune_ratio']:.3f}"
        lines.append(
            f"| {row['ratio']:.0%} | {row['method']} | {row['criterion']} | {shares} | "
            f"{row['params'] / 1e6:.3f}M | {row['macs'] / 1e6:.3f}M | {row['perplexity']:.3f} | "
            f"{row['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _memory_table(folder: Path) -> str:
    """The peak-memory table of ``models/slice_memory.py``, when it has been run."""
    path = folder / "slice_memory.json"
    if not path.exists():
        return ""
    lines = [
        "",
        "## Calibration memory",
        "",
        "`python models/slice_memory.py`: peak RSS of `spa slice --ratio 0.25 --no-exactness` "
        "(a fresh process per count; 25% of the windows are held out for the quality check).",
        "",
        "| calibration windows (PCA / held out) | peak RSS | wall time |",
        "|---|---|---|",
    ]
    for row in json.loads(path.read_text()):
        lines.append(f"| {row['windows']} ({row['calibrated']} / {row['held_out']}) | "
                     f"{row['peak_rss_mib']:.0f} MiB | {row['seconds']:.0f} s |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(compare: list[dict], rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(row for row in rows if row["rotation"] == "dense")
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    series: dict[str, list[dict]] = {}
    for row in compare:
        series.setdefault(f"{row['method']} ({row['criterion']})", []).append(row)
    for label, points in series.items():
        points = [{"params": dense["params"], "perplexity": dense["perplexity"]}, *points]
        axis.plot([p["params"] / 1e6 for p in points], [p["perplexity"] for p in points],
                  marker="o", label=label)  # fmt: skip
    axis.invert_xaxis()
    axis.set_xlabel("parameters (M)")
    axis.set_ylabel("held-out perplexity")
    axis.set_title("Shakespeare LM, no fine-tuning: slicing vs pruning")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _table(rows: list[dict], settings: dict) -> str:
    lines = [
        "# SliceGPT on the Shakespeare LM (no fine-tuning)",
        "",
        f"`python models/slice_shakespeare.py` — {settings['windows']} held-out windows of "
        f"{settings['seq_len']} bytes; PCA on {settings['calib_samples']} training windows; "
        f"bases `shared` (one Q) or `per-norm` (one Q per norm, Q_a^T Q_b on the skips, counted in "
        f"params); D' a multiple of {settings['round_to']}.",
        "",
        "| slicing | rotation | bases | hidden | params | MACs/token | variance kept | perplexity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        share = 1 - row["hidden"] / 192
        kept = "—" if row["variance_kept"] is None else f"{row['variance_kept']:.4f}"
        lines.append(
            f"| {row['ratio']:.0%} (actual {share:.1%}) | {row['rotation']} | {row['bases']} | {row['hidden']} | "
            f"{row['params'] / 1e6:.3f}M | {row['macs'] / 1e6:.3f}M | {kept} | "
            f"{row['perplexity']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
