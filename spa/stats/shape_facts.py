"""Shapes of every value at concrete input dims, without weight bytes.

:func:`infer_shapes` makes a weightless copy of the graph (each initializer
larger than 8 KiB becomes a graph input of the same type and shape, so no
weight bytes are copied or read), gives every graph input concrete dims
(``shapes`` per input, ``dims`` per symbolic name, else 1) and runs
``onnx.shape_inference.infer_shapes(..., data_prop=True)``. ONNX's inference
does not read external data, but it cannot propagate *values* held in external
tensors either ("Cannot parse data from external tensors"), so small external
tensors (shape constants) are read into the copy when ``base_dir`` is known.
Graphs with ``com.microsoft`` ops also go through ONNX Runtime's symbolic shape
inference (imported only then), which knows the contrib ops.

When the inputs or outputs of weighted ops (``_MEASURED_OPS``) are still unknown
after both — padding computed from the input size, as window attention does
(DaViT, Swin with padding), defeats both inferences — the weightless copy runs
once in ONNX Runtime on zeros (its weights too: shapes do not depend on values
for these graphs) with those values exposed, and their measured shapes fill
the gaps (``method`` says "measured"). Skipped when a shape constant could not
be read (external data without ``base_dir``), ONNX Runtime is missing, or the
zero weights would take more than 2 GiB.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from spa.stats.inspect import human_bytes, iter_graph_protos, tensor_nbytes

__all__ = [
    "SPA_DOMAIN",
    "SPA_MATMULS",
    "Shape",
    "all_nodes",
    "concrete_input_shapes",
    "infer_shapes",
    "known_shape",
]

logger = logging.getLogger(__name__)

#: Initializers up to this size stay in the weightless copy (shape constants).
_KEEP_BYTES = 8 * 1024
#: Largest weights the measured run feeds as zeros (they take that much memory).
_MAX_MEASURED_BYTES = 2 << 30
#: Ops whose unknown input/output shapes are measured in ONNX Runtime.
_MEASURED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "LSTM", "GRU", "RNN"})
_MS = "com.microsoft"
SPA_DOMAIN = "spa"
#: spa's ops with K and N attributes computing ``A @ W`` (docs/formats.md, plugins/README.md).
SPA_MATMULS = frozenset({
    "GroupSparseQuantMatMul", "GroupSparseTileMatMul", "W4A16MatMul", "W4Sparse24MatMul",
})  # fmt: skip

Shape = tuple[int | None, ...]


def known_shape(shapes: Mapping[str, Shape], name: str) -> tuple[int, ...] | None:
    """``shapes[name]`` when every dim is known, else None."""
    shape = shapes.get(name) if name else None
    if shape is None or any(dim is None for dim in shape):
        return None
    return tuple(int(dim) for dim in shape if dim is not None)


def all_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the main graph and its subgraphs."""
    for graph in iter_graph_protos(proto.graph):
        yield from graph.node


