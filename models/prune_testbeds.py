"""Structured pruning without fine-tuning on the real test beds: dense vs spa at
about 10% and 25% of MACs removed, before and after sensitivity allocation.

    nice python models/prune_testbeds.py [BED ...] [--samples 8]

For each bed (default: minilm, ocr_rec, ocr_det, orientation, voice) and each
target share of MACs removed:

* ``before``: the best policy spa had before ``--allocation sensitivity``:
  ``obs`` with bias compensation and ``global`` allocation, at the channel
  ratio ``1 - sqrt(1 - target)`` (a layer that loses that share of its input
  and of its output channels loses ``target`` of its MACs);
* ``after``: ``obs`` with bias compensation and ``--allocation sensitivity`` at
  ``ratio = target`` (a share of MACs), default ``--fragile``;
* ``after+correct``: the same plus two rounds of ``--correct-statistics``;
* ``after+seq``: ``after`` with ``--sequential-stages 4`` (each stage's updates
  measured on the model pruned up to it).

Calibration: ``--samples`` feeds of the bed's calibration split (a quarter
held out for the agreement figure; sensitivity measured on the first
``--sensitivity-samples`` of the rest); the task metric is measured on a subset of
the bed's evaluation split (``LIMITS``; disjoint from calibration). Params and
MACs are counted at the shapes of the first calibration sample (Conv, MatMul,
Gemm, and LSTM weights once per time step); every
pruned model is checked by mask equivalence. Results are merged into
``models/results/prune_testbeds.json`` (one bed per run is fine) and the
table ``models/results/prune_testbeds.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spa import testbeds
from spa.analysis import prepare
from spa.model_io import load_model
from spa.passes.prune import mac_costs
from spa.stats.inspect import human_count
from spa.workflows.prune import prune_model

RESULTS = Path(__file__).parent / "results"
BEDS = ("minilm", "ocr_rec", "ocr_det", "orientation", "voice")
TARGETS = (0.10, 0.25)
#: Evaluation subset per bed (what ``limit`` counts is bed-specific, docs/testbeds.md).
LIMITS: dict[str, int | None] = {
    "minilm": 100, "ocr_rec": 40, "ocr_det": 15, "orientation": 20, "voice": None,
}  # fmt: skip
POLICIES: dict[str, dict[str, Any]] = {
    "before": {"criterion": "obs", "bias_compensation": True, "allocation": "global"},
    "after+correct": {
        "criterion": "obs", "bias_compensation": True, "allocation": "sensitivity",
        "correct_statistics": 2,
    },
    "after": {"criterion": "obs", "bias_compensation": True, "allocation": "sensitivity"},
    "after+seq": {
        "criterion": "obs", "bias_compensation": True, "allocation": "sensitivity",
        "sequential_stages": 4,
    },
}  # fmt: skip


def _ratio(policy: str, target: float) -> float:
    sensitivity = POLICIES[policy]["allocation"] == "sensitivity"  # a share of MACs
    return target if sensitivity else 1.0 - math.sqrt(1.0 - target)


def _macs(path: Path, sample: dict[str, Any]) -> float:
    """MACs at the sample's shapes, LSTM time steps included (spa's report leaves them out)."""
    return mac_costs(prepare(load_model(path)), [], sample)[1]


def _headline(bed: testbeds.Testbed, metrics: dict[str, float]) -> str:
    if bed.name == "minilm":
        return " / ".join(f"{metrics[k]:.3f}" for k in ("lee50", "wordsim353", "simlex999"))
    return f"{metrics[bed.metric]:.4g}"


def run_bed(
    name: str, samples: int, variants: list[str], save: Callable[[dict[str, Any]], None]
) -> None:
    """Measure ``name``; ``save`` gets the bed's entry after every row (a long run
    that is stopped keeps what it measured)."""
    bed = testbeds.get(name)
    model = bed.model_path()
    feeds = bed.calibration_feeds(samples, 0)
    shapes = {key: tuple(value.shape) for key, value in feeds[0].items()}
    limit = LIMITS[name]
    rows: list[dict[str, Any]] = [{
        "variant": "dense", "target": 0.0, "metrics": bed.evaluate(model, limit=limit),
        "macs": _macs(model, feeds[0]),
    }]  # fmt: skip
    entry = {
        "bed": name, "metric": bed.metric, "higher_is_better": bed.higher_is_better,
        "limit": limit, "samples": samples, "shapes": {k: list(v) for k, v in shapes.items()},
        "rows": rows,
    }  # fmt: skip
    save(entry)
    with tempfile.TemporaryDirectory(prefix="spa-prune-beds-") as folder:
        for target in TARGETS:
            for policy in variants:
                output = Path(folder) / f"{name}-{policy}-{target}.onnx"
                began = time.perf_counter()
                result = prune_model(
                    model, output, ratio=_ratio(policy, target), calibration=feeds,
                    shapes=shapes, verify=True, **POLICIES[policy],
                )  # fmt: skip
                prune_seconds = time.perf_counter() - began
                report = result.report
                quality = report.get("quality") or {}
                rows[0].setdefault("params", report["params_before"])  # Constant weights lifted
                rows.append({
                    "variant": policy, "target": target, "ratio": _ratio(policy, target),
                    "metrics": bed.evaluate(output, limit=limit),
                    "params": report["params_after"], "macs": _macs(output, feeds[0]),
                    "verify": None if result.verification is None else result.verification.passed,
                    "held_out_cosine": quality.get("cosine"),
                    "sensitivity": [
                        {"group": r["group"], "size": r["size"], "distortion": r["distortion"]}
                        for r in report["plan"].get("sensitivity", [])
                    ],
                    "groups_pruned": report["groups_pruned"],
                    "skipped": report["plan"].get("skipped", {}),
                    "prune_seconds": round(prune_seconds, 1),
                })  # fmt: skip
                save(entry)
                print(name, policy, target, _headline(bed, rows[-1]["metrics"]), flush=True)


def _verdict(row: dict[str, Any]) -> str:
    if row["variant"] == "dense":
        return ""
    if row["verify"] is None:
        return "nothing pruned"
    return "PASSED" if row["verify"] else "FAILED"


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Pruning the real test beds without fine-tuning",
        "",
        "Written by `models/prune_testbeds.py` (see its docstring for the policies). "
        "`before`: obs + bias compensation + global allocation (spa before sensitivity "
        "allocation); `after`: obs + bias compensation + `--allocation sensitivity`; "
        "`after+correct`: the same + `--correct-statistics 2`. "
        "MACs removed are spa's counts at the first calibration sample's shapes; "
        "metrics on the evaluation subset given by `limit` (MiniLM: Lee-50 / WordSim-353 / "
        "SimLex-999 Spearman).",
        "",
        "| bed | metric | variant | target MACs removed | MACs removed | params | metric value "
        "| mask equiv. | fragile groups left whole |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in BEDS:
        if name not in results:
            continue
        entry = results[name]
        bed = testbeds.get(name)
        dense = entry["rows"][0]
        arrow = "higher is better" if entry["higher_is_better"] else "lower is better"
        for row in entry["rows"]:
            removed = 1.0 - row["macs"] / dense["macs"] if dense["macs"] else 0.0
            lines.append(
                f"| {name} | {entry['metric']} ({arrow}, limit {entry['limit']}) | "
                f"{row['variant']} | {row['target']:.0%} | {removed:.1%} | "
                f"{human_count(row['params']) if 'params' in row else '?'} | {_headline(bed, row['metrics'])} | "
                f"{_verdict(row)}"
                f" | {len(row['skipped']) if row['variant'].startswith('after') else ''} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("beds", nargs="*", default=list(BEDS))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--fragile", type=float, default=None, help="override the default")
    parser.add_argument("--sensitivity-samples", type=int, default=3)
    parser.add_argument(
        "--variants", nargs="+", default=list(POLICIES), help="rerun only these (rows merged)"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "prune_testbeds.json"
    if args.fragile is not None:
        for policy in POLICIES.values():
            if policy["allocation"] == "sensitivity":
                policy["fragile"] = args.fragile
    for policy in POLICIES.values():
        if policy["allocation"] == "sensitivity":
            policy["sensitivity_samples"] = args.sensitivity_samples
    for name in args.beds:

        def save(entry: dict[str, Any], name: str = name) -> None:
            results = json.loads(path.read_text()) if path.exists() else {}  # other runs' beds
            if name in results:  # keep the rows of variants not rerun, in table order
                fresh = {(row["variant"], row["target"]) for row in entry["rows"]}
                old = results[name]["rows"]
                kept = [r for r in old if (r["variant"], r["target"]) not in fresh]
                order = ["dense", *POLICIES]
                entry = {**entry, "rows": sorted(
                    kept + entry["rows"], key=lambda r: (r["target"], order.index(r["variant"]))
                )}  # fmt: skip
            results[name] = entry
            path.write_text(json.dumps(results, indent=1) + "\n")
            (RESULTS / "prune_testbeds.md").write_text(render(results))

        run_bed(name, args.samples, args.variants, save)

if __name__ == "__main__":
    main()
