"""Folding passes: constant folding and BatchNormalization folding.

Both walk the graph once in topological order and use use-def chains, so they
stay near-linear in graph size (no re-running shape inference per node).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnx.reference import ReferenceEvaluator

from spa.constants import constant_array
from spa.pass_manager import SpaPass, SpaPassResult, register_pass

__all__ = ["FoldBatchNormPass", "FoldConstantsPass"]

logger = logging.getLogger(__name__)

NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def _static_shape(value: ir.Value) -> list[int] | None:
    if value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int)]
    return dims if len(dims) == len(value.shape) else None


@register_pass
class FoldConstantsPass(SpaPass):
    """Evaluate nodes whose inputs are all constants; replace them by initializers.

    Cases: any standard-domain op with constant inputs (evaluated by ONNX's
    reference evaluator at the model's opset); ``Shape`` and ``Size`` of a
    value whose shape is fully static. Left alone: random ops, custom domains,
    nodes with subgraphs, and results with more than ``max_output_elements``
    elements (folding would bloat the file).
    """

    name = "fold-constants"
    summary = "Evaluate constant subgraphs (and Shape of static shapes) ahead of time"

    def __init__(self, max_output_elements: int = 1 << 20) -> None:
        super().__init__()
        self.max_output_elements = max_output_elements

    def call(self, model: ir.Model) -> SpaPassResult:
        opset = model.graph.opset_imports.get("", 17)
        folded = 0
        for node in list(model.graph):
            outputs = self._evaluate(node, opset)
            if outputs is None:
                continue
            for value, array in zip(node.outputs, outputs, strict=True):
                self._replace(model, value, array)
            model.graph.remove(node, safe=True)
            folded += 1
        return SpaPassResult(model, folded > 0, {"constants_folded": folded})

    def _evaluate(self, node: ir.Node, opset: int) -> list[np.ndarray] | None:
        if node.domain != "" or node.op_type in NONDETERMINISTIC or node.op_type == "Constant":
            return None
        if any(v.is_graph_output() for v in node.outputs):
            return None
        if any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
        ):
            return None
        if node.op_type in ("Shape", "Size") and node.inputs and node.inputs[0] is not None:
            return self._shape_of(node)
        arrays = [constant_array(v) if v is not None else None for v in node.inputs]
        if not node.inputs or any(
            a is None and v is not None for a, v in zip(arrays, node.inputs, strict=True)
        ):
            return None
        return self._run_reference(node, arrays, opset)

    def _shape_of(self, node: ir.Node) -> list[np.ndarray] | None:
        source = node.inputs[0]
        assert source is not None
        shape = _static_shape(source)
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        start = node.attributes["start"].value if "start" in node.attributes else 0
        end = node.attributes["end"].value if "end" in node.attributes else None
        return [np.array(shape[start:end], dtype=np.int64)]

    def _run_reference(
        self, node: ir.Node, arrays: list[np.ndarray | None], opset: int
    ) -> list[np.ndarray] | None:
        names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
        out_names = [f"out{i}" for i in range(len(node.outputs))]
        attributes = [ir.serde.serialize_attribute(a) for a in node.attributes.values()]
        proto = onnx.helper.make_node(node.op_type, names, out_names)
        proto.attribute.extend(attributes)
        try:
            evaluator = ReferenceEvaluator(proto, opsets={"": opset})
            feeds = {n: a for n, a in zip(names, arrays, strict=True) if a is not None}
            results = evaluator.run(None, feeds)
        except Exception as error:  # the evaluator raises many types; folding is optional
            logger.debug("not folding %s '%s': %s", node.op_type, node.name, error)
            return None
        results = [np.asarray(r) for r in results]
        if sum(r.size for r in results) > self.max_output_elements:
            return None
        return results

    @staticmethod
    def _replace(model: ir.Model, value: ir.Value, array: np.ndarray) -> None:
        tensor = (
            ir.Tensor(array, dtype=value.dtype) if value.dtype is not None else ir.Tensor(array)
        )
        constant = ir.Value(
            name=value.name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(tensor.dtype),
            const_value=tensor,
        )
        value.name = f"{value.name}__folded"
        model.graph.register_initializer(constant)
        value.replace_all_uses_with(constant)


def _single_consumer(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _private_constant(value: ir.Value | None) -> np.ndarray | None:
    """The constant's array when exactly one node uses it (safe to rewrite)."""
    if value is None or len(value.uses()) != 1:
        return None
    return constant_array(value)


@register_pass
class FoldBatchNormPass(SpaPass):
    """Fold inference BatchNormalization into the preceding linear op.

    Cases: Conv (any group) and ConvTranspose (group 1) over axis 1; Gemm
    (transB 0 or 1) and MatMul with a constant 2-D weight over the last axis.
    Left alone: a producer output used by another node too, weights or biases
    shared with another node or not constant, BN in training mode or with
    extra outputs.
    """

    name = "fold-batchnorm"
    summary = "Fold BatchNormalization into the Conv/Gemm/MatMul before it"

    def call(self, model: ir.Model) -> SpaPassResult:
        folded = 0
        for node in list(model.graph):
            if node.op_type != "BatchNormalization" or node.domain != "":
                continue
            if self._fold(model, node):
                folded += 1
        if folded:
            common_passes.IdentityEliminationPass()(model)
        return SpaPassResult(model, folded > 0, {"batchnorms_folded": folded})

    def _fold(self, model: ir.Model, bn: ir.Node) -> bool:
        x = bn.inputs[0]
        if x is None or (len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:])):
            return False
        if "training_mode" in bn.attributes and bn.attributes["training_mode"].value:
            return False
        producer = x.producer()
        if producer is None or producer.domain != "" or _single_consumer(x) is not bn:
            return False
        params = [constant_array(v) for v in bn.inputs[1:5]]
        if any(p is None for p in params) or len(params) != 4:
            return False
        scale, shift, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
        epsilon = bn.attributes["epsilon"].value if "epsilon" in bn.attributes else 1e-5
        if np.any(var + epsilon <= 0):
            return False  # an invalid BatchNorm stays as it is
        factor = scale / np.sqrt(var + epsilon)
        offset = shift - mean * factor
        if producer.op_type == "MatMul":
            return self._matmul(model, producer, bn, factor, offset)
        rewrite = {
            "Conv": self._conv,
            "ConvTranspose": self._conv_transpose,
            "Gemm": self._gemm,
        }.get(producer.op_type)
        if rewrite is None or not rewrite(model, producer, factor, offset):
            return False
        _become(bn, "Identity", [x])  # removed (graph outputs kept right) at the end
        return True

    @staticmethod
    def _set_bias(
        model: ir.Model, node: ir.Node, index: int, bias: np.ndarray, dtype: np.dtype
    ) -> bool:
        current = node.inputs[index] if len(node.inputs) > index else None
        if current is not None:
            existing = _private_constant(current)
            if existing is None:
                return False
            bias = bias + existing.astype(np.float64)
        value = ir.Value(
            name=f"{node.name or 'node'}_folded_bias_{id(node)}",
            const_value=ir.Tensor(bias.astype(dtype)),
        )
        model.graph.register_initializer(value)
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        return True

    def _rescale(
        self,
        model: ir.Model,
        node: ir.Node,
        weight_index: int,
        bias_index: int,
        axis: int,
        factor: np.ndarray,
        offset: np.ndarray,
    ) -> bool:
        weight_value = node.inputs[weight_index]
        weight = _private_constant(weight_value)
        bias_value = node.inputs[bias_index] if len(node.inputs) > bias_index else None
        if weight is None or weight.dtype.kind != "f" or weight.shape[axis] != factor.size:
            return False
        if bias_value is not None and _private_constant(bias_value) is None:
            return False
        shape = [1] * weight.ndim
        shape[axis] = factor.size
        scaled = (weight.astype(np.float64) * factor.reshape(shape)).astype(weight.dtype)
        assert weight_value is not None
        weight_value.const_value = ir.Tensor(scaled, name=weight_value.name)
        bias = offset
        if bias_value is not None:
            existing = _private_constant(bias_value)
            assert existing is not None
            bias = existing.astype(np.float64) * factor + offset
            bias_value.const_value = ir.Tensor(bias.astype(weight.dtype), name=bias_value.name)
            return True
        return self._set_bias(model, node, bias_index, bias, weight.dtype)

    def _conv(self, model: ir.Model, node: ir.Node, factor: np.ndarray, offset: np.ndarray) -> bool:
        return self._rescale(model, node, 1, 2, 0, factor, offset)

    def _conv_transpose(
        self, model: ir.Model, node: ir.Node, factor: np.ndarray, offset: np.ndarray
    ) -> bool:
        group = node.attributes["group"].value if "group" in node.attributes else 1
        return group == 1 and self._rescale(model, node, 1, 2, 1, factor, offset)

    def _gemm(self, model: ir.Model, node: ir.Node, factor: np.ndarray, offset: np.ndarray) -> bool:
        attrs = {k: a.value for k, a in node.attributes.items()}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return False
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and (
            bias.const_value is None or bias.const_value.shape.numpy() != (factor.size,)
        ):
            return False
        axis = 0 if attrs.get("transB", 0) else 1
        return self._rescale(model, node, 1, 2, axis, factor, offset)

    def _matmul(
        self, model: ir.Model, node: ir.Node, bn: ir.Node, factor: np.ndarray, offset: np.ndarray
    ) -> bool:
        """BN over a 2-D MatMul output: scale the weight's columns, BN becomes Add."""
        weight_value = node.inputs[1]
        weight = _private_constant(weight_value)
        output = node.outputs[0]
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
            return False
        known = output.shape if output.shape is not None else node.inputs[0].shape  # type: ignore[union-attr]
        if known is None or len(known) != 2 or weight.shape[1] != factor.size:
            return False  # BN's channel axis 1 is the MatMul's last axis only in 2-D
        assert weight_value is not None
        scaled = (weight.astype(np.float64) * factor[None, :]).astype(weight.dtype)
        weight_value.const_value = ir.Tensor(scaled, name=weight_value.name)
        bias = ir.Value(
            name=f"{bn.name or 'bn'}_folded_bias_{id(bn)}",
            const_value=ir.Tensor(offset.astype(weight.dtype)),
        )
        model.graph.register_initializer(bias)
        _become(bn, "Add", [output, bias])
        return True


def _become(node: ir.Node, op_type: str, inputs: list[ir.Value]) -> None:
    """Turn ``node`` into ``op_type`` over ``inputs`` (its outputs stay as they are)."""
    node.op_type = op_type
    node.attributes.clear()
    node.resize_inputs(len(inputs))
    for index, value in enumerate(inputs):
        node.replace_input_with(index, value)
    node.resize_outputs(1)
