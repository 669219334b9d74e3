"""Running a very large graph in ONNX Runtime as a chain of smaller sessions.

Two costs of running a whole model grow with it: ONNX Runtime's session
creation grows faster than the graph (onnxruntime 1.32: one session of a
10^4-node chain costs 1.0 s of CPU, of a 10^5-node chain 54.6 s;
``models/bench_ort_sessions.py``), and a session holds all the weights in
memory (a 2.4 GB model costs 2.4 GB to verify). A :class:`SegmentedSession`
cuts the main graph, in its (topological) node order, into segments of at most
``segment_nodes`` nodes and ``segment_bytes`` bytes of weights, makes one ORT
session per segment, and runs them one after the other, each fed the values
the earlier ones computed. :meth:`SegmentedSession.run_many` runs every feed
through one segment before opening the next and closes each segment after it,
so only one segment's weights are in ONNX Runtime at a time. The result is the
same computation as the whole graph: only ORT's graph optimizations can no
longer fuse across a cut (differences at float rounding level, which the
verification tolerances cover).

A value crosses a cut when a later segment reads it, directly or from inside
an If/Loop/Scan body (outer-scope names count as reads of the node that owns
the body). Each segment holds the initializers it reads. Segment sessions are
made when first run, because the types of the values crossing a cut are known
from the arrays of that run; graphs the chain cannot express (nodes out of
topological order, sparse initializers, an output that no node computes, a
non-tensor value crossing a cut) run as one session.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.model_io import node_bodies

__all__ = [
    "SEGMENT_ABOVE",
    "SEGMENT_ABOVE_BYTES",
    "SEGMENT_BYTES",
    "SEGMENT_NODES",
    "SegmentedSession",
    "maybe_segmented",
    "open_session",
]

#: Graphs with more main-graph nodes than this run as a chain of segments.
SEGMENT_ABOVE = 16384
#: ... and so do graphs with more bytes of weights than this.
SEGMENT_ABOVE_BYTES = 512 << 20
#: Most nodes in one segment.
SEGMENT_NODES = 4096
#: Most bytes of weights in one segment (a larger single tensor gets a segment of its own).
SEGMENT_BYTES = 256 << 20
#: :func:`open_session` reads the graph of model files at least this large (a
#: graph of SEGMENT_ABOVE nodes takes more).
_PARSE_ABOVE = 256 << 10


@dataclasses.dataclass(frozen=True)
class _Port:
    """What ``session.get_inputs()`` / ``get_outputs()`` return: name, shape and type."""

    name: str
    shape: list[int | str | None]
    type: str


@dataclasses.dataclass
class _Segment:
    nodes: list[onnx.NodeProto]
    inputs: list[str]  # values computed by earlier segments or graph inputs
    initializers: list[onnx.TensorProto]
    outputs: list[str]
    session: Any = None


def maybe_segmented(
    proto: onnx.ModelProto,
    factory: Callable[..., Any],
    folder: Path,
    *,
    above: int = SEGMENT_ABOVE,
    above_bytes: int = SEGMENT_ABOVE_BYTES,
    segment_nodes: int = SEGMENT_NODES,
    segment_bytes: int = SEGMENT_BYTES,
) -> Any | None:
    """A :class:`SegmentedSession` on ``proto`` when its main graph has more than
    ``above`` nodes or ``above_bytes`` bytes of weights and can be chained; else
    None (make one session)."""
    sizes = {tensor.name: _tensor_bytes(tensor) for tensor in proto.graph.initializer}
    if len(proto.graph.node) <= above and sum(sizes.values()) <= above_bytes:
        return None
    segments = _plan(proto.graph, segment_nodes, segment_bytes, sizes)
    if segments is None:
        return None
    return SegmentedSession(proto, segments, factory, folder)


def open_session(path: str | os.PathLike[str], factory: Callable[..., Any] | None = None) -> Any:
    """A session on the model file at ``path`` (made by ``factory``, default
    :func:`spa.ort.create_session`): a :class:`SegmentedSession` when the graph is
    very large, else one session on the file."""
    from spa.ort import create_session

    make = factory or create_session
    path = Path(path)
    if path.stat().st_size >= _PARSE_ABOVE:
        proto = onnx.load(str(path), load_external_data=False)
        chained = maybe_segmented(proto, make, path.parent)
        if chained is not None:
            return chained
    return make(path)


class SegmentedSession:
    """Runs like an ORT InferenceSession (``run``, ``get_inputs``, ``get_outputs``)."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        segments: list[_Segment],
        factory: Callable[..., Any],
        folder: Path,
    ) -> None:
        self._proto = proto
        self._segments = segments
        self._factory = factory
        self._folder = folder
        self._graph_inputs = {value.name: value for value in proto.graph.input}
        initialized = {tensor.name for tensor in proto.graph.initializer}
        self._inputs = [
            _port(value) for value in proto.graph.input if value.name not in initialized
        ]
        self._outputs = [_port(value) for value in proto.graph.output]
        # The last segment reading each value: it is dropped after that segment has run.
        self._last_reader: dict[str, int] = {}
        for index, segment in enumerate(segments):
            for name in segment.inputs:
                self._last_reader[name] = index

    @property
    def segments(self) -> int:
        return len(self._segments)

    def get_inputs(self) -> list[_Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Port]:
        return list(self._outputs)

    def run(
        self, names: Sequence[str] | None, feeds: Mapping[str, Any], options: Any = None
    ) -> list[Any]:
        """One feed through every segment; the segment sessions stay open."""
        return self.run_many(names, [feeds], options, release=False)[0]

    def run_many(
        self,
        names: Sequence[str] | None,
        feeds: Sequence[Mapping[str, Any]],
        options: Any = None,
        *,
        release: bool = True,
        progress: Callable[[], None] | None = None,
    ) -> list[list[Any]]:
        """Every feed through each segment in turn; with ``release`` each segment's
        session is closed once all feeds have passed it (one segment's weights in
        memory at a time). ``progress`` is called after each segment."""
        wanted = list(names) if names else [port.name for port in self._outputs]
        keep = set(wanted)
        values: list[dict[str, Any]] = [dict(feed) for feed in feeds]
        for index, segment in enumerate(self._segments):
            for known in values:
                session = segment.session or self._open(segment, known)
                inputs = {name: known[name] for name in segment.inputs if name in known}
                results = session.run(segment.outputs, inputs, options)
                known.update(zip(segment.outputs, results, strict=True))
                for name in segment.inputs:
                    if self._last_reader.get(name) == index and name not in keep:
                        known.pop(name, None)
            if release:
                segment.session = None
            if progress is not None:
                progress()
        return [[known[name] for name in wanted] for known in values]

    def _open(self, segment: _Segment, values: Mapping[str, Any]) -> Any:
        inputs = []
        for name in segment.inputs:
            if name in self._graph_inputs:
                inputs.append(self._graph_inputs[name])
                continue
            value = values.get(name)
            if not isinstance(value, np.ndarray):
                raise RuntimeError(
                    f"value '{name}' crossing a segment cut is a {type(value).__name__}, "
                    "not a tensor"
                )
            element = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            inputs.append(onnx.helper.make_tensor_value_info(name, element, None))
        graph = onnx.helper.make_graph(
            segment.nodes,
            self._proto.graph.name or "segment",
            inputs,
            [onnx.helper.make_empty_tensor_value_info(name) for name in segment.outputs],
            segment.initializers,
        )
        model = onnx.ModelProto()
        model.ir_version = self._proto.ir_version
        model.opset_import.extend(self._proto.opset_import)
        model.functions.extend(self._proto.functions)
        model.graph.CopyFrom(graph)
        segment.session = self._factory(model.SerializeToString(), external_folder=self._folder)
        return segment.session


