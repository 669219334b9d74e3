"""Cleanup passes: no-op and dead-code removal, unused initializers, shapes, order.

Each pass reuses onnx-ir's common passes where one fits and adds named
statistics. All are in place and linear in graph size (onnx-ir keeps use-def
chains, so no pass searches the graph per node).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from spa.constants import constant_array, flushed_subnormals, subnormal_count
from spa.ir_shapes import infer_shapes
from spa.pass_manager import SpaPass, SpaPassResult, count_nodes, register_pass

__all__ = [
    "NO_OP_RULES",
    "EliminateDeadCodePass",
    "FlushSubnormalsPass",
    "InferShapesPass",
    "RemoveIdentityPass",
    "RemoveUnusedInitializersPass",
    "TopologicalSortPass",
    "flush_subnormals",
]

logger = logging.getLogger(__name__)


def _all_graphs(model: ir.Model) -> list[ir.Graph]:
    return [model.graph, *model.graph.subgraphs()]


def _initializer_count(model: ir.Model) -> int:
    return sum(len(graph.initializers) for graph in _all_graphs(model))


# ------------------------------------------------------------------ remove-identity


def _used(value: ir.Value) -> bool:
    return bool(value.uses()) or value.is_graph_output()


def _dropout_is_no_op(node: ir.Node) -> bool:
    """Inference Dropout: no training_mode input (or a constant false), mask unused."""
    if any(_used(value) for value in node.outputs[1:]):
        return False
    if "is_test" in node.attributes and not node.attributes["is_test"].as_int():
        return False  # opset < 7 in training
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is None:
        return True
    flag = constant_array(training)
    return flag is not None and not bool(flag)


def _cast_is_no_op(node: ir.Node) -> bool:
    source, target = node.inputs[0], node.attributes.get("to")
    return (
        source is not None
        and source.dtype is not None
        and target is not None
        and (source.dtype == ir.DataType(target.as_int()))
    )


def _cast_like_is_no_op(node: ir.Node) -> bool:
    source, like = node.inputs[0], node.inputs[1]
    return (
        source is not None
        and like is not None
        and source.dtype is not None
        and (source.dtype == like.dtype)
    )


def _reshape_is_no_op(node: ir.Node) -> bool:
    """Reshape to the shape its input already has (0 copies, one -1 fills the rest)."""
    source = node.inputs[0]
    target = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if source is None or source.shape is None or target is None or target.ndim != 1:
        return False
    allow_zero = "allowzero" in node.attributes and node.attributes["allowzero"].as_int()
    if len(target) != len(source.shape) or list(target).count(-1) > 1:
        return False
    for wanted, dim in zip(target.tolist(), source.shape, strict=True):
        copies = wanted == 0 and not allow_zero
        if not (copies or wanted == -1 or (isinstance(dim, int) and wanted == dim)):
            return False
    return True


def _transpose_is_no_op(node: ir.Node) -> bool:
    perm = node.attributes.get("perm")
    return perm is not None and list(perm.as_ints()) == list(range(len(perm.as_ints())))


#: Standard-domain ops that are sometimes no-ops: the test that says when.
NO_OP_RULES: dict[str, Callable[[ir.Node], bool]] = {
    "Identity": lambda node: True,
    "Dropout": _dropout_is_no_op,
    "Cast": _cast_is_no_op,
    "CastLike": _cast_like_is_no_op,
    "Reshape": _reshape_is_no_op,
    "Transpose": _transpose_is_no_op,
}


def _eliminate_identity(node: ir.Node) -> bool:
    """Remove ``y = Identity(x)``: uses of ``y`` read ``x``; when ``y`` is a graph
    output, ``x`` takes its name. False (kept) where that would change an
    interface, merge two outputs, or return an outer value from a body."""
    if node.op_type != "Identity" or node.domain != "" or len(node.inputs) != 1:
        return False
    source, target = node.inputs[0], node.outputs[0]
    if source is None or len(node.outputs) != 1:
        return False
    is_output = target.is_graph_output()
    if is_output and (
        source.is_graph_input()
        or source.is_initializer()
        or source.is_graph_output()
        or source.graph is not node.graph
    ):
        return False
    if source.shape is None:
        source.shape = target.shape
    if source.type is None:
        source.type = target.type
    ir.convenience.replace_all_uses_with(target, source, replace_graph_outputs=True)
    if is_output:
        source.name = target.name
    graph = node.graph
    assert graph is not None
    graph.remove(node, safe=True)
    return True


@register_pass
class RemoveIdentityPass(SpaPass):
    """Remove no-op nodes, in the main graph and every subgraph.

    Cases (:data:`NO_OP_RULES`): ``Identity``; inference ``Dropout`` (no
    training_mode or a constant false one) whose mask is unused; ``Cast`` and
    ``CastLike`` to the dtype the input already has; ``Reshape`` to the shape
    the input already has (constant target; ``0`` copies a dim, one ``-1``);
    ``Transpose`` with the identity permutation. Each becomes an Identity,
    then onnx-ir's ``IdentityEliminationPass`` removes it: when its output is
    a graph output, its input takes the output's name.

    Left alone: a no-op between a graph input (or initializer) and a graph
    output, which cannot go without renaming the model's interface (it stays,
    as an Identity); one whose input is already a graph output (removing it
    would merge two outputs); one that returns an outer-scope value from an
    If/Loop/Scan body (ONNX Runtime refuses a body output that is an outer
    value; an ``If`` whose branches are a single Identity is legal and stays
    so); Reshape to a run-time target (run ``fold-constants`` first); ops in
    other domains.
    """

    name = "remove-identity"
    summary = "Remove Identity, inference Dropout, same-dtype Cast and no-op Reshape/Transpose"

    def call(self, model: ir.Model) -> SpaPassResult:
        before = count_nodes(model)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            rule = NO_OP_RULES.get(node.op_type) if node.domain == "" else None
            if rule is None or node.op_type == "Identity" or not node.inputs or not rule(node):
                continue
            node.op_type = "Identity"
            node.resize_inputs(1)
            node.resize_outputs(1)
            node.attributes.clear()
        graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        for graph_like in graphs:
            for node in list(ir.traversal.RecursiveGraphIterator(graph_like)):
                _eliminate_identity(node)
        removed = before - count_nodes(model)
        return SpaPassResult(model, removed > 0, {"nodes_removed": removed})


# ------------------------------------------------------------------ dead code and unused


@register_pass
class EliminateDeadCodePass(SpaPass):
    """Remove nodes whose outputs reach no graph output, recursively, subgraphs included.

    onnx-ir's ``RemoveUnusedNodesPass`` does the work in one reverse walk; it
    also drops the main graph's initializers that only dead nodes read
    (reported as ``initializers_removed``) and unused optional outputs.
    ONNX ops have no side effects, so every unused node goes. Graph inputs and
    outputs never change.
    """

    name = "eliminate-dead-code"
    summary = "Remove nodes whose outputs are never used"

    def call(self, model: ir.Model) -> SpaPassResult:
        nodes, initializers = count_nodes(model), _initializer_count(model)
        common_passes.RemoveUnusedNodesPass()(model)
        statistics = {
            "nodes_removed": nodes - count_nodes(model),
            "initializers_removed": initializers - _initializer_count(model),
        }
        return SpaPassResult(model, any(statistics.values()), dict(statistics))


@register_pass
class RemoveUnusedInitializersPass(SpaPass):
    """Remove initializers, local functions and opset imports nothing uses.

    Initializers of the main graph and of every subgraph count; one read only
    from inside an If/Loop/Scan body is used and kept (onnx-ir tracks uses
    across subgraphs). An initializer that is also a graph input or output is
    part of the interface and kept. Nodes are not touched (that is
    ``eliminate-dead-code``); functions and opsets go through onnx-ir's
    ``RemoveUnusedFunctionsPass`` and ``RemoveUnusedOpsetsPass``.
    """

    name = "remove-unused-initializers"
    summary = "Remove unused initializers, local functions and opset imports"

    def call(self, model: ir.Model) -> SpaPassResult:
        removed = 0
        for graph in _all_graphs(model):
            for value in list(graph.initializers.values()):
                if not (value.uses() or value.is_graph_output() or value.is_graph_input()):
                    assert value.name is not None
                    del graph.initializers[value.name]
                    removed += 1
        functions = len(model.functions)
        common_passes.RemoveUnusedFunctionsPass()(model)
        opsets = _opset_count(model)  # of the functions left
        common_passes.RemoveUnusedOpsetsPass()(model)
        statistics = {
            "initializers_removed": removed,
            "functions_removed": functions - len(model.functions),
            "opsets_removed": opsets - _opset_count(model),
        }
        return SpaPassResult(model, any(statistics.values()), dict(statistics))


def _opset_count(model: ir.Model) -> int:
    return len(model.opset_imports) + sum(len(f.opset_imports) for f in model.functions.values())


# ------------------------------------------------------------------ shapes and order


def _agrees(declared: ir.Shape, inferred: ir.Shape | None) -> bool:
    """True when ``inferred`` is missing, or has the rank of ``declared`` and every dim
    it knows equals the declared one while ``declared`` fixes no dim that inference
    leaves symbolic (then ``declared`` is not stale, only better named)."""
    if inferred is None:
        return True
    if len(declared) != len(inferred):
        return False
    return all(
        old == new if isinstance(new, int) else not isinstance(old, int)
        for old, new in zip(declared, inferred, strict=True)
    )


@register_pass
class InferShapesPass(SpaPass):
    """Drop every intermediate shape and type, then infer them again.

    Uses :func:`spa.ir_shapes.infer_shapes` (ONNX strict inference with data
    propagation), which serialises the model without initializers larger than
    1 kB, so weights stored as external data are not read, in time linear in
    the initializer count (onnx-ir's ``ShapeInferencePass`` is quadratic). Rewrites leave stale
    value_info behind, and ONNX Runtime rejects declared shapes that disagree
    with what it infers.

    Kept: inputs and outputs of every graph (the interface); the element type
    of values ONNX cannot type (custom-domain outputs); a declared (exporter's)
    shape that inference does not contradict: same rank, every dim inference
    knows equal, no dim fixed where inference is symbolic (:func:`_agrees`).
    Replacing those with ONNX's weaker inference cost ONNX Runtime its fusions:
    timm-hrnet-w18-small ran 201 ops instead of 129, hf-roberta lost 2 of 5
    SkipLayerNormalization (models/results/cleanup_latency.md). When strict inference
    fails (an op whose inference raises), every previous shape and type is
    restored unchanged (``shapes_restored``).
    """

    name = "infer-shapes"
    summary = "Drop stale value_info and re-infer shapes"

    def call(self, model: ir.Model) -> SpaPassResult:
        interface = {id(v) for g in _all_graphs(model) for v in (*g.inputs, *g.outputs)}
        saved: list[tuple[ir.Value, ir.Shape | None, ir.TypeProtocol | None]] = []
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            for value in node.outputs:
                if id(value) not in interface:
                    saved.append((value, value.shape, value.type))
                    value.shape, value.type = None, None
        cleared = sum(1 for _, shape, _ in saved if shape is not None)
        if not infer_shapes(model, strict_mode=True, data_prop=True):
            for value, shape, type_ in saved:
                value.shape, value.type = shape, type_
            statistics = {"shapes_cleared": 0, "shapes_inferred": 0, "shapes_restored": cleared}
            return SpaPassResult(model, False, dict(statistics))
        kept = 0
        for value, shape, type_ in saved:
            if value.type is None:
                value.type = type_
            if shape is not None and value.type == type_ and _agrees(shape, value.shape):
                value.shape = shape  # the exporter's shape, which inference does not contradict
                kept += 1
        inferred = sum(1 for value, _, _ in saved if value.shape is not None) - kept
        statistics = {"shapes_cleared": cleared, "shapes_inferred": inferred, "shapes_restored": 0}
        return SpaPassResult(model, True, dict(statistics))


@register_pass
class TopologicalSortPass(SpaPass):
    """Sort the main graph, its subgraphs and the functions topologically (stable).

    Wraps onnx-ir's ``TopologicalSortPass``; ``nodes_moved`` counts the
    positions whose node changed. A graph with a cycle raises ``ValueError``.
    """

    name = "topological-sort"
    summary = "Sort nodes topologically (stable)"

    def call(self, model: ir.Model) -> SpaPassResult:
        before = list(ir.traversal.RecursiveGraphIterator(model.graph))
        common_passes.TopologicalSortPass()(model)
        after = ir.traversal.RecursiveGraphIterator(model.graph)
        moved = sum(1 for old, new in zip(before, after, strict=True) if old is not new)
        return SpaPassResult(model, moved > 0, {"nodes_moved": moved})


# ------------------------------------------------------------------ subnormal weights


def _constant_tensors(model: ir.Model) -> list[tuple[ir.Value | ir.Node, ir.TensorProtocol]]:
    """Every initializer (main graph and subgraphs) and ``Constant`` node ``value`` tensor
    (graphs, subgraphs and functions), with the value or node that holds it."""
    found: list[tuple[ir.Value | ir.Node, ir.TensorProtocol]] = []
    for graph in _all_graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                found.append((value, value.const_value))
    bodies: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for body in bodies:
        for node in ir.traversal.RecursiveGraphIterator(body):
            attribute = node.attributes.get("value") if node.op_type == "Constant" else None
            if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
                found.append((node, attribute.as_tensor()))
    return found


def flush_subnormals(model: ir.Model) -> tuple[int, int]:
    """Replace every subnormal value of the model's float32, float64 and bfloat16 constants
    with a zero of the same sign; return (values flushed, tensors changed)."""
    values = tensors = 0
    for holder, tensor in _constant_tensors(model):
        count = subnormal_count(tensor)
        if not count:
            continue
        flushed = flushed_subnormals(tensor)
        if isinstance(holder, ir.Node):
            holder.attributes["value"] = ir.AttrTensor("value", flushed)
        else:
            holder.const_value = flushed
        values, tensors = values + count, tensors + 1
    if values:
        logger.info("flushed %d subnormal weight values (in %d tensors) to zero", values, tensors)
    return values, tensors


@register_pass
class FlushSubnormalsPass(SpaPass):
    """Set subnormal weights (float32, float64, bfloat16: magnitude below 2^-126, or
    2^-1022 for float64) to zero of the same sign.

    x86 CPUs compute with subnormal operands through a microcode assist unless the
    process sets flush-to-zero/denormals-are-zero, which ONNX Runtime leaves off by
    default: one 1x1 convolution of PP-OCRv4's recognizer whose pruned weight held 1278
    subnormals (of 115200) ran 15x slower than the dense layer, and the whole pruned
    model 0.56x of its input; flushed, 1.17x (docs/optimize.md). The change per value is
    below 1.2e-38 (float32), far under any tolerance. Float16 is left alone: its
    subnormals are normal numbers once converted to float32, and GPUs run them at full
    speed. Every command that writes a model runs it before saving.
    """

    name = "flush-subnormals"
    summary = "Set subnormal float weights to zero (x86 CPUs run them slowly)"

    def call(self, model: ir.Model) -> SpaPassResult:
        values, tensors = flush_subnormals(model)
        statistics = {"values_flushed": values, "tensors_changed": tensors}
        return SpaPassResult(model, values > 0, dict(statistics))
