"""Rewrite passes between the ORT/reference forms and spa's plugin-form ops.

* ``int4-to-plugin``: symmetric INT4, block-128 ``com.microsoft.MatMulNBits``
  or ``DequantizeLinear`` (INT4, axis 0, block 128, no zero point) feeding one
  ``MatMul`` -> ``spa.W4Sparse24MatMul`` when the weight is 2:4 sparse along K
  (and ``sparse24`` is on), else ``spa.W4A16MatMul``; weights repacked into the
  kernel layouts (spa/trt/repack.py, plugins/README.md).
* ``gqsa-to-plugin``: ``spa.GroupSparseQuantMatMul`` (docs/formats.md (c),
  4-bit) -> ``spa.GroupSparseTileMatMul`` (the w4_gqsa_tile tensor-core kernel)
  when its groups are tile-shared with 2 or 4 kept per 128-k slab, else the
  same op with ``layout = "w4_gqsa"``; kernel-layout inputs.
* ``plugin-to-ort``: the inverse of both (W4A16/W4Sparse24 -> MatMulNBits,
  GQSA back to the documented layout), so a plugin-form model can be checked
  in ONNX Runtime on the CPU.

Every rewrite keeps the integer weights bit for bit; scales are stored as
FP16 (the plugin contracts), so FP32 scales are rounded to FP16 once (a
relative change of at most 2^-11 per scale). The two passes into the plugin
form are therefore ``fidelity = "decoded"``: their ``decoded`` maps each scale
initializer they read to its FP16-rounded values (in its own dtype), so the
model they read with those scales is what the output computes exactly
(``spa optimize`` checks it through :func:`spa.workflows.recipe_verify.ort_form`,
which runs ``plugin-to-ort`` on a copy). Nodes that do not match are skipped
with a reason (``decisions``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from spa import progress
from spa.pass_manager import SpaPassResult, register_pass
from spa.passes.quantize import DecidingPass
from spa.quant.blockwise import QuantizedWeight
from spa.quant.ir_format import (
    MS_DOMAIN,
    QuantDecision,
    add_initializer,
    matmulnbits_node,
    op_key,
    read_dequantize,
    read_matmulnbits,
    remove_initializer_if_unused,
    replace_node,
)
from spa.trt import repack
from spa.trt.ops import SPA_DOMAIN, plugin_op

__all__ = ["GQSAToPluginPass", "Int4ToPluginPass", "PluginToOrtPass", "is_two_four"]

GQSA_LAYOUT = "w4_gqsa"
TILE_OP = plugin_op("w4_gqsa_tile")
#: Groups kept per 128-k slab that the w4_gqsa_tile kernel takes.
TILE_KEEPS = (2, 4)


def is_two_four(q: np.ndarray) -> bool:
    """True when every 4 consecutive k of every column hold at most 2 non-zeros."""
    k, n = q.shape
    return k % 4 == 0 and bool(np.all((q.reshape(k // 4, 4, n) != 0).sum(axis=1) <= 2))


class _PluginPass(DecidingPass):
    _decisions: list[QuantDecision]

    def _round_scales(self, value: ir.Value | None) -> None:
        """Record ``value`` (a scale initializer this pass read) as the plugin form
        stores it: rounded to FP16, kept in its own dtype."""
        if value is None or value.const_value is None or not value.name:
            return
        stored = value.const_value.numpy()
        self._decoded[value.name] = lambda: stored.astype(np.float16).astype(stored.dtype)

    def _skip(self, node: ir.Node, reason: str) -> None:
        self._decisions.append(QuantDecision(node.name or "", node.op_type, "skipped", reason))

    def _done(self, node: ir.Node, weight: str) -> None:
        self._decisions.append(
            QuantDecision(node.name or "", node.op_type, "converted", "", weight)
        )

    def _result(self, model: ir.Model) -> SpaPassResult:
        converted, skipped = self._tally("converted")
        if converted:
            model.opset_imports.setdefault(SPA_DOMAIN, 1)
        statistics: dict[str, int | float] = {
            "nodes_converted": converted,
            "nodes_skipped": skipped,
        }
        return SpaPassResult(model, converted > 0, statistics, self._details())


def _w4_reason(weight: QuantizedWeight) -> str:
    k, n = weight.shape
    if weight.bits != 4 or not weight.symmetric:
        return f"needs symmetric 4-bit weights, got bits={weight.bits} symmetric={weight.symmetric}"
    if weight.block != repack.GROUP:
        return f"block_size {weight.block} (the plugin kernels use {repack.GROUP})"
    if k % repack.GROUP or n % 16:
        return f"K={k} N={n}: the kernels need K % {repack.GROUP} == 0 and N % 16 == 0"
    return ""


def _tensor(array: np.ndarray) -> ir.Tensor:
    return ir.Tensor(np.ascontiguousarray(array))


def _matmul_after(dequantize: ir.Node) -> ir.Node | None:
    output = dequantize.outputs[0]
    uses = list(output.uses())
    if output.is_graph_output() or len(uses) != 1:
        return None
    use = uses[0]
    return use.node if op_key(use.node) == ("", "MatMul") and use.idx == 1 else None


def _remove_unused(graph: ir.Graph, values: list[ir.Value | None]) -> None:
    for value in values:
        if value is not None:
            remove_initializer_if_unused(graph, value)


def int4_plugin_node(
    graph: ir.Graph,
    activation: ir.Value,
    weight: QuantizedWeight,
    base: str,
    name: str,
    sparse24: bool,
) -> ir.Node:
    """A ``spa.W4A16MatMul`` or ``spa.W4Sparse24MatMul`` node (not yet inserted)."""
    k, n = weight.shape
    attributes = {"K": k, "N": n, "group_size": repack.GROUP}
    if sparse24 and is_two_four(weight.q):
        sparse = repack.repack_w4_sp24(weight)
        inputs = [
            activation,
            add_initializer(graph, f"{base}_sp24_values", _tensor(sparse.values)),
            add_initializer(graph, f"{base}_sp24_meta", _tensor(sparse.meta.view(np.int32))),
            add_initializer(graph, f"{base}_scales", _tensor(sparse.scales)),
        ]
        op = plugin_op("w4_sp24")
    else:
        dense = repack.repack_w4a16(weight)
        inputs = [
            activation,
            add_initializer(graph, f"{base}_w4a16", _tensor(dense.packed)),
            add_initializer(graph, f"{base}_scales", _tensor(dense.scales)),
        ]
        op = plugin_op("w4a16")
    return ir.node(op.op_type, inputs, attributes, domain=SPA_DOMAIN, name=name)


@register_pass
class Int4ToPluginPass(_PluginPass):
    """Symmetric INT4 block-128 MatMulNBits / DequantizeLinear+MatMul -> spa plugin ops.

    Handles constant weights with K % 128 == 0 and N % 16 == 0; 2:4-sparse
    weights (at most 2 non-zeros in every 4 consecutive k) become
    ``spa.W4Sparse24MatMul`` unless ``sparse24=False``. Skips (with a reason)
    asymmetric or 8-bit weights, other block sizes, g_idx/bias inputs and
    DequantizeLinear outputs that feed anything but one MatMul weight.
    """

    name = "int4-to-plugin"
    fidelity = "decoded"
    summary = (
        "INT4 MatMulNBits / block QDQ -> spa.W4A16MatMul / spa.W4Sparse24MatMul (TensorRT plugins)"
    )

    def __init__(self, *, sparse24: bool = True) -> None:
        super().__init__()
        self.sparse24 = sparse24

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        self._decoded.clear()
        graph = model.graph
        for node in progress.track(list(graph), description="int4-to-plugin"):
            key = op_key(node)
            if key == (MS_DOMAIN, "MatMulNBits"):
                target, weight, reason = node, *read_matmulnbits(node)
            elif key == ("", "DequantizeLinear"):
                weight, reason = read_dequantize(node)
                matmul = _matmul_after(node)
                if matmul is None:
                    reason = (
                        reason or "DequantizeLinear output is not the weight of exactly one MatMul"
                    )
                target = matmul or node
            else:
                continue
            reason = reason or (_w4_reason(weight) if weight is not None else "unreadable weight")
            activation = target.inputs[0]
            if weight is None or reason or activation is None:
                self._skip(node, reason or "no activation input")
                continue
            old_inputs = list(node.inputs) if target is not node else list(node.inputs[1:])
            base = (old_inputs[0].name if old_inputs[0] is not None else "") or "weight"
            self._round_scales(old_inputs[1])  # MatMulNBits (B, scales) and DQ (x, scale) alike
            new = int4_plugin_node(
                graph, activation, weight, base, target.name or base, self.sparse24
            )
            replace_node(graph, target, [new])
            if target is not node:
                graph.remove(node, safe=True)
            _remove_unused(graph, old_inputs)
            self._done(target, base)
        return self._result(model)


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    return value.const_value.numpy()


def read_gqsa(node: ir.Node) -> tuple[repack.GQSAArrays | None, str]:
    """The arrays of a documented-layout ``spa.GroupSparseQuantMatMul``, or a reason."""
    attributes = node.attributes
    if attributes.get_string("layout", "onnx") != "onnx":
        return None, "already in the kernel layout"
    if attributes.get_int("bits", 4) != 4:
        return None, f"bits={attributes.get_int('bits', 4)} (the w4_gqsa kernel reads 4)"
    arrays = [_constant(v) for v in node.inputs[1:5]]
    if len(arrays) != 4 or any(a is None for a in arrays):
        return None, "values/col_idx/row_ptr/scales are not constant initializers"
    values, col_idx, row_ptr, scales = arrays
    k, n = attributes.get_int("K", 0), attributes.get_int("N", 0)
    g = attributes.get_int("group_size", 16)
    if g not in (8, 16, 32, 64) or k % g:
        return None, f"group_size {g} with K={k} (the kernel takes 8/16/32/64 dividing K)"
    gqsa = repack.GQSAArrays(values, col_idx, row_ptr, scales, k, n, g)  # type: ignore[arg-type]
    return gqsa, ""


def _gqsa_kernel_node(graph: ir.Graph, node: ir.Node, arrays: repack.GQSAArrays, base: str) -> ir.Node:
    """The plugin-form node of one documented-layout GQSA op: ``spa.GroupSparseTileMatMul``
    (w4_gqsa_tile) for tile-shared arrays with 2 or 4 groups kept per slab, else the same op
    type with ``layout = "w4_gqsa"``."""
    keep = repack.tile_keep(arrays)
    if keep in TILE_KEEPS:
        tile = repack.repack_w4_gqsa_tile(arrays)
        inputs = [
            add_initializer(graph, f"{base}_w4_gqsa_tile", _tensor(tile.values.view(np.int32))),
            add_initializer(graph, f"{base}_positions", _tensor(tile.positions.view(np.int32))),
            add_initializer(graph, f"{base}_scales", _tensor(tile.scales)),
        ]
        attributes: dict[str, int | str] = {"K": arrays.k, "N": arrays.n, "group_size": 16, "keep": keep}
        return ir.node(TILE_OP.op_type, [node.inputs[0], *inputs], attributes, domain=SPA_DOMAIN, name=node.name)
    packed = repack.repack_w4_gqsa(arrays)
    group_idx = packed.group_idx
    if group_idx.size % 2:
        group_idx = np.append(group_idx, np.uint16(0))
    inputs = [
        add_initializer(graph, f"{base}_w4_gqsa", _tensor(packed.values.view(np.int32))),
        add_initializer(graph, f"{base}_group_idx", _tensor(group_idx.view(np.int32))),
        add_initializer(graph, f"{base}_row_ptr", _tensor(packed.row_ptr)),
        add_initializer(graph, f"{base}_scales", _tensor(packed.scales)),
    ]
    attributes = {
        "K": arrays.k, "N": arrays.n, "group_size": arrays.group_size, "bits": 4, "layout": GQSA_LAYOUT,
    }  # fmt: skip
    return ir.node(node.op_type, [node.inputs[0], *inputs], attributes, domain=SPA_DOMAIN, name=node.name)


@register_pass
class GQSAToPluginPass(_PluginPass):
    """``spa.GroupSparseQuantMatMul`` (4-bit, documented layout) -> a kernel layout.

    Tile-shared groups (spa/trt/repack.py :func:`~spa.trt.repack.tile_keep`) with 2
    or 4 kept per 128-k slab -> ``spa.GroupSparseTileMatMul`` (K, N, group_size,
    keep; the w4_gqsa_tile kernel): inputs values INT32 ``[N/16, S, keep*32]``,
    positions INT32 ``[N/16, S]`` (uint32 bits), scales FP16 ``[N/16, S, 8, keep, 2]``
    with ``S = 2 * ceil(K/256)``. Otherwise the op keeps its type and attributes
    and gains ``layout = "w4_gqsa"``: inputs values INT32 ``[nnz, g/8]``, group_idx
    INT32 ``[ceil(nnz/2)]`` (uint16 pairs, little-endian), row_ptr INT32 ``[N+1]``,
    scales FP16 ``[nnz]``.
    """

    name = "gqsa-to-plugin"
    fidelity = "decoded"
    summary = (
        "spa.GroupSparseQuantMatMul -> its TensorRT plugin layout (w4_gqsa / w4_gqsa_tile kernel)"
    )

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        self._decoded.clear()
        graph = model.graph
        for node in progress.track(list(graph), description="gqsa-to-plugin"):
            if op_key(node) != (SPA_DOMAIN, "GroupSparseQuantMatMul"):
                continue
            arrays, reason = read_gqsa(node)
            if arrays is None or node.inputs[0] is None:
                self._skip(node, reason or "no activation input")
                continue
            old_inputs = list(node.inputs[1:])
            base = (old_inputs[0].name if old_inputs[0] is not None else "") or "gqsa"
            self._round_scales(old_inputs[3])
            replace_node(graph, node, [_gqsa_kernel_node(graph, node, arrays, base)])
            _remove_unused(graph, old_inputs)
            self._done(node, base)
        return self._result(model)


def _unpack_plugin(node: ir.Node) -> tuple[QuantizedWeight | None, str]:
    k, n = node.attributes.get_int("K", 0), node.attributes.get_int("N", 0)
    arrays = [_constant(v) for v in node.inputs[1:]]
    if any(a is None for a in arrays):
        return None, "plugin inputs are not constant initializers"
    if node.op_type == "W4A16MatMul":
        packed, scales = arrays
        return repack.unpack_w4a16(repack.W4A16Packed(packed, scales, k, n)), ""  # type: ignore[arg-type]
    values, meta, scales = arrays
    sparse = repack.W4Sparse24Packed(values, meta.view(np.uint32), scales, k, n)  # type: ignore[arg-type, union-attr]
    return repack.unpack_w4_sp24(sparse), ""


def _float_type_of(activation: ir.Value) -> type:
    """A's float type: FLOAT -> float32, else float16. Where A has no type (ONNX inference
    stops at spa's ops, so values after a plugin op often have none), the nearest known
    type up the chain of first inputs (a Cast's ``to``, a DequantizeLinear's scale type);
    FLOAT16 when none is known."""
    value: ir.Value | None = activation
    for _ in range(10_000):  # a bound on the walk, far beyond any chain of first inputs
        if value is None:
            break
        dtype = value.type.dtype if value.type is not None else None
        if dtype is not None and dtype.is_floating_point():
            return np.float32 if dtype == ir.DataType.FLOAT else np.float16
        producer = value.producer()
        if producer is None or not producer.inputs:
            break
        if producer.op_type == "Cast" and producer.domain == "":
            to = producer.attributes.get_int("to", 0)
            return np.float32 if to == ir.DataType.FLOAT else np.float16
        value = producer.inputs[1] if producer.op_type == "DequantizeLinear" else producer.inputs[0]
    return np.float16


def _scales_like(weight: QuantizedWeight, activation: ir.Value) -> QuantizedWeight:
    """MatMulNBits wants scales in A's type (FP16 scales widen exactly to FP32)."""
    wanted = _float_type_of(activation)
    return QuantizedWeight(weight.q, weight.scales.astype(wanted), None, weight.bits, weight.block)


