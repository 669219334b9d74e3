"""A corpus of hostile model files: each case is a folder's worth of bytes.

Classes: truncations of a valid file at many points (model and external
data), seeded byte flips, protobuf field mutations (tensor bytes vs shape,
dims, dtypes, external-data offset/length/location, attributes, graph
structure), deep nesting, and files that are not models at all. A case says
whether it is certainly invalid (``invalid=True``) or may happen to still be a
valid model (``invalid=None``: byte flips can land in a weight).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Case", "build_corpus", "write_case"]

MODEL = "model.onnx"
DATA = "model.data"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, bytes]
    invalid: bool | None = True


def write_case(case: Case, folder: Path) -> Path:
    """Write the case's files in ``folder``; return the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    return folder / MODEL


def base_model() -> onnx.ModelProto:
    """X[N,16] -> MatMul -> Add -> Relu -> MatMul -> Y[N,16]; seeded weights."""
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        base (float[N, 16] X) => (float[N, 16] Y) {
            H0 = MatMul(X, W1)
            H1 = Add(H0, B1)
            H2 = Relu(H1)
            Y = MatMul(H2, W2)
        }
        """
    )
    for name, shape in (("W1", (16, 32)), ("B1", (32,)), ("W2", (32, 16))):
        array = rng.standard_normal(shape).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    return model


def conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        conv (float[1, 4, 8, 8] X) => (float[1, 8, 8, 8] Y) {
            C = Conv <group: int = 1, pads: ints = [1, 1, 1, 1]> (X, W, B)
            Y = Relu(C)
        }
        """
    )
    for name, shape in (("W", (8, 4, 3, 3)), ("B", (8,))):
        array = rng.standard_normal(shape).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    return model


