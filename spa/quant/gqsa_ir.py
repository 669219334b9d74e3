"""``spa.GroupSparseQuantMatMul`` in onnx-ir: the op, its reference lowering, and readers.

The op (``docs/formats.md`` (c)): inputs ``A, values, col_idx, row_ptr, scales``,
attributes ``K``, ``N``, ``group_size``, ``bits``, domain ``spa`` version 1.

The reference lowering is standard ONNX (opset >= 18) reading the same four
initializers: nibbles unpacked with ``BitwiseAnd``/``BitShift``, ``Cast``, minus
the zero point ``2^(bits-1)``, times the scale; the BSR row of every entry is
recovered from ``row_ptr`` (``ScatterElements`` add of ones at
``row_ptr[1:N]`` then ``CumSum``); ``ScatterND`` writes the groups into zeros
``[N*K/g, g]`` at ``row*K/g + col_idx``; ``Reshape [N, K]``, ``Transpose``,
``MatMul``. Every node of one lowering is named ``gqsa_ref/<op name>/<role>``
(the marker :func:`find_lowerings` recognises; ``<role>`` is one of
:data:`ROLES`), its MatMul is ``gqsa_ref/<op name>/matmul``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from spa.quant.gqsa import GQSAArrays
from spa.quant.ir_format import add_initializer

__all__ = [
    "GQSA_DOMAIN",
    "GQSA_OP",
    "LOWERING_OPSET",
    "PREFIX",
    "ROLES",
    "Lowering",
    "find_lowerings",
    "gqsa_inputs",
    "gqsa_node",
    "read_gqsa",
    "reference_nodes",
]

GQSA_DOMAIN = "spa"
GQSA_OP = "GroupSparseQuantMatMul"
LOWERING_OPSET = 18  # BitwiseAnd
PREFIX = "gqsa_ref/"
#: The roles whose nodes read the four initializers, and the ones spa reads back.
ROLES = ("low", "high", "as_float", "scale_column", "row_ptr_64", "col_64", "weight_nk", "matmul")


def gqsa_inputs(graph: ir.Graph, arrays: GQSAArrays, base: str) -> tuple[list[ir.Value], int]:
    """The four initializers (values, col_idx, row_ptr, scales) and their bytes."""
    named = [
        ("gqsa_values", arrays.values), ("gqsa_col_idx", arrays.col_idx),
        ("gqsa_row_ptr", arrays.row_ptr), ("gqsa_scales", arrays.scales),
    ]  # fmt: skip
    values = [
        add_initializer(graph, f"{base}_{suffix}", ir.Tensor(np.ascontiguousarray(array)))
        for suffix, array in named
    ]
    return values, sum(int(array.nbytes) for _, array in named)


def _attributes(arrays: GQSAArrays) -> dict[str, int]:
    return {"K": arrays.k, "N": arrays.n, "group_size": arrays.group, "bits": arrays.bits}


def gqsa_node(
    activation: ir.Value, inputs: list[ir.Value], arrays: GQSAArrays, name: str
) -> ir.Node:
    """The plugin-form node (not yet inserted)."""
    return ir.node(
        GQSA_OP, [activation, *inputs], _attributes(arrays), domain=GQSA_DOMAIN, name=name
    )


def _constant(array: np.ndarray, name: str) -> ir.Node:
    return ir.node("Constant", [], {"value": ir.tensor(np.asarray(array))}, name=name)


class _Builder:
    """Appends named nodes of one lowering."""

    def __init__(self, name: str) -> None:
        self.prefix = f"{PREFIX}{name}/"
        self.nodes: list[ir.Node] = []

    def const(self, role: str, array: np.ndarray) -> ir.Value:
        node = _constant(array, self.prefix + role)
        self.nodes.append(node)
        return node.outputs[0]

    def op(self, op_type: str, role: str, inputs: list[ir.Value], **attributes: object) -> ir.Value:
        node = ir.node(op_type, inputs, attributes or None, name=self.prefix + role)  # type: ignore[arg-type]
        self.nodes.append(node)
        return node.outputs[0]


def reference_nodes(
    activation: ir.Value, inputs: list[ir.Value], k: int, n: int, group: int, bits: int,
    name: str, float_type: ir.DataType,
) -> list[ir.Node]:  # fmt: skip
    """The standard-ONNX nodes computing ``MatMul(activation, W)`` from the four inputs."""
    values, col_idx, row_ptr, scales = inputs
    float_dtype = float_type.numpy()
    build = _Builder(name)
    last = build.const("axes_last", np.array([-1], np.int64))
    if bits == 4:
        low = build.op("BitwiseAnd", "low", [values, build.const("mask", np.array(15, np.uint8))])
        shift = build.const("shift", np.array(4, np.uint8))
        high = build.op("BitShift", "high", [values, shift], direction="RIGHT")
        pairs = build.op(
            "Concat", "pairs",
            [build.op("Unsqueeze", "low_u", [low, last]), build.op("Unsqueeze", "high_u", [high, last])],
            axis=-1,
        )  # fmt: skip
        shape = build.const("group_shape", np.array([-1, group], np.int64))
        unsigned = build.op("Reshape", "unsigned", [pairs, shape])
    else:
        unsigned = values
    as_float = build.op("Cast", "as_float", [unsigned], to=int(float_type))
    zero = build.const("zero_point", np.array(2 ** (bits - 1), float_dtype))
    centered = build.op("Sub", "centered", [as_float, zero])
    groups = build.op(
        "Mul", "groups", [centered, build.op("Unsqueeze", "scale_column", [scales, last])]
    )
    # BSR row of every entry: ones added at row_ptr[1:N], cumulated.
    nnz = build.op("Shape", "nnz", [col_idx])
    one = build.const("one", np.array([1], np.int64))
    zeros = build.op(
        "ConstantOfShape", "marks_zero", [build.op("Add", "nnz_plus_one", [nnz, one])],
        value=ir.tensor(np.array([0], np.int64)),
    )  # fmt: skip
    row_ptr_64 = build.op("Cast", "row_ptr_64", [row_ptr], to=int(ir.DataType.INT64))
    inner = build.op(
        "Slice", "row_starts",
        [row_ptr_64, one, build.const("minus_one", np.array([-1], np.int64))],
    )  # fmt: skip
    ones = build.op(
        "ConstantOfShape", "ones", [build.op("Shape", "row_starts_shape", [inner])],
        value=ir.tensor(np.array([1], np.int64)),
    )  # fmt: skip
    marks = build.op("ScatterElements", "marks", [zeros, inner, ones], axis=0, reduction="add")
    rows = build.op(
        "CumSum", "rows_inclusive", [marks, build.const("axis0", np.array(0, np.int64))]
    )
    entry_rows = build.op(
        "Slice", "entry_rows", [rows, build.const("zero_start", np.array([0], np.int64)),
                                build.const("stop_before_last", np.array([-1], np.int64))],
    )  # fmt: skip
    blocks = build.const("groups_per_column", np.array(k // group, np.int64))
    flat = build.op(
        "Add", "flat_index",
        [build.op("Mul", "row_offset", [entry_rows, blocks]),
         build.op("Cast", "col_64", [col_idx], to=int(ir.DataType.INT64))],
    )  # fmt: skip
    index = build.op("Unsqueeze", "scatter_index", [flat, last])
    dense = build.op(
        "ConstantOfShape", "dense_zero", [build.const("dense_shape", np.array([n * k // group, group], np.int64))],
        value=ir.tensor(np.array([0], float_dtype)),
    )  # fmt: skip
    scattered = build.op("ScatterND", "scatter", [dense, index, groups])
    weight_nk = build.op(
        "Reshape", "weight_nk", [scattered, build.const("nk_shape", np.array([n, k], np.int64))]
    )
    weight_kn = build.op("Transpose", "weight_kn", [weight_nk], perm=[1, 0])
    build.op("MatMul", "matmul", [activation, weight_kn])
    return build.nodes


def _constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or a ``Constant`` node's output (None otherwise)."""
    if value is None or value.is_graph_input():
        return None
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    if producer is not None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _arrays(
    inputs: list[ir.Value | None], k: int, n: int, group: int, bits: int
) -> tuple[GQSAArrays | None, str]:
    arrays = [_constant_array(value) for value in inputs]
    values, col_idx, row_ptr, scales = arrays
    if values is None or col_idx is None or row_ptr is None or scales is None:
        return None, "GQSA values/col_idx/row_ptr/scales are not all constant initializers"
    nnz = len(col_idx)
    if values.dtype != np.uint8 or values.shape != (nnz, group * bits // 8):
        return (
            None,
            f"GQSA values are {values.dtype} {values.shape}, expected uint8 [{nnz}, {group * bits // 8}]",
        )
    if row_ptr.shape != (n + 1,) or scales.shape != (nnz,):
        return (
            None,
            f"GQSA row_ptr {row_ptr.shape} / scales {scales.shape} do not match N={n}, nnz={nnz}",
        )
    return GQSAArrays(
        values, col_idx.astype(np.int32), row_ptr.astype(np.int32), scales, k, n, group, bits
    ), ""


def read_gqsa(node: ir.Node) -> tuple[GQSAArrays | None, str]:
    """The arrays of a plugin-form node, or the reason they cannot be read."""
    attributes = node.attributes
    k, n = attributes.get_int("K", 0), attributes.get_int("N", 0)
    group, bits = attributes.get_int("group_size", 16), attributes.get_int("bits", 4)
    if len(node.inputs) != 5:
        return None, f"{GQSA_OP} has {len(node.inputs)} inputs, expected 5"
    return _arrays(list(node.inputs[1:]), k, n, group, bits)


@dataclasses.dataclass
class Lowering:
    """One reference lowering found in a graph: its nodes and the op it stands for."""

    name: str
    nodes: list[ir.Node]
    matmul: ir.Node
    inputs: list[ir.Value | None]
    arrays: GQSAArrays | None
    reason: str = ""


def _lowering(name: str, nodes: list[ir.Node]) -> Lowering:
    by_role = {node.name[len(PREFIX) + len(name) + 1 :]: node for node in nodes if node.name}
    matmul = by_role["matmul"]
    bits = 4 if "high" in by_role else 8
    first = "low" if bits == 4 else "as_float"
    missing = [role for role in ROLES if role not in by_role and role not in ("low", "high")]
    if first not in by_role or missing:
        return Lowering(
            name, nodes, matmul, [], None, f"lowering '{name}' lacks nodes {missing or [first]}"
        )
    inputs = [
        by_role[first].inputs[0], by_role["col_64"].inputs[0],
        by_role["row_ptr_64"].inputs[0], by_role["scale_column"].inputs[0],
    ]  # fmt: skip
    values, shape = _constant_array(inputs[0]), _constant_array(by_role["weight_nk"].inputs[1])
    if values is None or shape is None or shape.shape != (2,):
        return Lowering(
            name, nodes, matmul, inputs, None, f"lowering '{name}' has non-constant values or shape"
        )
    n, k = (int(d) for d in shape)
    group = values.shape[1] * 8 // bits if values.ndim == 2 else 0
    arrays, reason = _arrays(inputs, k, n, group, bits)
    outside = [
        value.name for node in nodes if node is not matmul for value in node.outputs
        if value.is_graph_output() or any(use.node not in nodes for use in value.uses())
    ]  # fmt: skip
    if outside and not reason:
        reason = f"lowering '{name}' values {outside} are used outside it"
    return Lowering(name, nodes, matmul, inputs, arrays, reason)


def find_lowerings(graph: ir.Graph) -> list[Lowering]:
    """Every reference lowering in ``graph`` (nodes named ``gqsa_ref/<name>/<role>``)."""
    grouped: dict[str, list[ir.Node]] = {}
    for node in graph:
        if node.name and node.name.startswith(PREFIX) and "/" in node.name[len(PREFIX) :]:
            name = node.name[len(PREFIX) :].rsplit("/", 1)[0]
            grouped.setdefault(name, []).append(node)
    found = []
    for name, nodes in grouped.items():
        if any(node.name == f"{PREFIX}{name}/matmul" for node in nodes):
            found.append(_lowering(name, nodes))
    return found
