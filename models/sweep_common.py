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
