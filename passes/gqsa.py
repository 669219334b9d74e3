"""GQSA (group sparsity + INT4 of kept groups) of MatMul/Gemm weights, and its two forms.

:class:`GQSAPass` (``gqsa``) handles ``MatMul(A, W)`` with a 2-D float
initializer ``W[K, N]`` and ``Gemm(A, B, C)`` with constant ``B``, ``alpha = 1``,
``transA = 0`` (-> the GQSA MatMul plus ``Add(beta * C)``). The weight is
replaced by ``spa.GroupSparseQuantMatMul`` (``form="plugin"``, for the TensorRT
plugin) or by that op's reference lowering to standard ONNX
(``form="reference"``, runs in ONNX Runtime CPU). Layout: ``docs/formats.md`` (c);
``layout="tile"`` keeps tile-shared groups (the same groups in each 16 output
columns, a whole number per 128-k slab), which ``gqsa-to-plugin`` repacks for the
tensor-core kernel ``w4_gqsa_tile``.

Skipped with a reason: K not a multiple of the group size, with ``layout="tile"``
K not a multiple of 128 or N not a multiple of 16, bfloat16 weights, non-constant,
shared, integer (already quantized) or non-2-D weights, weights produced by
DequantizeLinear, ``MatMulNBits`` and GQSA nodes (already quantized), Gemm with
``alpha != 1`` or ``transA``, and for the reference form a model opset below 18.

:class:`GQSAToReferencePass` (``gqsa-to-reference``) and
:class:`ReferenceToGQSAPass` (``reference-to-gqsa``) swap the two forms without
changing any stored byte; the lowering is recognised by its node names
(``gqsa_ref/<op name>/<role>``, see :mod:`spa.quant.gqsa_ir`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from spa import progress
from spa.calibration import hessian_size_reason
from spa.errors import UserError
from spa.pass_manager import SpaPassResult, register_pass
from spa.passes.quantize import (
    Candidate,
    bias_nodes,
    in_layout,
    input_name,
    match_gemm,
    match_matmul,
)
from spa.passes.sparsify import SparseDecision, SparsifyingPass
from spa.quant.gqsa import (
    GROUP_SIZES,
    LAYOUTS,
    TILE_GROUP,
    GQSAArrays,
    dequantize_gqsa,
    gqsa_quantize,
    pack_gqsa,
    tile_keep_per_slab,
    tile_reason,
)
from spa.quant.gqsa_ir import (
    GQSA_DOMAIN,
    GQSA_OP,
    LOWERING_OPSET,
    PREFIX,
    find_lowerings,
    gqsa_inputs,
    gqsa_node,
    read_gqsa,
    reference_nodes,
)
from spa.quant.ir_format import (
    MS_DOMAIN,
    default_opset,
    op_key,
    remove_initializer_if_unused,
    replace_node,
)

__all__ = ["FORMS", "GQSAPass", "GQSAToReferencePass", "ReferenceToGQSAPass", "check_gqsa_options"]

logger = logging.getLogger(__name__)

FORMS = ("reference", "plugin")


def check_gqsa_options(
    group: int, sparsity: float, bits: int, form: str, layout: str = "column"
) -> None:
    """One-line :class:`UserError` for options the GQSA layout cannot hold."""
    if group not in GROUP_SIZES:
        raise UserError(f"group size {group}: choose one of {', '.join(map(str, GROUP_SIZES))}")
    if not 0.0 <= sparsity < 1.0:
        raise UserError(
            f"sparsity {sparsity}: give a share of groups to remove in [0, 1), e.g. 0.5"
        )
    if bits not in (4, 8):
        raise UserError(f"bits={bits}: GQSA stores 4 bits (8 for the reference lowering only)")
    if form not in FORMS:
        raise UserError(f"form '{form}': choose one of {', '.join(FORMS)}")
    if layout not in LAYOUTS:
        raise UserError(f"layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    if layout == "tile":
        _check_tile_options(group, sparsity, bits)


def _check_tile_options(group: int, sparsity: float, bits: int) -> None:
    if group != TILE_GROUP:
        raise UserError(
            f"layout tile needs group size {TILE_GROUP} (got {group}): use --group {TILE_GROUP} "
            "or --gqsa-layout column"
        )
    if bits != 4:
        raise UserError(
            f"layout tile is for the 4-bit w4_gqsa_tile kernel (got bits={bits}): use --bits 4 "
            "or --gqsa-layout column"
        )
    try:
        tile_keep_per_slab(sparsity)
    except ValueError as error:
        raise UserError(
            f"sparsity {sparsity}: layout tile removes a whole number 1..7 of the 8 groups of "
            "each 128-k slab; use a multiple of 0.125 in 0.125..0.875 (e.g. 0.5 or 0.75) or "
            "--gqsa-layout column"
        ) from error


def _core_nodes(
    candidate_activation: ir.Value, inputs: list[ir.Value], arrays: GQSAArrays, name: str, form: str
) -> list[ir.Node]:
    if form == "plugin":
        return [gqsa_node(candidate_activation, inputs, arrays, name)]
    return reference_nodes(
        candidate_activation, inputs, arrays.k, arrays.n, arrays.group, arrays.bits, name,
        ir.DataType.from_numpy(np.asarray(arrays.scales).dtype),
    )  # fmt: skip


def _unique_node_name(graph: ir.Graph, node: ir.Node, name: str) -> str:
    """``name``, suffixed when another node or lowering already has it (lowerings are
    found by their node names)."""
    taken = {other.name for other in graph if other is not node}
    taken |= {other.name[len(PREFIX) :].rsplit("/", 1)[0] for other in graph
              if other.name and other.name.startswith(PREFIX)}  # fmt: skip
    unique, index = name, 0
    while unique in taken:
        index += 1
        unique = f"{name}_{index}"
    return unique


def _already_quantized(node: ir.Node) -> tuple[Candidate | None, str]:
    return None, f"already quantized ({node.domain}.{node.op_type})"


_MATCHERS = {
    ("", "MatMul"): match_matmul,
    ("", "Gemm"): match_gemm,
    (MS_DOMAIN, "MatMulNBits"): _already_quantized,
    (GQSA_DOMAIN, GQSA_OP): _already_quantized,
}


@register_pass
class GQSAPass(SparsifyingPass):
    """Group-structured sparsity + INT4 of the kept groups (two-stage GQSA).

    Options: ``group`` (8/16/32/64), ``sparsity`` (share of groups removed per
    column), ``bits`` (4; 8 reference form only), ``form`` (``reference``,
    ``plugin``), ``layout`` (``column``; ``tile``: tile-shared groups for the
    tensor-core kernel, group 16 and sparsity a multiple of 1/8, layers whose
    K % 128 or N % 16 is not 0 skipped), ``refine`` (stage 2 scale refinement),
    ``percdamp``, and ``hessians`` (activation name -> ``H[K, K]``; none =
    data-free ``H = I``).
    """

    name = "gqsa"
    summary = (
        "GQSA: group sparsity + INT4 of kept groups as spa.GroupSparseQuantMatMul or its lowering"
    )
    fidelity = "decoded"
    action = "quantized"

    def __init__(
        self,
        group: int = 16,
        sparsity: float = 0.5,
        bits: int = 4,
        form: str = "reference",
        *,
        hessians: Mapping[str, np.ndarray] | None = None,
        refine: bool = True,
        percdamp: float = 0.01,
        layout: str = "column",
    ) -> None:
        super().__init__()
        check_gqsa_options(group, sparsity, bits, form, layout)
        if bits == 8 and form == "plugin":
            raise UserError(
                "bits=8: the GQSA kernels read 4 bits; use --bits 4 or --form reference"
            )
        self.group, self.sparsity, self.bits, self.form = group, sparsity, bits, form
        self.layout = layout
        self.refine, self.percdamp = refine, percdamp
        self._hessians = dict(hessians or {})
        self.calibration = self._calibration_label(self._hessians)

    def _wants_hessians(self) -> bool:
        return True

    def _calibration_label(self, hessians: Mapping[str, np.ndarray] | None, convs: int = 0) -> str:
        found = super()._calibration_label(hessians, convs)
        if found != "none":
            return found
        return "none (data-free: H = I, magnitude selection, per-group least-squares scales)"

    def _reason(self, model: ir.Model, rows: int, cols: int) -> str:
        if rows % self.group:
            return f"K={rows} is not a multiple of the group size {self.group}"
        tile = tile_reason(rows, cols, self.group) if self.layout == "tile" else ""
        if tile:
            return f"{tile}; --gqsa-layout column would take this layer"
        if self.form == "reference" and default_opset(model) < LOWERING_OPSET:
            return (
                f"model opset {default_opset(model)} < {LOWERING_OPSET} (the reference lowering "
                "uses BitwiseAnd); convert the model to opset 18+ or use --form plugin"
            )
        return ""

    def _rewrite(self, graph: ir.Graph, candidate: Candidate) -> tuple[int, float, str]:
        """Replace the candidate; (new bytes, zero share, note)."""
        name = candidate.activation.name or ""
        hessian = self._hessians.get(name)
        too_large = hessian_size_reason(len(candidate.array))
        note = (
            f"{too_large}: H = I" if hessian is None and too_large
            else "no calibration Hessian for this input: H = I" if self._hessians and hessian is None
            else ""
        )  # fmt: skip
        quantized = gqsa_quantize(
            candidate.array, hessian, group=self.group, sparsity=self.sparsity, bits=self.bits,
            refine=self.refine, percdamp=self.percdamp, scale_dtype=candidate.array.dtype,
            layout=self.layout,
        )  # fmt: skip
        arrays = pack_gqsa(quantized)
        base = candidate.weight.name or "weight"
        node_name = _unique_node_name(graph, candidate.node, candidate.node.name or base)
        inputs, size = gqsa_inputs(graph, arrays, base)
        nodes = _core_nodes(candidate.activation, inputs, arrays, node_name, self.form)
        nodes += bias_nodes(graph, candidate, nodes[-1].outputs[0])
        replace_node(graph, candidate.node, nodes)
        remove_initializer_if_unused(graph, candidate.weight)
        if candidate.bias is not None:
            remove_initializer_if_unused(graph, candidate.bias)
        zeros = float(np.count_nonzero(quantized.q == 0)) / quantized.q.size
        self._decoded[candidate.weight.name or ""] = _decoder(candidate, arrays)
        return size, zeros, note

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        self._decoded.clear()
        graph, before, after = model.graph, 0, 0
        layers = [node for node in graph if op_key(node) in _MATCHERS]
        for node in progress.track(layers, description=self.name):
            matcher = _MATCHERS[op_key(node)]
            candidate, reason = matcher(node)
            weight_name = input_name(node, 1)
            if candidate is None:
                self._skip(node, reason, weight_name)
                continue
            rows, cols = candidate.array.shape
            reason = self._reason(model, rows, cols)
            if candidate.array.dtype not in (np.float32, np.float16):
                reason = (
                    f"weight '{weight_name}' is {candidate.array.dtype}; GQSA scales take the "
                    "activation type, float32 or float16 (convert the model first)"
                )
            if reason:
                self._skip(node, reason, weight_name)
                continue
            old_bytes = int(candidate.array.nbytes)
            name, op_type = node.name or "", node.op_type
            size, zeros, note = self._rewrite(graph, candidate)
            before, after = before + old_bytes, after + size
            self._decisions.append(
                SparseDecision(
                    name,
                    op_type,
                    self.action,
                    note,
                    weight_name,
                    rows,
                    cols,
                    old_bytes,
                    size,
                    zeros,
                )
            )
        done, skipped = self._tally()
        if done and self.form == "plugin":
            model.opset_imports.setdefault(GQSA_DOMAIN, 1)
        statistics: dict[str, int | float] = {
            "nodes_quantized": done, "nodes_skipped": skipped,
            "bytes_before": before, "bytes_after": after,
        }  # fmt: skip
        return SpaPassResult(model, done > 0, statistics, self._details())


def _decoder(candidate: Candidate, arrays: GQSAArrays) -> Callable[[], np.ndarray]:
    """The function giving the dense weight ``arrays`` decode to, in the layout and
    dtype of the candidate's own weight."""
    dtype = candidate.array.dtype
    return in_layout(candidate, lambda: dequantize_gqsa(arrays).astype(dtype))


@register_pass
class GQSAToReferencePass(SparsifyingPass):
    """``spa.GroupSparseQuantMatMul`` -> its standard-ONNX reference lowering (opset >= 18)."""

    name = "gqsa-to-reference"
    summary = "Lower spa.GroupSparseQuantMatMul to standard ONNX (ORT CPU runs it)"
    action = "converted"

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        graph = model.graph
        for node in list(graph):
            if op_key(node) != (GQSA_DOMAIN, GQSA_OP):
                continue
            arrays, reason = read_gqsa(node)
            if not reason and default_opset(model) < LOWERING_OPSET:
                reason = f"model opset {default_opset(model)} < {LOWERING_OPSET}; convert it to opset 18+"
            activation = node.inputs[0]
            if arrays is None or reason or activation is None:
                self._skip(node, reason or "no activation input")
                continue
            inputs = [value for value in node.inputs[1:] if value is not None]
            nodes = _core_nodes(activation, inputs, arrays, node.name or "gqsa", "reference")
            replace_node(graph, node, nodes)
            self._decisions.append(SparseDecision(node.name or "", node.op_type, self.action))
        return _conversion_result(self, model, drop_domain=True)


@register_pass
class ReferenceToGQSAPass(SparsifyingPass):
    """The reference lowering (nodes ``gqsa_ref/<name>/...``) -> ``spa.GroupSparseQuantMatMul``."""

    name = "reference-to-gqsa"
    summary = (
        "Replace GQSA reference lowerings by spa.GroupSparseQuantMatMul (TensorRT plugin form)"
    )
    action = "converted"

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        graph = model.graph
        for lowering in find_lowerings(graph):
            activation = lowering.matmul.inputs[0]
            if lowering.arrays is None or lowering.reason or activation is None:
                self._skip(lowering.matmul, lowering.reason or "no activation input")
                continue
            inputs = [value for value in lowering.inputs if value is not None]
            replace_node(
                graph,
                lowering.matmul,
                [gqsa_node(activation, inputs, lowering.arrays, lowering.name)],
            )
            rest = [node for node in lowering.nodes if node is not lowering.matmul]
            graph.remove(rest, safe=True)
            self._decisions.append(SparseDecision(lowering.name, GQSA_OP, self.action))
        result = _conversion_result(self, model, drop_domain=False)
        if result.modified:
            model.opset_imports.setdefault(GQSA_DOMAIN, 1)
        return result


def _conversion_result(
    spa_pass: SparsifyingPass, model: ir.Model, drop_domain: bool
) -> SpaPassResult:
    done, skipped = spa_pass._tally()
    if drop_domain and done and not any(op_key(node)[0] == GQSA_DOMAIN for node in model.graph):
        model.opset_imports.pop(GQSA_DOMAIN, None)
    statistics: dict[str, int | float] = {"nodes_converted": done, "nodes_skipped": skipped}
    return SpaPassResult(model, done > 0, statistics, spa_pass._details())
