"""The model zoo: light ONNX files and a registry.

A *light* model is a real exported ONNX graph whose large weights are replaced
by placeholders so that dozens of architectures fit in the repository. Every
floating-point tensor with more than :data:`LIGHT_MIN_ELEMENTS` elements (an
initializer, or the ``value`` of a Constant node, in any subgraph) becomes an
external-data tensor whose ``location`` is :data:`PLACEHOLDER` and whose other
external-data entries record how to regenerate it:

* ``spa_zlib``: base64 of the zlib-compressed raw bytes, when the tensor
  compresses 16x or better (causal masks, constant fills): restored exactly;
* otherwise ``spa_mean``/``spa_std``/``spa_min``/``spa_max``: restored as
  seeded normal values clipped to ``[min, max]`` (so BatchNorm variances stay
  positive and masks keep their range).

Integer and boolean tensors (indices, shapes, token tables) are kept verbatim.
The models that ship inside the ``onnx`` wheel (``onnx/backend/test/data/light``)
use their own scheme, ``ConstantOfShape`` nodes; :func:`load` turns those into
seeded random initializers as well.

The registry (``registry.json`` beside the light files) lists, per model: name,
file (or ``onnx-wheel:<file>``), inputs (name, shape, dtype, optional value
range for integer inputs), provenance, exporter and framework.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from spa.model_io import FLOAT_TYPES

__all__ = [
    "LIGHT_MIN_ELEMENTS",
    "PLACEHOLDER",
    "InputSpec",
    "ZooEntry",
    "entries",
    "entry",
    "is_light",
    "load",
    "make_light",
    "materialize",
    "restore_light",
    "zoo_folder",
]

LIGHT_MIN_ELEMENTS = 64
PLACEHOLDER = "spa-light-placeholder"
_COMPRESS_RATIO = 16


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and Constant value of ``graph`` and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _light_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    array = numpy_helper.to_array(tensor)
    raw = np.ascontiguousarray(array).tobytes()
    packed = zlib.compress(raw, 9)
    if len(packed) * _COMPRESS_RATIO <= len(raw):
        return {"spa_zlib": base64.b64encode(packed).decode("ascii")}
    values = array.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        finite = np.zeros(1)
    return {
        "spa_mean": repr(float(finite.mean())),
        "spa_std": repr(float(finite.std())),
        "spa_min": repr(float(finite.min())),
        "spa_max": repr(float(finite.max())),
    }


def make_light(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with large float tensors replaced by placeholders."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for tensor in _tensors(light.graph):
        if tensor.data_type not in FLOAT_TYPES:
            continue
        if int(np.prod(tensor.dims, dtype=np.int64)) <= LIGHT_MIN_ELEMENTS:
            continue
        entries = _light_entries(tensor)
        for field in ("raw_data", "float_data", "double_data", "int32_data"):
            tensor.ClearField(field)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in {"location": PLACEHOLDER, **entries}.items():
            tensor.external_data.add(key=key, value=value)
    return light


def is_light(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == PLACEHOLDER for e in tensor.external_data
    )


def _seed_for(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _restored_array(tensor: onnx.TensorProto, seed: int) -> np.ndarray:
    info = {e.key: e.value for e in tensor.external_data}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(tensor.dims)
    if "spa_zlib" in info:
        raw = zlib.decompress(base64.b64decode(info["spa_zlib"]))
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    mean, std = float(info["spa_mean"]), float(info["spa_std"])
    low, high = float(info["spa_min"]), float(info["spa_max"])
    values = _seed_for(tensor.name, seed).normal(mean, std, size=shape)
    return np.clip(values, low, high).astype(dtype)


def restore_light(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Fill every placeholder with deterministic weights (in place; returns model)."""
    for tensor in _tensors(model.graph):
        if not is_light(tensor):
            continue
        array = _restored_array(tensor, seed)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return model


