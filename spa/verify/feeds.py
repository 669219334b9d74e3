"""Seeded random inputs for a model, from its graph input specs.

Dynamic dimensions take a value from ``shapes`` (a whole shape per input) or
``dims`` (a value per symbolic dimension name, e.g. ``batch=2``), else 1.
Floating inputs are standard normal. Integer inputs (token ids, positions) are
uniform in ``[low, high)``: from ``int_ranges`` when given, else ``[0, V)`` when
the input indexes an embedding table of V rows (a Gather on an initializer),
else ``[0, 2)``. Boolean inputs are all True (attention masks).
:func:`spa.verify.verify_models` adds feeds taking the other branch of an
``If`` that such an input selects (:mod:`spa.verify.branches`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx

from spa.errors import UserError

__all__ = ["InputSpec", "dims_from_shapes", "input_specs", "make_feeds", "parse_shape_option"]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype, and its dims (int or symbolic name)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str, ...]
    int_range: tuple[int, int] | None = None


def _embedding_rows(graph: onnx.GraphProto) -> dict[str, int]:
    """Input name -> rows of the initializer it indexes through Gather(axis=0)."""
    rows = {t.name: int(t.dims[0]) for t in graph.initializer if t.dims}
    found: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in rows:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis == 0:
            found[node.input[1]] = rows[node.input[0]]
    return found


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Real graph inputs (initializers excluded) with dtypes and dims."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    vocab = _embedding_rows(graph)
    specs: list[InputSpec] = []
    for value in graph.input:
        if value.name in weights:
            continue
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise UserError(
                f"input '{value.name}' is not a tensor (sequence/map inputs are not supported); "
                "export the model with tensor inputs"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        dims: list[int | str] = []
        for position, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                dims.append(int(dim.dim_value))
            else:  # a name, nothing, or a negative value (Paddle's exporter writes -1)
                dims.append(dim.dim_param or f"{value.name}:{position}")
        int_range = (0, vocab[value.name]) if value.name in vocab else None
        specs.append(InputSpec(value.name, np.dtype(dtype), tuple(dims), int_range))
    return specs


def parse_shape_option(text: str) -> tuple[str, tuple[int, ...]]:
    """``name:1x3x224x224`` -> (name, (1, 3, 224, 224)); a one-line error otherwise."""
    name, sep, shape = text.rpartition(":")
    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
    except ValueError:
        dims = ()
    if not sep or not name or not dims or min(dims) < 0:
        raise UserError(f"bad shape '{text}'; write it as INPUT:1x3x224x224")
    return name, dims


def _concrete_shape(
    spec: InputSpec, shapes: Mapping[str, tuple[int, ...]], dims: Mapping[str, int]
) -> tuple[int, ...]:
    if spec.name in shapes:
        shape = tuple(shapes[spec.name])
        if len(shape) != len(spec.dims) or any(
            isinstance(d, int) and d != s for d, s in zip(spec.dims, shape, strict=False)
        ):
            raise UserError(
                f"shape {shape} for input '{spec.name}' does not match the model's "
                f"{spec.dims}; give only the dynamic dims a new size"
            )
        return shape
    return tuple(d if isinstance(d, int) else int(dims.get(d, 1)) for d in spec.dims)


def dims_from_shapes(
    specs: list[InputSpec], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, int]:
    """Sizes of the symbolic dims as real samples have them (``shapes``: input ->
    shape of one sample). A dim whose samples disagree (two inputs give it two
    sizes) or whose input has another rank is left out."""
    found: dict[str, set[int]] = {}
    for spec in specs:
        shape = shapes.get(spec.name)
        if shape is None or len(shape) != len(spec.dims):
            continue
        for dim, size in zip(spec.dims, shape, strict=True):
            if isinstance(dim, str):
                found.setdefault(dim, set()).add(int(size))
    return {dim: sizes.pop() for dim, sizes in found.items() if len(sizes) == 1}


def make_feeds(
    specs: list[InputSpec],
    *,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """One seeded feed dict for ``specs`` (same seed, same arrays)."""
    shapes, dims, int_ranges = shapes or {}, dims or {}, int_ranges or {}
    unknown = set(shapes) - {spec.name for spec in specs}
    if unknown:
        names = ", ".join(spec.name for spec in specs)
        raise UserError(f"--shapes names unknown input(s) {sorted(unknown)}; inputs are: {names}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = _concrete_shape(spec, shapes, dims)
        if spec.dtype == np.bool_:
            feeds[spec.name] = np.ones(shape, dtype=np.bool_)
        elif np.issubdtype(spec.dtype, np.integer):
            low, high = int_ranges.get(spec.name) or spec.int_range or (0, 2)
            feeds[spec.name] = rng.integers(low, high, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds
