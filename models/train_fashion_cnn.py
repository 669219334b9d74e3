"""Train the Fashion-MNIST CNN test bed and export it to ONNX.

    nice python models/train_fashion_cnn.py            # a few minutes on one CPU core

Trains ``FashionCNN`` (models/testbeds_torch.py) on the 60k training images of
``spa.testbeds.fashion_mnist`` (seeded shuffles, random horizontal flips, AdamW with one-cycle
learning rate), exports with the TorchScript exporter keeping BatchNormalization nodes (eval
form: running statistics), checks ONNX Runtime against torch, measures accuracy on the 10k test
images with ``spa.testbeds.fashion_mnist.accuracy`` and writes ``models/testbeds/fashion_cnn.onnx``
and ``fashion_cnn.json`` (training facts). Needs torch (see models/README.md).
"""

from __future__ import annotations

import argparse
import json
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
    FashionCNN,
    export_torchscript,
    load_from_onnx,
    name_initializers,
)

from spa.testbeds import fashion_mnist

__all__ = ["main"]


def train(model: FashionCNN, epochs: int, batch: int, lr: float, seed: int) -> tuple[int, float]:
    images, labels = fashion_mnist.load("train")
    inputs, targets = torch.from_numpy(images.copy()), torch.from_numpy(labels)
    rng = np.random.default_rng(seed)
    steps_per_epoch = len(images) // batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    start = time.perf_counter()
    step = 0
    model.train()
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(images)))
        flips = torch.from_numpy(rng.random(len(images)) < 0.5)
        total = 0.0
        for index in range(steps_per_epoch):
            picked = order[index * batch : (index + 1) * batch]
            x = inputs[picked]
            x = torch.where(flips[picked, None, None, None], x.flip(-1), x)
            loss = functional.cross_entropy(model(x), targets[picked])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            step += 1
            if step % 100 == 0:
                print(f"step {step:5d}  {time.perf_counter() - start:5.0f}s  loss {loss.item():.4f}",
                      flush=True)
        print(f"epoch {epoch + 1}/{epochs}  {time.perf_counter() - start:5.0f}s  "
              f"loss {total / steps_per_epoch:.4f}", flush=True)
    return step, time.perf_counter() - start


def export(model: FashionCNN, path: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "cnn.onnx"
        export_torchscript(model, torch.rand(2, 1, 28, 28), raw, "images")
        proto = onnx.load(str(raw))
    name_initializers(proto, model)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=TESTBEDS)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    widths, hidden = (16, 32, 64), 128
    model = FashionCNN(widths, hidden)
    steps, seconds = train(model, args.epochs, args.batch, args.lr, args.seed)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "fashion_cnn.onnx"
    export(model, onnx_path)
    load_from_onnx(FashionCNN(widths, hidden), onnx_path)  # the committed weights rebuild it
    accuracy = fashion_mnist.accuracy(onnx_path, "test")
    facts = {
        "model": "fashion_cnn",
        "config": {"widths": list(widths), "hidden": hidden},
        "params": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "epochs": args.epochs,
        "steps": steps,
        "batch": args.batch,
        "lr": args.lr,
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "metric": "test_accuracy",
        "eval": {"split": "test", "images": 10000},
        "value": round(accuracy, 4),
    }
    (args.out / "fashion_cnn.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(f"test accuracy {accuracy:.4f} after {args.epochs} epochs ({steps} steps), {seconds:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
