"""Pruning without fine-tuning: spa's criteria vs Torch-Pruning on the offline test beds.

For each test bed (the Shakespeare byte-level LM, the Fashion-MNIST CNN) and
each parameter budget (25% and 50% of the parameters removed), prunes the
committed ONNX fixture

* with spa (``spa.workflows.prune.prune_model``), one row per criterion: data-free
  (l2, lamp, bn_scale, obspa) and calibrated (wanda_sp, flap with bias
  compensation, obs), uniform allocation, and
* with Torch-Pruning (``torch_pruning``, on the very same weights loaded into
  the PyTorch modules of ``models/testbeds_torch.py``): its magnitude
  importance (data-free) and its Taylor and Hessian importances (calibrated,
  gradients of the training loss on the same calibration samples),

with no fine-tuning on either side, then evaluates every pruned model with
the same code (``spa.testbeds``: held-out perplexity / test accuracy in ONNX
Runtime). Torch-Pruning's models are exported to ONNX for that. Each tool's
pruning ratio is found by bisection so that the removed share of parameters
(counted on the ONNX files by ``spa.stats.report.compute_stats``) is as close as
possible to the budget without exceeding it.

    python models/compare_pruning.py                      # full table -> models/results/
    python models/compare_pruning.py --small --out /tmp/q # quick version (CI runs it, spa only)

Writes ``quality.json`` (rows {model, budget, tool, criterion, data_free,
metric, value, higher_is_better, params_removed}), ``quality.md`` and a PNG
per model (metric against budget for every method; needs matplotlib).
Torch-Pruning needs the ``models`` extra (torch); without it the spa rows
are still produced and the output says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spa.workflows.prune import prune_model
from spa.stats.report import compute_stats
from spa.testbeds import fashion_mnist, shakespeare

REPO = Path(__file__).resolve().parent.parent
TESTBEDS = REPO / "models" / "testbeds"
BUDGETS = (0.25, 0.5)


@dataclasses.dataclass
class Bed:
    name: str
    path: Path
    metric: str
    higher_is_better: bool
    evaluate: Callable[[Path], float]
    calibration: list[dict[str, np.ndarray]]
    # (criterion, data_free, bias compensation, allocation)
    spa_criteria: tuple[tuple[str, bool, bool, str], ...]


def make_beds(small: bool, names: list[str]) -> list[Bed]:
    beds = []
    if "shakespeare_lm" in names:
        windows = 24 if small else 256
        beds.append(Bed(
            "shakespeare_lm", TESTBEDS / "shakespeare_lm.onnx", "perplexity", False,
            lambda p: shakespeare.perplexity(p, max_windows=windows),
            shakespeare.calibration_feeds(16 if small else 64, 128, seed=0),
            (("l2", True, False, "uniform"), ("lamp", True, False, "uniform"),
             ("lamp", True, False, "global"), ("obspa", True, False, "uniform"),
             ("wanda_sp", False, False, "uniform"), ("flap", False, True, "uniform"),
             ("obs", False, False, "uniform")),
        ))
    if "fashion_cnn" in names:
        limit = 2000 if small else None
        beds.append(Bed(
            "fashion_cnn", TESTBEDS / "fashion_cnn.onnx", "accuracy", True,
            lambda p: fashion_mnist.accuracy(p, limit=limit),
            fashion_mnist.calibration_feeds(64 if small else 512, seed=0),
            (("l2", True, False, "uniform"), ("lamp", True, False, "uniform"),
             ("lamp", True, False, "global"), ("bn_scale", True, False, "uniform"),
             ("obspa", True, False, "uniform"), ("wanda_sp", False, False, "uniform"),
             ("flap", False, True, "uniform"), ("obs", False, False, "uniform")),
        ))
    return beds


def params(path: Path) -> int:
    return int(compute_stats(path).params)


def bisect_ratio(removed_at: Callable[[float], float], budget: float, steps: int) -> float:
    """Largest ratio whose removed share stays <= budget."""
    low, high = 0.0, 0.95
    for _ in range(steps):
        middle = (low + high) / 2
        if removed_at(middle) <= budget:
            low = middle
        else:
            high = middle
    return low


# ---------------------------------------------------------------- spa side
def spa_rows(bed: Bed, folder: Path, small: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    dense = params(bed.path)
    probe = folder / f"{bed.name}-probe.onnx"

    def removed_at(ratio: float, criterion: str = "random", allocation: str = "uniform") -> float:
        prune_model(bed.path, probe, ratio=ratio, criterion=criterion, allocation=allocation)
        return 1 - params(probe) / dense

    rows = []
    for budget in BUDGETS:
        # uniform allocation: the kept counts do not depend on the criterion
        uniform = bisect_ratio(removed_at, budget, 5 if small else 8)
        for criterion, data_free, bias, allocation in bed.spa_criteria:
            ratio = uniform
            if allocation != "uniform":  # counts follow the scores: search per criterion
                ratio = bisect_ratio(lambda r, c=criterion, a=allocation: removed_at(r, c, a),
                                     budget, 5 if small else 8)
            output = folder / f"{bed.name}-spa-{criterion}-{allocation}-{budget}.onnx"
            start = time.perf_counter()
            prune_model(bed.path, output, ratio=ratio, criterion=criterion,
                        calibration=None if data_free else bed.calibration,
                        bias_compensation=bias, allocation=allocation)
            seconds = time.perf_counter() - start
            label = criterion + ("+bias" if bias else "") + (
                "" if allocation == "uniform" else f" ({allocation})")
            value = bed.evaluate(output)
            removed = 1 - params(output) / dense
            log(f"{bed.name} budget {budget:.2f} spa {label:<10} ratio {ratio:.3f} "
                f"removed {removed:.3f} {bed.metric} {value:.4f} ({seconds:.1f}s)")
            rows.append(row(bed, budget, "spa", label, data_free, value, removed, ratio))
    return rows


def row(bed: Bed, budget: float, tool: str, criterion: str, data_free: bool, value: float,
        removed: float, ratio: float) -> dict[str, Any]:
    return {"model": bed.name, "budget": budget, "tool": tool, "criterion": criterion,
            "data_free": data_free, "metric": bed.metric, "value": round(float(value), 5),
            "higher_is_better": bed.higher_is_better, "params_removed": round(removed, 4),
            "ratio": round(ratio, 4)}


# ------------------------------------------------------- Torch-Pruning side
def rotation_matrix(size: int) -> Any:
    """``P`` with ``x @ P == rotate_half(x)`` (RoPE's half swap as a constant matmul)."""
    import torch

    half = size // 2
    matrix = torch.zeros(size, size)
    for index in range(half):
        matrix[index + half, index] = -1.0
        matrix[index, index + half] = 1.0
    return matrix


def traceable_attention(self: Any, x: Any, cos: Any, sin: Any) -> Any:
    """The test bed's attention, the same function written so Torch-Pruning can trace it.

    Torch-Pruning's dependency graph did not finish building (over 5 minutes, still
    in ``get_pruning_group``) on the form ``models/testbeds_torch.py`` uses (RoPE's
    concat of slices, the KV repeat as expand + reshape); with RoPE as a constant
    matmul, the KV repeat as ``repeat_interleave`` and SDPA it builds in 0.1 s.
    ``load_from_onnx(check=True)`` confirms the module still matches the ONNX
    fixture in ONNX Runtime within 1e-4.
    """
    import torch

    batch, seq, _ = x.shape
    q = self.q_proj(x).reshape(batch, seq, self.heads, self.head_dim).transpose(1, 2)
    k = self.k_proj(x).reshape(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
    v = self.v_proj(x).reshape(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
    rotate = rotation_matrix(self.head_dim)
    q = q * cos + (q @ rotate) * sin
    k = k * cos + (k @ rotate) * sin
    repeats = self.heads // self.kv_heads
    k, v = k.repeat_interleave(repeats, 1), v.repeat_interleave(repeats, 1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))


def torch_rows(bed: Bed, folder: Path, small: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    import torch
    import torch_pruning as tp

    sys.path.insert(0, str(REPO / "models"))
    import testbeds_torch as tbt

    dense = params(bed.path)
    is_lm = bed.name == "shakespeare_lm"
    facts = bed.path.with_suffix(".json")

    if is_lm:
        tbt.Attention.forward = traceable_attention
    checked = []

    def fresh() -> Any:
        module = tbt.build_from_facts(facts)
        tbt.load_from_onnx(module, bed.path, check=not checked)  # the first load is checked
        checked.append(True)
        return module.eval()

    if is_lm:
        example = torch.from_numpy(bed.calibration[0]["input_ids"])
        batches = [(torch.from_numpy(f["input_ids"]), None) for f in bed.calibration]
    else:
        images, labels = fashion_mnist.load("train")
        picks = np.random.default_rng(0).choice(len(images), size=len(bed.calibration), replace=False)
        example = torch.from_numpy(images[picks[:1]].copy())
        batches = [(torch.from_numpy(images[picks[i:i + 64]].copy()),
                    torch.from_numpy(labels[picks[i:i + 64]].copy()))
                   for i in range(0, len(picks), 64)]

    def loss_of(module: Any, inputs: Any, target: Any) -> Any:
        logits = module(inputs)
        if is_lm:
            return torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), inputs[:, 1:].reshape(-1))
        return torch.nn.functional.cross_entropy(logits, target)

    def prune(ratio: float, importance_name: str) -> Any:
        module = fresh()
        importance = {
            "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "hessian": lambda: tp.importance.GroupHessianImportance(),
        }[importance_name]()
        extra: dict[str, Any] = {}
        if is_lm:
            heads = {}
            for block in module.blocks:
                heads[block.attn.q_proj] = block.attn.heads
                heads[block.attn.k_proj] = block.attn.kv_heads
                heads[block.attn.v_proj] = block.attn.kv_heads
            extra = {"num_heads": heads, "prune_num_heads": True, "prune_head_dims": False,
                     "head_pruning_ratio": ratio, "ignored_layers": [module.lm_head]}
        else:
            extra = {"ignored_layers": [module.classifier[-1]]}
        pruner = tp.pruner.MetaPruner(module, example, importance=importance,
                                      pruning_ratio=ratio, global_pruning=False, **extra)
        if importance_name == "taylor":
            module.zero_grad()
            for inputs, target in batches:
                loss_of(module, inputs, target).backward()
        elif importance_name == "hessian":
            importance.zero_grad()
            for inputs, target in batches:
                for index in range(inputs.shape[0]):
                    module.zero_grad()
                    loss_of(module, inputs[index:index + 1],
                            None if target is None else target[index:index + 1]).backward()
                    importance.accumulate_grad(module)
        pruner.step()
        module.zero_grad()
        if is_lm:
            for block in module.blocks:
                # prune_head_dims=False: head_dim stays, whole heads go
                block.attn.heads = block.attn.q_proj.out_features // block.attn.head_dim
                block.attn.kv_heads = block.attn.k_proj.out_features // block.attn.head_dim
        return module

    def export(module: Any, path: Path) -> Path:
        with torch.no_grad():
            tbt.export_torchscript(module, example, path, "input_ids" if is_lm else "images")
        return path

    probe = folder / f"{bed.name}-tp-probe.onnx"

    def removed_at(ratio: float) -> float:
        export(prune(ratio, "magnitude"), probe)
        return 1 - params(probe) / dense

    rows = []
    for budget in BUDGETS:
        ratio = bisect_ratio(removed_at, budget, 5 if small else 8)
        for name, data_free in (("magnitude", True), ("taylor", False), ("hessian", False)):
            output = export(prune(ratio, name), folder / f"{bed.name}-tp-{name}-{budget}.onnx")
            value = bed.evaluate(output)
            removed = 1 - params(output) / dense
            log(f"{bed.name} budget {budget:.2f} torch-pruning {name:<9} ratio {ratio:.3f} "
                f"removed {removed:.3f} {bed.metric} {value:.4f}")
            rows.append(row(bed, budget, "torch-pruning", name, data_free, value, removed, ratio))
    return rows


# ------------------------------------------------------------------ output
def better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def goals(rows: list[dict[str, Any]], model: str, budget: float) -> list[str]:
    """The issue's two comparisons at one (model, budget); empty without Torch-Pruning rows."""
    here = [r for r in rows if r["model"] == model and r["budget"] == budget]
    tp_rows = [r for r in here if r["tool"] == "torch-pruning"]
    if not tp_rows or not any(r["tool"] == "spa" for r in here):
        return []
    higher = here[0]["higher_is_better"]
    pick = max if higher else min

    def best(candidates: list[dict[str, Any]]) -> dict[str, Any]:
        return pick(candidates, key=lambda r: r["value"])

    spa_free = best([r for r in here if r["tool"] == "spa" and r["data_free"]])
    spa_cal = best([r for r in here if r["tool"] == "spa" and not r["data_free"]])
    tp_mag = next(r for r in tp_rows if r["criterion"] == "magnitude")
    tp_best = best(tp_rows)
    lines = []
    for label, ours, theirs in (("data-free", spa_free, tp_mag), ("calibrated", spa_cal, tp_best)):
        verdict = "beats" if better(ours["value"], theirs["value"], higher) else "DOES NOT beat"
        lines.append(f"- {model}, {int(budget * 100)}% removed, {label}: spa `{ours['criterion']}` "
                     f"{ours['value']:.4g} {verdict} Torch-Pruning `{theirs['criterion']}` "
                     f"{theirs['value']:.4g}")
    return lines


def write_outputs(rows: list[dict[str, Any]], dense: dict[str, float], out: Path,
                  notes: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    lines = ["# Pruning without fine-tuning: spa vs Torch-Pruning", "",
             "Written by `python models/compare_pruning.py` (see its docstring for the method). "
             "Budgets are shares of parameters removed; `removed` is the share actually removed. "
             "No fine-tuning on either side.", ""]
    lines += notes
    for model in sorted({r["model"] for r in rows}):
        here = [r for r in rows if r["model"] == model]
        metric = here[0]["metric"]
        arrow = "higher is better" if here[0]["higher_is_better"] else "lower is better"
        lines += ["", f"## {model} ({metric}, {arrow}; dense {dense[model]:.4f})", "",
                  "| tool | criterion | data-free | " + " | ".join(
                      f"{int(b * 100)}% removed" for b in BUDGETS) + " |",
                  "|---|---|---|" + "---|" * len(BUDGETS)]
        methods = list(dict.fromkeys((r["tool"], r["criterion"], r["data_free"]) for r in here))
        for tool, criterion, data_free in methods:
            cells = []
            for budget in BUDGETS:
                match = [r for r in here if (r["tool"], r["criterion"], r["budget"]) ==
                         (tool, criterion, budget)]
                cells.append(f"{match[0]['value']:.4f} ({match[0]['params_removed']:.2f})"
                             if match else "-")
            lines.append(f"| {tool} | {criterion} | {'yes' if data_free else 'no'} | "
                         + " | ".join(cells) + " |")
        goal_lines = [g for b in BUDGETS for g in goals(rows, model, b)]
        if goal_lines:
            lines += ["", "Goals:", "", *goal_lines]
        if plot(here, dense[model], out / f"quality_{model}.png"):
            lines += ["", f"![{model}](quality_{model}.png)"]
    (out / "quality.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(rows: list[dict[str, Any]], dense: float, path: Path) -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for tool, criterion in dict.fromkeys((r["tool"], r["criterion"]) for r in rows):
        points = sorted((r["params_removed"], r["value"]) for r in rows
                        if (r["tool"], r["criterion"]) == (tool, criterion))
        style = "-o" if tool == "spa" else "--s"
        axes.plot([0.0] + [p[0] for p in points], [dense] + [p[1] for p in points], style,
                  label=f"{tool} {criterion}")
    axes.set_xlabel("share of parameters removed")
    axes.set_ylabel(rows[0]["metric"])
    if rows[0]["metric"] == "perplexity":
        axes.set_yscale("log")
    axes.set_title(rows[0]["model"])
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "results")
    parser.add_argument("--beds", nargs="+", default=["shakespeare_lm", "fashion_cnn"])
    parser.add_argument("--small", action="store_true", help="fewer evaluation samples and bisection steps")
    parser.add_argument("--tools", nargs="+", default=["spa", "torch-pruning"])
    args = parser.parse_args()
    has_torch = importlib.util.find_spec("torch_pruning") is not None
    notes = []
    if "torch-pruning" in args.tools and not has_torch:
        notes.append("Torch-Pruning rows are missing: run with the `models` extra "
                     "(it installs torch and torch-pruning).")
        print(notes[-1], file=sys.stderr)
    rows: list[dict[str, Any]] = []
    dense: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="spa-quality-") as name:
        for bed in make_beds(args.small, args.beds):
            dense[bed.name] = bed.evaluate(bed.path)
            print(f"{bed.name}: dense {bed.metric} {dense[bed.name]:.4f}", flush=True)
            if "spa" in args.tools:
                rows += spa_rows(bed, Path(name), args.small, lambda s: print(s, flush=True))
            if "torch-pruning" in args.tools and has_torch:
                rows += torch_rows(bed, Path(name), args.small, lambda s: print(s, flush=True))
    previous = args.out / "quality.json"
    if previous.is_file():  # keep the rows of test beds not run this time
        ran = {(model, tool) for model in dense for tool in args.tools}
        kept = [r for r in json.loads(previous.read_text()) if (r["model"], r["tool"]) not in ran]
        rows = kept + rows
        for r in kept:
            dense.setdefault(r["model"], r["dense"])
    for r in rows:
        r.setdefault("dense", round(dense[r["model"]], 5))
    write_outputs(rows, dense, args.out, notes)
    print(f"wrote {args.out / 'quality.md'} and {args.out / 'quality.json'}")


if __name__ == "__main__":
    main()
