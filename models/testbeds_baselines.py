"""Reference figures for the two test beds: dense metric, a byte-unigram baseline for the LM, and
the metric after spa's built-in criteria prune each fixture without fine-tuning.

    python models/testbeds_baselines.py            # a few minutes on one core; no torch needed

Prints a Markdown table (quoted in docs/testbeds.md). LM perplexity is measured on 512 evenly
spread 128-byte windows of the held-out plays; CNN accuracy on all 10k test images.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.workflows.prune import prune_model
from spa.testbeds import fashion_mnist, shakespeare

__all__ = ["main"]

TESTBEDS = Path(__file__).resolve().parent / "testbeds"
WINDOWS = 512


def unigram_perplexity() -> float:
    """Held-out perplexity of byte frequencies counted on the training text (add-one)."""
    train = shakespeare.encode(shakespeare.train_text())
    heldout = shakespeare.encode(shakespeare.heldout_text())
    probabilities = (np.bincount(train, minlength=256) + 1) / (len(train) + 256)
    return math.exp(-float(np.log(probabilities[heldout]).mean()))


def parameter_count(path: Path) -> int:
    return sum(int(np.prod(init.dims)) for init in onnx.load(str(path)).graph.initializer
               if init.data_type == onnx.TensorProto.FLOAT)


def lm_metric(path: Path) -> float:
    return shakespeare.perplexity(path, seq_len=128, max_windows=WINDOWS)


def cnn_metric(path: Path) -> float:
    return fashion_mnist.accuracy(path, "test")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--criteria", nargs="+", default=["random", "l1", "l2"])
    args = parser.parse_args(argv)
    beds = [("shakespeare_lm", "held-out perplexity", lm_metric),
            ("fashion_cnn", "test accuracy", cnn_metric)]
    print(f"byte-unigram held-out perplexity: {unigram_perplexity():.2f}\n")
    print("| test bed | metric | pruning | params | value |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, metric_name, metric in beds:
            fixture = TESTBEDS / f"{name}.onnx"
            print(f"| {name} | {metric_name} | dense | {parameter_count(fixture):,} | "
                  f"{metric(fixture):.4f} |", flush=True)
            for criterion in args.criteria:
                for ratio in args.ratios:
                    out = Path(folder) / f"{name}-{criterion}-{ratio}.onnx"
                    result = prune_model(fixture, out, ratio=ratio, criterion=criterion, seed=0)
                    print(f"| {name} | {metric_name} | {criterion} {ratio:.0%} per group | "
                          f"{result.report['params_after']:,} | {metric(out):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
