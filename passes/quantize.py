"""Weight-only block quantization of MatMul/Gemm (and per-channel Conv) weights, and format conversions.

:class:`QuantizeWeightsPass` (``quantize-weights``) handles:

* ``MatMul(A, W)`` with ``W`` a 2-D float32/float16/bfloat16 initializer;
* ``Gemm(A, B, C)`` with constant ``B``, ``alpha = 1``, ``transA = 0`` (``transB``
  either way): rewritten as the quantized MatMul form plus ``Add(beta * C)``;
* ``Conv(X, W[, B])`` with ``W`` a constant float initializer: per output channel
  (:mod:`spa.passes.quantize_conv`, which says how each target reads it back).

At 4 bits depthwise Conv and the first and last weighted layers stay float
unless ``keep_float=()`` (:func:`spa.passes.quantize_conv.layer_roles`).

Targets: ``ort`` -> ``com.microsoft.MatMulNBits``; ``onnx`` -> block
``DequantizeLinear`` (INT4/INT8 symmetric, UINT4/UINT8 with zero points) feeding
``MatMul``; ``tensorrt`` -> the same with symmetric INT4 only. Layouts:
``docs/formats.md``.

Skipped, each with its reason in :attr:`QuantizeWeightsPass.decisions`: a weight
that is not a constant initializer (computed, a graph input, a Constant node
output, produced by DequantizeLinear = already quantized); a weight used by
more than one node or also a graph output (shared weights are skipped, not
quantized once and shared: GPTQ would need one Hessian for several inputs);
integer or float64 weights; weights that are not 2-D; K not a multiple of the
block for the QDQ targets (MatMulNBits pads the last block); nodes that are
already ``MatMulNBits``. Nodes inside If/Loop/Scan bodies are rewritten in
place (their weights read by name from the main graph, where
:func:`spa.workflows.run.lift_constant_weights` puts Constant-node and body
weights; the quantized initializers go into the body itself).

:class:`MatMulNBitsToQDQPass` and :class:`QDQToMatMulNBitsPass` convert between
the two stored forms without changing any dequantized value;
:class:`MatMulNBitsToCastPass` rewrites MatMulNBits into the folded ``Cast`` form
(the same values, run by ORT's float kernels: what ``spa quantize`` writes when
MatMulNBits measures slower than the input, :mod:`spa.workflows.latency_guard`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from spa import progress
from spa.calibration import (
    CalibrationRequest,
    CalibrationResult,
    ConvPatches,
    hessian_size_reason,
)
from spa.errors import UserError
from spa.pass_manager import SpaPass, SpaPassResult, register_pass
from spa.passes.quantize_conv import (
    CONV_FORMS,
    SKIPPABLE,
    block_cast_nodes,
    column_cast_nodes,
    conv_patch_spec,
    conv_target_reason,
    layer_roles,
    per_channel,
    quantize_conv,
    quantize_conv_blocks,
)
from spa.quant.blockwise import QuantizedWeight, dequantize, quantize_rtn
from spa.quant.gptq import conv_matrix, gptq_conv, gptq_quantize
from spa.quant.ir_format import (
    MS_DOMAIN,
    QuantDecision,
    add_initializer,
    default_opset,
    dequantize_node,
    holding_graph,
    matmulnbits_node,
    op_key,
    read_dequantize,
    read_matmulnbits,
    remove_initializer_if_unused,
    replace_node,
)

__all__ = [
    "Candidate",
    "DecidingPass",
    "HessianCalibrated",
    "MatMulNBitsToCastPass",
    "MatMulNBitsToQDQPass",
    "QDQToMatMulNBitsPass",
    "QuantDecision",
    "QuantizeWeightsPass",
    "bias_nodes",
    "check_quantize_options",
    "in_layout",
    "input_name",
    "match_gemm",
    "match_matmul",
    "weight_activations",
    "weight_reason",
]

logger = logging.getLogger(__name__)

TARGETS = ("ort", "tensorrt", "onnx")
METHODS = ("rtn", "gptq")
QDQ_OPSET = 21
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclasses.dataclass
class Candidate:
    """A node whose weight can be quantized: ``W[K, N]`` after any transpose."""

    node: ir.Node
    activation: ir.Value
    weight: ir.Value
    array: np.ndarray
    bias: ir.Value | None = None
    beta: float = 1.0


def default_keep_float(bits: int) -> tuple[str, ...]:
    """Layers kept in float unless asked: depthwise, first and last at 4 bits; none at 8."""
    return SKIPPABLE if bits == 4 else ()


def check_quantize_options(
    bits: int, block: int, symmetric: bool, method: str, target: str
) -> None:
    """One-line :class:`UserError` for option combinations no target can hold."""
    if bits not in (4, 8):
        raise UserError(f"bits={bits}: choose --weights int4 or int8")
    if block < 16 or block & (block - 1):
        raise UserError(f"block {block}: use a power of two >= 16 (32, 64 or 128)")
    if method not in METHODS:
        raise UserError(f"method '{method}': choose one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise UserError(f"target '{target}': choose one of {', '.join(TARGETS)}")
    if target == "tensorrt" and (bits != 4 or not symmetric):
        raise UserError(
            "--target tensorrt holds symmetric INT4 block weights only; "
            "use --weights int4 --symmetric, or --target onnx/ort"
        )


def weight_reason(value: ir.Value | None, ranks: tuple[int, ...] = (2,)) -> str:
    """Why ``value`` is not a quantizable weight of one of ``ranks`` ('' when it is)."""
    if value is None:
        return "no weight input"
    producer = value.producer()
    if producer is not None:
        if producer.op_type == "DequantizeLinear":
            return f"already quantized (weight comes from DequantizeLinear '{producer.name}')"
        if producer.op_type == "Constant":
            return f"weight '{value.name}' is a Constant node output; lift constants to initializers first"
        return f"weight '{value.name}' is not constant (computed by {producer.op_type} '{producer.name}')"
    if value.is_graph_input():
        return f"weight '{value.name}' is a graph input, not a constant"
    if value.const_value is None:
        return f"weight '{value.name}' has no constant value"
    dtype = value.const_value.dtype
    if dtype not in _FLOATS:
        kind = "integer weight: already quantized" if dtype.is_integer() else "unsupported dtype"
        return f"weight '{value.name}' is {dtype.name} ({kind})"
    rank = len(value.const_value.shape)
    if rank not in ranks:
        wanted = " or ".join(f"{r}-D" for r in ranks)
        return f"weight '{value.name}' has rank {rank}; only {wanted} weights are handled"
    users = {use.node.name or f"#{id(use.node)}" for use in value.uses()}
    if len(users) > 1 or len(value.uses()) > 1:
        return f"weight '{value.name}' is shared by {len(users)} nodes ({', '.join(sorted(users))}); shared weights are skipped"
    if value.is_graph_output():
        return f"weight '{value.name}' is also a graph output"
    return ""


def match_matmul(node: ir.Node) -> tuple[Candidate | None, str]:
    activation, weight = node.inputs[0], node.inputs[1]
    reason = weight_reason(weight)
    if reason or activation is None or weight is None or weight.const_value is None:
        return None, reason or "MatMul without an activation input"
    return Candidate(node, activation, weight, weight.const_value.numpy()), ""


def match_gemm(node: ir.Node) -> tuple[Candidate | None, str]:
    attributes = node.attributes
    alpha, beta = attributes.get_float("alpha", 1.0), attributes.get_float("beta", 1.0)
    trans_a = int(attributes.get_int("transA") or 0)
    if alpha != 1.0 or trans_a:
        return (
            None,
            f"Gemm with alpha={alpha:g}, transA={trans_a} (only alpha=1, transA=0 is converted)",
        )
    activation, weight = node.inputs[0], node.inputs[1]
    reason = weight_reason(weight)
    if reason or activation is None or weight is None or weight.const_value is None:
        return None, reason or "Gemm without an activation input"
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and beta != 1.0 and bias.const_value is None:
        return None, f"Gemm beta={beta:g} with a non-constant C"
    array = weight.const_value.numpy()
    if attributes.get_int("transB"):
        array = array.T
    return Candidate(node, activation, weight, np.ascontiguousarray(array), bias, beta), ""


def match_conv(node: ir.Node) -> tuple[Candidate | None, str]:
    """A Conv whose weight is a constant float initializer (quantized per output channel)."""
    activation, weight = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    reason = weight_reason(weight, ranks=(3, 4, 5))
    if reason or activation is None or weight is None or weight.const_value is None:
        return None, reason or "Conv without an activation input"
    return Candidate(node, activation, weight, weight.const_value.numpy()), ""


#: Recurrent ops whose ``W`` (input 1) and ``R`` (input 2) weight-only quantization covers.
RECURRENT = ("LSTM", "GRU", "RNN")


def match_recurrent(node: ir.Node) -> tuple[Candidate | None, str]:
    """An LSTM/GRU/RNN whose ``W[dirs, gates*H, I]`` and ``R[dirs, gates*H, H]`` are constant
    float initializers (the candidate holds W; the pass reads R from input 2)."""
    inputs = list(node.inputs) + [None] * 3
    activation, weight, recurrence = inputs[0], inputs[1], inputs[2]
    reason = weight_reason(weight, ranks=(3,)) or weight_reason(recurrence, ranks=(3,))
    if reason or activation is None or weight is None or weight.const_value is None:
        return None, reason or f"{node.op_type} without an input"
    return Candidate(node, activation, weight, weight.const_value.numpy()), ""


def _already_quantized(node: ir.Node) -> tuple[Candidate | None, str]:
    return None, "already quantized (com.microsoft.MatMulNBits)"


#: (domain, op_type) -> matcher returning a candidate or the reason it is skipped.
MATCHERS: dict[tuple[str, str], Callable[[ir.Node], tuple[Candidate | None, str]]] = {
    ("", "MatMul"): match_matmul,
    ("", "Gemm"): match_gemm,
    ("", "Conv"): match_conv,
    **{("", op): match_recurrent for op in RECURRENT},
    (MS_DOMAIN, "MatMulNBits"): _already_quantized,
}


def bias_nodes(graph: ir.Graph, candidate: Candidate, product: ir.Value) -> list[ir.Node]:
    if candidate.bias is None:
        return []
    bias = candidate.bias
    if candidate.beta != 1.0 and bias.const_value is not None:
        scaled = (bias.const_value.numpy() * candidate.beta).astype(bias.const_value.numpy().dtype)
        bias = add_initializer(graph, f"{bias.name}_beta", ir.Tensor(scaled))
    return [ir.node("Add", [product, bias], name=f"{candidate.node.name}_bias")]


def _rewrite(graph: ir.Graph, candidate: Candidate, weight: QuantizedWeight, target: str) -> int:
    """Replace the candidate by its quantized form; returns the new initializers' bytes.

    The new initializers go to the graph holding the node (an If/Loop/Scan body
    included): ONNX Runtime's QDQ fusion looks for a DequantizeLinear's weight
    in the node's own graph, not in the outer scope.
    """
    graph = holding_graph(candidate.node, graph)
    base = candidate.weight.name or "weight"
    node_name = candidate.node.name or base
    if target == "ort":
        core, size = matmulnbits_node(
            graph, candidate.activation, weight, base, f"{node_name}_nbits"
        )
        nodes = [core]
    else:
        dequantize, size = dequantize_node(graph, weight, base, f"{node_name}_dq")
        core = ir.node(
            "MatMul", [candidate.activation, dequantize.outputs[0]], name=f"{node_name}_matmul"
        )
        nodes = [dequantize, core]
    nodes += bias_nodes(graph, candidate, core.outputs[0])
    replace_node(graph, candidate.node, nodes)
    remove_initializer_if_unused(holding_graph(candidate.weight, graph), candidate.weight)
    return size


def _rewrite_cast(
    graph: ir.Graph, candidate: Candidate, bits: int, symmetric: bool
) -> tuple[int, Callable[[], np.ndarray]]:
    """Replace the candidate by ``MatMul(A, Mul(Cast(W_int), scale))`` (+ bias): the
    ``--target ort`` INT8 RTN form, which ORT folds to a float weight at load.
    New nodes and initializers go to the graph holding the node (a body, if so).
    Returns the stored bytes and the function giving the decoded ``W[K, N]``."""
    graph = holding_graph(candidate.node, graph)
    base = candidate.weight.name or "weight"
    node_name = candidate.node.name or base
    nodes, size, decode = column_cast_nodes(
        graph, candidate.array, bits, symmetric, base, node_name
    )
    core = ir.node(
        "MatMul", [candidate.activation, nodes[-1].outputs[0]], name=f"{node_name}_matmul"
    )
    nodes += [core, *bias_nodes(graph, candidate, core.outputs[0])]
    replace_node(graph, candidate.node, nodes)
    remove_initializer_if_unused(holding_graph(candidate.weight, graph), candidate.weight)
    return size, decode


def in_layout(candidate: Candidate, decode: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    """``decode`` (giving ``W[K, N]``) in the layout of the candidate's own weight
    (a Gemm with ``transB`` stores ``W[N, K]``)."""
    if candidate.node.op_type == "Gemm" and candidate.node.attributes.get_int("transB"):
        return lambda: np.ascontiguousarray(decode().T)
    return decode


def input_name(node: ir.Node, index: int) -> str:
    value = node.inputs[index] if len(node.inputs) > index else None
    return (value.name or "") if value is not None else ""


def _weight_bytes(value: ir.Value) -> int:
    return int(value.const_value.nbytes) if value.const_value is not None else 0


def reduction_size(node: ir.Node) -> int:
    """K of a MatMul/Gemm whose weight is constant (0 when unknown)."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None or weight.const_value is None or len(weight.const_value.shape) < 2:
        return 0
    dims = list(weight.const_value.shape.numpy())
    if node.op_type == "Gemm" and node.attributes.get_int("transB"):
        return dims[-1]
    return dims[-2]


