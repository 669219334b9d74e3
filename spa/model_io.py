"""Loading and saving models safely.

``load_model`` reads the graph and leaves weights stored as external data
memory-mapped (onnx-ir never reads them into RAM until a pass asks), so a
7B-class model can be analysed in a few seconds and a few hundred MB.

``save_model`` writes atomically: everything goes to a temporary folder next to
the destination and is moved into place only once complete, so a failure never
leaves a partial file. It refuses to overwrite the input model or any
external-data file the input references.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from spa.destinations import check_destination, record_input, record_output
from spa.errors import UserError, first_line
from spa.model_check import check_model_proto

__all__ = [
    "EXTERNAL_DATA_THRESHOLD_BYTES",
    "FLOAT_TYPES",
    "copy_model",
    "external_data_files",
    "iter_graph_protos",
    "iter_graphs",
    "load_model",
    "load_proto",
    "node_bodies",
    "proto_digest",
    "proto_stored_bytes",
    "read_array",
    "same_graph",
    "save_model",
    "stored_bytes",
    "unique_value_names",
]

logger = logging.getLogger(__name__)

#: Models whose initializers add up to more than this are saved with their
#: weights in a ``<name>.data`` file next to the model (protobuf caps at 2 GiB).
EXTERNAL_DATA_THRESHOLD_BYTES = 256 * 1024 * 1024

#: The ONNX element types of float weights and values (what counts as a float param).
FLOAT_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE,
})  # fmt: skip


def copy_model(model: ir.Model) -> ir.Model:
    """A deep copy whose external weights still read from the original's folder."""
    copy = ir.from_proto(ir.to_proto(model))
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            ir.external_data.set_base_dir(copy.graph, value.const_value.base_dir)
            break
    return copy


def read_array(tensor: ir.TensorProtocol, dtype: Any = None) -> np.ndarray:
    """A tensor's values as an array (``dtype``: converted).

    An external tensor is memory-mapped by onnx-ir and stays mapped once read,
    so reading every weight of a large model one by one kept all of it resident
    (pruning a 2.4 GB model peaked at 2.7 GB). Its values are copied out and the
    mapping released; the tensor maps its file again if it is read later. Any
    other tensor gives its own array (a converted copy when ``dtype`` is given):
    copy it before changing it.
    """
    array = tensor.numpy()
    if isinstance(tensor, ir.ExternalTensor):
        array = np.array(array, dtype=dtype)
        tensor.release()
        return array
    return array.astype(dtype) if dtype is not None else array


def iter_graphs(model: ir.Model) -> Iterator[ir.Graph]:
    """The main graph and every subgraph (If/Loop/Scan bodies), outermost first."""
    yield model.graph
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.as_graph()
            elif attr.type == ir.AttributeType.GRAPHS:
                yield from attr.as_graphs()


def unique_value_names(model: ir.Model) -> int:
    """Rename values so that no two in the model share a name; returns how many were renamed.

    ONNX asks every value name to be assigned once in the whole model, subgraphs
    included (a body may not reuse an outer name, nor two branches of an ``If``
    each other's). Values a rewrite creates are named per graph (onnx-ir's
    ``val_0``, ``val_1``, ...), so a rewrite inside both branches of an ``If``
    gives each branch a ``val_0``, which ONNX Runtime refuses to load. The main
    graph's inputs and outputs keep their names (they are the model's interface);
    a later duplicate becomes ``<name>__<k>``; unnamed values that something reads
    get a name too.
    """
    seen: set[int] = set()
    used: set[str] = set()
    duplicates: list[ir.Value] = []
    interface = {id(v) for v in (*model.graph.inputs, *model.graph.outputs)}

    def visit(value: ir.Value | None) -> None:
        if value is None or id(value) in seen:
            return
        seen.add(id(value))
        if not value.name and not value.uses() and id(value) not in interface:
            return  # an optional output nothing reads stays unnamed (not computed)
        if value.name and (value.name not in used or id(value) in interface):
            used.add(value.name)
        else:
            duplicates.append(value)

    for value in (*model.graph.inputs, *model.graph.outputs):
        visit(value)
    for graph in iter_graphs(model):
        for value in (*graph.inputs, *graph.initializers.values()):
            visit(value)
        for node in graph:
            for value in node.outputs:
                visit(value)
    for value in duplicates:
        base, index = value.name or "value", 1
        while f"{base}__{index}" in used:
            index += 1
        name = f"{base}__{index}"
        if value.is_initializer() and value.graph is not None:
            graph = value.graph
            graph.initializers.pop(value.name or "", None)
            value.name = name
            if value.const_value is not None:
                value.const_value.name = name
            graph.register_initializer(value)
        else:
            value.name = name
        used.add(name)
    return len(duplicates)


