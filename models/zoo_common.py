"""Shared helpers of the zoo export scripts: check, lighten, save, registry rows.

Every export script (``export_zoo.py`` for PyTorch, ``export_tf.py``,
``export_jax.py``) describes its models as :class:`Spec` rows and hands them
to :func:`main`. This module needs only onnx, onnxruntime, numpy and spa; each
builder imports its own framework lazily.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.zoo import make_light

ZOO_DIR = Path(__file__).resolve().parent / "zoo"

#: The nine models that ship inside the onnx wheel (onnx/backend/test/data/light).
ONNX_WHEEL = [
    ("onnx-alexnet", "light_bvlc_alexnet.onnx", "data_0", ["plain-cnn"]),
    ("onnx-densenet121", "light_densenet121.onnx", "data_0", ["dense-concat"]),
    ("onnx-inception-v1", "light_inception_v1.onnx", "data_0", ["inception"]),
    ("onnx-inception-v2", "light_inception_v2.onnx", "data_0", ["inception"]),
    ("onnx-resnet50", "light_resnet50.onnx", "gpu_0/data_0", ["residual"]),
    ("onnx-shufflenet", "light_shufflenet.onnx", "gpu_0/data_0", ["group-conv", "channel-shuffle"]),
    ("onnx-squeezenet", "light_squeezenet.onnx", "data_0", ["plain-cnn"]),
    ("onnx-vgg19", "light_vgg19.onnx", "data_0", ["plain-cnn"]),
    ("onnx-zfnet512", "light_zfnet512.onnx", "gpu_0/data_0", ["plain-cnn"]),
]


@dataclasses.dataclass
class Input:
    """One model input: concrete shape (batch 1), dtype and optional int range [low, high)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int | None = None
    high: int | None = None

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.low is not None:
            out["low"], out["high"] = self.low, self.high
        return out

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            low = 0 if self.low is None else self.low
            high = 2 if self.high is None else self.high
            return rng.integers(low, high, size=self.shape).astype(self.dtype)
        return rng.standard_normal(self.shape).astype(self.dtype)


@dataclasses.dataclass
class Spec:
    """One zoo model: ``build(path)`` writes the full ONNX model to ``path``."""

    name: str
    build: Callable[[Path], None]
    inputs: list[Input]
    exporter: str
    framework: str
    provenance: str
    tags: list[str]


def onnx_wheel_rows() -> list[dict[str, Any]]:
    rows = []
    for name, file, input_name, tags in ONNX_WHEEL:
        rows.append({
            "name": name,
            "file": f"onnx-wheel:{file}",
            "inputs": [{"name": input_name, "shape": [1, 3, 224, 224], "dtype": "float32"}],
            "provenance": f"onnx wheel backend test data (onnx/backend/test/data/light/{file}), "
                          "ONNX model zoo graph with ConstantOfShape weights",
            "exporter": "onnx-model-zoo",
            "framework": "caffe2",
            "tags": ["onnx-wheel", *tags],
            "facts": {},
        })
    return rows


def model_facts(model: onnx.ModelProto) -> dict[str, Any]:
    params = sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    domains = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    return {
        "params": params,
        "nodes": len(model.graph.node),
        "opset": opsets.get("ai.onnx"),
        "custom_domains": domains,
        "op_types": sorted({n.op_type for n in model.graph.node}),
    }


