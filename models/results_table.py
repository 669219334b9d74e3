"""The results table of issue 12: every real test bed, dense vs each thing spa does to it, side by
side with ONNX Runtime's quantizers (and Torch-Pruning on MiniLM), on the same data.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 10 python models/results_table.py [BED ...]
        [--variants 'spa W4 RTN' 'spa W4 GPTQ']   # redo these rows only, keep the others

For each bed (``BEDS``) and each variant:

* ``prune 10|25|50% MACs``: ``prune_model`` with ``obs``, bias compensation and
  ``--allocation sensitivity`` at ``ratio`` = that share of MACs (8 calibration feeds,
  sensitivity on 2, ``--round-to auto`` (the default) so ORT CPU gets channel counts it likes);
* ``W8``, ``W4 RTN``, ``W4 GPTQ``: ``quantize_model`` (bits 8; bits 4, block 32, RTN or GPTQ on
  the calibration feeds; Conv included, INT4 in blocks, the model converted to opset 21 for
  its INT4 tensors), ``--target ort``;
* ``static INT8``: ``quantize_static_model`` on the calibration feeds, ``--target ort``;
* both with the latency guard on, as a user gets them (``spa.workflows.latency_guard``): the
  form it wrote and its measurements go in the note; a static model it refused (slower than
  dense with every layer subset) is a row "refused, no output";
* ``2:4``: ``sparsify_model`` (magnitude, the reference form: zeros in dense weights, which ORT
  CPU runs as dense), and ``2:4 SparseGPT`` the same with ``method="sparsegpt"`` on the
  calibration samples (MatMul/Gemm input Hessians, Conv im2col patch Hessians);
* ``spa optimize --max-drop 1%``: read from ``optimize_<bed>.json`` (written by
  ``models/optimize_testbeds.py``; not re-run here): its chosen candidate's metric, as that script
  defines it, and its re-measured speedup;
* ``ORT quantize_dynamic``, ``ORT quantize_static QDQ|QOperator`` (per channel, same calibration
  feeds), ``ORT MatMulNBits 4-bit`` (block 32);
* MiniLM only: Torch-Pruning's best at 25% of params removed, read from ``compare_minilm.json``
  (``models/compare_minilm.py``), and spa's best from the same file; the ONNX files are measured
  when they are still in ``/tmp/spa-compare-minilm``.

Task metric: the bed's headline metric on the evaluation subset ``LIMITS`` (disjoint from
calibration; MiniLM: all three sets, shown as Lee-50 / WordSim-353 / SimLex-999). Params and
MACs: ``spa.stats.report.compute_stats`` at the first calibration feed's shapes (quantized and
2:4 models keep the dense MACs; shown as such; the ``spa optimize`` row: the search's share of
its input's MACs, at its own calibration shapes, times dense's count here). Latency: ``compare_latency`` against the dense
model (ORT CPU, 1 thread, interleaved rounds in one process); ratio = dense time / variant time,
so > 1 is faster. A spa output slower than dense is marked **SLOWER**.

Writes ``models/results/results_table.md``, ``.json`` and ``results_table.png`` (metric vs
latency ratio per bed; the Pareto front of each bed joined by a line). Rows are saved after each
bed, so a run of some beds keeps the others' rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spa import testbeds
from spa.errors import UserError
from spa.pruning.allocation import AUTO_ROUND
from spa.stats.report import compute_stats
from spa.verify.latency import compare_latency
from spa.workflows.prune import prune_model
from spa.workflows.quantize import quantize_model
from spa.workflows.quantize_static import quantize_static_model
from spa.workflows.sparsify import sparsify_model

from bench_cleanup import ort_node_counts

RESULTS = Path(__file__).parent / "results"
BEDS = ("minilm", "ocr_rec", "ocr_det", "orientation", "voice", "fashion_cnn")
LIMITS: dict[str, int | None] = {
    "minilm": None, "ocr_rec": 40, "ocr_det": 15, "orientation": 40, "voice": None,
    "fashion_cnn": 1000, "shakespeare_lm": 64,
}  # fmt: skip
MINILM_SETS = ("lee50", "wordsim353", "simlex999")
Feeds = list[dict[str, np.ndarray]]
#: Writes the variant; returns a note for the table ("" for none).
Maker = Callable[[Path, Path], str]


def spa_makers(calibration: Feeds) -> dict[str, Maker]:
    shapes = {key: tuple(value.shape) for key, value in calibration[0].items()}

    def prune(share: float) -> Maker:
        def make(source: Path, output: Path) -> str:
            prune_model(source, output, ratio=share, criterion="obs", bias_compensation=True,
                        allocation="sensitivity", calibration=calibration[:8], shapes=shapes,
                        sensitivity_samples=2, round_to=AUTO_ROUND)
            return ""

        return make

    def call(function: Callable[..., Any], **options: Any) -> Maker:
        def make(source: Path, output: Path) -> str:
            result = function(source, output, verify=False, **options)
            guard = getattr(result, "latency", None)  # spa.workflows.latency_guard
            if not guard:
                return ""
            tried = ", ".join(f"{m['form']} {m['speedup']:.2f}x" for m in guard["measured"])
            return f"latency guard wrote {guard['chosen']} (measured {tried})"

        return make

    return {
        "spa prune 10% MACs": prune(0.10),
        "spa prune 25% MACs": prune(0.25),
        "spa prune 50% MACs": prune(0.50),
        "spa W8": call(quantize_model, bits=8),
        "spa W4 RTN": call(quantize_model, bits=4, block=32),
        "spa W4 GPTQ": call(quantize_model, bits=4, block=32, method="gptq", calib=calibration),
        "spa static INT8": call(quantize_static_model, calib=calibration, holdout=0.0),
        "spa 2:4": call(sparsify_model, pattern="2:4"),
        "spa 2:4 SparseGPT": call(sparsify_model, pattern="2:4", method="sparsegpt", calib=calibration),
    }


def ort_makers(calibration: Feeds) -> dict[str, Maker]:
    """ONNX Runtime's quantizers, as bench_quant_formats.py runs them."""
    from bench_quant_formats import ort_makers as bench_makers

    return {label.replace("ort ", "ORT ", 1): make for label, make in bench_makers(calibration).items()}