def proto_digest(proto: onnx.ModelProto) -> Any:
    """A blake2b digest (hashlib object, to be extended by the caller) of what a
    model computes and declares: opset imports, functions, nodes, inputs, outputs,
    initializers, sparse initializers and value_info, part by part (a model past
    protobuf's 2 GB is hashed without one serialisation). Weights stored outside
    the proto count by where they are stored."""
    digest = hashlib.blake2b(digest_size=20)
    graph = proto.graph
    for part in (*proto.opset_import, *proto.functions, *graph.node, *graph.input, *graph.output,
                 *graph.initializer, *graph.sparse_initializer, *graph.value_info):  # fmt: skip
        digest.update(part.SerializeToString())
    return digest


def same_graph(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    """Whether two model files hold the same computation: equal nodes (as ONNX text
    without node names; subgraphs included) and equal initializers (name, type,
    shape, bytes). Node names, doc strings, value_info and metadata do not count;
    weights stored outside either file compare by where they are stored, so two
    copies of external weights count as different (never wrongly the same)."""

    def signature(path: str | os.PathLike[str]) -> tuple[Any, ...]:
        graph = load_proto(path).graph
        nodes = tuple(_node_text(node) for node in graph.node)
        weights = tuple(
            sorted(
                (t.name, t.data_type, tuple(t.dims), hashlib.sha256(
                    t.raw_data or t.SerializeToString(deterministic=True)).hexdigest(),
                 tuple((e.key, e.value) for e in t.external_data))
                for t in graph.initializer
            )
        )  # fmt: skip
        return nodes, weights, tuple(graph.input), tuple(graph.output)

    return signature(first) == signature(second)


def _node_text(node: onnx.NodeProto) -> str:
    """A node as ONNX text without its name (a save may name unnamed nodes or spell
    the default domain out; neither changes what it computes)."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name, copy.doc_string = "", ""
    return onnx.printer.to_text(copy)


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file; check the model path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; pass the .onnx file inside it")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty; re-export the model")


def load_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read a ModelProto without its external data, with one-line errors."""
    path = Path(path)
    _check_model_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path}: not a readable ONNX protobuf ({type(error).__name__}); "
            "the file is truncated or not an ONNX model, re-export it"
        ) from None
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.output:
        raise UserError(
            f"{path}: parsed, but holds no ONNX graph (ir_version={proto.ir_version}, "
            f"outputs={len(proto.graph.output)}); the file is not an ONNX model"
        )
    try:
        check_model_proto(proto)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    record_input(path)
    for data_file in _check_external_data(proto, path):
        record_input(data_file)
    return proto


