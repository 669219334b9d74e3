"""``inspect``: what a model file holds, read from its graph alone.

:func:`inspect_model` loads the protobuf with :func:`spa.model_io.load_proto`,
which never reads external data, so a 13 GB model with its weights in a
``.data`` file is inspected in about a second and a few hundred MB: sizes and
parameter counts come from each tensor's dims and dtype, never its bytes.

"Ops without a schema" are the (domain, op type) pairs ONNX does not define
(``onnx.defs.has`` is false). Each is labelled with who does know it:
``local function`` (defined in the model), ``contrib (onnxruntime)`` (in ONNX
Runtime's operator schemas, looked up only when such ops exist), or
``unknown``.

2:4 listing: every float weight of a main-graph MatMul/Gemm/Conv is checked
for the 2:4 pattern along its reduction axis (TensorRT sparse-weights
eligible; :func:`spa.quant.sparsity.sparse_weight_report`), and every float
weight is checked for subnormal values (x86 CPUs compute on them through slow
assists; every spa command writes them as zeros). These are the places
inspect reads weight bytes: embedded weights only, unless
``read_weights=True`` (``spa inspect --read-weights``) also reads external data.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from spa.constants import subnormal_count
from spa.model_io import iter_graph_protos, load_proto
from spa.quant.sparsity import SparseWeightInfo, sparse_weight_report

__all__ = [
    "STANDARD_DOMAINS",
    "ModelInfo",
    "OpCount",
    "UnknownOp",
    "ValueInfo",
    "dtype_name",
    "human_bytes",
    "human_count",
    "inspect_model",
    "iter_graph_protos",
    "op_key",
    "render_model_info",
    "tensor_elements",
    "tensor_nbytes",
    "value_info",
    "weight_summary",
    "weight_tensors",
]

logger = logging.getLogger(__name__)

#: Domains whose ops ONNX itself defines ("" and "ai.onnx" are the same domain).
STANDARD_DOMAINS = frozenset(
    {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"}
)

_DTYPE = onnx.TensorProto.DataType

#: Bits per element, from the ONNX spec (4-, 2- and 6-bit types are packed).
_BITS = {
    "FLOAT": 32,
    "UINT8": 8,
    "INT8": 8,
    "UINT16": 16,
    "INT16": 16,
    "INT32": 32,
    "INT64": 64,
    "BOOL": 8,
    "FLOAT16": 16,
    "DOUBLE": 64,
    "UINT32": 32,
    "UINT64": 64,
    "COMPLEX64": 64,
    "COMPLEX128": 128,
    "BFLOAT16": 16,
    "FLOAT8E4M3FN": 8,
    "FLOAT8E4M3FNUZ": 8,
    "FLOAT8E5M2": 8,
    "FLOAT8E5M2FNUZ": 8,
    "FLOAT8E8M0": 8,
    "UINT4": 4,
    "INT4": 4,
    "FLOAT4E2M1": 4,
    "UINT2": 2,
    "INT2": 2,
    "FLOAT6E2M3": 6,
    "FLOAT6E3M2": 6,
}

#: Names that differ from the lower-cased ONNX enum name (numpy's spelling).
_NAME_OVERRIDES = {"FLOAT": "float32", "DOUBLE": "float64"}


def dtype_name(elem_type: int) -> str:
    """``onnx.TensorProto.FLOAT16`` -> ``"float16"`` (FLOAT -> ``"float32"``)."""
    try:
        name = _DTYPE.Name(elem_type)
    except ValueError:
        return f"dtype{elem_type}"
    return _NAME_OVERRIDES.get(name, name.lower())


def tensor_elements(tensor: onnx.TensorProto) -> int:
    """Elements of ``tensor`` from its dims (a scalar has one)."""
    return math.prod(int(d) for d in tensor.dims)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Storage bytes from dims and dtype only; external data is never read."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(item) for item in tensor.string_data)
    bits = _BITS.get(_DTYPE.Name(tensor.data_type), 0) if tensor.data_type in _DTYPE.values() else 0
    return (tensor_elements(tensor) * bits + 7) // 8


def op_key(domain: str, op_type: str) -> str:
    """``("", "Conv")`` -> ``"Conv"``; other domains are prefixed: ``com.microsoft.Attention``."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