def _read_gqsa_kernel(node: ir.Node) -> tuple[repack.GQSAArrays | None, str]:
    """The documented-layout arrays of a ``w4_gqsa`` / ``w4_gqsa_tile`` node, or a reason."""
    attributes = node.attributes
    k, n = attributes.get_int("K", 0), attributes.get_int("N", 0)
    arrays = [_constant(v) for v in node.inputs[1:]]
    if any(a is None for a in arrays):
        return None, "plugin inputs are not constant initializers"
    if op_key(node) == (SPA_DOMAIN, TILE_OP.op_type):
        if len(arrays) != len(TILE_OP.inputs) - 1:
            return None, f"w4_gqsa_tile has {len(arrays)} weight inputs, expected 3"
        values, positions, scales = arrays
        keep = attributes.get_int("keep", 0)
        shape = (n // 16, repack.tile_slabs(k), keep * 32)
        if values.shape != shape or not 1 <= keep <= repack.TILE_MAX_KEEP or k % repack.GROUP or n % 16:  # type: ignore[union-attr]
            return None, f"w4_gqsa_tile values {values.shape} with K={k} N={n} keep={keep}"  # type: ignore[union-attr]
        tile = repack.W4GQSATilePacked(
            values.view(np.uint32), positions.view(np.uint32), scales, k, n, keep,  # type: ignore[union-attr, arg-type]
        )  # fmt: skip
        return repack.unpack_w4_gqsa_tile(tile), ""
    if len(arrays) != 4:
        return None, f"w4_gqsa has {len(arrays)} weight inputs, expected 4"
    values, group_idx, row_ptr, scales = arrays
    nnz = scales.shape[0]  # type: ignore[union-attr]
    packed = repack.W4GQSAPacked(
        values.view(np.uint32).reshape(nnz, -1), group_idx.view(np.uint16)[:nnz],  # type: ignore[union-attr]
        row_ptr, scales, k, n, attributes.get_int("group_size", 16),  # type: ignore[arg-type]
    )  # fmt: skip
    return repack.unpack_w4_gqsa(packed), ""


@register_pass
class PluginToOrtPass(_PluginPass):
    """spa plugin ops -> ONNX Runtime / reference form (the inverse of the two passes above).

    ``spa.W4A16MatMul`` and ``spa.W4Sparse24MatMul`` become symmetric 4-bit
    ``com.microsoft.MatMulNBits`` (block 128); ``spa.GroupSparseTileMatMul`` and a
    ``layout = "w4_gqsa"`` ``spa.GroupSparseQuantMatMul`` go back to the documented
    ``spa.GroupSparseQuantMatMul``.
    """

    name = "plugin-to-ort"
    summary = "spa plugin ops -> MatMulNBits / documented GQSA layout (runs on the CPU)"

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        graph = model.graph
        for node in progress.track(list(graph), description="plugin-to-ort"):
            key = op_key(node)
            if key in ((SPA_DOMAIN, "W4A16MatMul"), (SPA_DOMAIN, "W4Sparse24MatMul")):
                weight, reason = _unpack_plugin(node)
                if weight is None or node.inputs[0] is None:
                    self._skip(node, reason or "no activation input")
                    continue
                old_inputs = list(node.inputs[1:])
                base = (old_inputs[0].name if old_inputs[0] is not None else "") or "weight"
                weight = _scales_like(weight, node.inputs[0])
                new, _ = matmulnbits_node(graph, node.inputs[0], weight, base, node.name or base)
                replace_node(graph, node, [new])
                model.opset_imports.setdefault(MS_DOMAIN, 1)
            elif key == (SPA_DOMAIN, TILE_OP.op_type) or (
                key == (SPA_DOMAIN, "GroupSparseQuantMatMul")
                and node.attributes.get_string("layout", "onnx") == GQSA_LAYOUT
            ):
                onnx_layout, reason = _read_gqsa_kernel(node)
                if onnx_layout is None or node.inputs[0] is None:
                    self._skip(node, reason or "no activation input")
                    continue
                old_inputs = list(node.inputs[1:])
                base = (old_inputs[0].name if old_inputs[0] is not None else "") or "gqsa"
                scale_type = _float_type_of(node.inputs[0])
                inputs = [
                    node.inputs[0],
                    add_initializer(graph, f"{base}_values", _tensor(onnx_layout.values)),
                    add_initializer(graph, f"{base}_col_idx", _tensor(onnx_layout.col_idx)),
                    add_initializer(graph, f"{base}_row_ptr", _tensor(onnx_layout.row_ptr)),
                    # in A's type, as the documented op and its lowering want (FP16 widens exactly)
                    add_initializer(graph, f"{base}_scales", _tensor(onnx_layout.scales.astype(scale_type))),
                ]
                attributes = {
                    "K": onnx_layout.k, "N": onnx_layout.n,
                    "group_size": onnx_layout.group_size, "bits": 4,
                }  # fmt: skip
                new = ir.node("GroupSparseQuantMatMul", inputs, attributes, domain=SPA_DOMAIN, name=node.name)
                replace_node(graph, node, [new])
            else:
                continue
            _remove_unused(graph, old_inputs)
            self._done(node, base)
        return self._result(model)