def _restore_constant_of_shape(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """onnx-wheel light models: ConstantOfShape(initializer shape) -> seeded weights."""
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: list[onnx.NodeProto] = []
    used_shapes: set[str] = set()
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        output = node.output[0]
        rng = _seed_for(output, seed)
        role = _weight_role(output, consumers.get(output, []))
        if role == "variance":
            array = rng.uniform(0.5, 1.5, size=shape)
        elif role == "scale":
            array = rng.uniform(0.8, 1.2, size=shape)
        elif role == "shift":
            array = rng.normal(0.0, 0.1, size=shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else max(shape[0], 1)
            array = rng.normal(0.0, (2.0 / max(fan_in, 1)) ** 0.5, size=shape)
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), output))
        used_shapes.add(node.input[0])
    del graph.node[:]
    graph.node.extend(keep)
    still_used = {name for node in keep for name in node.input}
    remaining = [t for t in graph.initializer if t.name not in used_shapes or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    # Old IR versions list weights as graph inputs; keep only the real inputs.
    weights = {t.name for t in graph.initializer} | used_shapes
    real_inputs = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(real_inputs)
    model.ir_version = max(model.ir_version, 4)
    return model


def _weight_role(name: str, consumers: list[onnx.NodeProto]) -> str:
    for node in consumers:
        if node.op_type == "BatchNormalization":
            slot = list(node.input).index(name)
            return {1: "scale", 2: "shift", 3: "shift", 4: "variance"}.get(slot, "weight")
        if node.op_type in {"Conv", "Gemm", "MatMul"} and list(node.input).index(name) == 2:
            return "shift"
        if node.op_type == "Add":
            return "shift"
    return "weight"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input as the registry records it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    low: int | None = None
    high: int | None = None


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One registry row."""

    name: str
    file: str
    inputs: tuple[InputSpec, ...]
    provenance: str
    exporter: str
    framework: str
    tags: tuple[str, ...] = ()
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def from_onnx_wheel(self) -> bool:
        return self.file.startswith("onnx-wheel:")

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the registered concrete shape (the ``shapes`` of seeded feeds)."""
        return {spec.name: spec.shape for spec in self.inputs}

    @property
    def int_ranges(self) -> dict[str, tuple[int, int]]:
        """Integer input name -> its registered ``[low, high)`` (token ids, masks)."""
        return {
            spec.name: (spec.low, spec.high)
            for spec in self.inputs
            if spec.low is not None and spec.high is not None
        }


def zoo_folder() -> Path:
    """Folder with the light models: ``$SPA_ZOO_DIR`` or the installed ``spa.zoo_data``."""
    override = os.environ.get("SPA_ZOO_DIR")
    if override:
        return Path(override)
    import spa.zoo_data

    return Path(next(iter(spa.zoo_data.__path__)))


def _entry_from_json(row: dict[str, Any]) -> ZooEntry:
    inputs = tuple(
        InputSpec(
            name=spec["name"],
            shape=tuple(int(d) for d in spec["shape"]),
            dtype=spec["dtype"],
            low=spec.get("low"),
            high=spec.get("high"),
        )
        for spec in row["inputs"]
    )
    return ZooEntry(
        name=row["name"],
        file=row["file"],
        inputs=inputs,
        provenance=row.get("provenance", ""),
        exporter=row.get("exporter", ""),
        framework=row.get("framework", ""),
        tags=tuple(row.get("tags", ())),
        facts=dict(row.get("facts", {})),
    )


def entries() -> list[ZooEntry]:
    """Every registered zoo model, in registry order."""
    registry = zoo_folder() / "registry.json"
    rows = json.loads(registry.read_text(encoding="utf-8"))
    return [_entry_from_json(row) for row in rows]


def entry(name: str) -> ZooEntry:
    for candidate in entries():
        if candidate.name == name:
            return candidate
    from spa.errors import UserError

    raise UserError(f"no zoo model named '{name}'; `spa zoo list` shows the available names")


def load(name_or_entry: str | ZooEntry, seed: int = 0) -> onnx.ModelProto:
    """The zoo model as a full ModelProto with deterministic weights."""
    item = entry(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    if item.from_onnx_wheel:
        folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
        model = onnx.load(str(folder / item.file.split(":", 1)[1]))
        return _restore_constant_of_shape(model, seed)
    model = onnx.load(str(zoo_folder() / item.file), load_external_data=False)
    return restore_light(model, seed)


def materialize(name: str, output: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the zoo model ``name`` with regenerated weights to ``output``."""
    model = load(name, seed)
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, output)
    return output
