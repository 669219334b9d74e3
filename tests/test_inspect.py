"""spa.stats.inspect: facts read from the graph alone, external data never read."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa.stats import inspect as spa_inspect
from spa.errors import UserError
from spa.stats.inspect import OpCount, UnknownOp, ValueInfo, inspect_model, render_model_info

MODEL_TEXT = """
<ir_version: 9, opset_import: ["" : 18, "local" : 1, "com.microsoft" : 1],
 producer_name: "unit", producer_version: "2.0">
g (float[batch, 8] X, bool C) => (float[batch, 8] Y, float[batch, 8] Z, float[batch, 8] W) {
    T = If (C) <
        then_branch = then_body () => (float[batch, 8] A) { A = Relu(X) },
        else_branch = else_body () => (float[batch, 8] B) { B0 = Neg(X)  B = Relu(B0) }
    >
    Y = local.Double(T)
    Z = com.microsoft.FusedMatMul(Y, M)
    W = com.example.Mystery(Z)
}
<domain: "local", opset_import: ["" : 18]>
Double (x) => (y) { y = Add(x, x) }
"""


def write_model(tmp_path: Path, *, external: bool = False) -> Path:
    model = onnx.parser.parse_model(MODEL_TEXT)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros((8, 8), np.float16), "M"),
            numpy_helper.from_array(np.zeros(3, np.int64), "shape_like"),
        ]
    )
    path = tmp_path / "model.onnx"
    if external:
        onnx.save(
            model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0
        )
    else:
        onnx.save(model, str(path))
    return path


def test_facts_of_a_model_with_subgraphs_functions_and_custom_ops(tmp_path: Path) -> None:
    info = inspect_model(write_model(tmp_path))
    assert info.ir_version == 9
    assert info.producer == "unit 2.0"
    assert info.opsets == {"ai.onnx": 18, "com.microsoft": 1, "local": 1}
    # If, Relu (then), Neg + Relu (else), Double, FusedMatMul, Mystery.
    assert info.node_count == 7
    assert info.op_histogram[0] == OpCount("", "Relu", 2)
    assert {(o.domain, o.op_type): o.count for o in info.op_histogram} == {
        ("", "Relu"): 2,
        ("", "If"): 1,
        ("", "Neg"): 1,
        ("com.example", "Mystery"): 1,
        ("com.microsoft", "FusedMatMul"): 1,
        ("local", "Double"): 1,
    }
    assert info.inputs == [
        ValueInfo("X", "float32", ("batch", 8)),
        ValueInfo("C", "bool", ()),
    ]
    assert info.outputs[1] == ValueInfo("Z", "float32", ("batch", 8))
    assert info.initializer_count == 2
    assert info.params == 64  # the int64 constant's 3 elements are no parameters (its bytes count)
    assert info.bytes_by_dtype == {"float16": 128, "int64": 24}
    assert info.weight_bytes == 152
    assert not info.external_data and info.external_files == []
    assert info.local_functions == ["local.Double"]
    assert info.custom_domains == ["com.example", "com.microsoft", "local"]
    assert info.ops_without_schema == [
        UnknownOp("com.example", "Mystery", 1, "unknown"),
        UnknownOp("com.microsoft", "FusedMatMul", 1, "contrib (onnxruntime)"),
        UnknownOp("local", "Double", 1, "local function"),
    ]


def test_without_onnxruntime_contrib_ops_are_listed_by_domain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spa_inspect, "_onnxruntime_ops", lambda: None)
    info = inspect_model(write_model(tmp_path))
    known = {op.op_type: op.known_to for op in info.ops_without_schema}
    assert known == {
        "Mystery": "domain com.example (onnxruntime not checked)",
        "FusedMatMul": "domain com.microsoft (onnxruntime not checked)",
        "Double": "local function",
    }


def test_external_data_counted_from_dims_and_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_model(tmp_path, external=True)
    opened: list[str] = []
    real_open = builtins.open

    def recording_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    info = inspect_model(path)
    assert info.external_data and info.external_files == ["weights.bin"]
    assert info.bytes_by_dtype == {"float16": 128, "int64": 24}
    assert str(path) in opened  # the recorder sees the model file being read...
    assert not [name for name in opened if name.endswith("weights.bin")]  # ...but not the data


def test_a_2_gib_sparse_weight_file_is_counted_not_read(tmp_path: Path) -> None:
    model = onnx.parser.parse_model(
        """<ir_version: 9, opset_import: ["" : 18]>
        g (float16[1, 32768] X) => (float16[1, 32768] Y) { Y = MatMul(X, W) }"""
    )
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT16, dims=[32768, 32768])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.data"), ("offset", "0"), ("length", str(2**31))):
        weight.external_data.add(key=key, value=value)
    model.graph.initializer.append(weight)
    onnx.save(model, str(tmp_path / "big.onnx"))
    with open(tmp_path / "w.data", "wb") as stream:
        stream.truncate(2**31)
    info = inspect_model(tmp_path / "big.onnx")
    assert info.params == 2**30
    assert info.bytes_by_dtype == {"float16": 2**31}
    assert info.external_files == ["w.data"]


def test_packed_and_wide_dtypes() -> None:
    tensors = [
        helper.make_tensor("a", TensorProto.INT4, [3], [1, 2, 3]),
        helper.make_tensor("b", TensorProto.BFLOAT16, [2, 2], [0, 0, 0, 0]),
        helper.make_tensor("c", TensorProto.DOUBLE, [2], [0.0, 1.0]),
    ]
    assert [spa_inspect.tensor_nbytes(t) for t in tensors] == [2, 8, 16]
    assert [spa_inspect.dtype_name(t.data_type) for t in tensors] == ["int4", "bfloat16", "float64"]


def test_rendered_text_and_json(tmp_path: Path) -> None:
    info = inspect_model(write_model(tmp_path))
    text = render_model_info(info, top_ops=2)
    lines = text.splitlines()
    assert lines[1:6] == [
        "ir        9, producer unit 2.0",
        "opsets    ai.onnx 18, com.microsoft 1, local 1",
        "nodes     7 (6 op types)",
        "params    64 (64) in 2 initializers",
        "weights   152 B: float16 128 B, int64 24 B",
    ]
    assert "  X  float32  [batch, 8]" in lines
    assert "  com.microsoft.FusedMatMul  1  contrib (onnxruntime)" in lines
    assert lines[-3:] == ["  Relu  2", "  If    1", "  ... 4 more op types"]
    data = json.loads(json.dumps(info.as_dict()))
    assert data["inputs"][0] == {"name": "X", "dtype": "float32", "shape": ["batch", 8]}
    assert data["ops_without_schema"][0] == {
        "domain": "com.example",
        "op_type": "Mystery",
        "count": 1,
        "known_to": "unknown",
    }
    assert data["weight_bytes"] == 152


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        inspect_model(tmp_path / "absent.onnx")


def test_ops_without_a_pruning_rule_are_listed(tmp_path: Path) -> None:
    model = onnx.parser.parse_model(
        """<ir_version: 9, opset_import: ["" : 17, "custom.domain" : 1]>
        g (float[N, 4] x) => (float[N, 4] y) {
            a = Relu (x)
            b = custom.domain.Mystery (a)
            y = Sigmoid (b)
        }"""
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    info = inspect_model(path)
    assert [(o.domain, o.op_type, o.count) for o in info.ops_without_rule] == [
        ("custom.domain", "Mystery", 1)
    ]
    assert "ops without a spa pruning rule" in render_model_info(info)


def test_subnormal_weights_are_counted_and_named(tmp_path: Path) -> None:
    """x86 CPUs compute on subnormals slowly: inspect counts them (external data only with
    --read-weights) and says every spa command writes them as zeros."""
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[1, 4] X) => (float[1, 4] Y) { Y = MatMul(X, W) }""")
    weight = np.ones((4, 4), np.float32)
    weight[0, :3] = [1e-39, -1e-40, 1e-45]
    model.graph.initializer.append(numpy_helper.from_array(weight, "W"))
    embedded, external = tmp_path / "e.onnx", tmp_path / "x.onnx"
    onnx.save(model, str(embedded))
    onnx.save(model, str(external), save_as_external_data=True, location="x.bin", size_threshold=0)
    info = inspect_model(embedded)
    assert info.subnormals == {"values": 3, "weights": 1, "unread": 0}
    assert "subnormal 3 float values in 1 weights" in render_model_info(info)
    assert inspect_model(external).subnormals == {"values": 0, "weights": 0, "unread": 1}
    assert inspect_model(external, read_weights=True).subnormals["values"] == 3
    assert "float values in" not in render_model_info(inspect_model(write_model(tmp_path)))