def _external_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in iter_graph_protos(proto.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
    # Tensors embedded with raw data are skipped by the caller.


def node_bodies(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs a node holds in its attributes (If branches, Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def iter_graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph inside it (If/Loop/Scan bodies), outermost first."""
    yield graph
    for node in graph.node:
        for body in node_bodies(node):
            yield from iter_graph_protos(body)


def _external_int(path: Path, tensor: onnx.TensorProto, info: dict[str, str], key: str) -> int:
    text = info.get(key, "0")
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(
            f"{path}: tensor '{tensor.name}' has external-data {key} '{text}', not a "
            "non-negative integer; re-export the model"
        )
    return value


def proto_stored_bytes(path: str | os.PathLike[str], proto: onnx.ModelProto) -> int:
    """Bytes on disk of the model file at ``path`` plus the external-data files that
    ``proto`` (read from it by :func:`load_proto`) names: :func:`stored_bytes` for
    a model not loaded as onnx-ir."""
    path = Path(path)
    return path.stat().st_size + sum(f.stat().st_size for f in _check_external_data(proto, path))


def _check_external_data(proto: onnx.ModelProto, path: Path) -> set[Path]:
    """The resolved external-data files of ``proto``, each checked to exist and be
    long enough for every tensor stored in it."""
    base = path.resolve().parent
    sizes: dict[Path, int] = {}
    for tensor in _external_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(base):
            raise UserError(
                f"{path}: tensor '{tensor.name}' points at external data '{location}' "
                "outside the model's folder; refusing to read it (move the data next to the model)"
            )
        if target not in sizes:
            if not target.is_file():
                raise UserError(
                    f"{path}: external data file '{location}' for tensor '{tensor.name}' "
                    "is missing; copy it next to the model"
                )
            sizes[target] = target.stat().st_size
        offset = _external_int(path, tensor, info, "offset")
        length = _external_int(path, tensor, info, "length")
        end = offset + length
        if end > sizes[target] or offset > sizes[target]:
            raise UserError(
                f"{path}: external data file '{location}' is too short for tensor "
                f"'{tensor.name}' (needs {end} bytes, has {sizes[target]}); it is truncated"
            )
    return set(sizes)


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Load a model as onnx-ir, weights in external data memory-mapped lazily."""
    path = Path(path)
    proto = load_proto(path)
    _check_no_maps(path, proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # onnx-ir raises its own and plain Python errors
        first = first_line(error)
        raise UserError(
            f"{path}: onnx-ir cannot read the graph ({first}); check it with onnx.checker "
            "and re-export the model"
        ) from None
    ir.external_data.set_base_dir(model.graph, str(path.resolve().parent))
    return model


def _holds_map(value_type: onnx.TypeProto) -> bool:
    if value_type.HasField("map_type"):
        return True
    if value_type.HasField("sequence_type"):
        return _holds_map(value_type.sequence_type.elem_type)
    if value_type.HasField("optional_type"):
        return _holds_map(value_type.optional_type.elem_type)
    return False


def _check_no_maps(path: Path, proto: onnx.ModelProto) -> None:
    """One-line error for a map-typed value (onnx-ir, spa's graph library, reads none):
    scikit-learn classifiers converted by skl2onnx return their class probabilities
    as a sequence of maps from a ZipMap node unless told otherwise."""
    for graph in iter_graph_protos(proto.graph):
        for info in (*graph.input, *graph.output, *graph.value_info):
            if _holds_map(info.type):
                raise UserError(
                    f"{path}: value '{info.name}' is a map or a sequence of maps (a ZipMap's "
                    "class probabilities), which spa cannot read; export it as a tensor "
                    "(skl2onnx: options={'zipmap': False}) or remove the ZipMap node"
                )


def external_data_files(model: ir.Model) -> set[Path]:
    """Resolved paths of every external-data file the in-memory model still reads."""
    files: set[Path] = set()
    for graph in iter_graphs(model):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                files.add(Path(tensor.path).resolve())
    return files


def stored_bytes(path: str | os.PathLike[str], model: ir.Model) -> int:
    """Bytes on disk of the model file at ``path`` plus every external-data file
    ``model`` (loaded from it) reads, whatever their names."""
    files = {Path(path).resolve(), *external_data_files(model)}
    return sum(file.stat().st_size for file in files if file.is_file())


def _initializer_bytes(model: ir.Model) -> int:
    total = 0
    for graph in iter_graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def _remove_stale_staging(folder: Path) -> None:
    """Remove staging folders left in ``folder`` by runs that were killed (SIGKILL,
    power loss: no ``finally`` ran). Their names carry the writer's process id; a
    folder whose process no longer exists is stale."""
    for path in folder.glob(".spa-tmp-*-*"):
        pid_text = path.name.split("-")[2]
        if not pid_text.isdigit() or not path.is_dir():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            logger.warning("removed %s, left by an interrupted run (process %s)", path, pid_text)
        except OSError:  # exists, owned by someone else
            continue


@contextlib.contextmanager
def _staging_folder(destination: Path) -> Iterator[Path]:
    _remove_stale_staging(destination.parent)
    try:
        staging = Path(
            tempfile.mkdtemp(prefix=f".spa-tmp-{os.getpid()}-", dir=destination.parent)
        )
    except OSError as error:
        raise UserError(
            f"{destination}: cannot write in '{destination.parent}' ({error.strerror}); "
            "choose another -o"
        ) from None
    try:
        yield staging
    finally:
        # A SIGTERM caught just before this point runs its Python handler (which
        # raises SystemExit) at the next call, possibly inside the removal: then
        # remove again before letting the exit proceed. Later signals wait.
        try:
            with _signals_deferred():
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGTERM, SIGHUP and SIGINT until the block ends (then they arrive)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _check_destination(output: Path, model: ir.Model, protected: set[Path], flag: str) -> Path:
    inputs = protected | external_data_files(model)
    check_destination(output, flag, protected=inputs)
    data_path = output.with_name(output.name + ".data")
    check_destination(data_path, f"{flag} (its external data)", protected=inputs)
    return data_path


def save_model(
    model: ir.Model,
    output: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    external_threshold_bytes: int = EXTERNAL_DATA_THRESHOLD_BYTES,
    flag: str = "-o",
) -> Path:
    """Write ``model`` to ``output`` atomically and return the path written.

    Weights go to ``<output>.data`` when they add up to more than
    ``external_threshold_bytes``. The input model (``input_path``) and every
    external-data file the in-memory model still reads are never overwritten,
    nor any file read inside :func:`spa.destinations.protect_inputs` (``flag``
    names the option in the one-line error).
    """
    output = Path(output).absolute()
    renamed = unique_value_names(model)
    if renamed:
        logger.info("renamed %d values whose names were not unique in the model", renamed)
    protected: set[Path] = set()
    if input_path is not None:
        protected.add(Path(input_path).resolve())
    data_path = _check_destination(output, model, protected, flag)
    use_external = _initializer_bytes(model) > external_threshold_bytes
    with _staging_folder(output) as staging:
        staged_model = staging / output.name
        if use_external:
            ir.save(model, staged_model, external_data=data_path.name, callback=_save_progress())
            os.replace(staging / data_path.name, data_path)
            record_output(data_path)
        else:
            # Re-embed weights so the output does not depend on the input's files.
            ir.save(_embedded_copy(model), staged_model)
        os.replace(staged_model, output)
        record_output(output)
    logger.info("saved %s (%s)", output, "external data" if use_external else "embedded")
    return output


def _save_progress() -> Callable[[ir.TensorProtocol, Any], None] | None:
    """A tqdm bar over the tensors written, when the CLI enabled progress bars."""
    from spa import progress

    if not progress.enabled():
        return None
    from tqdm import tqdm

    bar = tqdm(desc="save", unit="tensor", leave=False, disable=None)

    def advance(tensor: ir.TensorProtocol, info: Any) -> None:
        if bar.total is None:
            bar.total = info.total
        bar.update()

    return advance


def _embedded_copy(model: ir.Model) -> ir.Model:
    """The model with every external tensor read into memory (small models only)."""
    for graph in iter_graphs(model):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
    return model
