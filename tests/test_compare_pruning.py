"""The quality-table script (models/compare_pruning.py), small version, spa side.

CI has no torch, so this runs spa's criteria on the Fashion-MNIST test bed
only; the full table (both test beds, Torch-Pruning rows) is regenerated with
``python models/compare_pruning.py`` under the ``models`` extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from tests.conftest import needs_fashion_mnist

SCRIPT = Path(__file__).resolve().parent.parent / "models" / "compare_pruning.py"


@needs_fashion_mnist
def test_small_table_has_every_spa_criterion_at_both_budgets(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--beds", "fashion_cnn", "--tools", "spa",
         "--out", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((tmp_path / "quality.json").read_text())
    keys = {"model", "budget", "tool", "criterion", "data_free", "metric", "value",
            "higher_is_better"}
    assert all(keys <= set(row) for row in rows)
    assert {(r["criterion"], r["budget"]) for r in rows} == {
        (c, b) for c in ("l2", "lamp", "lamp (global)", "bn_scale", "obspa", "wanda_sp",
                                "flap+bias", "obs")
        for b in (0.25, 0.5)
    }
    for row in rows:
        assert row["tool"] == "spa" and row["metric"] == "accuracy" and row["higher_is_better"]
        assert row["params_removed"] <= row["budget"] + 1e-9
        assert 0.1 < row["value"] <= 1.0
    by = {(r["criterion"], r["budget"]): r["value"] for r in rows}
    # Reconstruction keeps more accuracy than plain magnitude at half the parameters.
    assert by[("obs", 0.5)] > by[("l2", 0.5)]
    assert "## fashion_cnn" in (tmp_path / "quality.md").read_text()
