"""Train the byte-level Llama-style test bed on Shakespeare and export it to ONNX.

    nice python models/train_shakespeare_lm.py            # 10 minutes wall clock on one CPU core

Trains ``ByteLlama`` (models/testbeds_torch.py) on the training plays of
``spa.testbeds.shakespeare`` (seeded batches of random 128-byte windows, AdamW, cosine decay)
for a fixed wall-clock budget, exports with the dynamo exporter (dynamic batch and sequence),
renames the weight initializers after the module's parameters, checks ONNX Runtime against
torch, measures held-out perplexity with ``spa.testbeds.shakespeare.perplexity`` and writes
``models/testbeds/shakespeare_lm.onnx`` and ``shakespeare_lm.json`` (training facts).
Needs torch (the /work/venv-models environment described in models/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbeds_torch import (
    TESTBEDS,
    ByteLlama,
    LMConfig,
    config_dict,
    load_from_onnx,
    name_initializers,
)

from spa.testbeds import shakespeare

__all__ = ["main"]


def batches(tokens: np.ndarray, batch: int, context: int, seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(tokens) - context - 1, size=batch)
        window = np.stack([tokens[s : s + context + 1] for s in starts])
        yield torch.from_numpy(window[:, :-1]), torch.from_numpy(window[:, 1:])


def train(model: ByteLlama, minutes: float, steps: int | None, batch: int, lr: float,
          seed: int) -> tuple[int, float]:
    """Train for ``steps`` steps, or for ``minutes`` of wall clock when ``steps`` is None."""
    tokens = shakespeare.encode(shakespeare.train_text())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    budget = minutes * 60.0
    start = time.perf_counter()
    step = 0
    loss_avg = float("nan")
    model.train()
    for inputs, targets in batches(tokens, batch, model.config.context, seed):
        elapsed = time.perf_counter() - start
        if (step >= steps) if steps is not None else (elapsed >= budget):
            break
        # cosine schedule over the steps (or the wall-clock budget), short warm-up
        progress = step / steps if steps is not None else elapsed / budget
        scale = min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        logits = model(inputs)
        loss = functional.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_avg = loss.item() if step == 0 else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"step {step:5d}  {elapsed:6.0f}s  loss {loss_avg:.3f}", flush=True)
        step += 1
    return step, time.perf_counter() - start


#: Node metadata of the dynamo exporter that only repeats the exporting machine's source paths.
_LOCAL_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def strip_local_metadata(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key not in _LOCAL_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def export(model: ByteLlama, path: Path) -> None:
    model.eval()
    example = torch.randint(0, 256, (2, 16))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=model.config.context)}
    with tempfile.TemporaryDirectory() as folder:
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=18, input_names=["input_ids"],
            output_names=["logits"], dynamic_shapes=(dims,), verbose=False)
        program.save(str(Path(folder) / "lm.onnx"))
        proto = onnx.load(str(Path(folder) / "lm.onnx"))
    name_initializers(proto, model)
    strip_local_metadata(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=None,
                        help="train exactly this many steps instead of --minutes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=TESTBEDS)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    config = LMConfig()
    model = ByteLlama(config)
    steps, seconds = train(model, args.minutes, args.steps, args.batch, args.lr, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "shakespeare_lm.onnx"
    export(model, onnx_path)
    load_from_onnx(ByteLlama(config), onnx_path)  # the committed weights rebuild the module
    eval_windows = 128  # what tests/test_testbeds.py re-measures; the full figure is value_full
    ppl = shakespeare.perplexity(onnx_path, seq_len=config.context, max_windows=eval_windows)
    ppl_full = shakespeare.perplexity(onnx_path, seq_len=config.context)
    facts = {
        "model": "shakespeare_lm",
        "config": config_dict(config),
        "params": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "steps": steps,
        "batch": args.batch,
        "lr": args.lr,
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "heldout": list(shakespeare.HELDOUT),
        "metric": "heldout_perplexity",
        "eval": {"seq_len": config.context, "max_windows": eval_windows},
        "value": round(ppl, 4),
        "value_full": round(ppl_full, 4),
    }
    (args.out / "shakespeare_lm.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(f"held-out perplexity {ppl_full:.3f} ({ppl:.3f} on {eval_windows} windows; bytes, "
          f"uniform = 256) after {steps} steps, {seconds:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
