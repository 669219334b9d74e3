"""Mask equivalence, the one correctness check of structured pruning (DESIGN.md).

For a plan, the physically pruned model must give the same outputs as the
original model with every removed parameter slice zeroed (the *masked*
reference). Graph inputs and outputs that lose channels (KV caches) are sliced
the same way before comparing.

An output made by a bounded activation (Sigmoid, Tanh, Softmax, ...) is
computed by ONNX Runtime to an absolute precision of about one float32 step of
its bound. Where it saturates (a detector's Sigmoid on random inputs gives
values near 1e-8 everywhere), comparing it says nothing about the pruning:
such an output is compared up to that resolution, and its pre-activation
(the op's input, which carries the information) is compared as well.

A removed channel is zero in the reference, also where the graph divides it by
its own sum (ConViT's gated attention renormalises ``attn / attn.sum(-1)``: a
removed head's gates are zero, and 0 / 0 would turn every output into NaN
through the next layer's zeroed weights, NaN * 0 being NaN). Each quotient whose
divisor depends on a removed slice is therefore made zero where it is not finite
(:func:`guard_quotients`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.analysis import Analysis
from spa.ir_shapes import clear_inferred_shapes
from spa.model_io import save_model
from spa.pruning.plan import Plan, member_indices
from spa.verify import Policy, VerifyResult, verify_models
from spa.verify.runner import run_model
from spa.verify.tolerance import BOUNDED_ACTIVATIONS, RESOLUTION_STEPS

__all__ = [
    "bounded_outputs",
    "guard_quotients",
    "io_adapter",
    "mask_model",
    "masked_relative_error",
    "verify_masked",
]

Arrays = dict[str, np.ndarray]



def bounded_outputs(model: ir.Model) -> dict[str, tuple[str, float]]:
    """Graph output -> (pre-activation value name, resolution) for every output
    produced directly by a bounded activation whose input is a named value."""
    found: dict[str, tuple[str, float]] = {}
    for value in model.graph.outputs:
        node = value.producer()
        while node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
            node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        if node is None or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        bound = BOUNDED_ACTIVATIONS.get(node.op_type)
        source = node.inputs[0]
        if bound is None or source is None or not source.name or source.is_graph_input():
            continue
        resolution = RESOLUTION_STEPS * float(np.finfo(np.float32).eps) * bound
        found[value.name or ""] = (source.name, resolution)
    return found


def mask_model(model: ir.Model, analysis: Analysis, plan: Plan) -> None:
    """Zero, in place, every parameter slice the plan removes (the reference);
    quotients by values the zeros reach are guarded (:func:`guard_quotients`)."""
    masked: set[str] = set()
    for (name, axis), kept in member_indices(analysis, plan).items():
        value = model.graph.initializers.get(name)
        if value is None or value.const_value is None:
            continue
        masked.add(name)
        array = value.const_value.numpy().copy()
        removed = np.setdiff1d(np.arange(array.shape[axis]), kept)
        index: list[Any] = [slice(None)] * array.ndim
        index[axis] = removed
        array[tuple(index)] = 0
        value.const_value = ir.Tensor(array, dtype=value.const_value.dtype, name=name)
    guard_quotients(model, masked)


# quotient op -> index of its divisor
_QUOTIENTS = {"Div": 1, "Reciprocal": 0}
# types ONNX Runtime's CPU IsNaN and IsInf take at every opset from 10 (float16's IsInf: opset 20)
_GUARDED_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE})
# ops whose outputs describe a tensor's shape, not its values
_METADATA_OPS = frozenset({"Shape", "Size"})


def guard_quotients(model: ir.Model, masked: set[str]) -> int:
    """Make each float32/float64 quotient (Div, Reciprocal) of the main graph whose divisor
    depends on an initializer in ``masked`` zero where it is not finite:
    ``Where(IsNaN(q) or IsInf(q), 0, q)``, the same for every finite value. A
    removed channel stays zero where the graph normalises it by its own sum.
    Returns the number of quotients guarded (none below opset 10, which lacks IsInf)."""
    if not masked or model.graph.opset_imports.get("", 1) < 10:
        return 0
    reached = {value for name, value in model.graph.initializers.items() if name in masked}
    divisions: list[ir.Node] = []
    for node in model.graph:
        if node.op_type in _METADATA_OPS or not any(v in reached for v in node.inputs if v is not None):
            continue
        reached.update(node.outputs)
        index = _QUOTIENTS.get(node.op_type)
        if index is None or node.domain not in ("", "ai.onnx") or len(node.inputs) <= index:
            continue
        divisor, dtype = node.inputs[index], node.outputs[0].dtype
        if divisor in reached and dtype in _GUARDED_TYPES:
            divisions.append(node)
    for index, node in enumerate(divisions):
        _guard(model.graph, node, index)
    return len(divisions)


def _guard(graph: ir.Graph, node: ir.Node, index: int) -> None:
    """Insert ``Where(IsNaN(q) or IsInf(q), 0, q)`` behind quotient ``node`` (the
    ``index``-th guarded: it names an unnamed quotient's guard)."""
    quotient = node.outputs[0]
    base = quotient.name or f"spa_quotient_{index}"
    dtype = quotient.dtype
    assert dtype is not None
    zero = ir.Value(name=f"{base}.spa_zero", const_value=ir.tensor(np.zeros((), dtype=dtype.numpy())))
    zero.shape, zero.type = ir.Shape([]), ir.TensorType(dtype)
    graph.register_initializer(zero)
    was_output = quotient.is_graph_output()
    guarded = ir.Value(name=f"{base}.guarded", type=quotient.type, shape=quotient.shape)
    quotient.replace_all_uses_with(guarded, replace_graph_outputs=True)
    nan = ir.node("IsNaN", [quotient], name=f"{base}.spa_isnan")
    inf = ir.node("IsInf", [quotient], name=f"{base}.spa_isinf")
    bad = ir.node("Or", [nan.outputs[0], inf.outputs[0]], name=f"{base}.spa_bad")
    safe = ir.node("Where", [bad.outputs[0], zero, quotient], name=f"{base}.spa_guard", outputs=[guarded])
    for made, suffix in ((nan, "isnan"), (inf, "isinf"), (bad, "bad")):
        made.outputs[0].name = f"{base}.spa_{suffix}"
    if was_output:  # the graph output keeps its name, now behind the guard
        quotient.name, guarded.name = f"{base}.unguarded", base
    graph.insert_after(node, [nan, inf, bad, safe])


def io_adapter(
    model: ir.Model, analysis: Analysis, plan: Plan
) -> Callable[[Arrays], Arrays] | None:
    """Slices graph inputs/outputs (KV caches) to the channels the pruned model keeps;
    None when the plan leaves every graph input and output whole."""
    io_names = {v.name for v in (*model.graph.inputs, *model.graph.outputs)}
    io_slices = {
        space: kept
        for space, kept in member_indices(analysis, plan).items()
        if space[0] in io_names
    }
    if not io_slices:
        return None

    def adapt(arrays: Arrays) -> Arrays:
        adapted = dict(arrays)
        for (value_name, axis), kept in io_slices.items():
            if value_name in adapted:
                adapted[value_name] = np.take(adapted[value_name], kept, axis=axis)
        return adapted

    return adapt


def verify_masked(
    reference: ir.Model,
    output: Path,
    analysis: Analysis,
    plan: Plan,
    policy: Policy,
    **inputs: Any,
) -> VerifyResult:
    """Mask ``reference`` (the model the plan was applied to, before slicing) in
    place and compare it with the pruned model at ``output`` in ONNX Runtime
    (``inputs``: ``seed``, ``shapes``, ``dims``, ``int_ranges``). Outputs of
    bounded activations are compared up to their resolution, and their
    pre-activations are compared too (:func:`bounded_outputs`)."""
    mask_model(reference, analysis, plan)
    # ORT plans its buffers on declared shapes; the analyzer's inferred ones may give a
    # Resize's input and output one dim name (PP-OCRv3 det: "re-use buffer {1,96,1,1} !=
    # {1,96,2,2}" at 1 x 1); the pruned output is saved without them too
    clear_inferred_shapes(reference, set())
    bounded = bounded_outputs(reference)
    pre_activations = [source for source, _ in bounded.values()]
    adapt = io_adapter(reference, analysis, plan)
    resolutions = {name: resolution for name, (_, resolution) in bounded.items()}
    with tempfile.TemporaryDirectory(prefix="spa-mask-") as folder:
        masked_path = save_model(reference, Path(folder) / "masked.onnx")
        return verify_models(
            masked_path, output, policy=policy, adapt=adapt, resolutions=resolutions,
            expose=pre_activations, **inputs,
        )  # fmt: skip


def masked_relative_error(
    masked: ir.Model, pruned: ir.Model, feeds: Mapping[str, np.ndarray]
) -> float:
    """Largest ``max|Δ| / max|masked|`` over the outputs, both models run in memory."""
    want = run_model(ir.serde.serialize_model(masked).SerializeToString(), feeds)
    got = run_model(ir.serde.serialize_model(pruned).SerializeToString(), feeds)
    worst = 0.0
    for name, expected in want.items():
        actual = got[name]
        if expected.shape != actual.shape:
            return float("inf")
        scale = float(np.abs(expected).max()) or 1.0
        worst = max(worst, float(np.abs(expected - actual).max()) / scale)
    return worst