def weight_activations(model: ir.Model) -> tuple[str, ...]:
    """Activation inputs of the main graph's MatMul/Gemm nodes whose weight is an
    initializer: the values whose ``X^T X`` GPTQ, SparseGPT and GQSA use (not those
    past :data:`spa.calibration.MAX_HESSIAN_K` features)."""
    names: list[str] = []
    initializers = model.graph.initializers
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        activation = node.inputs[0] if node.inputs else None
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if activation is None or weight is None or weight.name not in initializers:
            continue
        if not hessian_size_reason(reduction_size(node)):
            names.append(activation.name or "")
    return tuple(names)


class DecidingPass(SpaPass):
    """A pass that records, per node, what it did or why it skipped (for reports);
    the decisions also travel in the result's ``details``."""

    action = "quantized"

    def __init__(self) -> None:
        super().__init__()
        self._decisions: list[Any] = []
        self._decoded: dict[str, Callable[[], np.ndarray]] = {}

    @property
    def decisions(self) -> list[Any]:
        return list(self._decisions)

    @property
    def decoded(self) -> dict[str, Callable[[], np.ndarray]]:
        """Weight initializer name -> function giving the float values its rewritten
        form decodes to (same layout and dtype), for every weight the last call of a
        weight-rewriting pass changed: the input with these values is what the
        output computes exactly (:func:`spa.quant.decoded.decoded_model`)."""
        return dict(self._decoded)

    def _tally(self, action: str | None = None) -> tuple[int, int]:
        """(nodes with ``action``, nodes skipped) among the decisions so far."""
        done = sum(1 for d in self._decisions if d.action == (action or self.action))
        return done, len(self._decisions) - done

    def _details(self) -> dict[str, Any]:
        return {"decisions": list(self._decisions), "calibration": getattr(self, "calibration", "")}


