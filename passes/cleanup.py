"""Cleanup passes: identity and dead-code removal, unused initializers, shape refresh.

Each pass reuses onnx-ir's common passes where they exist and adds named
statistics. All are in place and near-linear in graph size.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from spa.pass_manager import SpaPass, SpaPassResult, count_nodes, register_pass

__all__ = [
    "EliminateDeadCodePass",
    "InferShapesPass",
    "RemoveIdentityPass",
    "RemoveUnusedInitializersPass",
]


def _initializer_count(model: ir.Model) -> int:
    return len(model.graph.initializers) + sum(len(g.initializers) for g in model.graph.subgraphs())


@register_pass
class RemoveIdentityPass(SpaPass):
    """Remove no-op nodes.

    Cases: ``Identity``; inference-mode ``Dropout`` whose mask output is unused
    (turned into Identity first); ``Cast`` to the dtype its input already has.
    An Identity between a graph input and a graph output is kept (onnx-ir's
    rule), as is any node whose removal would rename a graph input.
    """

    name = "remove-identity"
    summary = "Remove Identity, inference Dropout and same-dtype Cast nodes"

    def call(self, model: ir.Model) -> SpaPassResult:
        before = count_nodes(model)
        for graph in (model.graph, *model.graph.subgraphs()):
            for node in list(graph):
                if node.domain != "":
                    continue
                if node.op_type == "Dropout" and self._is_inference_dropout(node):
                    node.op_type = "Identity"
                    node.resize_inputs(1)
                    node.resize_outputs(1)
                    node.attributes.clear()
                elif node.op_type == "Cast" and self._is_noop_cast(node):
                    node.op_type = "Identity"
                    node.attributes.clear()
        common_passes.IdentityEliminationPass()(model)
        removed = before - count_nodes(model)
        return SpaPassResult(model, removed > 0, {"nodes_removed": removed})

    @staticmethod
    def _is_inference_dropout(node: ir.Node) -> bool:
        mask_used = len(node.outputs) > 1 and (
            bool(node.outputs[1].uses()) or node.outputs[1].is_graph_output()
        )
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is not None:
            constant = training.const_value
            if constant is None or bool(constant.numpy()):
                return False
        return not mask_used

    @staticmethod
    def _is_noop_cast(node: ir.Node) -> bool:
        source = node.inputs[0]
        target = node.attributes.get("to")
        return (
            source is not None
            and source.dtype is not None
            and target is not None
            and int(source.dtype) == target.value
        )


@register_pass
class EliminateDeadCodePass(SpaPass):
    """Remove nodes whose outputs reach no graph output (subgraphs included).

    Nodes with side effects do not exist in ONNX, so every unused node goes.
    Graph inputs and outputs are never changed.
    """

    name = "eliminate-dead-code"
    summary = "Remove nodes whose outputs are never used"

    def call(self, model: ir.Model) -> SpaPassResult:
        before = count_nodes(model)
        common_passes.RemoveUnusedNodesPass()(model)
        removed = before - count_nodes(model)
        return SpaPassResult(model, removed > 0, {"nodes_removed": removed})


@register_pass
class RemoveUnusedInitializersPass(SpaPass):
    """Remove initializers, functions and opset imports nothing uses.

    An initializer used only inside an If/Loop body is used, and kept.
    """

    name = "remove-unused-initializers"
    summary = "Remove unused initializers, local functions and opset imports"

    def call(self, model: ir.Model) -> SpaPassResult:
        before = _initializer_count(model)
        functions = len(model.functions)
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.RemoveUnusedFunctionsPass()(model)
        common_passes.RemoveUnusedOpsetsPass()(model)
        removed = before - _initializer_count(model)
        statistics = {
            "initializers_removed": removed,
            "functions_removed": functions - len(model.functions),
        }
        return SpaPassResult(model, any(statistics.values()), dict(statistics))


@register_pass
class InferShapesPass(SpaPass):
    """Drop every intermediate shape and infer them again (strict ONNX inference).

    Rewrites leave stale value_info behind; ONNX Runtime rejects a model whose
    declared shapes disagree with what it infers. When strict inference fails
    (an op ONNX cannot infer), the previous shapes are restored unchanged.
    Graph inputs and outputs keep their declared shapes.
    """

    name = "infer-shapes"
    summary = "Drop stale value_info and re-infer shapes"

    def call(self, model: ir.Model) -> SpaPassResult:
        keep = {id(v) for v in (*model.graph.inputs, *model.graph.outputs)}
        saved: list[tuple[ir.Value, ir.Shape | None]] = []
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            for value in node.outputs:
                if id(value) not in keep:
                    saved.append((value, value.shape))
                    value.shape = None
        result = common_passes.ShapeInferencePass(strict_mode=True)(model)
        if not result.modified and any(shape is not None for _, shape in saved):
            for value, shape in saved:
                value.shape = shape
            return SpaPassResult(model, False, {"inferred": 0, "restored": len(saved)})
        inferred = sum(1 for value, _ in saved if value.shape is not None)
        return SpaPassResult(model, True, {"inferred": inferred})
