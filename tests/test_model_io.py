"""Load/save safety: lazy external data, atomic writes, inputs never overwritten."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from spa.errors import UserError
from spa.model_io import external_data_files, load_model, load_proto, save_model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_external_weights_stay_memory_mapped(external_mlp_path: Path) -> None:
    model = load_model(external_mlp_path)
    weight = model.graph.initializers["W1"].const_value
    assert isinstance(weight, ir.ExternalTensor)
    assert external_data_files(model) == {(external_mlp_path.parent / "mlp.data").resolve()}


def test_save_embeds_small_models_and_runs(external_mlp_path: Path, tmp_path: Path) -> None:
    out = save_model(
        load_model(external_mlp_path), tmp_path / "copy.onnx", input_path=external_mlp_path
    )
    assert not (tmp_path / "copy.onnx.data").exists()
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    want = ort.InferenceSession(str(external_mlp_path)).run(None, {"X": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, want)


def test_save_large_models_with_external_data(mlp_path: Path, tmp_path: Path) -> None:
    out = save_model(load_model(mlp_path), tmp_path / "big.onnx", external_threshold_bytes=0)
    assert (tmp_path / "big.onnx.data").stat().st_size > 0
    proto = onnx.load(str(out), load_external_data=False)
    locations = {t.name: t.data_location for t in proto.graph.initializer}
    assert locations["W1"] == onnx.TensorProto.EXTERNAL  # 512 bytes; tiny ones stay inline
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".spa-tmp-")]


def test_refuses_to_overwrite_input(mlp_path: Path) -> None:
    before = digest(mlp_path)
    with pytest.raises(UserError, match="overwrite the input"):
        save_model(load_model(mlp_path), mlp_path, input_path=mlp_path)
    assert digest(mlp_path) == before


def test_refuses_to_overwrite_input_external_data(external_mlp_path: Path) -> None:
    data = external_mlp_path.parent / "mlp.data"
    before = digest(data)
    # Outputs write their weights to "<name>.data": "mlp" would target the input's data.
    with pytest.raises(UserError, match="overwrite the input model or its data"):
        save_model(
            load_model(external_mlp_path),
            external_mlp_path.parent / "mlp",
            external_threshold_bytes=0,
        )
    assert digest(data) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"this is a text file, not a model\n" * 4,
            "not a readable ONNX protobuf|holds no ONNX graph",
        ),
        (b"", "file is empty"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_proto(path)


def test_truncated_protobuf(mlp_path: Path) -> None:
    data = mlp_path.read_bytes()
    mlp_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"truncated or not an ONNX model|holds no ONNX graph"):
        load_proto(mlp_path)


def test_missing_external_data(external_mlp_path: Path) -> None:
    os.remove(external_mlp_path.parent / "mlp.data")
    with pytest.raises(UserError, match=r"external data file 'mlp\.data' .* is missing"):
        load_model(external_mlp_path)


def test_truncated_external_data(external_mlp_path: Path) -> None:
    data = external_mlp_path.parent / "mlp.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(UserError, match="too short"):
        load_model(external_mlp_path)


def test_external_data_path_traversal(external_mlp_path: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.data").write_bytes(b"\0" * 4096)
    proto = onnx.load(str(external_mlp_path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save(proto, str(external_mlp_path))
    with pytest.raises(UserError, match="outside the model's folder"):
        load_model(external_mlp_path)


def test_missing_output_folder(mlp_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        save_model(load_model(mlp_path), tmp_path / "nowhere" / "out.onnx")


def test_unwritable_output_folder(mlp_path: Path) -> None:
    # /proc/sys is read-only even for root, so this holds on CI machines too.
    with pytest.raises(UserError, match="not writable"):
        save_model(load_model(mlp_path), Path("/proc/sys/out.onnx"))


def test_input_size_counts_external_data_of_any_name(
    external_mlp_path: Path, tmp_path: Path
) -> None:
    # The weights live in "mlp.data", not "mlp.onnx.data": the size line of the
    # commands must still count them (it said "0.4 kB -> ..." for such inputs).
    from spa.model_io import stored_bytes
    from spa.workflows.quantize import quantize_model

    on_disk = (
        external_mlp_path.stat().st_size + (external_mlp_path.parent / "mlp.data").stat().st_size
    )
    assert stored_bytes(external_mlp_path, load_model(external_mlp_path)) == on_disk
    result = quantize_model(external_mlp_path, tmp_path / "q.onnx", bits=8, block=16, verify=False)
    assert result.bytes_before == on_disk
    assert result.bytes_after == (tmp_path / "q.onnx").stat().st_size


def test_same_graph_ignores_names_and_spelling_but_not_weights(tmp_path: Path) -> None:
    """The search skips a step whose output equals its base (spa.model_io.same_graph):
    a re-save names nodes and spells the default domain out; a weight change counts."""
    from spa.model_io import same_graph

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x) => (float[2, 3] y) { y = MatMul(x, w) }
    """
    first, second, third = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    model = onnx.parser.parse_model(text)
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    onnx.save(model, str(first))
    model.graph.node[0].name, model.graph.node[0].domain = "node_MatMul_0", ""
    onnx.save(model, str(second))
    assert same_graph(first, second)
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weight + 1, "w"))
    onnx.save(model, str(third))
    assert not same_graph(first, third)
