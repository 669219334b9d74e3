"""2:4 semi-structured sparsity of MatMul/Gemm/Conv weights (``sparsify-2to4``).

:class:`Sparsify2to4Pass` handles:

* ``MatMul(A, W)``, ``W[K, N]`` a 2-D float initializer: runs of 4 along K;
* ``Gemm(A, B, C)`` with constant 2-D ``B``: along K (``B``'s axis 1 when ``transB``);
* ``Conv(X, W[, b])``, ``W[O, I/group, kh, ...]``: runs of 4 input channels at
  every ``(o, kh, kw)`` (TensorRT's sparse-weights layout).

The node is unchanged; its weight initializer is replaced by the pruned dense
float weight (zeros in place), which TensorRT's sparse-weights builder flag
picks up. Skipped, each with its reason in :attr:`Sparsify2to4Pass.decisions`:
a reduction size that is not a multiple of 4 (grouped Conv: input channels per
group), weights that are not constant initializers (computed, graph inputs,
Constant outputs, produced by DequantizeLinear = already quantized), shared
weights, integer weights, ``MatMulNBits`` / ``spa.GroupSparseQuantMatMul``
(already quantized). Nodes inside If/Loop/Scan bodies are handled like the
main graph's.

``method="sparsegpt"`` uses ``hessians`` (activation name -> ``H[K, K]`` from
:func:`spa.calibration.collect_hessians`) for MatMul/Gemm, and for a 2-D Conv
(or 1-D, as height 1) with group 1 the ``X^T X`` of its im2col patches
(:func:`spa.calibration.collect_conv_hessians`, columns in ``(kh, kw, c)``
order, so SparseGPT's runs of 4 are the same runs of 4 input channels);
without one (grouped or 3-D Conv, no calibration) the mask is by magnitude
and the decision says so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from spa import progress
from spa.calibration import ConvPatches, hessian_size_reason
from spa.errors import UserError
from spa.pass_manager import SpaPassResult, register_pass
from spa.passes.quantize import DecidingPass, HessianCalibrated, input_name, weight_reason
from spa.passes.quantize_conv import SKIPPABLE, conv_patch_spec, layer_roles
from spa.quant.ir_format import MS_DOMAIN, QuantDecision, op_key
from spa.quant.sparsity import (
    RUN,
    magnitude_2to4,
    reduction_first,
    sparsegpt_2to4,
    zero_share,
)

__all__ = ["SPARSIFY_METHODS", "SparseDecision", "Sparsify2to4Pass", "SparsifyingPass"]

logger = logging.getLogger(__name__)

SPARSIFY_METHODS = ("magnitude", "sparsegpt")


@dataclasses.dataclass(frozen=True)
class SparseDecision(QuantDecision):
    """A :class:`QuantDecision` with the share of zeros in the rewritten weight."""

    sparsity: float = 0.0


@dataclasses.dataclass
class _Target:
    """A weight to prune: the reduction axis and the activation whose Hessian applies."""

    node: ir.Node
    weight: ir.Value
    axis: int
    activation: ir.Value | None  # None: no input Hessian applies (Conv: patches, see conv)
    conv: ConvPatches | None = None  # a 2-D Conv with group 1: how it reads its input


def _match_matmul(node: ir.Node) -> tuple[_Target | None, str]:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    reason = weight_reason(weight)
    if reason or weight is None:
        return None, reason
    return _Target(node, weight, 0, node.inputs[0]), ""


def _match_gemm(node: ir.Node) -> tuple[_Target | None, str]:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    reason = weight_reason(weight)
    if reason or weight is None:
        return None, reason
    trans_a = node.attributes.get_int("transA", 0)
    activation = None if trans_a else node.inputs[0]
    return _Target(node, weight, 1 if node.attributes.get_int("transB", 0) else 0, activation), ""


def _match_conv(node: ir.Node) -> tuple[_Target | None, str]:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    reason = weight_reason(weight, ranks=(3, 4, 5))
    if reason or weight is None or weight.const_value is None:
        return None, reason
    group = node.attributes.get_int("group", 1)
    per_group = int(weight.const_value.numpy().shape[1])
    if per_group % RUN:
        where = (
            f"group={group}: {per_group} input channels per group"
            if group > 1
            else f"{per_group} input channels"
        )
        return None, f"Conv {where}, not a multiple of 4"
    return _Target(node, weight, 1, None, conv_patch_spec(node)), ""


def _already_quantized(node: ir.Node) -> tuple[None, str]:
    return None, f"already quantized ({node.domain}.{node.op_type})"


Matcher = Callable[[ir.Node], tuple["_Target | None", str]]

#: (domain, op_type) -> matcher returning a target or the reason it is skipped.
MATCHERS: dict[tuple[str, str], Matcher] = {
    ("", "MatMul"): _match_matmul,
    ("", "Gemm"): _match_gemm,
    ("", "Conv"): _match_conv,
    (MS_DOMAIN, "MatMulNBits"): _already_quantized,
    ("spa", "GroupSparseQuantMatMul"): _already_quantized,
}


class SparsifyingPass(DecidingPass, HessianCalibrated):
    """A pass that records, per candidate node, what it did or why it skipped."""

    action = "sparsified"

    def _skip(self, node: ir.Node, reason: str, weight: str = "") -> None:
        self._decisions.append(
            SparseDecision(node.name or "", node.op_type, "skipped", reason, weight)
        )
        logger.debug("skip %s '%s': %s", node.op_type, node.name, reason)


@register_pass
class Sparsify2to4Pass(SparsifyingPass):
    """2:4 sparsity along the reduction axis of MatMul/Gemm/Conv weights (dense zeros).

    Options: ``method`` (``magnitude``, ``sparsegpt``), ``hessians`` (activation
    name -> ``H[K, K]``), ``block``/``percdamp`` (SparseGPT), ``keep_float``: the
    layer kinds left dense (default depthwise Conv and the first and last weighted
    layers, :func:`spa.passes.quantize_conv.layer_roles`; ``()`` sparsifies all).
    :attr:`calibration` says whether a Hessian was used; :attr:`decisions` lists
    every candidate.
    """

    name = "sparsify-2to4"
    summary = "2:4 semi-structured sparsity of MatMul/Gemm/Conv weights (magnitude or SparseGPT)"
    fidelity = "decoded"

    def __init__(
        self,
        method: str = "magnitude",
        *,
        hessians: Mapping[str, np.ndarray] | None = None,
        block: int = 128,
        percdamp: float = 0.01,
        keep_float: tuple[str, ...] = SKIPPABLE,
    ) -> None:
        super().__init__()
        unknown = set(keep_float) - set(SKIPPABLE)
        if unknown:
            raise UserError(f"keep_float {sorted(unknown)}: choose among {', '.join(SKIPPABLE)}")
        self.keep_float = tuple(keep_float)
        if method not in SPARSIFY_METHODS:
            raise UserError(f"method '{method}': choose one of {', '.join(SPARSIFY_METHODS)}")
        self.method, self.block, self.percdamp = method, block, percdamp
        self._hessians = dict(hessians or {})
        self._conv_hessians: dict[str, np.ndarray] = {}
        self.calibration = self._calibration_label(self._hessians)

    def _wants_hessians(self) -> bool:
        return self.method == "sparsegpt"

    def _wanted_convs(self, model: ir.Model) -> dict[str, ConvPatches]:
        """The 2-D (and 1-D) Conv with group 1 this pass sparsifies: their patch Hessians."""
        convs = {}
        roles = layer_roles(model.graph)
        for node in model.graph:  # main graph: a body's values are not model outputs
            if op_key(node) == ("", "Conv") and roles.get(id(node), "") not in self.keep_float:
                target, _ = _match_conv(node)
                if target is not None and target.conv is not None:
                    convs[target.weight.name or ""] = target.conv
        return convs

    def _calibration_label(self, hessians: Mapping[str, np.ndarray] | None, convs: int = 0) -> str:
        if self.method == "magnitude":
            return "not needed (magnitude)"
        found = super()._calibration_label(hessians, convs)
        return "none (data-free: H = I, SparseGPT reduces to magnitude)" if found == "none" else found

    def _prune_conv(self, target: _Target, array: np.ndarray) -> np.ndarray | None:
        """SparseGPT of a Conv weight ``[O, C, kh, kw]`` (1-D: ``[O, C, k]``, height 1) against
        its patch Hessian, or None."""
        hessian = self._conv_hessians.get(target.weight.name or "")
        square = array if array.ndim == 4 else array[:, :, None, :]
        out, channels, kh, kw = square.shape
        if hessian is None or hessian.shape != (kh * kw * channels,) * 2:
            return None
        matrix = square.transpose(2, 3, 1, 0).reshape(kh * kw * channels, out)  # (kh, kw, c) order
        pruned = sparsegpt_2to4(matrix, hessian, block=self.block, percdamp=self.percdamp)
        back = pruned.reshape(kh, kw, channels, out).transpose(3, 2, 0, 1)
        return np.ascontiguousarray(back.reshape(array.shape))

    def _prune(self, target: _Target, array: np.ndarray) -> tuple[np.ndarray, str]:
        if self.method == "sparsegpt" and target.conv is not None:
            pruned_conv = self._prune_conv(target, array)
            if pruned_conv is not None:
                return pruned_conv.astype(array.dtype), "sparsegpt on the Conv's im2col patch Hessian"
        matrix = reduction_first(array, target.axis)  # [reduction, rest]
        note = ""
        hessian = None
        if self.method == "sparsegpt":
            name = target.activation.name if target.activation is not None else None
            hessian = self._hessians.get(name or "")
            too_large = hessian_size_reason(matrix.shape[0])
            if target.activation is None and too_large:
                note = f"sparsegpt: {too_large}, magnitude mask"
            elif target.activation is None:
                note = (
                    "sparsegpt: no patch Hessian for this Conv (grouped, 3-D, SAME padding or "
                    "no calibration), magnitude mask"
                )
            elif hessian is None and too_large:
                note = f"{too_large}: magnitude mask (H = I)"
            elif hessian is None:
                note = "no calibration Hessian for this input: magnitude mask (H = I)"
            elif hessian.shape != (matrix.shape[0],) * 2:
                note, hessian = (
                    f"Hessian is {hessian.shape}, K={matrix.shape[0]}: magnitude mask",
                    None,
                )
        if hessian is not None:
            pruned = sparsegpt_2to4(matrix, hessian, block=self.block, percdamp=self.percdamp)
        else:
            pruned = magnitude_2to4(matrix)
        moved = np.moveaxis(array, target.axis, 0)
        restored = np.moveaxis(pruned.reshape(moved.shape), 0, target.axis)
        return np.ascontiguousarray(restored).astype(array.dtype), note

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        self._decoded.clear()
        zeros = elements = 0
        roles = layer_roles(model.graph)  # main-graph layers; nodes inside bodies have none
        layers = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if op_key(n) in MATCHERS]
        for node in progress.track(layers, description=self.name):
            matcher = MATCHERS[op_key(node)]
            target, reason = matcher(node)
            weight_name = input_name(node, 1)
            role = roles.get(id(node), "")
            if target is not None and role in self.keep_float:
                reason = f"layer skipped: {role} layer kept dense (keep_float=() sparsifies it)"
                target = None
            if target is None or target.weight.const_value is None:
                self._skip(node, reason, weight_name)
                continue
            array = target.weight.const_value.numpy()
            reduction = int(array.shape[target.axis])
            if reduction % RUN:
                self._skip(
                    node, f"reduction size K={reduction} is not a multiple of 4", weight_name
                )
                continue
            pruned, note = self._prune(target, array)
            target.weight.const_value = ir.Tensor(pruned, name=target.weight.name)
            self._decoded[weight_name] = _constant(pruned)
            share = zero_share(pruned)
            zeros, elements = zeros + int(share * pruned.size + 0.5), elements + pruned.size
            self._decisions.append(
                SparseDecision(
                    node.name or "", node.op_type, self.action, note, weight_name, reduction,
                    pruned.size // reduction, pruned.nbytes, pruned.nbytes, share,
                )
            )  # fmt: skip
        done, skipped = self._tally()
        statistics: dict[str, int | float] = {
            "nodes_sparsified": done,
            "nodes_skipped": skipped,
            "sparsity": zeros / elements if elements else 0.0,
        }
        return SpaPassResult(model, done > 0, statistics, self._details())


def _constant(array: np.ndarray) -> Callable[[], np.ndarray]:
    """The function giving ``array`` (the weight as written, dense zeros included)."""
    return lambda: array