def _external(model: onnx.ModelProto) -> dict[str, bytes]:
    """The model's bytes with every initializer in model.data (offsets in order)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    data = bytearray()
    for tensor in model.graph.initializer:
        raw = numpy_helper.to_array(tensor).tobytes()
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", DATA), ("offset", str(len(data))), ("length", str(len(raw)))):
            tensor.external_data.add(key=key, value=value)
        data += raw
    return {MODEL: model.SerializeToString(), DATA: bytes(data)}


def _mutate(
    name: str, edit: Callable[[onnx.ModelProto], None], base: Callable[[], onnx.ModelProto] = base_model
) -> Case:
    model = base()
    edit(model)
    return Case(name, {MODEL: model.SerializeToString()})


def _mutate_external(name: str, key: str, value: str, tensor: int = 0) -> Case:
    files = _external(base_model())
    model = onnx.ModelProto.FromString(files[MODEL])
    entries = model.graph.initializer[tensor].external_data
    for entry in entries:
        if entry.key == key:
            entry.value = value
            break
    else:
        entries.add(key=key, value=value)
    return Case(name, {MODEL: model.SerializeToString(), DATA: files[DATA]})


def _truncations() -> Iterator[Case]:
    for label, model in (("mlp", base_model()), ("conv", conv_model())):
        data = model.SerializeToString()
        for index, cut in enumerate(np.linspace(1, len(data) - 1, 45, dtype=int)):
            yield Case(f"truncate-{label}-{index:02d}-at-{cut}", {MODEL: data[:cut]})
    files = _external(base_model())
    for index, cut in enumerate(np.linspace(0, len(files[DATA]) - 1, 12, dtype=int)):
        yield Case(f"truncate-data-{index:02d}-at-{cut}", {**files, DATA: files[DATA][:cut]})


def _byte_flips() -> Iterator[Case]:
    rng = random.Random(15)
    data = base_model().SerializeToString()
    header = 160  # flips in the graph structure, before the weights' raw bytes
    for index in range(40):
        mutated = bytearray(data)
        position = rng.randrange(min(header, len(data)))
        mutated[position] ^= 1 << rng.randrange(8)
        yield Case(f"flip-{index:02d}-at-{position}", {MODEL: bytes(mutated)}, invalid=None)


def _set_dims(dims: list[int]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        del model.graph.initializer[0].dims[:]
        model.graph.initializer[0].dims.extend(dims)

    return edit


def _tensor_cases() -> Iterator[Case]:
    def short_raw(model: onnx.ModelProto) -> None:
        model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]

    def long_raw(model: onnx.ModelProto) -> None:
        model.graph.initializer[0].raw_data += b"\0" * 8

    def float_data(count: int) -> Callable[[onnx.ModelProto], None]:
        def edit(model: onnx.ModelProto) -> None:
            tensor = model.graph.initializer[1]
            tensor.ClearField("raw_data")
            tensor.float_data.extend([0.5] * count)

        return edit

    def dtype(value: int) -> Callable[[onnx.ModelProto], None]:
        def edit(model: onnx.ModelProto) -> None:
            model.graph.initializer[0].data_type = value

        return edit

    def no_data(model: onnx.ModelProto) -> None:
        model.graph.initializer[2].ClearField("raw_data")

    yield _mutate("raw-data-short", short_raw)
    yield _mutate("raw-data-long", long_raw)
    for count in (0, 1, 31, 33, 64):
        yield _mutate(f"float-data-{count}-for-32", float_data(count))
    for value in (0, 17 + 100, 999, -1 & 0x7FFFFFFF, TensorProto.STRING, TensorProto.DOUBLE):
        yield _mutate(f"dtype-{value}", dtype(value))
    yield _mutate("no-data", no_data)
    for dims in ([-1, 32], [16, -32], [0, 32], [16, 0], [2**31, 2**31], [2**62, 4], [16, 32, 1, 0],
                 [512], [16, 16], [], [1, 1, 1, 1, 1, 1, 1, 1, 16, 33]):  # fmt: skip
        case = _mutate(f"dims-{'x'.join(map(str, dims)) or 'scalar'}", _set_dims(dims))
        # [512] holds W1's bytes exactly; only running the model shows MatMul's shapes clash
        yield dataclasses.replace(case, invalid=None) if dims == [512] else case


def _external_cases() -> Iterator[Case]:
    for key, value in (
        ("offset", "-8"), ("offset", "abc"), ("offset", "1e3"), ("offset", "99999999"),
        ("offset", ""), ("offset", "0x10"), ("length", "-1"), ("length", "zz"),
        ("length", "99999999"), ("length", "4"), ("length", "4096"), ("location", "../model.data"),
        ("location", "/etc/passwd"), ("location", "missing.data"), ("location", ""),
        ("location", "model.onnx"), ("checksum", "nope"),
    ):  # fmt: skip
        case = _mutate_external(f"external-{key}-{value or 'empty'}", key, value)
        yield dataclasses.replace(case, invalid=None) if key == "checksum" else case
    files = _external(base_model())
    yield Case("external-data-missing", {MODEL: files[MODEL]})
    yield Case("external-data-empty", {MODEL: files[MODEL], DATA: b""})


def _attribute_cases() -> Iterator[Case]:
    def conv_attr(name: str, **fields: object) -> Callable[[onnx.ModelProto], None]:
        def edit(model: onnx.ModelProto) -> None:
            node = model.graph.node[0]
            kept = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(helper.make_attribute(name, fields["value"]))

        return edit

    # Attribute *values* that only running the model rejects (group not dividing the
    # channels, zero strides, pads of the wrong length) are invalid=None: a command
    # that does not run the model (prune with nothing to prune) may exit 0 on them.
    for value in (0, -1, 3, 8, 1.5, "two", [1, 1]):
        case = _mutate(f"conv-group-{value}", conv_attr("group", value=value), conv_model)
        yield dataclasses.replace(case, invalid=None) if value in (3, 8) else case
    for value in ([0, 0], [-1, 1], 2.0, "x", [1, 1, 1, 1, 1]):
        case = _mutate(f"conv-strides-{value}", conv_attr("strides", value=value), conv_model)
        yield dataclasses.replace(case, invalid=None) if isinstance(value, list) else case
    for value in ([1], [-1, -1, -1, -1], "same"):
        case = _mutate(f"conv-pads-{value}", conv_attr("pads", value=value), conv_model)
        yield dataclasses.replace(case, invalid=None) if isinstance(value, list) else case

    def op_type(value: str) -> Callable[[onnx.ModelProto], None]:
        def edit(model: onnx.ModelProto) -> None:
            model.graph.node[2].op_type = value

        return edit

    for value in ("", "Frobnicate", "relu", "If", "Loop"):
        yield _mutate(f"op-type-{value or 'empty'}", op_type(value))


def _structure_cases() -> Iterator[Case]:
    def rename_input(node: int, slot: int, value: str) -> Callable[[onnx.ModelProto], None]:
        def edit(model: onnx.ModelProto) -> None:
            model.graph.node[node].input[slot] = value

        return edit

    def rename_output(node: int, value: str) -> Callable[[onnx.ModelProto], None]:
        def edit(model: onnx.ModelProto) -> None:
            model.graph.node[node].output[0] = value

        return edit

    def edit_graph(action: str) -> Callable[[onnx.ModelProto], None]:
        def edit(model: onnx.ModelProto) -> None:
            graph = model.graph
            if action == "no-nodes":
                del graph.node[:]
            elif action == "no-outputs":
                del graph.output[:]
            elif action == "no-inputs":
                del graph.input[:]
            elif action == "reverse":
                nodes = list(graph.node)[::-1]
                del graph.node[:]
                graph.node.extend(nodes)
            elif action == "duplicate-initializer":
                graph.initializer.append(graph.initializer[0])
            elif action == "duplicate-node":
                graph.node.append(graph.node[0])
            elif action == "output-is-input":
                graph.output[0].name = "X"
            elif action == "no-opset":
                del model.opset_import[:]
            elif action == "opset-0":
                model.opset_import[0].version = 0
            elif action == "opset-999":
                model.opset_import[0].version = 999
            elif action == "ir-version-0":
                model.ir_version = 0
            elif action == "input-negative-dim":
                graph.input[0].type.tensor_type.shape.dim[1].dim_value = -16
            elif action == "input-dtype-999":
                graph.input[0].type.tensor_type.elem_type = 999
            elif action == "node-no-outputs":
                del graph.node[1].output[:]

        return edit

    yield _mutate("cycle", rename_input(0, 0, "H2"))
    yield _mutate("self-loop", rename_input(2, 0, "H2"))
    yield _mutate("undefined-input", rename_input(1, 1, "nowhere"))
    yield _mutate("duplicate-output", rename_output(1, "H0"))
    yield _mutate("output-shadows-initializer", rename_output(0, "W2"))
    yield _mutate("output-shadows-input", rename_output(0, "X"))
    for action in ("no-nodes", "no-outputs", "no-inputs", "reverse", "duplicate-initializer",
                   "duplicate-node", "output-is-input", "no-opset", "opset-0", "opset-999",
                   "ir-version-0", "input-negative-dim", "input-dtype-999", "node-no-outputs"):  # fmt: skip
        valid_ish = action in ("reverse", "output-is-input", "no-opset")
        case = _mutate(f"graph-{action}", edit_graph(action))
        yield dataclasses.replace(case, invalid=None if valid_ish else True)


def _nested(depth: int, broken: bool) -> Case:
    """Y = If(c) { If(c) { ... Identity(X) } } ``depth`` levels deep."""
    inner = helper.make_graph(
        [helper.make_node("Identity", ["X" if not broken else "missing"], ["Z0"])],
        "level0", [], [helper.make_tensor_value_info("Z0", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    for level in range(1, depth + 1):
        leaf = helper.make_graph(
            [helper.make_node("Identity", ["X"], [f"E{level}"])], f"else{level}", [],
            [helper.make_tensor_value_info(f"E{level}", TensorProto.FLOAT, [2])],
        )  # fmt: skip
        node = helper.make_node("If", ["C"], [f"Z{level}"], then_branch=inner, else_branch=leaf)
        inner = helper.make_graph(
            [node], f"level{level}", [], [helper.make_tensor_value_info(f"Z{level}", TensorProto.FLOAT, [2])]
        )  # fmt: skip
    graph = helper.make_graph(
        list(inner.node), "nested",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("C", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(f"Z{depth}", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return Case(f"nested-{depth}{'-broken' if broken else ''}", {MODEL: model.SerializeToString()},
                invalid=True if broken else None)  # fmt: skip


def _not_models() -> Iterator[Case]:
    rng = np.random.default_rng(3)
    yield Case("empty-file", {MODEL: b""})
    yield Case("text-file", {MODEL: b"this is not a model\n"})
    yield Case("json-file", {MODEL: b'{"graph": {}}'})
    yield Case("random-bytes", {MODEL: rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()})
    yield Case("zeros", {MODEL: bytes(1024)})
    yield Case("ones", {MODEL: b"\xff" * 1024})
    yield Case("model-as-data", {MODEL: _external(base_model())[DATA]})


def build_corpus() -> list[Case]:
    """Every case, in a fixed order (names are unique)."""
    cases = [
        *_truncations(), *_byte_flips(), *_tensor_cases(), *_external_cases(),
        *_attribute_cases(), *_structure_cases(), *_not_models(),
        *(_nested(depth, broken) for depth in (2, 8, 14, 20) for broken in (False, True)),
    ]  # fmt: skip
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
