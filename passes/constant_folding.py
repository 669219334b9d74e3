"""Constant folding: evaluate, ahead of time, nodes whose inputs are all constants.

One walk over the main graph in topological order; use-def chains come from
onnx-ir (``value.producer()``, ``value.uses()``), so the pass is linear in the
number of nodes (plus the cost of each evaluation). Shape inference is never
re-run here: ``Shape`` folds use the shapes already on the values (run
``infer-shapes`` first, as the ``cleanup`` recipe does).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from spa.constants import (
    RANDOM_OPS,
    constant_array,
    constant_size,
    evaluate_node,
    may_fold,
    replace_with_initializer,
    types_agree,
)
from spa.pass_manager import SpaPass, SpaPassResult, register_pass

__all__ = ["RANDOM_OPS", "FoldConstantsPass", "evaluate_node"]

logger = logging.getLogger(__name__)


#: Ops that only select entries of their first input: applied to a partially
#: static shape, they fold when every selected dimension is static.
SELECTION_OPS = frozenset({"Gather", "Slice"})

Dims = list[int | None]


def _static_dims(value: ir.Value) -> list[int] | None:
    if value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int)]
    return dims if len(dims) == len(value.shape) else None


def _shape_node_dims(node: ir.Node) -> Dims | None:
    """Dimensions a ``Shape`` node returns (None per symbolic dim), or None if rank unknown."""
    source = node.inputs[0] if node.inputs else None
    if source is None or source.shape is None:
        return None
    dims: Dims = [d if isinstance(d, int) else None for d in source.shape]
    start = node.attributes["start"].as_int() if "start" in node.attributes else 0
    end = node.attributes["end"].as_int() if "end" in node.attributes else None
    return dims[start:end]  # Python slicing clamps like ONNX's start/end


def _size_of_constant_of_shape(arrays: list[np.ndarray | None]) -> int | None:
    return math.prod(int(d) for d in arrays[0].ravel()) if arrays[0] is not None else None


def _size_of_expand(arrays: list[np.ndarray | None]) -> int | None:
    data, target = arrays[0], arrays[1]
    if data is None or target is None:
        return None
    try:
        return math.prod(np.broadcast_shapes(data.shape, tuple(int(d) for d in target)))
    except ValueError:
        return None


def _size_of_tile(arrays: list[np.ndarray | None]) -> int | None:
    data, repeats = arrays[0], arrays[1]
    if data is None or repeats is None:
        return None
    return data.size * math.prod(int(r) for r in repeats.ravel())


def _size_of_range(arrays: list[np.ndarray | None]) -> int | None:
    if any(a is None for a in arrays[:3]):
        return None
    start, limit, delta = (float(a) for a in arrays[:3])  # type: ignore[arg-type]
    return max(0, math.ceil((limit - start) / delta)) if delta else None


#: Ops whose output can be much larger than their inputs: how many elements
#: they will produce, computed from the (small) constant inputs before running.
OUTPUT_SIZE_RULES: dict[str, Callable[[list[np.ndarray | None]], int | None]] = {
    "ConstantOfShape": _size_of_constant_of_shape,
    "Expand": _size_of_expand,
    "Tile": _size_of_tile,
    "Range": _size_of_range,
}


@register_pass
class FoldConstantsPass(SpaPass):
    """Evaluate nodes whose inputs are all constants; replace their outputs by initializers.

    Cases:

    * any standard-domain node whose inputs are initializers or ``Constant``
      outputs, evaluated by ONNX's reference evaluator at the model's opset;
    * ``Shape`` and ``Size`` of a value whose shape is fully static;
    * ``Gather``/``Slice`` of a ``Shape`` when every selected dimension is
      static, even if other dimensions are symbolic (``Shape -> Gather(1)``
      of ``[N, 3, 4]`` folds to ``[3]``). Chains (``Shape -> Gather -> Concat
      -> Reshape`` target) fold in the same walk.

    Left alone: random ops (:data:`RANDOM_OPS`; Dropout belongs to
    ``remove-identity``), custom domains, ``Constant`` nodes themselves, nodes
    with subgraphs, nodes producing a graph output, non-tensor results
    (sequences), nodes inside subgraphs, and anything that would read or
    produce more than ``max_output_elements`` elements (counted as
    ``too_large``; the size is predicted before evaluating whenever the output
    shape or :data:`OUTPUT_SIZE_RULES` tells it, so large weights are never
    materialised). Folded nodes are removed; inputs they leave unused are left
    for ``eliminate-dead-code``.
    """

    name = "fold-constants"
    summary = "Evaluate constant subgraphs (and Shape of static shapes) ahead of time"

    def __init__(self, max_output_elements: int = 1 << 20) -> None:
        super().__init__()
        self.max_output_elements = max_output_elements

    def call(self, model: ir.Model) -> SpaPassResult:
        opset = model.graph.opset_imports.get("", 17)
        self._too_large = 0
        folded = 0
        for node in list(model.graph):
            results = self._fold(node, opset)
            if results is None:
                continue
            for value, array in zip(node.outputs, results, strict=True):
                replace_with_initializer(model.graph, value, array)
            model.graph.remove(node, safe=True)
            folded += 1
        statistics = {"constants_folded": folded, "too_large": self._too_large}
        return SpaPassResult(model, folded > 0, dict(statistics))

    def _fold(self, node: ir.Node, opset: int) -> list[np.ndarray] | None:
        if not may_fold(node):
            return None
        if node.op_type in ("Shape", "Size"):
            return _fold_shape(node)
        inputs = [v for v in node.inputs if v is not None]
        sizes = [constant_size(v) for v in inputs]
        if node.op_type in SELECTION_OPS and sizes and sizes[0] is None:
            return self._fold_shape_selection(node, opset)
        known = [size for size in sizes if size is not None]
        if not inputs or len(known) != len(sizes):
            return None
        if max(known) > self.max_output_elements:
            return self._refuse(node, "an input")
        arrays = [constant_array(v) if v is not None else None for v in node.inputs]
        predicted = self._predicted_size(node, arrays)
        if predicted is not None and predicted > self.max_output_elements:
            return self._refuse(node, f"its {predicted}-element output")
        results = evaluate_node(node, arrays, opset)
        if results is None or not types_agree(node, results):
            return None
        if sum(r.size for r in results) > self.max_output_elements:
            return self._refuse(node, "its output")
        return results

    @staticmethod
    def _predicted_size(node: ir.Node, arrays: list[np.ndarray | None]) -> int | None:
        rule = OUTPUT_SIZE_RULES.get(node.op_type)
        if rule is not None:
            return rule(arrays)
        shapes = [_static_dims(v) for v in node.outputs]
        if all(shape is not None for shape in shapes):
            return sum(math.prod(shape) for shape in shapes if shape is not None)
        return None

    def _refuse(self, node: ir.Node, what: str) -> list[np.ndarray] | None:
        """Count ``node`` as too large; return None (nothing to fold)."""
        self._too_large += 1
        logger.debug(
            "not folding %s '%s': %s exceeds max_output_elements=%d",
            node.op_type,
            node.name,
            what,
            self.max_output_elements,
        )
        return None

    def _fold_shape_selection(self, node: ir.Node, opset: int) -> list[np.ndarray] | None:
        """Gather/Slice of a partially static Shape: select positions, then read dims."""
        data = node.inputs[0]
        producer = data.producer() if data is not None else None
        if producer is None or producer.op_type != "Shape" or producer.domain != "":
            return None
        dims = _shape_node_dims(producer)
        others = node.inputs[1:]
        if dims is None or any(v is not None and constant_size(v) is None for v in others):
            return None
        positions = np.arange(len(dims), dtype=np.int64)
        arrays = [positions, *(constant_array(v) if v is not None else None for v in others)]
        results = evaluate_node(node, arrays, opset)
        if results is None:
            return None
        picked = [dims[int(i)] for i in results[0].ravel()]
        if any(dim is None for dim in picked):
            return None
        return [np.array(picked, dtype=np.int64).reshape(results[0].shape)]


def _fold_shape(node: ir.Node) -> list[np.ndarray] | None:
    dims = _shape_node_dims(node) if node.op_type == "Shape" else None
    if node.op_type == "Size" and node.inputs and node.inputs[0] is not None:
        static = _static_dims(node.inputs[0])
        return None if static is None else [np.array(math.prod(static), dtype=np.int64)]
    if dims is None or any(dim is None for dim in dims):
        return None
    return [np.array(dims, dtype=np.int64)]