def metric_value(bed: testbeds.Testbed, metrics: dict[str, float]) -> float:
    """One number per model for the plot: the bed's metric (MiniLM: mean of the three sets)."""
    if bed.name == "minilm":
        return float(np.mean([metrics[key] for key in MINILM_SETS]))
    return float(metrics[bed.metric])


def shown(bed_name: str, metrics: dict[str, float] | None, value: float | None = None) -> str:
    if metrics is None:
        return "" if value is None else f"{value:.4g}"
    if bed_name == "minilm" and all(key in metrics for key in MINILM_SETS):
        return " / ".join(f"{metrics[key]:.3f}" for key in MINILM_SETS)
    return " ".join(f"{key}={value:.4g}" for key, value in metrics.items())


def measure(bed: testbeds.Testbed, dense: Path, path: Path, feeds: Feeds,
            budget: float) -> dict[str, Any]:
    stats = compute_stats(path, shapes={k: tuple(v.shape) for k, v in feeds[0].items()})
    metrics = bed.evaluate(path, limit=LIMITS.get(bed.name))
    row: dict[str, Any] = {"metrics": metrics, "value": metric_value(bed, metrics),
                           "params": stats.params, "macs": stats.total_macs,
                           "mb": round(path.stat().st_size / 1e6, 2)}  # fmt: skip
    if path != dense:
        latency = compare_latency(dense, path, feeds, budget_s=budget, min_rounds=5,
                                  max_rounds=60)
        row.update(speedup=round(latency.speedup, 3), dense_ms=round(latency.reference_ms, 2),
                   ms=round(latency.candidate_ms, 2), rounds=latency.rounds)
        if latency.speedup < 1.0:  # is it the same graph once ORT has folded its constants?
            with tempfile.TemporaryDirectory(prefix="spa-ort-graph-") as folder:
                row["ort_same_ops"] = (ort_node_counts(dense, Path(folder))
                                       == ort_node_counts(path, Path(folder)))
    return row


def optimize_row(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"optimize_{name}.json"
    if not path.exists():
        return None
    search = json.loads(path.read_text())["search"]
    chosen = next((c for c in search["candidates"] if c["name"] == search["chosen"]), None)
    if chosen is None:
        return {"variant": "spa optimize --max-drop 1%", "note": f"chose {search['chosen']}"}
    return {
        "variant": "spa optimize --max-drop 1%", "tool": "spa",
        "note": f"{chosen['name']}, task metric as optimize measured it (optimize_{name}.json; "
                f"{search['metric']}, "
                f"dense {search['metric_dense']:.4g} -> {chosen['metric_after']:.4g}, "
                f"loss {chosen['quality_loss']:.2%})",
        "value": chosen["metric_after"], "params": chosen.get("params"),
        # the search counts MACs at its own calibration shapes: kept as a share of its input's,
        # shown against this table's dense count
        "macs_share": (chosen.get("macs") or 0) / search["input_macs"] if search.get("input_macs") else None,
        "speedup": round(chosen.get("confirmed_speedup") or chosen["speedup"], 3),
        "mb": round(chosen["bytes"] / 1e6, 2),
    }  # fmt: skip


def torch_pruning_rows(bed: testbeds.Testbed, dense: Path, feeds: Feeds,
                       budget: float) -> list[dict[str, Any]]:
    path = RESULTS / "compare_minilm.json"
    if not path.exists():
        return []
    compared = json.loads(path.read_text())
    rows = []
    for tool in ("torch-pruning", "spa"):
        found = [r for r in compared["rows"] if r["tool"] == tool]
        if not found:
            continue
        best = max(found, key=lambda r: float(np.mean([r["metrics"][k] for k in MINILM_SETS])))
        setting = best.get("criterion") or best.get("policy")
        label = f"{'Torch-Pruning' if tool == 'torch-pruning' else 'spa'} best, 25% params"
        row: dict[str, Any] = {"variant": label, "tool": tool, "note": f"{setting} "
                               "(compare_minilm.json; best by mean Spearman)"}
        onnx_path = Path(best.get("path") or "")
        stem = f"spa_{str(setting).replace(' ', '_').replace(',', '')}_"
        spa_files = sorted(  # that setting's files only: stem + a run number
            path for path in Path("/tmp/spa-compare-minilm").glob(f"{stem}*.onnx")
            if path.stem[len(stem):].isdigit()
        )  # fmt: skip
        onnx_path = onnx_path if tool == "torch-pruning" else (spa_files[-1] if spa_files else Path())
        if onnx_path.is_file():
            row.update(measure(bed, dense, onnx_path, feeds, budget))
        else:
            row.update(metrics=best["metrics"], value=metric_value(bed, best["metrics"]),
                       params=best["params_onnx"])
        rows.append(row)
    return rows


def run_bed(name: str, budget: float, folder: Path, only: set[str] | None = None) -> dict[str, Any]:
    logging.getLogger().setLevel(logging.ERROR)
    bed = testbeds.get(name)
    dense = bed.model_path()
    calibration = bed.calibration_feeds(16, 0)
    feeds = bed.calibration_feeds(1 if name == "minilm" else 2, 1)
    rows = [{"variant": "dense", "tool": "dense", **measure(bed, dense, dense, feeds, budget)}]
    print(name, "dense", shown(name, rows[0]["metrics"]), flush=True)
    makers = {**spa_makers(calibration), **ort_makers(calibration)}
    if only is not None:  # --variants: these rows alone, merged into the saved table by main
        makers = {label: make for label, make in makers.items() if label in only}
    for label, make in makers.items():
        output = folder / f"{name}-{label.replace(' ', '_').replace(':', '')}.onnx"
        began = time.perf_counter()
        row: dict[str, Any] = {"variant": label, "tool": label.split()[0].lower()}
        try:
            note = make(dense, output)
            row.update(measure(bed, dense, output, feeds, budget))
            if note:
                row["note"] = note
        except UserError as error:  # spa refused: e.g. static INT8 slower at every size
            row["refused"] = str(error).splitlines()[0]
        except Exception as error:  # a tool that fails on a model is a result too
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            traceback.print_exc(limit=2)
        row["seconds"] = round(time.perf_counter() - began, 1)
        rows.append(row)
        print(name, label, shown(name, row.get("metrics")), row.get("speedup"), flush=True)
    optimized = optimize_row(name) if only is None else None
    if optimized is not None:
        rows.append(optimized)
    if name == "minilm" and only is None:
        rows += torch_pruning_rows(bed, dense, feeds, budget)
    return {"bed": name, "metric": bed.metric, "higher_is_better": bed.higher_is_better,
            "limit": LIMITS.get(name), "rows": rows}


def _count(value: float | None) -> str:
    if value is None:
        return ""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def render(results: dict[str, Any], command: str) -> str:
    lines = [
        "# spa on the real test beds: pruning, quantization, 2:4 and `spa optimize`, "
        "against ONNX Runtime's quantizers and Torch-Pruning",
        "",
        f"Written by `{command}` (settings in its docstring). Latency ratio = dense ms / "
        "variant ms on ORT CPU (1 thread, lower quartiles of each run's thread CPU time, "
        "interleaved rounds in one process, `spa.verify.latency`; > 1 is faster; repeated runs "
        "of one pair differ by up to about 3%). **SLOWER**: a spa output below 0.95x of its "
        "input; 0.95-1.0x is marked \"slower within noise\" (the issue's goal is none), and "
        "\"ORT runs the same ops as dense\" when the graph ONNX Runtime runs after its load-time "
        "optimisations has the op counts of dense's (e.g. weight-only INT8 stored as Cast + Mul "
        "constants, which ORT folds back to float at load: the ratio is then noise). "
        "MACs of quantized / 2:4 models are the dense MACs (`= dense`). "
        "MiniLM's metric: Spearman on Lee-50 / WordSim-353 / SimLex-999 (full sets).",
        "",
    ]
    for name, entry in results.items():
        arrow = "higher is better" if entry["higher_is_better"] else "lower is better"
        lines += [f"## {name}: {entry['metric']} ({arrow}; evaluation limit {entry['limit']})", "",
                  "| variant | task metric | params | MACs | MB | latency ratio vs dense | note |",
                  "|---|---|---|---|---|---|---|"]
        dense = entry["rows"][0]
        for row in entry["rows"]:
            if "error" in row:
                lines.append(f"| {row['variant']} | failed: {row['error']} | | | | | |")
                continue
            if "refused" in row:
                lines.append(f"| {row['variant']} | refused, no output: {row['refused']} | | | | | |")
                continue
            macs = row.get("macs")
            if row.get("macs_share") and dense.get("macs"):
                macs = round(dense["macs"] * row["macs_share"])
            same_macs = any(key in row["variant"] for key in ("W8", "W4", "INT8", "2:4", "ORT"))
            if "optimize" in row["variant"] and "prune" not in row.get("note", ""):
                same_macs = True
            shown_macs = "= dense" if same_macs else _count(macs)
            speed = row.get("speedup")
            speed_text = "1" if row["variant"] == "dense" else (
                "" if speed is None else f"{speed:.2f}x")
            if speed is not None and row.get("tool") == "spa":
                if speed < 0.95:
                    speed_text += " **SLOWER**"
                elif speed < 1.0:
                    speed_text += " (slower within noise)"
                if speed < 1.0 and row.get("ort_same_ops"):
                    speed_text += " (ORT runs the same ops as dense)"
            note = row.get("note", "")
            if "2:4" in row["variant"]:
                note = note or "reference form: ORT CPU has no 2:4 kernel, runs it dense"
            if same_macs:  # packed / quantized weights: the count is not comparable
                row = {**row, "params": None}
            if row["variant"] != "dense" and row.get("params"):
                note = (note + "; " if note else "") + \
                    f"{1 - row['params'] / dense['params']:.1%} params removed"
            lines.append(
                f"| {row['variant']} | {shown(name, row.get('metrics'), row.get('value'))} | "
                f"{'= dense' if same_macs else _count(row.get('params'))} | {shown_macs} | {row.get('mb', '')} | "
                f"{speed_text} | {note} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        entry = results[name]
        points = []
        for row in entry["rows"]:
            if "value" not in row:
                continue
            speed = 1.0 if row["variant"] == "dense" else row.get("speedup")
            if speed is None:
                continue
            color = {"dense": "black", "spa": "tab:blue", "ort": "tab:orange"}.get(
                row.get("tool", ""), "tab:red")
            ax.scatter(speed, row["value"], color=color, s=18)
            ax.annotate(row["variant"].replace("spa ", "").replace("ORT ", "ort "),
                        (speed, row["value"]), fontsize=5)
            points.append((speed, row["value"]))
        sign = 1 if entry["higher_is_better"] else -1
        front, best = [], -np.inf
        for speed, value in sorted(points, key=lambda p: -p[0]):
            if sign * value > best:
                front.append((speed, value))
                best = sign * value
        if front:
            ax.plot(*zip(*sorted(front), strict=True), color="gray", lw=0.8)
        ax.axvline(1.0, color="gray", ls=":", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("latency ratio vs dense (ORT CPU, >1 faster)", fontsize=7)
        ax.set_ylabel(entry["metric"] + (" (mean of 3)" if name == "minilm" else ""), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("beds", nargs="*", default=list(BEDS))
    parser.add_argument("--budget", type=float, default=2.0, help="latency seconds per variant")
    parser.add_argument("--refresh-compare", action="store_true",
                        help="only redo MiniLM's rows from compare_minilm.json")
    parser.add_argument("--variants", nargs="+", metavar="LABEL",
                        help="only redo these rows (e.g. 'spa W4 GPTQ'), keeping the bed's others")
    parser.add_argument("--refresh-optimize", action="store_true",
                        help="only redo the `spa optimize` rows from optimize_<bed>.json")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "results_table.json"
    if args.refresh_optimize:
        results = json.loads(path.read_text())
        for name, entry in results.items():
            rows, found = entry["rows"], optimize_row(name)
            where = next((i for i, r in enumerate(rows)
                          if r["variant"] == "spa optimize --max-drop 1%"), len(rows))  # fmt: skip
            entry["rows"] = rows[:where] + ([found] if found else []) + rows[where + 1 :]
        path.write_text(json.dumps(results, indent=1) + "\n")
        (RESULTS / "results_table.md").write_text(render(results, "python models/results_table.py"))
        plot(results, RESULTS / "results_table.png")
        return
    if args.refresh_compare:
        results = json.loads(path.read_text())
        bed = testbeds.get("minilm")
        feeds = bed.calibration_feeds(1, 1)
        rows = [r for r in results["minilm"]["rows"] if r.get("tool") not in ("torch-pruning", "spa")
                or not r["variant"].endswith("best, 25% params")]
        rows += torch_pruning_rows(bed, bed.model_path(), feeds, args.budget)
        results["minilm"]["rows"] = rows
        path.write_text(json.dumps(results, indent=1) + "\n")
        (RESULTS / "results_table.md").write_text(render(results, "python models/results_table.py"))
        plot(results, RESULTS / "results_table.png")
        return
    command = "python models/results_table.py"
    with tempfile.TemporaryDirectory(prefix="spa-results-table-") as folder:
        for name in args.beds:
            began = time.perf_counter()
            only = set(args.variants) if args.variants else None
            entry = run_bed(name, args.budget, Path(folder), only)
            entry["seconds"] = round(time.perf_counter() - began)
            # read again: another run (other beds) may have saved since
            results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
            if only is not None and name in results:
                redone = {row["variant"]: row for row in entry["rows"]}
                kept = results[name]
                kept["rows"] = [redone.pop(row["variant"], row) for row in kept["rows"]]
                kept["rows"] += list(redone.values())
                entry = kept
            results[name] = entry
            ordered = {key: results[key] for key in (*BEDS, "shakespeare_lm") if key in results}
            path.write_text(json.dumps(ordered, indent=1) + "\n")
            (RESULTS / "results_table.md").write_text(render(ordered, command))
            plot(ordered, RESULTS / "results_table.png")


if __name__ == "__main__":
    main()