#: The calibration line of a pass whose layers all have inputs no calibration can read.
NONE_WANTED = "none: no layer's input can be read from the main graph (each layer's note says why)"
#: Why a layer inside a control-flow body gets no Hessian.
BODY_REASON = "inside an If/Loop/Scan body, whose activations calibration cannot read"


class HessianCalibrated(SpaPass):
    """Asks the pipeline for ``X^T X`` of every weighted MatMul/Gemm input, and of the
    im2col patches of the Conv weights :meth:`_wanted_convs` names, when
    :meth:`_wants_hessians` says so and none were given to the constructor."""

    _hessians: dict[str, np.ndarray]
    _conv_hessians: dict[str, np.ndarray]
    calibration: str

    def _wants_hessians(self) -> bool:
        return False

    def _wanted_convs(self, model: ir.Model) -> dict[str, ConvPatches]:
        """Conv weight name -> how the Conv reads its input, for the patch Hessians wanted."""
        return {}

    def _calibration_label(self, hessians: Mapping[str, np.ndarray] | None, convs: int = 0) -> str:
        found = [f"hessians for {len(hessians)} activations"] if hessians else []
        found += [f"{convs} Conv patch Hessians"] if convs else []
        return " and ".join(found) or "none"

    def calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        if not self._wants_hessians() or self._hessians:
            return None
        request = CalibrationRequest(
            hessians=weight_activations(model), conv_hessians=self._wanted_convs(model)
        )
        if request.empty:
            self.calibration = NONE_WANTED
        return request

    def use_calibration(self, result: CalibrationResult) -> None:
        self._hessians = {name: entry.hessian for name, entry in result.hessians.items()}
        self._conv_hessians = {
            name: entry.hessian for name, entry in result.conv_hessians.items()
        }
        self.calibration = self._calibration_label(self._hessians, len(self._conv_hessians))


