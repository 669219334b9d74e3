"""Read-only analysis: channel spaces, index maps, groups and plans.

>>> model = spa.model_io.load_model("model.onnx")  # doctest: +SKIP
>>> analysis = analyze(prepare(model))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx_ir as ir

    from spa.analysis.groups import Analysis, Group, Member, analyze, model_fingerprint

__all__ = [
    "Analysis",
    "Group",
    "Member",
    "analyze",
    "model_fingerprint",
    "prepare",
    "unshare_initializers",
]

logger = logging.getLogger(__name__)


def __getattr__(attribute: str) -> Any:
    """Import the analyzer on first use, so ``spa --help`` stays fast."""
    if attribute in {"Analysis", "Group", "Member", "analyze", "model_fingerprint"}:
        from spa.analysis import groups

        return getattr(groups, attribute)
    raise AttributeError(attribute)


def prepare(model: ir.Model) -> ir.Model:
    """Make a model analysable, in place: Constant nodes become initializers
    (so their channels can be sliced) and shapes are inferred."""
    import onnx_ir.passes.common as common_passes

    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    unshare_initializers(model)
    result = common_passes.ShapeInferencePass(strict_mode=True)(model)
    if not result.modified:
        common_passes.ShapeInferencePass(strict_mode=False)(model)
    if any(node.domain == "com.microsoft" for node in model.graph):
        _infer_contrib_shapes(model)
    return model


def _same(tensor: Any) -> Any:
    return tensor


def unshare_initializers(model: ir.Model) -> int:
    """Give every use of a shared scalar or 1-D initializer its own value.

    Exporters share identical constants between unrelated layers (TorchScript
    routes one zero bias through Identity nodes into many Convs); left shared,
    they would tie those layers' channels together. Shared weights of rank >= 2
    are tied on purpose (ALBERT's layers, tied embeddings) and stay shared. Copies cost no memory until
    sliced; :func:`spa.passes.prune.apply_plan` merges identical ones again.
    """
    import onnx_ir as ir

    graph = model.graph
    outputs = {id(value) for value in graph.outputs}
    created = 0
    for value in list(graph.initializers.values()):
        uses = list(value.uses())
        tensor = value.const_value
        if len(uses) < 2 or id(value) in outputs or tensor is None or len(tensor.shape) > 1:
            continue  # weights of rank >= 2 shared on purpose (ALBERT, tied embeddings) stay tied
        for node, index in uses[1:]:
            created += 1
            copy_name = f"{value.name}__use{created}"
            while copy_name in graph.initializers:
                created += 1
                copy_name = f"{value.name}__use{created}"
            # A lazy view: the copy reads the same bytes and renaming it leaves the
            # original tensor (and the proto it may wrap) alone.
            view = ir.LazyTensor(
                functools.partial(_same, tensor),
                tensor.dtype,
                ir.Shape(tensor.shape.numpy()),
                name=copy_name,
            )
            copy = ir.Value(name=copy_name, shape=value.shape, type=value.type, const_value=view)
            graph.register_initializer(copy)
            node.replace_input_with(index, copy)
    return created


def _infer_contrib_shapes(model: ir.Model) -> None:
    """ONNX's inference does not know ORT contrib ops; ORT's symbolic one does."""
    import onnx_ir as ir

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(
            ir.serde.serialize_model(model), auto_merge=True
        )
    except Exception as error:  # the tool raises bare Exceptions on unknown ops
        logger.warning("symbolic shape inference failed (%s); contrib shapes stay unknown", error)
        return
    values = {v.name: v for node in model.graph for v in node.outputs}
    for info in inferred.graph.value_info:
        value = values.get(info.name)
        if value is not None and value.shape is None and info.type.HasField("tensor_type"):
            dims = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in info.type.tensor_type.shape.dim
            ]
            value.shape = ir.Shape(dims)