def _check_and_run(model: onnx.ModelProto, path: Path, spec: Spec) -> list[np.ndarray]:
    import onnxruntime as ort

    onnx.checker.check_model(model, full_check=False)
    declared = [i.name for i in model.graph.input
                if i.name not in {t.name for t in model.graph.initializer}]
    names = [i.name for i in spec.inputs]
    if declared != names:
        raise ValueError(f"{spec.name}: graph inputs {declared} != spec inputs {names}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: i.sample(rng) for i in spec.inputs}
    outputs = session.run(None, feeds)
    for out in outputs:
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise ValueError(f"{spec.name}: non-finite output")
    return outputs


#: Node metadata the dynamo exporter writes that only repeats the exporting machine's
#: source (stack traces with local paths, FX node dumps); dropped to keep files light.
_DROPPED_METADATA = {"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"}


def _strip_metadata(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        kept = [p for p in node.metadata_props if p.key not in _DROPPED_METADATA]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_metadata(attr.g)
            for sub in attr.graphs:
                _strip_metadata(sub)


def export_one(spec: Spec, out_dir: Path) -> dict[str, Any]:
    """Build, check, run, lighten and save one model; its registry row."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{spec.name}.onnx"
        spec.build(path)
        model = onnx.load(str(path))  # external data (if any) is read in
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise ValueError(f"{spec.name}: external data not loaded")
        _strip_metadata(model.graph)
        full = Path(tmp) / "full.onnx"
        onnx.save(model, str(full))
        _check_and_run(model, full, spec)
    light = make_light(model)
    target = out_dir / f"{spec.name}.onnx"
    onnx.save(light, str(target))
    full_size, light_size = model.ByteSize(), target.stat().st_size
    facts = model_facts(model)
    facts["full_bytes"], facts["light_bytes"] = full_size, light_size
    return {
        "name": spec.name,
        "file": target.name,
        "inputs": [i.row() for i in spec.inputs],
        "provenance": spec.provenance,
        "exporter": spec.exporter,
        "framework": spec.framework,
        "tags": spec.tags,
        "facts": facts,
    }


def merge_registry(new_rows: Sequence[dict[str, Any]], out_dir: Path) -> None:
    """Replace rows by name (keeping their position), append new ones; wheel rows first."""
    registry = out_dir / "registry.json"
    rows: list[dict[str, Any]] = []
    if registry.exists():
        rows = json.loads(registry.read_text(encoding="utf-8"))
    by_name = {row["name"]: row for row in [*onnx_wheel_rows(), *new_rows]}
    order = [row["name"] for row in onnx_wheel_rows()]
    order += [row["name"] for row in rows if row["name"] not in order]
    order += [row["name"] for row in new_rows if row["name"] not in order]
    old = {row["name"]: row for row in rows}
    merged = [by_name.get(name, old.get(name)) for name in order]
    text = "[\n" + ",\n".join(json.dumps(row, sort_keys=False) for row in merged) + "\n]\n"
    registry.write_text(text, encoding="utf-8")


def main(specs: Sequence[Spec], argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="model names to export")
    parser.add_argument("--out", type=Path, default=ZOO_DIR)
    parser.add_argument("--list", action="store_true", help="list the model names and exit")
    args = parser.parse_args(argv)
    if args.list:
        for spec in specs:
            print(spec.name)
        return 0
    chosen = [s for s in specs if args.only is None or s.name in args.only]
    unknown = set(args.only or ()) - {s.name for s in specs}
    if unknown:
        parser.error(f"unknown model names: {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    for spec in chosen:
        start = time.perf_counter()
        try:
            row = export_one(spec, args.out)
        except Exception:  # report and go on with the next model
            traceback.print_exc()
            failed.append(spec.name)
            print(f"FAILED {spec.name}", flush=True)
            continue
        rows.append(row)
        merge_registry([row], args.out)
        print(f"ok {spec.name}: {row['facts']['params']} params, light "
              f"{row['facts']['light_bytes'] / 1e3:.0f} kB, {time.perf_counter() - start:.1f}s",
              flush=True)
    merge_registry(rows, args.out)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


def torch_export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    *,
    dynamo: bool,
    opset: int = 18,
    dynamic_batch: bool = True,
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Export ``module`` with the dynamo or the TorchScript exporter (batch axis dynamic).

    Dynamo exports trace example inputs of batch 2 (torch.export specialises
    a size of 1), so callers pass batch-2 tensors; the registry records batch 1.
    """
    import torch

    module.eval()
    with torch.no_grad():
        if dynamo:
            dynamic_shapes = None
            if dynamic_batch:
                batch = torch.export.Dim("batch", min=1, max=1024)
                dynamic_shapes = tuple({0: batch} for _ in args)
                params = inspect.signature(module.forward).parameters.values()
                if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
                    dynamic_shapes = (dynamic_shapes,)  # forward(*args): one packed argument
                if kwargs:
                    dynamic_shapes = {k: {0: batch} for k in kwargs}
            program = torch.onnx.export(
                module, args, kwargs=kwargs, dynamo=True, opset_version=opset,
                input_names=input_names, dynamic_shapes=dynamic_shapes, external_data=False,
            )
            program.save(str(path))
        else:
            axes = {name: {0: "batch"} for name in input_names} if dynamic_batch else None
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset,
                input_names=input_names, dynamic_axes=axes, do_constant_folding=True,
            )
