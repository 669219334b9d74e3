"""Read-only analysis: channel spaces, index maps, groups and plans.

>>> model = spa.model_io.load_model("model.onnx")  # doctest: +SKIP
>>> analysis = analyze(prepare(model))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    import onnx_ir as ir

    from spa.analysis.groups import Analysis, Group, Member, analyze, model_fingerprint

__all__ = [
    "Analysis",
    "Group",
    "Member",
    "analyze",
    "fold_weight_chains",
    "lift_weights",
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
    """Make a model analysable, in place: Constant nodes become initializers and
    weights computed from constants fold (:func:`lift_weights`), and shapes are inferred."""
    from spa.ir_shapes import infer_shapes

    lift_weights(model)
    unshare_initializers(model)
    if not infer_shapes(model, strict_mode=True):
        infer_shapes(model, strict_mode=False)
    if _infer_ml_elementwise(model):
        infer_shapes(model, strict_mode=False)
    for _ in range(3):  # each round lets inference carry refined dims further
        if not (_refine_computed_reshapes(model) | _refine_slices(model)):
            break
        infer_shapes(model, strict_mode=False)
    if any(node.domain == "com.microsoft" for node in model.graph) or _worth_symbolic(model):
        _infer_symbolic_shapes(model)
        _infer_attention_outputs(model)
    return model


#: ONNX-ML ops that keep their input's shape, with their output's element type
#: (None: the input's). ONNX has no shape inference for them, so a scikit-learn
#: pipeline converted by skl2onnx (a Scaler first) left every later shape unknown
#: and its MLP without one prunable group.
_ML_SAME_SHAPE = {"Scaler": "FLOAT", "Normalizer": "FLOAT", "Binarizer": None, "Imputer": None}


def lift_weights(model: ir.Model) -> int:
    """Constant nodes become initializers (so their channels can be sliced) and the
    weights computed from them alone are folded (:func:`fold_weight_chains`), in
    place: the weights the analyzer sees. Returns the number of nodes folded."""
    import onnx_ir.passes.common as common_passes

    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    return fold_weight_chains(model)


#: Ops a weight is stored through: folding them would change what the file
#: stores (FP16 weights cast up, INT8 weights dequantised), so they stay.
_STORAGE_OPS = frozenset(
    {"Cast", "CastLike", "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"}
)
#: Ops that only move a tensor's entries: they fold only behind a folded node (a
#: shared weight behind Identity or Transpose would otherwise be stored twice).
_LAYOUT_OPS = frozenset({"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"})


#: Fewest elements a folded tensor holds: a single number is shape or scale
#: arithmetic (DINOv2's position-embedding scale, whose rank the reference
#: evaluator and ONNX's shape inference disagree on), which stays in the graph.
_MIN_WEIGHT = 2
#: Most elements an integer tensor computed from constants alone may hold to fold
#: (pads, shape targets, axes and indices; a position-id range stays computed).
_MAX_INTEGERS = 64


def fold_weight_chains(model: ir.Model, max_elements: int = 1 << 26) -> int:
    """Float tensors computed from constants alone become initializers, in place:
    weight standardisation (BiT's and NFNet's convolutions standardise their
    weights in the graph: ReduceMean, BatchNormalization in training mode) and
    weight normalisation (``g * v / ||v||``) left every such layer frozen, the
    reductions mixing the channels the analyzer would cut. So do integer tensors
    of at most :data:`_MAX_INTEGERS` elements computed from a few integer
    constants (TorchScript computes ``F.pad``'s pads by ConstantOfShape, Concat,
    Reshape, Slice, Transpose and Cast, which froze every channel behind the Pad).

    A node folds when every input is an initializer, every output is a float
    tensor of at least :data:`_MIN_WEIGHT` elements, no larger than its inputs
    together and of the shape the graph declares, and it is no storage op
    (:data:`_STORAGE_OPS`), no random op, no graph output and holds no subgraph;
    a layout op (:data:`_LAYOUT_OPS`) folds only behind a folded node, or where it is
    an Identity of a small constant (any type: a shared Reshape target) or every
    use computes on constants alone (:func:`_feeds_computation`). A node on a few
    integers folds whatever its op (a Cast, Shape or layout op too) where its results are
    integers of at most :data:`_MAX_INTEGERS` elements. Evaluated by
    ONNX's reference evaluator (ONNX Runtime folds the same nodes when it loads
    the model). Returns the number of nodes folded."""
    computed: set[str] = set()
    folded, before = 0, -1
    while folded != before:  # an alias folds once the chain it feeds is constant
        before = folded
        folded += _fold_once(model, computed, max_elements)
    return folded


def _fold_once(model: ir.Model, computed: set[str], max_elements: int) -> int:
    """One walk of :func:`fold_weight_chains`; the number of nodes folded."""
    import numpy as np
    import onnx_ir as ir

    from spa.constants import (
        constant_array,
        constant_size,
        evaluate_node,
        may_fold,
        replace_with_initializer,
        types_agree,
    )
    from spa.model_io import FLOAT_TYPES

    opset = model.graph.opset_imports.get("", 17)
    derived = _constant_derived(model)
    folded = 0
    for node in list(model.graph):
        if not may_fold(node):
            continue
        inputs = [v for v in node.inputs if v is not None]
        sizes = [constant_size(v) for v in inputs]  # initializers and Constant nodes (an epsilon)
        if not inputs or any(size is None for size in sizes):
            continue
        small_alias = node.op_type == "Identity" and (sizes[0] or 0) <= 64
        # integer arithmetic on a few constants (TorchScript computes F.pad's pads from them)
        integers = sum(size or 0 for size in sizes) <= _MAX_INTEGERS and all(
            v.dtype is not None and v.dtype not in FLOAT_TYPES for v in inputs
        )
        if node.op_type in (*_STORAGE_OPS, "Shape", "Size") and not integers:
            continue
        if node.op_type in _LAYOUT_OPS and inputs[0].name not in computed and not (small_alias or integers or _feeds_computation(node, derived)):
            continue
        budget = _MAX_INTEGERS if integers else sum(size or 0 for size in sizes)
        if budget > max_elements:
            continue
        arrays = [constant_array(v) for v in node.inputs]
        results = evaluate_node(node, arrays, opset)
        if results is None or sum(r.size for r in results) > budget or not types_agree(node, results):
            continue
        if any(v.shape is not None and tuple(v.shape) != r.shape for r, v in zip(results, node.outputs, strict=True)):
            continue  # the evaluator's shape disagrees with the graph's: keep the node
        floats = [ir.DataType.from_numpy(r.dtype) in FLOAT_TYPES for r in results]
        if node.op_type in _STORAGE_OPS and any(floats):
            continue  # an integer weight stored cast up to float stays stored as it is
        if integers and not any(floats):
            pass  # pads, targets, indices: read by the rules as constants
        elif not small_alias and any(r.size < _MIN_WEIGHT for r in results):
            continue  # scalar arithmetic (a position embedding's scale): not a weight
        elif not small_alias and not all(floats):
            continue
        for value, array in zip(node.outputs, results, strict=True):
            name = value.name or ""
            replace_with_initializer(model.graph, value, np.require(array, requirements="C"))  # a scalar stays 0-d
            computed.add(name)
        model.graph.remove(node, safe=True)
        folded += 1
    return folded


def _feeds_computation(node: ir.Node, derived: set[ir.Value]) -> bool:
    """Is layout op ``node`` the start of a weight's chain: every use a computation
    (no layout or storage op) whose inputs are all computed from constants alone
    (``derived``), so it folds with that chain. TorchScript aliases a deduplicated
    initializer (a shared gain of ones) by Identity; torch.export views a
    convolution's weight as ``[1, O, -1]`` before standardising it. A layout op
    that also feeds a layer (a tied embedding's Transpose) stays: folding it
    would store the weight twice."""
    from spa.constants import constant_size

    uses = node.outputs[0].uses()
    if not uses:
        return False
    for use in uses:
        consumer = use.node
        if consumer.domain or consumer.op_type in _LAYOUT_OPS or consumer.op_type in _STORAGE_OPS:
            return False
        if any(v is not None and v not in derived and constant_size(v) is None for v in consumer.inputs):
            return False
    return True


def _constant_derived(model: ir.Model) -> set[ir.Value]:
    """Values computed from constants alone (initializers, Constant nodes), through
    nodes constant folding may evaluate; the graph is walked in topological order."""
    from spa.constants import constant_size, may_fold

    derived: set[ir.Value] = set()
    for node in model.graph:
        for value in node.inputs:
            if value is not None and value not in derived and constant_size(value) is not None:
                derived.add(value)
        inputs = [v for v in node.inputs if v is not None]
        if inputs and may_fold(node) and node.op_type not in ("Shape", "Size") and all(v in derived for v in inputs):
            derived.update(node.outputs)
    return derived


def _infer_ml_elementwise(model: ir.Model) -> bool:
    """Give the outputs of :data:`_ML_SAME_SHAPE` ops their input's shape; True if any
    changed (inference then carries the shapes further)."""
    import onnx_ir as ir

    changed = False
    for node in model.graph:
        if node.domain != "ai.onnx.ml" or node.op_type not in _ML_SAME_SHAPE or not node.inputs:
            continue
        source, result = node.inputs[0], node.outputs[0]
        if source is None or source.shape is None or result.shape is not None:
            continue
        result.shape = ir.Shape(list(source.shape))
        element = _ML_SAME_SHAPE[node.op_type]
        result.type = ir.TensorType(ir.DataType[element]) if element else source.type
        changed = True
    return changed


def _infer_attention_outputs(model: ir.Model) -> None:
    """Output shapes of com.microsoft MultiHeadAttention/GroupQueryAttention that
    symbolic inference left unknown (it gives up on a GQA without past state):
    ``[B, S, v_hidden]`` (MHA) or the query's shape (GQA); present states
    ``[B, kv_heads, None, head_dim]``."""
    import onnx_ir as ir

    for node in model.graph:
        if node.domain != "com.microsoft" or node.op_type not in (
            "MultiHeadAttention",
            "GroupQueryAttention",
        ):
            continue
        q, v = node.inputs[0], node.inputs[2] if len(node.inputs) > 2 else None
        if q is None or v is None or q.shape is None or v.shape is None or len(q.shape) != 3:
            continue
        y = node.outputs[0]
        if y.shape is None:
            last = q.shape[2] if node.op_type == "GroupQueryAttention" else v.shape[2]
            y.shape, y.type = ir.Shape([q.shape[0], q.shape[1], last]), q.type
        kv_heads = node.attributes.get("kv_num_heads", node.attributes.get("num_heads"))
        if kv_heads is None or not isinstance(v.shape[2], int) or not kv_heads.value:
            continue
        for present in node.outputs[1:3]:
            if present.shape is None:
                head_dim = v.shape[2] // kv_heads.value
                present.shape = ir.Shape([q.shape[0], kv_heads.value, None, head_dim])
                present.type = v.type


def _refine_computed_reshapes(model: ir.Model) -> bool:
    """Resolve ``-1`` in run-time Reshape targets (``[batch, seq, -1, 64]``).

    ONNX inference leaves such a dim symbolic when the input has a symbolic
    batch; solving it from the input's static size lets the heads axis of an
    attention layer be analysed like any other.
    """

    from spa.analysis.rules.registry import RuleContext
    from spa.analysis.shape_exprs import evaluate_target, resolve_target

    context = RuleContext()
    changed = False
    for node in model.graph:
        if node.op_type != "Reshape" or node.domain != "" or len(node.inputs) < 2:
            continue
        x, target, y = node.inputs[0], node.inputs[1], node.outputs[0]
        in_shape = context.shape(x)
        if target is None or in_shape is None or context.constant(target) is not None:
            continue
        entries = evaluate_target(target, context)
        dims = None if entries is None else resolve_target(entries, in_shape)
        if dims is not None and _refine_shape(y, dims):
            changed = True
    return changed


def _refine_shape(value: ir.Value, dims: Sequence[int | None]) -> bool:
    """Give ``value`` the static ``dims`` (None: keep its own dim there) where that makes
    some dim static; True if it did. A value of another rank keeps its shape."""
    import onnx_ir as ir

    current = value.shape
    if current is not None and len(current) != len(dims):
        return False
    merged = [new if new is not None else (current[i] if current is not None else None) for i, new in enumerate(dims)]
    if current is not None and not any(
        isinstance(m, int) and not isinstance(c, int) for m, c in zip(merged, current, strict=True)
    ):
        return False
    value.shape = ir.Shape(merged)
    return True


def _refine_slices(model: ir.Model) -> bool:
    """Give a Slice's output its input's dims on the axes it does not slice.

    ONNX inference leaves every dim of a Slice unknown when its starts or ends
    are computed (``x.chunk(4, dim=1)`` in TorchScript ends at ``C / 4 * i``), so
    EfficientViT's cascaded attention lost its static batch there, and a later
    ``view(B, -1, H, W)`` (B read from another tensor) could not be told to keep
    the channels. Only the sliced axes (constant ``axes``) may change."""
    import numpy as np

    from spa.analysis.rules.registry import RuleContext

    context = RuleContext()
    changed = False
    for node in model.graph:
        if node.op_type != "Slice" or node.domain != "" or len(node.inputs) < 4 or node.inputs[3] is None:
            continue
        in_shape, axes = context.shape(node.inputs[0]), context.constant(node.inputs[3])
        y = node.outputs[0]
        if in_shape is None or axes is None:
            continue
        rank = len(in_shape)
        sliced = {int(a) % rank for a in np.asarray(axes).ravel()} if rank else set()
        if _refine_shape(y, [None if i in sliced else dim for i, dim in enumerate(in_shape)]):
            changed = True
    return changed


def _same(tensor: Any) -> Any:
    return tensor


def unshare_initializers(model: ir.Model) -> int:
    """Give every use of a shared scalar or vector initializer its own value (a
    vector: at most one dim above 1, so ``[C, 1, 1]`` too).

    Exporters share identical constants between unrelated layers (TorchScript
    routes one zero bias through Identity nodes into many Convs; torch.export
    deduplicates equal ``[C, 1, 1]`` GroupNorm gains, all ones in a freshly
    initialised ResNetV2, which tied every bottleneck of a stage into one group);
    left shared, they would tie those layers' channels together. Shared matrices
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
        if len(uses) < 2 or id(value) in outputs or tensor is None or sum(d > 1 for d in tensor.shape.numpy()) > 1:
            continue  # matrices shared on purpose (ALBERT, tied embeddings) stay tied
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


def _worth_symbolic(model: ir.Model) -> bool:
    """Small in-memory models with dims ONNX left symbolic (masks behind Expand)."""
    import onnx_ir as ir

    weights = [v.const_value for v in model.graph.initializers.values()]
    if any(isinstance(t, ir.ExternalTensor) for t in weights):
        return False  # would read every weight; large models keep ONNX's shapes
    if sum(t.nbytes for t in weights if t is not None) > 256 * 2**20:
        return False
    return any(
        value.shape is None or any(not isinstance(d, int) for d in value.shape)
        for node in model.graph
        for value in node.outputs
    )


#: Inferred dims of this process by a digest of the serialised model (the last
#: few): each pruning candidate of a search analyses the same input again, and
#: ORT's inference took 18 of the 89 s of one on PP-OCRv5's detector (sympy on
#: its Resize nodes).
_INFERRED: dict[str, list[tuple[str, list[int | str | None]]]] = {}
_INFERRED_KEPT = 4


def _infer_symbolic_shapes(model: ir.Model) -> None:
    """ORT's symbolic inference knows contrib ops and solves dims through Expand and
    computed shapes; its static dims replace unknown or symbolic ones."""
    import onnx_ir as ir

    from spa.model_io import proto_digest

    proto = ir.serde.serialize_model(model)
    key = proto_digest(proto).hexdigest()
    if key not in _INFERRED:
        try:
            from spa.ort import symbolic_shape_inference

            inferred = symbolic_shape_inference(proto)
        except Exception as error:  # the tool raises bare Exceptions on unknown ops
            logger.info("symbolic shape inference failed (%s); shapes stay as ONNX inferred", error)
            return
        while len(_INFERRED) >= _INFERRED_KEPT:
            del _INFERRED[next(iter(_INFERRED))]
        _INFERRED[key] = [
            (info.name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                         for d in info.type.tensor_type.shape.dim])
            for info in inferred.graph.value_info
            if info.type.HasField("tensor_type")
        ]  # fmt: skip
    del proto
    values = {v.name: v for node in model.graph for v in node.outputs}
    for name, dims in _INFERRED[key]:
        value = values.get(name)
        if value is None:
            continue
        current = value.shape
        if current is None:
            value.shape = ir.Shape(dims)
        elif len(current) == len(dims):
            merged = [c if isinstance(c, int) else d for c, d in zip(current, dims, strict=True)]
            value.shape = ir.Shape(merged)
