"""SliceGPT on the Shakespeare LM test bed: held-out perplexity at 10/20/25/30% slicing.

    python models/slice_shakespeare.py            # about a minute on two cores; no torch needed

For each ratio the hidden size of ``models/testbeds/shakespeare_lm.onnx`` (192) is sliced by
``spa.workflows.slice.slice_model`` (PCA of the residual stream on ``--calib-samples`` windows of
the training text; ``D'`` a multiple of 8) and, as a control, by a random rotation at the same
``D'``; PCA with one basis per norm (the paper's form, shortcut matrices on the skips) too.
Perplexity is measured on the evenly spread held-out windows of ``docs/testbeds.md``
(``--windows``, 128 bytes each). Writes ``models/results/slice_shakespeare.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.testbeds import shakespeare
from spa.workflows.slice import slice_model

__all__ = ["main"]

MODEL = Path(__file__).resolve().parent / "testbeds" / "shakespeare_lm.onnx"
RESULTS = Path(__file__).resolve().parent / "results"
RATIOS = (0.1, 0.2, 0.25, 0.3)


def _row(
    ratio: float, rotation: str, bases: str, folder: Path, calibration: list, windows: int
) -> dict:
    output = folder / f"sliced-{rotation}-{bases}-{ratio}.onnx"
    result = slice_model(
        MODEL, output, ratio=ratio, rotation=rotation, bases=bases, calibration=calibration, round_to=8,
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
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    calibration = shakespeare.calibration_feeds(args.calib_samples, seed=0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="spa-slice-bench-") as tmp:
        folder = Path(tmp)
        dense = slice_model(
            MODEL, folder / "exact.onnx", ratio=0.0, rotation="random", exactness=True
        )
        assert dense.exactness is not None
        rows.append({"ratio": 0.0, "rotation": "dense", "bases": "", "hidden": 192,
                     "params": dense.report["slice"]["params_before"],
                     "macs": dense.report["slice"]["macs_before"], "variance_kept": 1.0,
                     "perplexity": shakespeare.perplexity(MODEL, max_windows=args.windows),
                     "exact_rotation_max_rel": dense.exactness.max_rel_diff})  # fmt: skip
        for ratio in RATIOS:
            for rotation, bases in (("pca", "shared"), ("pca", "per-norm"), ("random", "shared")):
                rows.append(_row(ratio, rotation, bases, folder, calibration, args.windows))
                print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"windows": args.windows, "calib_samples": args.calib_samples, "seq_len": 128,
                "round_to": 8, "model": "models/testbeds/shakespeare_lm.onnx"}  # fmt: skip
    text = json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n"
    (args.out / "slice_shakespeare.json").write_text(text)
    (args.out / "slice_shakespeare.md").write_text(_table(rows, settings))
    print(_table(rows, settings))
    return 0


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