#: A Constant node's tensor of this many elements or more is a weight (as spa lifts it).
CONSTANT_WEIGHT_ELEMENTS = 16


def weight_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """The model's weights: initializers of the main graph and of every subgraph,
    and the tensors of ``Constant`` nodes with 16 elements or more (exporters
    that write weights as Constant nodes), in the graphs and in model-local
    functions (spa inlines and lifts those)."""
    for graph in iter_graph_protos(proto.graph):
        yield from graph.initializer
        yield from _constant_weights(graph.node)
    for function in proto.functions:
        yield from _constant_weights(function.node)
        bodies = [
            body
            for node in function.node
            for attribute in node.attribute
            for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        ]
        for graph in (nested for body in bodies for nested in iter_graph_protos(body)):
            yield from graph.initializer
            yield from _constant_weights(graph.node)


def _constant_weights(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attribute in node.attribute:
            is_tensor = attribute.name == "value" and attribute.HasField("t")
            if is_tensor and tensor_elements(attribute.t) >= CONSTANT_WEIGHT_ELEMENTS:
                yield attribute.t


def human_count(count: float) -> str:
    """25_600_000 -> ``"25.6M"`` (decimal units, as parameter counts are quoted)."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.1f}{unit}"
    return f"{count:.0f}"


def human_bytes(count: float) -> str:
    """13_476_000_000 -> ``"12.6 GiB"`` (binary units)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


@dataclasses.dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: dims are ints, symbolic names, or ``"?"``."""

    name: str
    dtype: str
    shape: tuple[int | str, ...] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
        }


@dataclasses.dataclass(frozen=True)
class OpCount:
    """How many nodes (subgraphs included) have this domain and op type."""

    domain: str
    op_type: str
    count: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class UnknownOp:
    """An op ONNX has no schema for, and who does know it."""

    domain: str
    op_type: str
    count: int
    known_to: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelInfo:
    """Facts about one model file; everything comes from the graph, no weight bytes."""

    path: str
    file_bytes: int
    ir_version: int
    producer: str
    opsets: dict[str, int]
    node_count: int
    op_histogram: list[OpCount]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializer_count: int
    params: int
    bytes_by_dtype: dict[str, int]
    external_data: bool
    external_files: list[str]
    local_functions: list[str]
    custom_domains: list[str]
    ops_without_schema: list[UnknownOp]
    #: ops the analyzer has no rule for: pruning treats them as barriers
    ops_without_rule: list[OpCount] = dataclasses.field(default_factory=list)
    #: MatMul/Gemm/Conv float weights and whether each is 2:4 along its reduction axis
    sparse_weights: list[SparseWeightInfo] = dataclasses.field(default_factory=list)
    #: Subnormal float values in the weights read (``values``) and the weights holding them
    subnormals: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list) and value and hasattr(value[0], "as_dict"):
                value = [item.as_dict() for item in value]
            data[field.name] = value
        data["weight_bytes"] = self.weight_bytes
        return data


def value_info(value: onnx.ValueInfoProto) -> ValueInfo:
    """A graph input or output as :class:`ValueInfo` (dims: ints, symbolic names or "?")."""
    if not value.type.HasField("tensor_type"):
        return ValueInfo(value.name, value.type.WhichOneof("value") or "unknown", None)
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return ValueInfo(value.name, dtype_name(tensor_type.elem_type), None)
    dims: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    return ValueInfo(value.name, dtype_name(tensor_type.elem_type), tuple(dims))


def _op_counts(proto: onnx.ModelProto) -> collections.Counter[tuple[str, str]]:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for graph in iter_graph_protos(proto.graph):
        for node in graph.node:
            domain = "" if node.domain == "ai.onnx" else node.domain
            counts[(domain, node.op_type)] += 1
    return counts


def _onnxruntime_ops() -> set[tuple[str, str]] | None:
    """(domain, op type) of every schema ONNX Runtime registers, or None without it."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError:
        logger.info("onnxruntime not importable; contrib ops are listed by domain only")
        return None
    schemas = getattr(ort_state, "get_all_operator_schema", None)
    if schemas is None:
        return None
    return {(schema.domain, schema.name) for schema in schemas()}


def _unknown_ops(
    proto: onnx.ModelProto, counts: collections.Counter[tuple[str, str]]
) -> list[UnknownOp]:
    functions = {(function.domain, function.name) for function in proto.functions}
    missing = [
        key for key, count in sorted(counts.items()) if count and not onnx.defs.has(key[1], key[0])
    ]
    ort_ops = _onnxruntime_ops() if any(key not in functions for key in missing) else set()
    unknown: list[UnknownOp] = []
    for key in missing:
        if key in functions:
            known_to = "local function"
        elif ort_ops is None:
            known_to = f"domain {key[0] or 'ai.onnx'} (onnxruntime not checked)"
        elif key in ort_ops:
            known_to = "contrib (onnxruntime)"
        else:
            known_to = "unknown"
        unknown.append(UnknownOp(key[0], key[1], counts[key], known_to))
    return unknown


def _external_files(proto: onnx.ModelProto) -> list[str]:
    files: set[str] = set()
    for tensor in weight_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            files.add(location)
    return sorted(files)


def _ops_without_rule(
    counts: Mapping[tuple[str, str], int], opsets: Mapping[str, int]
) -> list[OpCount]:
    from spa.analysis.rules import find_rule

    return [
        OpCount(domain, op_type, count)
        for (domain, op_type), count in sorted(counts.items())
        if count and find_rule(domain, op_type, opsets.get(domain or "ai.onnx", 1)) is None
    ]


#: Element types of constants that are no parameters: masks, shapes, indices, names. Their
#: bytes still count (GPT-Neo's TorchScript export stores two 2048 x 2048 boolean causal
#: masks: 8.4M "params" in a 270k-param model before).
NOT_PARAMETERS = frozenset({onnx.TensorProto.BOOL, onnx.TensorProto.INT64, onnx.TensorProto.STRING})


def weight_summary(proto: onnx.ModelProto) -> tuple[int, int, dict[str, int]]:
    """(initializer count, parameters, bytes by dtype, largest first), from dims only.
    Parameters leave out boolean, int64 and string constants (:data:`NOT_PARAMETERS`)."""
    bytes_by_dtype: collections.Counter[str] = collections.Counter()
    count = params = 0
    for tensor in weight_tensors(proto):
        count += 1
        if tensor.data_type not in NOT_PARAMETERS:
            params += tensor_elements(tensor)
        bytes_by_dtype[dtype_name(tensor.data_type)] += tensor_nbytes(tensor)
    return count, params, dict(sorted(bytes_by_dtype.items(), key=lambda kv: -kv[1]))


def subnormal_weights(
    proto: onnx.ModelProto, base_dir: Path, *, read_external: bool
) -> dict[str, int]:
    """Subnormal float32/float64/bfloat16 values in the model's weights (external ones only
    with ``read_external``): ``{"values": ..., "weights": ..., "unread": ...}``."""
    values = weights = unread = 0
    for tensor in weight_tensors(proto):
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        if external and not read_external:
            unread += 1
            continue
        count = subnormal_count(ir.serde.deserialize_tensor(tensor, str(base_dir)))
        values, weights = values + count, weights + (count > 0)
    return {"values": values, "weights": weights, "unread": unread}


def inspect_model(path: str | os.PathLike[str], *, read_weights: bool = False) -> ModelInfo:
    """Facts about the model at ``path``; external weight bytes are read only for the
    2:4 check and only with ``read_weights``."""
    path = Path(path)
    proto = load_proto(path)
    counts = _op_counts(proto)
    initializer_count, params, bytes_by_dtype = weight_summary(proto)
    weights = {t.name for t in proto.graph.initializer}
    external = _external_files(proto)
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
    opsets = {(entry.domain or "ai.onnx"): int(entry.version) for entry in proto.opset_import}
    used_domains = {domain for (domain, _), count in counts.items() if count}
    info = ModelInfo(
        path=str(path),
        file_bytes=path.stat().st_size,
        ir_version=int(proto.ir_version),
        producer=producer,
        opsets=dict(sorted(opsets.items())),
        node_count=sum(counts.values()),
        op_histogram=[
            OpCount(domain, op_type, count)
            for (domain, op_type), count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if count
        ],
        inputs=[value_info(v) for v in proto.graph.input if v.name not in weights],
        outputs=[value_info(v) for v in proto.graph.output],
        initializer_count=initializer_count,
        params=params,
        bytes_by_dtype=bytes_by_dtype,
        external_data=bool(external),
        external_files=external,
        local_functions=[op_key(f.domain, f.name) for f in proto.functions],
        custom_domains=sorted((used_domains | set(opsets)) - STANDARD_DOMAINS),
        ops_without_schema=_unknown_ops(proto, counts),
        ops_without_rule=_ops_without_rule(counts, opsets),
        sparse_weights=sparse_weight_report(proto, path.parent, read_external=read_weights),
        subnormals=subnormal_weights(proto, path.parent, read_external=read_weights),
    )
    logger.info("inspected %s: %d nodes, %d params", path, info.node_count, info.params)
    return info


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _shape_text(value: ValueInfo) -> str:
    if value.shape is None:
        return "(unknown shape)"
    return "[" + ", ".join(str(d) for d in value.shape) + "]"


def _sparse_lines(weights: list[SparseWeightInfo]) -> list[str]:
    if not weights:
        return []
    sparse = [w for w in weights if w.sparse_2to4]
    unread = sum(1 for w in weights if w.sparse_2to4 is None)
    lines = [
        f"2:4 sparse weights (TensorRT sparse-weights eligible): {len(sparse)} of "
        f"{len(weights)} MatMul/Gemm/Conv weights"
        + (f" ({unread} in external data not read; --read-weights)" if unread else "")
    ]
    rows: list[tuple[str, ...]] = [
        (w.node or "?", w.op_type, w.weight, "[" + ", ".join(map(str, w.shape)) + "]",
         f"axis {w.axis}", f"zeros {w.zero_share:.1%}" if w.zero_share is not None else "")
        for w in sparse
    ]  # fmt: skip
    return lines + (_table(rows) if rows else [])


def render_model_info(info: ModelInfo, *, top_ops: int | None = None) -> str:
    """A text summary of ``info``; ``top_ops`` limits the op histogram's rows."""
    external = ""
    if info.external_data:
        external = f" + external data in {', '.join(info.external_files)}"
    weights = ", ".join(f"{dtype} {human_bytes(n)}" for dtype, n in info.bytes_by_dtype.items())
    lines = [
        f"model     {info.path} ({human_bytes(info.file_bytes)}{external})",
        f"ir        {info.ir_version}" + (f", producer {info.producer}" if info.producer else ""),
        "opsets    " + ", ".join(f"{domain} {version}" for domain, version in info.opsets.items()),
        f"nodes     {info.node_count} ({len(info.op_histogram)} op types)",
        f"params    {human_count(info.params)} ({info.params}) in "
        f"{info.initializer_count} initializers",
        f"weights   {human_bytes(info.weight_bytes)}" + (f": {weights}" if weights else ""),
    ]
    if info.custom_domains:
        lines.append("domains   custom: " + ", ".join(info.custom_domains))
    if info.local_functions:
        lines.append("functions " + ", ".join(info.local_functions))
    lines.append("inputs")
    lines += _table([(v.name, v.dtype, _shape_text(v)) for v in info.inputs] or [("(none)",)])
    lines.append("outputs")
    lines += _table([(v.name, v.dtype, _shape_text(v)) for v in info.outputs])
    if info.ops_without_schema:
        lines.append("ops without an ONNX schema")
        lines += _table(
            [
                (op_key(o.domain, o.op_type), str(o.count), o.known_to)
                for o in info.ops_without_schema
            ]
        )
    if info.ops_without_rule:
        lines.append("ops without a spa pruning rule (barriers for `spa prune`)")
        lines += _table(
            [(op_key(o.domain, o.op_type), str(o.count)) for o in info.ops_without_rule]
        )
    lines += _sparse_lines(info.sparse_weights)
    if info.subnormals.get("values"):
        lines.append(
            f"subnormal {info.subnormals['values']:,} float values in "
            f"{info.subnormals['weights']} weights: x86 CPUs compute on them slowly (ONNX "
            "Runtime leaves flush-to-zero off); every spa command writes them as 0 "
            "(`spa optimize` runs the cleanup recipe)"
        )
    histogram = info.op_histogram if top_ops is None else info.op_histogram[:top_ops]
    lines.append("ops")
    lines += _table(
        [(op_key(o.domain, o.op_type), str(o.count)) for o in histogram] or [("(none)",)]
    )
    if len(histogram) < len(info.op_histogram):
        lines.append(f"  ... {len(info.op_histogram) - len(histogram)} more op types")
    return "\n".join(lines)
