"""What the architecture sweeps (``sweep_timm.py``, ``sweep_hf.py``) share: prune an
exported model with ``spa prune --ratio 0.25 --verify`` and read its verdict line
into a row; write the rows as ``results/<stem>.json`` and a markdown table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
Row = dict[str, object]


def export_failed(name: str, stderr: str) -> Row:
    """The row of a model its exporter could not write (the last line naming an error)."""
    lines = [line for line in stderr.splitlines() if "Error" in line]
    return {"name": name, "status": "export failed", "detail": (lines or ["?"])[-1][:160]}


def prune_row(name: str, model: Path, pruned: Path, keep: bool = False, **extra: object) -> Row:
    """Prune ``model`` into ``pruned`` and read the verdict: PASSED (mask equivalence
    holds), NOTHING TO DO (with the first frozen-group reasons) or FAILED (with the
    last line the command wrote). Both files are removed unless ``keep``."""
    ran = subprocess.run(
        [sys.executable, "-m", "spa.cli.main", "prune", str(model), "-o", str(pruned),
         "--ratio", "0.25", "--verify"], capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    verdict = next((line for line in ran.stdout.splitlines() if "| prune |" in line), "")
    row: Row = {"name": name, **extra, "exit": ran.returncode, "verdict": verdict.split(" |")[0]}
    for key, pattern in (("params", r"params ([^|]*\(([-+]\d+)%\))"), ("macs", r"MACs ([^|]*)"),
                         ("groups", r"groups (\d+/\d+) pruned")):  # fmt: skip
        found = re.search(pattern, verdict)
        row[key] = found.group(1).strip() if found else ""
    row["status"] = {"PASSED": "pruned, mask equivalence holds",
                     "NOTHING TO DO": "nothing prunable"}.get(str(row["verdict"]), "FAILED")  # fmt: skip
    if row["status"] == "nothing prunable":
        reasons = [line.strip() for line in ran.stdout.splitlines() if "frozen group:" in line]
        row["detail"] = "; ".join(reason.split("frozen group: ")[-1] for reason in reasons[:2])
    elif row["status"] == "FAILED":
        row["detail"] = ((ran.stderr or ran.stdout).strip().splitlines() or ["?"])[-1][:160]
    for path in (model, pruned) if not keep else ():
        path.unlink(missing_ok=True)
    return row


def write_results(stem: str, rows: list[Row], subset: bool, title: str, intro: str,
                  columns: Sequence[tuple[str, str]]) -> int:  # fmt: skip
    """Write ``results/<stem>.json`` and ``.md``; a ``subset`` re-run replaces the rows
    of the same name in the last run and keeps the others. Exit code: 1 if a row FAILED."""
    path = RESULTS / f"{stem}.json"
    if subset and path.exists():
        fresh = {str(row["name"]): row for row in rows}
        rows = [fresh.pop(str(row["name"]), row) for row in json.loads(path.read_text())] + list(fresh.values())
    columns = [(header, key) for header, key in columns if any(key in row for row in rows)]  # as the rows hold
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["status"])] = counts.get(str(row["status"]), 0) + 1
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        f"# {title}",
        "",
        intro + " " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ".",
        "",
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(row.get(key, "")) for _, key in columns) + " |" for row in rows]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return 0 if all(row["status"] != "FAILED" for row in rows) else 1


def random_calibration(model: Path, path: Path, samples: int = 16) -> Path:
    """``samples`` seeded feeds of ``model`` (the seeded inputs spa verifies with, at the dims
    its probe finds runnable) stacked on a leading sample axis, as an .npz for ``--calib``.
    No real data: the search's quality figures on it say nothing of a task, only whether
    every candidate builds, runs and is measured."""
    import numpy as np

    from spa.model_io import load_proto
    from spa.verify.feeds import input_specs, make_feeds
    from spa.verify.runner import runnable_dims

    proto = load_proto(model)
    dims = runnable_dims(model, proto, shapes={}, dims={}, int_ranges={})
    feeds = [make_feeds(input_specs(proto), seed=seed, dims=dims) for seed in range(samples)]
    np.savez(path, **{name: np.stack([feed[name] for feed in feeds]) for name in feeds[0]})
    return path


def search_row(model: Path, folder: Path) -> str:
    """`spa optimize MODEL --calib (random_calibration) --max-drop 5%`: the verdict line's
    head and the chosen candidate, or the failure; candidates that failed inside the search
    (a bug: the search records them as rejected "failed: ...") are named."""
    calib = random_calibration(model, folder / f"{model.stem}.calib.npz")
    report, output = folder / f"{model.stem}.search.json", folder / f"{model.stem}.searched.onnx"
    ran = subprocess.run(
        [sys.executable, "-m", "spa.cli.main", "optimize", str(model), "-o", str(output), "--calib", str(calib),
         "--max-drop", "5%", "--report", str(report)], capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    lines = [line for line in (ran.stdout + ran.stderr).splitlines() if line.strip()]
    verdict = next((line for line in reversed(lines) if line.startswith(("OPTIMIZED", "UNCHANGED"))), "")
    failed = []
    if report.exists():
        candidates = json.loads(report.read_text()).get("search", {}).get("candidates", [])
        failed = [f"{c['name']}: {c['reason'][:80]}" for c in candidates if str(c.get("reason", "")).startswith("failed")]
    for path in (calib, report, output):
        path.unlink(missing_ok=True)
    if ran.returncode != 0 or "Traceback" in ran.stdout + ran.stderr:
        return f"exit {ran.returncode}: {(lines or ['?'])[-1][:140]}"
    head = " | ".join(verdict.split(" | ")[:3]) if verdict else (lines or ["?"])[-1][:140]
    return head + ("; FAILED CANDIDATES " + "; ".join(failed) if failed else "")


def slice_verdict(model: Path, sliced: Path, keep: bool) -> str:
    """`spa slice MODEL --ratio 0.25` (random rotation on seeded inputs: no calibration data
    here): "hidden a -> b, params x -> y" when it passed its exactness check, else the verdict
    or the last line it wrote."""
    ran = subprocess.run([sys.executable, "-m", "spa.cli.main", "slice", str(model), "-o", str(sliced),
                          "--ratio", "0.25"], capture_output=True, text=True, timeout=1800)  # fmt: skip
    verdict = next((line for line in ran.stdout.splitlines() if "| slice |" in line), "")
    if not keep:
        sliced.unlink(missing_ok=True)
    if ran.returncode == 0 and verdict.startswith("PASSED"):
        return ", ".join(part.strip() for part in verdict.split("|")[2:4])
    return (verdict or ((ran.stderr or ran.stdout).strip().splitlines() or ["?"])[-1])[:160]
