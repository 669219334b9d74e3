"""What the tile-shared GQSA layout costs on all-MiniLM-L6-v2 (docs/formats.md (c)).

GQSA g = 16, calibrated (16 Lee background documents, as models/results_table.py),
the reference form in ONNX Runtime CPU: the three Spearman correlations (Lee-50 /
WordSim-353 / SimLex-999) of the dense model and of each variant, then the layer
error ``trace((W - W')^T H (W - W'))`` of tile against column on a few layers
(the same Hessians).

    python models/gqsa_tile_quality.py [--variants column:0.5,tile:0.5,tile:0.75]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from spa import testbeds
from spa.calibration import collect_hessians
from spa.passes.quantize import weight_activations
from spa.quant.gqsa import gqsa_quantize, layer_error
from spa.workflows.sparsify import sparsify_model

SETS = ("lee50", "wordsim353", "simlex999")


def shown(metrics: dict[str, float]) -> str:
    return " / ".join(f"{metrics[key]:.4f}" for key in SETS)


def layer_errors(dense: Path, feeds: list, layers: list[int], sparsity: float) -> None:
    """Print each chosen MatMul's layer error, column vs tile, under its input's Hessian."""
    proto = onnx.load(str(dense))
    model = ir.serde.deserialize_model(proto)
    matmuls = [
        node for node in model.graph
        if node.op_type == "MatMul" and node.inputs[1] is not None
        and node.inputs[1].name in model.graph.initializers
    ]  # fmt: skip
    chosen = [matmuls[index] for index in layers if index < len(matmuls)]
    activations = {node.inputs[0].name for node in chosen if node.inputs[0] is not None}
    assert activations <= set(weight_activations(model))
    hessians = collect_hessians(proto, sorted(activations), feeds)
    ratios = []
    for node in chosen:
        weight = model.graph.initializers[node.inputs[1].name].const_value.numpy()  # type: ignore[union-attr]
        hessian = hessians[node.inputs[0].name].hessian  # type: ignore[union-attr]
        errors = {}
        for layout in ("column", "tile"):
            quantized = gqsa_quantize(weight, hessian, sparsity=sparsity, layout=layout)
            errors[layout] = layer_error(hessian, weight, quantized.dequantize(np.float64))
        print(
            f"layer {node.name} W{list(weight.shape)} sparsity {sparsity}: column "
            f"{errors['column']:.4g} tile {errors['tile']:.4g} ratio "
            f"{errors['tile'] / errors['column']:.3f}",
            flush=True,
        )
        ratios.append(errors["tile"] / errors["column"])
    print(f"tile / column layer error over {len(ratios)} layers: median {np.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="column:0.5,tile:0.5,tile:0.75")
    parser.add_argument(
        "--layers", default="0,2,4,5,30,34", help="MatMul indices for layer errors, or 'all'"
    )
    parser.add_argument("--skip-task", action="store_true", help="layer errors only")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    bed = testbeds.get("minilm")
    dense = bed.model_path()
    calibration = bed.calibration_feeds(16, 0)
    if not args.skip_task:
        print(f"dense        {shown(bed.evaluate(dense))}", flush=True)
        with tempfile.TemporaryDirectory(prefix="spa-gqsa-tile-") as folder:
            for variant in args.variants.split(","):
                layout, sparsity = variant.split(":")
                output = Path(folder) / f"{layout}-{sparsity}.onnx"
                began = time.perf_counter()
                sparsify_model(
                    dense, output, pattern="gqsa", group=16, sparsity=float(sparsity),
                    layout=layout, calib=calibration, verify=False,
                )  # fmt: skip
                seconds = time.perf_counter() - began
                print(f"{layout:6s} {sparsity:5s} {shown(bed.evaluate(output))} ({seconds:.0f} s)")
    layers = list(range(1000)) if args.layers == "all" else [int(i) for i in args.layers.split(",")]
    layer_errors(dense, calibration, layers, 0.5)


if __name__ == "__main__":
    main()