def concrete_input_shapes(
    graph: onnx.GraphProto,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Each real graph input's shape: ``shapes[name]``, else symbolic dims from
    ``dims`` by name, else 1."""
    shapes, dims = shapes or {}, dims or {}
    weights = {t.name for t in graph.initializer}
    result: dict[str, tuple[int, ...]] = {}
    for value in graph.input:
        if value.name in weights or not value.type.HasField("tensor_type"):
            continue
        if value.name in shapes:
            result[value.name] = tuple(int(d) for d in shapes[value.name])
            continue
        result[value.name] = tuple(
            int(d.dim_value) if d.HasField("dim_value") else int(dims.get(d.dim_param, 1))
            for d in value.type.tensor_type.shape.dim
        )
    return result


def _read_external(tensor: onnx.TensorProto, base_dir: Path) -> onnx.TensorProto | None:
    info = {entry.key: entry.value for entry in tensor.external_data}
    target = (base_dir / info.get("location", "")).resolve()
    if not target.is_relative_to(base_dir.resolve()) or not target.is_file():
        return None
    with open(target, "rb") as handle:
        handle.seek(int(info.get("offset", 0)))
        data = handle.read(int(info.get("length", tensor_nbytes(tensor))))
    loaded = onnx.TensorProto()
    loaded.name, loaded.data_type = tensor.name, tensor.data_type
    loaded.dims.extend(tensor.dims)
    loaded.raw_data = data
    return loaded


def _weightless_copy(proto: onnx.ModelProto, base_dir: Path | None) -> onnx.ModelProto:
    """The model with large initializers turned into typed graph inputs."""
    copy = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(copy, field, getattr(proto, field))
    copy.opset_import.extend(proto.opset_import)
    copy.functions.extend(proto.functions)
    source, graph = proto.graph, copy.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    weights = {t.name for t in source.initializer}
    graph.input.extend(v for v in source.input if v.name not in weights)
    for tensor in source.initializer:
        kept: onnx.TensorProto | None = None
        if tensor_nbytes(tensor) <= _KEEP_BYTES:
            kept = tensor
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                kept = _read_external(tensor, base_dir) if base_dir is not None else None
        if kept is not None:
            graph.initializer.append(kept)
        else:
            shape = [int(d) for d in tensor.dims]
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, shape)
            )
    return copy


#: com.microsoft ops ``A[..., K] x B[K, N] -> Y[..., N]`` with Y of A's float type that
#: neither ONNX inference nor ORT's symbolic tool knows: spa's int8-dynamic writes them;
#: every value after the first one was left without a shape, so the MACs of the layers
#: after it went uncounted (a dynamic-INT8 MiniLM read 14% of its MACs at 256 tokens).
MS_MATMULS = frozenset({"DynamicQuantizeMatMul"})


def _stand_in_n(node: onnx.NodeProto, dims: Mapping[str, list[int]]) -> int | None:
    """N of a matmul op :func:`_shape_stand_ins` replaces, or None for any other node."""
    if not node.output or not node.input:
        return None
    if node.domain == SPA_DOMAIN and node.op_type in SPA_MATMULS:
        return next((attribute.i for attribute in node.attribute if attribute.name == "N"), 0)
    if node.domain == "com.microsoft" and node.op_type in MS_MATMULS and len(node.input) > 1:
        weight = dims.get(node.input[1])
        return weight[-1] if weight is not None and len(weight) == 2 and weight[-1] > 0 else None
    return None


def _shape_stand_ins(graph: onnx.GraphProto) -> None:
    """Each of spa's matmul ops and the com.microsoft ones of :data:`MS_MATMULS` with a 2-D
    constant weight (``A[..., K] -> Y[..., N]``, ops neither ONNX nor ORT's symbolic tool
    infers) replaced, in the weightless copy, by standard ops giving Y its shape and A's
    type: ``Expand(Slice(A, [0], [1], [-1]), Concat(Slice(Shape(A), [0], [-1]), [N]))``.
    ONNX and ORT symbolic inference then continue past it, and ORT can run the copy to
    measure what they leave open."""
    nodes: list[onnx.NodeProto] = []
    make, constant = onnx.helper.make_node, onnx.numpy_helper.from_array
    dims = {t.name: [int(d) for d in t.dims] for t in graph.initializer}
    dims.update(
        (v.name, [int(d.dim_value) for d in v.type.tensor_type.shape.dim])
        for v in graph.input if v.type.tensor_type.HasField("shape")
    )  # fmt: skip
    for node in graph.node:
        n = _stand_in_n(node, dims)
        if n is None:
            recurrent = _recurrent_stand_in(node, graph)
            nodes += [node] if recurrent is None else recurrent
            continue
        a, y = node.input[0], node.output[0]
        name = f"{y}__spa_shape"
        for suffix, values in (("zero", [0]), ("one", [1]), ("last", [-1]), ("n", [n])):
            graph.initializer.append(constant(np.array(values, np.int64), f"{name}_{suffix}"))
        nodes += [
            make("Shape", [a], [f"{name}_a"]),
            make("Slice", [f"{name}_a", f"{name}_zero", f"{name}_last"], [f"{name}_lead"]),
            make("Concat", [f"{name}_lead", f"{name}_n"], [f"{name}_dims"], axis=0),
            make("Slice", [a, f"{name}_zero", f"{name}_one", f"{name}_last"], [f"{name}_first"]),
            make("Expand", [f"{name}_first", f"{name}_dims"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)


def _recurrent_stand_in(node: onnx.NodeProto, graph: onnx.GraphProto) -> list[onnx.NodeProto] | None:
    """Standard ops giving a com.microsoft ``DynamicQuantizeLSTM`` (spa's and ORT's
    int8-dynamic LSTM, ``X[seq, batch, input]``) its outputs' shapes and X's type:
    ``Y[seq, dirs, batch, hidden]``, ``Y_h``/``Y_c[dirs, batch, hidden]``; None for any
    other node."""
    if node.domain != "com.microsoft" or node.op_type != "DynamicQuantizeLSTM" or not node.input:
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    hidden = int(attributes.get("hidden_size", 0))
    dirs = 2 if attributes.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
    if hidden <= 0:
        return None
    make, constant = onnx.helper.make_node, onnx.numpy_helper.from_array
    x, name = node.input[0], f"{node.output[0] or node.name}__spa_shape"
    for suffix, values in (("zero", [0]), ("one", [1]), ("two", [2]), ("dirs", [dirs]),
                           ("hidden", [hidden]), ("ones", [1, 1, 1]), ("zeros", [0, 0, 0]),
                           ("rank4", [1, 1, 1, 1])):  # fmt: skip
        graph.initializer.append(constant(np.array(values, np.int64), f"{name}_{suffix}"))
    nodes = [
        make("Shape", [x], [f"{name}_x"]),
        make("Slice", [f"{name}_x", f"{name}_zero", f"{name}_one"], [f"{name}_seq"]),
        make("Slice", [f"{name}_x", f"{name}_one", f"{name}_two"], [f"{name}_batch"]),
        make("Concat", [f"{name}_{part}" for part in ("seq", "dirs", "batch", "hidden")],
             [f"{name}_ydims"], axis=0),
        make("Concat", [f"{name}_dirs", f"{name}_batch", f"{name}_hidden"], [f"{name}_hdims"], axis=0),
        make("Slice", [x, f"{name}_zeros", f"{name}_ones"], [f"{name}_first"]),
        make("Reshape", [f"{name}_first", f"{name}_rank4"], [f"{name}_first4"]),
    ]
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if outputs[0]:
        nodes.append(make("Expand", [f"{name}_first4", f"{name}_ydims"], [outputs[0]]))
    for output in outputs[1:3]:
        if output:
            nodes.append(make("Expand", [f"{name}_first", f"{name}_hdims"], [output]))
    return nodes


def _set_input_dims(graph: onnx.GraphProto, concrete: Mapping[str, tuple[int, ...]]) -> None:
    for value in graph.input:
        if value.name not in concrete:
            continue
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for size in concrete[value.name]:
            shape.dim.add().dim_value = size


def _value_shapes(proto: onnx.ModelProto) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for graph in iter_graph_protos(proto.graph):
        for tensor in graph.initializer:
            shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
        for value in (*graph.input, *graph.value_info, *graph.output):
            tensor_type = value.type.tensor_type
            if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
                continue
            shapes[value.name] = tuple(
                int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    return shapes


def _ort_symbolic(proto: onnx.ModelProto) -> dict[str, Shape]:
    try:
        from spa.ort import symbolic_shape_inference

        inferred = symbolic_shape_inference(proto)
    except Exception as error:  # the tool raises bare Exceptions on ops it lacks
        # Info, not a warning: ONNX inference still runs, and a node whose MACs stay
        # unknown is listed in MacCount.unknown (ORT's tool lacks e.g. DynamicQuantizeMatMul).
        logger.info("ORT symbolic shape inference failed (%s); contrib shapes unknown", error)
        return {}
    return _value_shapes(inferred) if inferred is not None else {}


def infer_shapes(
    proto: onnx.ModelProto,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | Path | None = None,
) -> tuple[dict[str, Shape], str]:
    """Shapes of every value at concrete input dims, and which inference ran.

    ``proto`` is not modified and none of its weight bytes are copied.
    """
    copy = _weightless_copy(proto, Path(base_dir) if base_dir is not None else None)
    _shape_stand_ins(copy.graph)
    _set_input_dims(copy.graph, concrete_input_shapes(copy.graph, shapes, dims))
    method = "onnx"
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as error:
        logger.warning("ONNX shape inference failed (%s); counting with declared shapes", error)
        inferred, method = copy, "declared shapes only"
    found = _value_shapes(inferred)
    contrib = any(node.domain == _MS for node in all_nodes(copy))
    if contrib or _some_dims_unknown(copy, found):
        # ORT's symbolic inference knows contrib ops and solves dims ONNX leaves open
        # (position ids sliced to a run-time length, say), so those nodes get their MACs.
        for name, shape in _ort_symbolic(inferred).items():
            if known_shape(found, name) is None:
                found[name] = shape
        method += " + onnxruntime symbolic"
    missing = [
        name
        for node in copy.graph.node
        if node.op_type in _MEASURED_OPS and node.domain in ("", "ai.onnx")
        for name in (*node.input, *node.output)
        if name and known_shape(found, name) is None
    ]
    if missing:
        measured = _measured_shapes(copy, list(dict.fromkeys(missing)), proto)
        if measured:
            found.update(measured)
            method += " + measured in onnxruntime"
    return found, method


def _measured_shapes(
    copy: onnx.ModelProto, names: list[str], proto: onnx.ModelProto
) -> dict[str, Shape]:
    """The shapes of ``names`` from one ONNX Runtime run of the weightless copy on zeros
    (empty when it cannot run: see the module docstring)."""
    import numpy as np

    small = {t.name for t in proto.graph.initializer if tensor_nbytes(t) <= _KEEP_BYTES}
    if any(value.name in small for value in copy.graph.input):
        return {}  # a shape constant left unread: zeros would give wrong shapes
    zeros = sum(tensor_nbytes(t) for t in proto.graph.initializer if t.name not in small)
    if zeros > _MAX_MEASURED_BYTES:
        logger.info("shapes of %d values left unknown: measuring them would feed %s of zero weights",
                    len(names), human_bytes(zeros))  # fmt: skip
        return {}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(copy)
    present = {value.name for value in exposed.graph.output}
    exposed.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(name) for name in names if name not in present
    )
    feeds = {}
    for value in exposed.graph.input:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        feeds[value.name] = np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    try:
        from spa.ort import create_session, import_onnxruntime

        session = create_session(exposed.SerializeToString(), optimization="basic")
        quiet = import_onnxruntime().RunOptions()
        quiet.log_severity_level = 4  # a failure is logged below, not printed by ORT
        results = session.run(names, feeds, quiet)
    except Exception as error:  # any failure leaves the shapes unknown, as before
        logger.info("measuring shapes in ONNX Runtime failed (%s)", str(error).splitlines()[0])
        return {}
    return {
        name: tuple(int(dim) for dim in np.shape(result))
        for name, result in zip(names, results, strict=True)
        if isinstance(result, np.ndarray)
    }


def _some_dims_unknown(proto: onnx.ModelProto, shapes: Mapping[str, Shape]) -> bool:
    """Any node output of the main graph whose shape ONNX inference left open."""
    return any(
        known_shape(shapes, output) is None
        for node in proto.graph.node
        for output in node.output
        if output
    )