def _port(value: onnx.ValueInfoProto) -> _Port:
    tensor = value.type.tensor_type
    shape: list[int | str | None] = []
    if tensor.HasField("shape"):
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    return _Port(value.name, shape, _ort_type(tensor.elem_type))


def _ort_type(element: int) -> str:
    """ONNX Runtime's name of a tensor type: ``tensor(float)``, ``tensor(int64)``."""
    if not element:
        return "tensor(undefined)"
    try:
        name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(element)).name
    except (KeyError, TypeError, ValueError):
        return f"tensor({onnx.helper.tensor_dtype_to_string(element)})"
    return f"tensor({ {'float32': 'float', 'float64': 'double'}.get(name, name) })"


def _body_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a body reads that it does not define itself (its outer-scope references)."""
    defined = {value.name for value in graph.input}
    defined.update(tensor.name for tensor in graph.initializer)
    reads: set[str] = set()
    for node in graph.node:
        reads.update(name for name in node.input if name)
        for body in node_bodies(node):
            reads |= _body_reads(body)
        defined.update(node.output)
    return reads - defined


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, embedded or external (without reading it)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        for entry in tensor.external_data:
            if entry.key == "length" and entry.value.isdigit():
                return int(entry.value)
    elif tensor.raw_data:
        return len(tensor.raw_data)
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    try:
        size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        size = 4
    return count * size


def _cuts(
    reads: Sequence[Sequence[str]], sizes: Mapping[str, int], most_nodes: int, most_bytes: int
) -> list[int]:
    """Node indices where segments start (and the node count at the end): a segment
    ends before the node that would take it past ``most_nodes`` nodes or past
    ``most_bytes`` bytes of the weights its nodes read."""
    bounds = [0]
    held: set[str] = set()
    weight = 0
    for index, names in enumerate(reads):
        new = [name for name in names if name in sizes and name not in held]
        extra = sum(sizes[name] for name in new)
        count = index - bounds[-1]
        if count and (count >= most_nodes or weight + extra > most_bytes):
            bounds.append(index)
            held, weight = set(), 0
            new = [name for name in names if name in sizes]
            extra = sum(sizes[name] for name in new)
        held.update(new)
        weight += extra
    bounds.append(len(reads))
    return bounds


def _plan(
    graph: onnx.GraphProto, segment_nodes: int, segment_bytes: int, sizes: Mapping[str, int]
) -> list[_Segment] | None:
    """The segments of ``graph``, or None where a chain cannot express it."""
    if graph.sparse_initializer:
        return None
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    graph_inputs = {value.name for value in graph.input}
    produced_by: dict[str, int] = {}
    reads: list[list[str]] = []
    for index, node in enumerate(graph.node):
        names = [name for name in node.input if name]
        for body in node_bodies(node):
            names.extend(sorted(_body_reads(body)))
        for name in names:
            known = name in produced_by or name in graph_inputs or name in initializers
            if not known and any(name in other.output for other in graph.node[index:]):
                return None  # not in topological order
        reads.append(list(dict.fromkeys(names)))
        for name in node.output:
            if name:
                produced_by[name] = index
    outputs = [value.name for value in graph.output]
    if any(name not in produced_by for name in outputs):
        return None  # an output that is an input or an initializer
    count = len(graph.node)
    bounds = _cuts(reads, sizes, segment_nodes, segment_bytes)
    pieces = len(bounds) - 1
    if pieces < 2:
        return None
    segment_of = [0] * count
    for piece in range(pieces):
        for index in range(bounds[piece], bounds[piece + 1]):
            segment_of[index] = piece
    # Which segments read each value computed in the graph.
    readers: dict[str, set[int]] = {}
    for index, names in enumerate(reads):
        for name in names:
            readers.setdefault(name, set()).add(segment_of[index])
    graph_outputs = set(outputs)
    segments = []
    for piece in range(pieces):
        nodes = list(graph.node[bounds[piece] : bounds[piece + 1]])
        own = {name for node in nodes for name in node.output if name}
        needed = dict.fromkeys(
            name for index in range(bounds[piece], bounds[piece + 1]) for name in reads[index]
        )
        inputs = [name for name in needed if name not in own and name not in initializers]
        tensors = [initializers[name] for name in needed if name in initializers]
        # An initializer that is also a graph input may be fed: keep it as an input too.
        inputs += [tensor.name for tensor in tensors if tensor.name in graph_inputs]
        results = [
            name
            for node in nodes
            for name in node.output
            if name and (name in graph_outputs or any(r > piece for r in readers.get(name, ())))
        ]
        segments.append(_Segment(nodes, list(dict.fromkeys(inputs)), tensors, results))
    return segments