@register_pass
class QuantizeWeightsPass(DecidingPass, HessianCalibrated):
    """Weight-only quantization (RTN or GPTQ) of MatMul/Gemm weights (blocks) and Conv
    weights (INT4 blocks, INT8 per output channel; GPTQ on im2col patch Hessians).

    Options: ``bits`` (4, 8), ``block`` (power of two >= 16), ``symmetric``,
    ``method`` (``rtn``, ``gptq``), ``target`` (``ort``, ``tensorrt``, ``onnx``),
    ``act_order``/``percdamp`` (GPTQ), and ``hessians``: activation value name ->
    ``H[K, K]`` from :func:`spa.calibration.collect_hessians`. GPTQ without
    Hessians is data-free and equals RTN; :attr:`calibration` says which ran.
    After the call :attr:`decisions` lists every candidate node and what happened.
    """

    name = "quantize-weights"
    summary = (
        "Weight-only int4/int8 quantization of MatMul/Gemm/Conv (RTN/GPTQ) for ORT/TensorRT/ONNX"
    )
    fidelity = "decoded"

    def __init__(
        self,
        bits: int = 4,
        block: int = 128,
        symmetric: bool = True,
        method: str = "rtn",
        target: str = "ort",
        *,
        hessians: Mapping[str, np.ndarray] | None = None,
        act_order: bool = False,
        percdamp: float = 0.01,
        keep_float: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        check_quantize_options(bits, block, symmetric, method, target)
        self.keep_float = tuple(keep_float) if keep_float is not None else default_keep_float(bits)
        unknown = set(self.keep_float) - set(SKIPPABLE)
        if unknown:
            raise UserError(f"keep_float {sorted(unknown)}: choose among {', '.join(SKIPPABLE)}")
        self.bits, self.block, self.symmetric = bits, block, symmetric
        self.method, self.target, self.act_order, self.percdamp = (
            method,
            target,
            act_order,
            percdamp,
        )
        self.calibration = self._calibration_label(hessians)
        self._hessians = dict(hessians or {})
        self._conv_hessians = {}
        self._main: ir.Graph | None = None  # the model's main graph, during call
        self._recurrences: set[str] = set()  # the R weights of recurrent nodes, during call

    def _wants_hessians(self) -> bool:
        return self.method == "gptq"

    def conv_layers(self, model: ir.Model) -> list[Candidate]:
        """The Conv layers this pass quantizes where the target and opset allow (control-flow
        bodies included, as :meth:`call` visits them)."""
        return self._layers(model, ("Conv",))

    def recurrent_layers(self, model: ir.Model) -> list[Candidate]:
        """The LSTM/GRU/RNN layers whose W and R this pass quantizes where the target and
        opset allow (control-flow bodies included)."""
        return self._layers(model, RECURRENT)

    def _layers(self, model: ir.Model, op_types: tuple[str, ...]) -> list[Candidate]:
        """The candidates of ``op_types`` (default domain) whose layer role is not kept float."""
        roles = layer_roles(model.graph)
        found = []
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            key = op_key(node)
            if key[0] == "" and key[1] in op_types and roles.get(id(node), "") not in self.keep_float:
                candidate, _ = MATCHERS[key](node)
                if candidate is not None:
                    found.append(candidate)
        return found

    def _tally(self, action: str | None = None) -> tuple[int, int]:
        """(nodes with ``action``, nodes skipped): a recurrent node's two decisions (W, R)
        count once."""
        seconds = {id(d) for d in self._decisions if d.op_type in RECURRENT and d.weight in self._recurrences}
        decisions = [d for d in self._decisions if id(d) not in seconds]
        done = sum(1 for d in decisions if d.action == (action or self.action))
        return done, len(decisions) - done

    def _wanted_convs(self, model: ir.Model) -> dict[str, ConvPatches]:
        """The Conv layers this pass quantizes that GPTQ can take (group 1, 1-D or 2-D;
        main graph: a body's values are not model outputs)."""
        if conv_target_reason(model, self.bits, self.target):
            return {}
        wanted = {}
        for candidate in self.conv_layers(model):
            if candidate.node.graph is not model.graph:
                continue
            spec = conv_patch_spec(candidate.node)
            if spec is not None:
                wanted[candidate.weight.name or ""] = spec
        return wanted

    def _calibration_label(self, hessians: Mapping[str, np.ndarray] | None, convs: int = 0) -> str:
        if self.method != "gptq":
            return "not needed (rtn)"
        if not hessians and not convs:
            return "none (data-free: GPTQ reduces to RTN)"
        return super()._calibration_label(hessians, convs)

    def _skip(self, node: ir.Node, reason: str, weight: str = "") -> None:
        self._decisions.append(
            QuantDecision(node.name or "", node.op_type, "skipped", reason, weight)
        )
        logger.debug("skip %s '%s': %s", node.op_type, node.name, reason)

    def _target_reason(self, model: ir.Model, rows: int) -> str:
        if self.target == "ort":
            return ""
        if default_opset(model) < QDQ_OPSET:
            return (
                f"model opset {default_opset(model)} < {QDQ_OPSET} (block DequantizeLinear); "
                "convert the model to opset 21 or use --target ort"
            )
        if rows % self.block:
            return f"K={rows} is not a multiple of block {self.block} (use --target ort, which pads, or a block dividing K)"
        return ""

    def _quantize(self, candidate: Candidate) -> tuple[QuantizedWeight, str]:
        hessian = (
            self._hessians.get(candidate.activation.name or "") if self.method == "gptq" else None
        )
        note, too_large = "", hessian_size_reason(len(candidate.array))
        if self.method == "gptq" and hessian is None and candidate.node.graph is not self._main:
            note = f"{BODY_REASON}: RTN"
        elif self.method == "gptq" and hessian is None and too_large:
            note = f"{too_large}: RTN"
        elif self.method == "gptq" and self._hessians and hessian is None:
            note = "no calibration Hessian for this input: RTN"
        weight = gptq_quantize(
            candidate.array, hessian, self.bits, self.block, self.symmetric,
            percdamp=self.percdamp, act_order=self.act_order, scale_dtype=candidate.array.dtype,
        )  # fmt: skip
        return weight, note

    def _conv(self, model: ir.Model, candidate: Candidate) -> tuple[int, int]:
        """Quantize a Conv candidate (or record why not); returns its bytes before/after.

        INT8: per output channel. INT4: blocks of ``block`` consecutive weights of each output
        channel (``W[O, C, k...]`` flattened per channel), as MatMul/Gemm weights get; per
        output channel is too coarse at 4 bits (PP-OCRv4 rec, RTN: CER 0.014 -> 1.0). A
        ``--target onnx`` Conv whose ``C * prod(k)`` is not a multiple of the block stays
        per channel (block DequantizeLinear cannot store a short block)."""
        node = candidate.node
        reason = conv_target_reason(model, self.bits, self.target)
        if reason:
            self._skip(node, reason, candidate.weight.name or "")
            return 0, 0
        name, weight_name = node.name or "", candidate.weight.name or ""
        shape = candidate.array.shape
        rows = int(np.prod(shape[1:]))
        form = "cast" if self.target == "ort" else "dequantize"
        graph = holding_graph(node, model.graph)
        blocks = self.bits == 4 and (form == "cast" or rows % self.block == 0)
        quantized, method = self._conv_weight(candidate, self.block if blocks else rows)
        if blocks:
            old, new, decode = quantize_conv_blocks(graph, node, candidate.weight, quantized, form)
            layout = f"blocks of {self.block}"
        else:
            old, new, decode = quantize_conv(
                graph, node, candidate.weight, per_channel(quantized, shape), form
            )
            layout = "per output channel"
            if self.bits == 4:
                layout += f" (C*k = {rows} is not a multiple of block {self.block})"
        self._decoded[weight_name] = decode
        note = f"{method} {layout}, {CONV_FORMS[form]}"
        self._decisions.append(
            QuantDecision(name, "Conv", "quantized", note, weight_name, rows, shape[0], old, new)
        )
        return old, new

    def _recurrent(self, model: ir.Model, candidate: Candidate) -> tuple[int, int]:
        """Quantize an LSTM/GRU/RNN's ``W`` and ``R`` (or record why not); returns their bytes
        before/after. Each weight ``[dirs, gates*H, K]`` is ``dirs*gates*H`` rows of K inputs:
        INT8 per row, INT4 in blocks of ``block`` along K (per row for ``--target onnx``
        where K is not a multiple of the block), RTN, read through the Conv forms (ORT folds
        the Cast form at load: the file shrinks, the float kernels run). Two decisions, one
        per weight; GPTQ is not applied: R reads the hidden state, which no calibration
        run exposes."""
        node, recurrence = candidate.node, candidate.node.inputs[2]
        assert recurrence is not None  # match_recurrent checked it
        reason = conv_target_reason(model, self.bits, self.target, node.op_type)
        if not reason and self.target == "onnx" and default_opset(model) < QDQ_OPSET:
            reason = (  # per gate row is one block of K: block DequantizeLinear at 8 bits too
                f"model opset {default_opset(model)} < {QDQ_OPSET} (block DequantizeLinear); "
                "convert the model to opset 21 or use --target ort"
            )
        inputs = [(1, candidate.weight), (2, recurrence)]
        self._recurrences.add(recurrence.name or "")
        if reason:
            for _, value in inputs:
                self._skip(node, reason, value.name or "")
            return 0, 0
        form = "cast" if self.target == "ort" else "dequantize"
        graph = holding_graph(node, model.graph)
        method = "RTN" if self.method == "rtn" else (
            "RTN (GPTQ is not applied to recurrent weights: R reads the hidden state),")
        before = after = 0
        for index, value in inputs:
            assert value.const_value is not None
            array = value.const_value.numpy()
            rows = array.shape[-1]
            blocks = self.bits == 4 and (form == "cast" or rows % self.block == 0)
            matrix = np.ascontiguousarray(array.reshape(-1, rows).T)
            quantized = quantize_rtn(matrix, self.bits, self.block if blocks else rows,
                                     self.symmetric, array.dtype)  # fmt: skip
            old, new, decode = quantize_conv_blocks(graph, node, value, quantized, form, index)
            layout = f"blocks of {self.block}" if blocks else "per gate row"
            if self.bits == 4 and not blocks:
                layout += f" (K = {rows} is not a multiple of block {self.block})"
            name = value.name or ""
            self._decoded[name] = decode
            self._decisions.append(QuantDecision(
                node.name or "", node.op_type, "quantized", f"{method} {layout}, {CONV_FORMS[form]}",
                name, rows, matrix.shape[1], old, new,
            ))  # fmt: skip
            before, after = before + old, after + new
        return before, after

    def _conv_weight(self, candidate: Candidate, block: int) -> tuple[QuantizedWeight, str]:
        """``W[O, C, k...]`` as ``conv_matrix`` quantized in blocks of ``block``: GPTQ on its
        patch Hessian, else RTN with the reason."""
        method = "RTN"
        hessian = self._conv_hessians.get(candidate.weight.name or "")
        if self.method == "gptq" and hessian is not None:
            quantized = gptq_conv(
                candidate.array, hessian, self.bits, block, self.symmetric,
                percdamp=self.percdamp, act_order=self.act_order,
            )  # fmt: skip
            return quantized, "GPTQ on the im2col patch Hessian,"
        if self.method == "gptq" and candidate.node.graph is not self._main:
            method = f"RTN ({BODY_REASON}),"
        elif self.method == "gptq" and not (self._hessians or self._conv_hessians):
            method = "RTN (GPTQ without calibration data),"
        elif self.method == "gptq":
            spec = conv_patch_spec(candidate.node)
            why = "grouped, 3-D or SAME-padded Conv" if spec is None else "none collected"
            why = hessian_size_reason(int(np.prod(candidate.array.shape[1:]))) or why
            method = f"RTN (no patch Hessian: {why}),"
        matrix = conv_matrix(candidate.array)
        return quantize_rtn(matrix, self.bits, block, self.symmetric, candidate.array.dtype), method

    @property
    def wrote_nbits(self) -> bool:
        """Whether the last call wrote at least one MatMulNBits node."""
        return bool(getattr(self, "_nbits", False))

    def _cast_form(self) -> bool:
        """INT8 RTN for ORT: Cast+Mul constants (ORT 1.32's 8-bit MatMulNBits ran at 0.79x
        of dense on MiniLM; the folded form runs the dense kernels)."""
        return self.target == "ort" and self.bits == 8 and self.method == "rtn"

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        self._nbits = False
        self._decoded.clear()
        graph, before, after = model.graph, 0, 0
        self._main, self._recurrences = graph, set()
        roles = layer_roles(graph)  # main-graph layers; nodes inside bodies have none
        layers = [n for n in ir.traversal.RecursiveGraphIterator(graph) if op_key(n) in MATCHERS]
        for node in progress.track(layers, description=self.name):
            matcher = MATCHERS[op_key(node)]
            candidate, reason = matcher(node)
            role = roles.get(id(node), "")
            if candidate is not None and role in self.keep_float:
                reason = (
                    f"layer skipped: {role} layer kept in float at int{self.bits} "
                    "(--all-layers quantizes it)"
                )
                candidate = None
            if candidate is None:
                self._skip(
                    node,
                    reason,
                    input_name(node, 1),
                )
                continue
            if node.op_type == "Conv":
                old_bytes, new_bytes = self._conv(model, candidate)
                before, after = before + old_bytes, after + new_bytes
                continue
            if node.op_type in RECURRENT:
                old_bytes, new_bytes = self._recurrent(model, candidate)
                before, after = before + old_bytes, after + new_bytes
                continue
            rows, cols = candidate.array.shape
            reason = self._target_reason(model, rows)
            if reason:
                self._skip(node, reason, candidate.weight.name or "")
                continue
            old_bytes = _weight_bytes(candidate.weight)
            name, op_type, weight_name = node.name or "", node.op_type, candidate.weight.name or ""
            if self._cast_form():
                note = "INT8 per output column, Cast+Mul folded by ORT at load"
                new_bytes, decode = _rewrite_cast(graph, candidate, self.bits, self.symmetric)
            else:
                weight, note = self._quantize(candidate)
                new_bytes = _rewrite(graph, candidate, weight, self.target)
                self._nbits = self._nbits or self.target == "ort"
                decode = _block_decoder(weight, candidate.array.dtype)
            self._decoded[weight_name] = in_layout(candidate, decode)
            before, after = before + old_bytes, after + new_bytes
            self._decisions.append(
                QuantDecision(
                    name, op_type, "quantized", note, weight_name, rows, cols, old_bytes, new_bytes
                )
            )
        quantized, skipped = self._tally("quantized")
        done = {d.op_type for d in self._decisions if d.action == "quantized"}
        if self._nbits:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        if (self.target != "ort" and done) or ("Conv" in done and self.bits == 4):
            model.ir_version = max(model.ir_version or 0, 10)  # INT4/UINT4 tensors
        statistics: dict[str, int | float] = {
            "nodes_quantized": quantized,
            "nodes_skipped": skipped,
            "bytes_before": before,
            "bytes_after": after,
        }
        return SpaPassResult(model, quantized > 0, statistics, self._details())


def _block_decoder(weight: QuantizedWeight, dtype: np.dtype) -> Callable[[], np.ndarray]:
    return lambda: dequantize(weight, dtype)


def _remove_unused_inputs(graph: ir.Graph, values: list[ir.Value | None]) -> None:
    for value in values:
        if value is not None:
            remove_initializer_if_unused(graph, value)


@register_pass
class MatMulNBitsToQDQPass(DecidingPass):
    """``com.microsoft.MatMulNBits`` -> block ``DequantizeLinear`` + ``MatMul`` (opset 21).

    Handles 4/8-bit MatMulNBits with constant B/scales and optional uint8 zero
    points, K a multiple of ``block_size``, no ``g_idx``/``bias``. Symmetric
    (no zero points) becomes INT4/INT8 without zero point; with zero points,
    UINT4/UINT8 with zero points. Dequantized weights are unchanged.
    """

    name = "matmulnbits-to-qdq"
    summary = "Convert com.microsoft.MatMulNBits to block DequantizeLinear + MatMul"

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        graph = model.graph
        for node in list(graph):
            if op_key(node) != (MS_DOMAIN, "MatMulNBits"):
                continue
            weight, reason = read_matmulnbits(node)
            if weight is not None and weight.shape[0] % weight.block:
                reason = f"K={weight.shape[0]} is not a multiple of block {weight.block}"
            if not reason and default_opset(model) < QDQ_OPSET:
                reason = f"model opset {default_opset(model)} < {QDQ_OPSET}"
            if weight is None or reason or node.inputs[0] is None:
                self._decisions.append(
                    QuantDecision(node.name or "", node.op_type, "skipped", reason)
                )
                continue
            old_inputs = list(node.inputs[1:])
            base = old_inputs[0].name if old_inputs[0] is not None else "weight"
            dequantize, _ = dequantize_node(graph, weight, base or "weight", f"{node.name}_dq")
            matmul = ir.node("MatMul", [node.inputs[0], dequantize.outputs[0]], name=node.name)
            replace_node(graph, node, [dequantize, matmul])
            _remove_unused_inputs(graph, old_inputs)
            self._decisions.append(
                QuantDecision(node.name or "", node.op_type, "converted", "", base or "")
            )
        converted, skipped = self._tally("converted")
        if converted:
            model.ir_version = max(model.ir_version or 0, 10)
        statistics: dict[str, int | float] = {
            "nodes_converted": converted,
            "nodes_skipped": skipped,
        }
        return SpaPassResult(model, converted > 0, statistics, self._details())


@register_pass
class MatMulNBitsToCastPass(DecidingPass):
    """Convert ``com.microsoft.MatMulNBits`` to ``MatMul`` reading the block integers
    through ``Cast -> [Sub] -> Mul -> Reshape`` (:func:`block_cast_nodes`), constants
    ONNX Runtime folds at session load: the file keeps the low-bit weights, the
    session runs the float kernels. Dequantized weights are unchanged. INT4 values
    stay INT4 from opset 21 and are stored in INT8/UINT8 below it. Skips what
    :func:`read_matmulnbits` cannot read (g_idx, bias, non-constant B)."""

    name = "matmulnbits-to-cast"
    summary = "Convert com.microsoft.MatMulNBits to the Cast+Mul form ORT folds at load"
    action = "converted"

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        int4 = default_opset(model) >= QDQ_OPSET
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if op_key(node) != (MS_DOMAIN, "MatMulNBits"):
                continue
            weight, reason = read_matmulnbits(node)
            if weight is None or reason or node.inputs[0] is None:
                self._decisions.append(
                    QuantDecision(node.name or "", node.op_type, "skipped", reason)
                )
                continue
            graph = holding_graph(node, model.graph)
            old_inputs = list(node.inputs[1:])
            base = (old_inputs[0].name if old_inputs[0] is not None else "") or "weight"
            nodes, size = block_cast_nodes(graph, weight, base, node.name or base, int4=int4)
            matmul = ir.node("MatMul", [node.inputs[0], nodes[-1].outputs[0]], name=node.name)
            replace_node(graph, node, [*nodes, matmul])
            _remove_unused_inputs(graph, old_inputs)
            rows, cols = weight.shape
            note = f"INT{weight.bits} block {weight.block}, Cast+Mul folded by ORT at load"
            if weight.bits == 4 and not int4:
                note += f" (stored in 8 bits: model opset {default_opset(model)} < {QDQ_OPSET})"
            self._decisions.append(
                QuantDecision(
                    node.name or "", node.op_type, "converted", note, base, rows, cols, 0, size
                )
            )
        converted, skipped = self._tally()
        if converted and int4:
            model.ir_version = max(model.ir_version or 0, 10)
        statistics: dict[str, int | float] = {
            "nodes_converted": converted,
            "nodes_skipped": skipped,
        }
        return SpaPassResult(model, converted > 0, statistics, self._details())


def _qdq_consumer(dequantize: ir.Node) -> tuple[ir.Node | None, str]:
    output = dequantize.outputs[0]
    uses = list(output.uses())
    if output.is_graph_output() or len(uses) != 1:
        return (
            None,
            f"DequantizeLinear output feeds {len(uses)} nodes or a graph output (needs exactly one MatMul)",
        )
    use = uses[0]
    if op_key(use.node) != ("", "MatMul") or use.idx != 1:
        return (
            None,
            f"DequantizeLinear output feeds {use.node.op_type} input {use.idx}, not a MatMul weight",
        )
    return use.node, ""


@register_pass
class QDQToMatMulNBitsPass(DecidingPass):
    """Block ``DequantizeLinear`` (axis 0) + ``MatMul`` -> ``com.microsoft.MatMulNBits``.

    Handles INT4/UINT4/INT8/UINT8 constant 2-D ``x`` with constant scale (and
    zero point), ``block_size`` a power of two >= 16, whose output is the weight
    of exactly one MatMul. Dequantized weights are unchanged.
    """

    name = "qdq-to-matmulnbits"
    summary = "Convert block DequantizeLinear + MatMul to com.microsoft.MatMulNBits"

    def call(self, model: ir.Model) -> SpaPassResult:
        self._decisions = []
        graph = model.graph
        for node in list(graph):
            if op_key(node) != ("", "DequantizeLinear"):
                continue
            weight, reason = read_dequantize(node)
            matmul, consumer_reason = _qdq_consumer(node)
            reason = reason or consumer_reason
            if (
                not reason
                and weight is not None
                and (weight.block < 16 or weight.block & (weight.block - 1))
            ):
                reason = f"block_size {weight.block} is not a power of two >= 16 (MatMulNBits)"
            if weight is None or matmul is None or reason or matmul.inputs[0] is None:
                self._decisions.append(
                    QuantDecision(node.name or "", node.op_type, "skipped", reason)
                )
                continue
            old_inputs = list(node.inputs)
            base = (old_inputs[0].name if old_inputs[0] is not None else "") or "weight"
            nbits, _ = matmulnbits_node(
                graph, matmul.inputs[0], weight, base, matmul.name or f"{base}_nbits"
            )
            replace_node(graph, matmul, [nbits])
            graph.remove(node, safe=True)
            _remove_unused_inputs(graph, old_inputs)
            self._decisions.append(
                QuantDecision(matmul.name or "", "MatMul", "converted", "", base)
            )
        converted, skipped = self._tally("converted")
        if converted:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        statistics: dict[str, int | float] = {
            "nodes_converted": converted,
            "nodes_skipped": skipped,
        }
        return SpaPassResult(model, converted > 0, statistics, self._details())
