"""Plugin-form rewrite passes: rewrite counts, structure, numbers (NumPy
evaluation of the plugin ops against ONNX Runtime on the original model),
round trips back to the ORT form, and agreement with the contract files; tile-shared
GQSA through the w4_gqsa_tile layout against ONNX Runtime running the reference lowering."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa.errors import UserError
from spa.ort import create_session
from spa.passes.plugins import GQSAToPluginPass, Int4ToPluginPass, PluginToOrtPass
from spa.quant.blockwise import QuantizedWeight
from spa.quant.packing import pack_matmulnbits
from spa.trt import repack
from spa.trt.ops import PLUGIN_OPS, plugin_op
from tests.test_plugins_repack import (
    gqsa_reference,
    random_w4,
    read_tile_layout,
    tile_arrays,
    two_four,
)

CONTRACTS = Path(__file__).resolve().parents[1] / "plugins" / "trt" / "contracts"


def nbits_model(weight: QuantizedWeight, rows: int = 3) -> onnx.ModelProto:
    k, n = weight.shape
    arrays = pack_matmulnbits(weight)
    node = helper.make_node(
        "MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", name="mm",
        K=k, N=n, bits=4, block_size=128,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, n])],
        initializer=[numpy_helper.from_array(arrays.b, "B"), numpy_helper.from_array(arrays.scales.astype(np.float32), "S")],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def run_ort(model: onnx.ModelProto, a: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"A": a})[0]


def constant(node: ir.Node, index: int) -> np.ndarray:
    value = node.inputs[index]
    assert value is not None and value.const_value is not None
    return value.const_value.numpy()


def evaluate_plugin(node: ir.Node, a: np.ndarray) -> np.ndarray:
    """NumPy semantics of a plugin-form node (what the kernel must compute)."""
    k, n = node.attributes.get_int("K", 0), node.attributes.get_int("N", 0)
    if node.op_type == "W4A16MatMul":
        weight = repack.unpack_w4a16(repack.W4A16Packed(constant(node, 1), constant(node, 2), k, n))
    else:
        packed = repack.W4Sparse24Packed(constant(node, 1), constant(node, 2).view(np.uint32), constant(node, 3), k, n)
        weight = repack.unpack_w4_sp24(packed)
    dense = weight.q.astype(np.float32) * np.repeat(weight.scales.astype(np.float32), 128, axis=0)
    return a @ dense


@pytest.mark.parametrize(("sparse", "op_type"), [(False, "W4A16MatMul"), (True, "W4Sparse24MatMul")])
def test_int4_to_plugin_matches_ort_and_round_trips(sparse: bool, op_type: str) -> None:
    weight = random_w4(7, 256, 32)
    if sparse:
        weight = two_four(weight, 8)
    proto = nbits_model(weight)
    a = np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
    expected = run_ort(proto, a)

    model = ir.serde.deserialize_model(proto)
    result = Int4ToPluginPass().call(model)
    assert result.statistics == {"nodes_converted": 1, "nodes_skipped": 0}
    nodes = list(model.graph)
    assert [(n.domain, n.op_type) for n in nodes] == [("spa", op_type)]
    assert set(model.graph.initializers) == {v.name for v in nodes[0].inputs[1:] if v is not None}
    got = evaluate_plugin(nodes[0], a)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))

    back = PluginToOrtPass().call(model)
    assert back.statistics["nodes_converted"] == 1
    roundtrip = ir.serde.serialize_model(model)
    onnx.checker.check_model(roundtrip)
    np.testing.assert_array_equal(run_ort(roundtrip, a), expected)  # same bytes -> same numbers


def test_int4_to_plugin_dense_when_sparse24_is_off() -> None:
    model = ir.serde.deserialize_model(nbits_model(two_four(random_w4(3, 128, 16), 4)))
    Int4ToPluginPass(sparse24=False).call(model)
    assert [n.op_type for n in model.graph] == ["W4A16MatMul"]


def test_int4_to_plugin_skips_with_reasons() -> None:
    weight = random_w4(0, 128, 16)
    other_block = QuantizedWeight(weight.q, np.ones((2, 16), np.float16), None, 4, 64)
    proto = nbits_model(other_block)
    proto.graph.node[0].attribute[-1].i = 64  # block_size attribute
    model = ir.serde.deserialize_model(proto)
    pass_ = Int4ToPluginPass()
    result = pass_.call(model)
    assert result.statistics == {"nodes_converted": 0, "nodes_skipped": 1}
    assert "block_size 64" in pass_.decisions[0].reason
    assert [n.op_type for n in model.graph] == ["MatMulNBits"]


def gqsa_model(arrays: repack.GQSAArrays, dtype: int = TensorProto.FLOAT16) -> onnx.ModelProto:
    """One documented-layout GQSA op; A and Y (and the scales, converted) in ``dtype``."""
    scales = np.asarray(arrays.scales).astype(helper.tensor_dtype_to_np_dtype(dtype))
    node = helper.make_node(
        "GroupSparseQuantMatMul", ["A", "values", "col_idx", "row_ptr", "scales"], ["Y"],
        domain="spa", name="gq", K=arrays.k, N=arrays.n, group_size=arrays.group_size, bits=4,
    )  # fmt: skip
    inits = [numpy_helper.from_array(np.asarray(x), name) for x, name in [
        (arrays.values, "values"), (arrays.col_idx, "col_idx"), (arrays.row_ptr, "row_ptr"), (scales, "scales"),
    ]]  # fmt: skip
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("A", dtype, [1, arrays.k])],
        [helper.make_tensor_value_info("Y", dtype, [1, arrays.n])],
        initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("spa", 1)])


def test_gqsa_to_plugin_and_back_is_lossless() -> None:
    rng = np.random.default_rng(5)
    k, n, g = 128, 6, 16
    q = rng.integers(-8, 8, size=(k, n)).astype(np.int8)
    scales = (rng.random((k // g, n)) + 0.1).astype(np.float16)
    arrays = gqsa_reference(q, scales, g, rng.random((k // g, n)) < 0.5)
    model = ir.serde.deserialize_model(gqsa_model(arrays))
    result = GQSAToPluginPass().call(model)
    assert result.statistics == {"nodes_converted": 1, "nodes_skipped": 0}
    node = next(iter(model.graph))
    assert node.attributes.get_string("layout") == "w4_gqsa"
    assert [v.const_value.dtype for v in node.inputs[1:] if v is not None and v.const_value is not None] == [
        ir.DataType.INT32, ir.DataType.INT32, ir.DataType.INT32, ir.DataType.FLOAT16,
    ]  # fmt: skip
    assert GQSAToPluginPass().call(model).statistics["nodes_converted"] == 0  # idempotent
    PluginToOrtPass().call(model)
    node = next(iter(model.graph))
    assert "layout" not in node.attributes
    back = repack.GQSAArrays(*(constant(node, i) for i in range(1, 5)), k, n, g)  # type: ignore[arg-type]
    np.testing.assert_array_equal(repack.dequantize_gqsa(back), repack.dequantize_gqsa(arrays))


def reference_outputs(proto: onnx.ModelProto, a: np.ndarray) -> np.ndarray:
    """ORT CPU on the documented-layout GQSA model, through spa's reference lowering."""
    from spa.passes.gqsa import GQSAToReferencePass

    model = ir.serde.deserialize_model(proto)
    assert GQSAToReferencePass()(model).statistics["nodes_converted"] == 1
    return run_ort(ir.serde.serialize_model(model), a)


@pytest.mark.parametrize("keep", [2, 4])
def test_tile_shared_gqsa_to_w4_gqsa_tile_and_back(keep: int) -> None:
    k, n = 256, 32
    arrays = tile_arrays(keep, k, n, keep)
    proto = gqsa_model(arrays)
    a = np.random.default_rng(2).standard_normal((1, k)).astype(np.float16)
    expected = reference_outputs(proto, a)

    model = ir.serde.deserialize_model(proto)
    assert GQSAToPluginPass().call(model).statistics == {"nodes_converted": 1, "nodes_skipped": 0}
    node = next(iter(model.graph))
    op = plugin_op("w4_gqsa_tile")
    assert (node.domain, node.op_type) == ("spa", op.op_type) == ("spa", "GroupSparseTileMatMul")
    assert tuple(node.attributes) == op.attributes and node.attributes.get_int("keep") == keep
    shapes = [(v.const_value.dtype, v.const_value.shape.dims) for v in node.inputs[1:] if v is not None and v.const_value is not None]
    assert shapes == [
        (ir.DataType.INT32, (n // 16, k // 128, keep * 32)), (ir.DataType.INT32, (n // 16, k // 128)),
        (ir.DataType.FLOAT16, (n // 16, k // 128, 8, keep, 2)),
    ]  # fmt: skip (K = 256: two slabs, one 256-k stage, no padding)
    assert set(model.graph.initializers) == {v.name for v in node.inputs[1:] if v is not None}
    # What the kernel must compute, read from the layout's description, against ORT.
    packed = repack.W4GQSATilePacked(constant(node, 1).view(np.uint32), constant(node, 2).view(np.uint32), constant(node, 3), k, n, keep)
    got = a.astype(np.float32) @ read_tile_layout(packed)
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=0, atol=2e-3 * float(np.abs(got).max()))

    assert PluginToOrtPass().call(model).statistics == {"nodes_converted": 1, "nodes_skipped": 0}
    node = next(iter(model.graph))
    assert node.op_type == "GroupSparseQuantMatMul" and "layout" not in node.attributes and "keep" not in node.attributes
    back = ir.serde.serialize_model(model)
    for name, array in zip(("values", "col_idx", "row_ptr", "scales"), (constant(node, i) for i in range(1, 5)), strict=True):
        np.testing.assert_array_equal(array, getattr(arrays, name))
    np.testing.assert_array_equal(reference_outputs(back, a), expected)  # same bytes -> same numbers


@pytest.mark.parametrize("tile", [False, True])
def test_plugin_to_ort_gives_float32_models_their_float32_scales(tile: bool) -> None:
    """The kernel layouts store FP16 scales; the documented op wants them in A's type, so a
    float32 model comes back with float32 scales (FP16 widens exactly) and its reference
    lowering runs in ONNX Runtime with the outputs of the original."""
    k, n = 256, 32
    if tile:
        arrays = tile_arrays(3, k, n, 4)
    else:
        rng = np.random.default_rng(3)
        scales = (rng.random((k // 16, n)) + 0.1).astype(np.float16)
        arrays = gqsa_reference(rng.integers(-8, 8, size=(k, n)).astype(np.int8), scales, 16, rng.random((k // 16, n)) < 0.5)
    proto = gqsa_model(arrays, TensorProto.FLOAT)
    a = np.random.default_rng(4).standard_normal((1, k)).astype(np.float32)
    expected = reference_outputs(proto, a)
    model = ir.serde.deserialize_model(proto)
    GQSAToPluginPass().call(model)
    assert next(iter(model.graph)).op_type == ("GroupSparseTileMatMul" if tile else "GroupSparseQuantMatMul")
    assert PluginToOrtPass().call(model).statistics == {"nodes_converted": 1, "nodes_skipped": 0}
    assert constant(next(iter(model.graph)), 4).dtype == np.float32
    np.testing.assert_array_equal(reference_outputs(ir.serde.serialize_model(model), a), expected)


@pytest.mark.parametrize("keep", [1, 3])
def test_tile_shared_gqsa_with_other_keeps_uses_w4_gqsa(keep: int) -> None:
    model = ir.serde.deserialize_model(gqsa_model(tile_arrays(0, 128, 16, keep)))
    GQSAToPluginPass().call(model)
    node = next(iter(model.graph))
    assert node.op_type == "GroupSparseQuantMatMul" and node.attributes.get_string("layout") == "w4_gqsa"
    assert "keep" not in node.attributes


def test_plugin_to_ort_skips_a_bad_w4_gqsa_tile_node() -> None:
    model = ir.serde.deserialize_model(gqsa_model(tile_arrays(0, 128, 16, 2)))
    GQSAToPluginPass().call(model)
    node = next(iter(model.graph))
    node.attributes["keep"] = ir.AttrInt64("keep", 4)  # values hold keep 2
    pass_ = PluginToOrtPass()
    assert pass_.call(model).statistics == {"nodes_converted": 0, "nodes_skipped": 1}
    assert "w4_gqsa_tile values (1, 2, 64) with K=128 N=16 keep=4" in pass_.decisions[0].reason


@pytest.mark.parametrize("op", PLUGIN_OPS, ids=lambda op: op.kernel)
def test_contract_matches_the_pass_side(op) -> None:  # type: ignore[no-untyped-def]
    contract = json.loads((CONTRACTS / f"{op.kernel}.json").read_text())
    assert contract["kernel"] == op.kernel
    assert contract["onnx"] == {"domain": "spa", "op_type": op.op_type, "since_version": 1}
    assert contract["plugin"]["name"] == op.op_type and contract["plugin"]["version"] == "1"
    assert tuple(contract["attributes"]) == op.attributes
    assert all(a["plugin_field"] == name for name, a in contract["attributes"].items())
    inputs = tuple((i["name"], i["dtype"] if isinstance(i["dtype"], str) else "float") for i in contract["inputs"])
    assert inputs == op.inputs
    assert contract["tolerance"]["max"] == 2e-3
    assert contract["tolerance"]["max_bf16"] == 2e-3 + 2.0**-8  # BF16 output rounding on top
    assert contract["tolerance"]["M"] == [1, 2, 4, 8, 16, 32, 64]


def test_passes_write_the_contract_attributes() -> None:
    dense = ir.serde.deserialize_model(nbits_model(random_w4(1, 128, 16)))
    sparse = ir.serde.deserialize_model(nbits_model(two_four(random_w4(1, 128, 16), 2)))
    Int4ToPluginPass().call(dense)
    Int4ToPluginPass().call(sparse)
    rng = np.random.default_rng(0)
    gqsa = ir.serde.deserialize_model(gqsa_model(gqsa_reference(
        rng.integers(-8, 8, (64, 2)).astype(np.int8), np.ones((4, 2), np.float16), 16, rng.random((4, 2)) < 0.5,
    )))  # fmt: skip
    GQSAToPluginPass().call(gqsa)
    tile = ir.serde.deserialize_model(gqsa_model(tile_arrays(0, 256, 32, 4)))
    GQSAToPluginPass().call(tile)
    written = {n.op_type: n for m in (dense, sparse, gqsa, tile) for n in m.graph}
    for op in PLUGIN_OPS:
        node = written[op.op_type]
        assert tuple(node.attributes) == op.attributes
        assert len(node.inputs) == len(op.inputs)


def test_recipes_reach_the_plugin_passes(run_cli, tmp_path: Path) -> None:
    """`spa optimize --recipe` with int4-to-plugin, then plugin-to-ort, then `spa verify`: identical outputs."""
    source = tmp_path / "nbits.onnx"
    onnx.save(nbits_model(random_w4(0, 256, 32)), source)
    (tmp_path / "to_plugin.yaml").write_text("passes:\n  - int4-to-plugin\n")
    (tmp_path / "to_ort.yaml").write_text("passes:\n  - plugin-to-ort\n")
    plugin, back = tmp_path / "plugin.onnx", tmp_path / "back.onnx"
    first = run_cli("optimize", source, "--recipe", tmp_path / "to_plugin.yaml", "-o", plugin, "--no-verify")
    assert first.exit_code == 0, first.output
    assert [(n.domain, n.op_type) for n in onnx.load(plugin).graph.node] == [("spa", "W4A16MatMul")]
    second = run_cli("optimize", plugin, "--recipe", tmp_path / "to_ort.yaml", "-o", back, "--no-verify")
    assert second.exit_code == 0, second.output
    verify = run_cli("verify", source, back)
    assert verify.exit_code == 0 and "max|Δ| 0 " in verify.output, verify.output
    # `spa verify` runs the plugin form through plugin-to-ort itself, and says so
    direct = run_cli("verify", source, plugin)
    assert direct.exit_code == 0 and "max|Δ| 0 " in direct.output, direct.output
    assert f"note: {plugin} holds spa ops; run through plugin-to-ort" in direct.output
    # ORT itself cannot run the plugin op: the one-line error says what to do instead
    with pytest.raises(UserError, match=r"cannot run spa's TensorRT plugin op W4A16MatMul.*plugin-to-ort"):
        create_session(plugin)


def _scales_off_fp16(weight: QuantizedWeight, seed: int) -> QuantizedWeight:
    """``weight`` with FP32 scales that FP16 cannot hold (relative noise of 1e-3)."""
    noise = 1 + 1e-3 * np.random.default_rng(seed).standard_normal(weight.scales.shape)
    return QuantizedWeight(weight.q, (weight.scales.astype(np.float32) * noise).astype(np.float32), None, 4, 128)


def test_optimize_verifies_the_plugin_form_against_fp16_scales(run_cli, tmp_path: Path) -> None:
    """`spa optimize --recipe` with int4-to-plugin is verified by default: the output runs in ORT
    through plugin-to-ort, exact against its input with the scales rounded to FP16 (what the plugin
    layouts store); the drift from the FP32 scales is reported, not judged; MACs are counted."""
    source, out, report = tmp_path / "nbits32.onnx", tmp_path / "plugin.onnx", tmp_path / "report.json"
    onnx.save(nbits_model(_scales_off_fp16(random_w4(0, 256, 32), 1)), source)
    (tmp_path / "to_plugin.yaml").write_text("passes:\n  - int4-to-plugin\n")
    result = run_cli("optimize", source, "--recipe", tmp_path / "to_plugin.yaml", "-o", out,
                     "--report", report, "--latency-runs", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in onnx.load(out).graph.node] == ["W4A16MatMul"]
    data = json.loads(report.read_text())
    decoded = data["decoded"]
    assert decoded["passed"] and decoded["verification"]["max_rel_diff"] <= 1e-6
    assert 1e-5 < decoded["drift"]["max_rel_diff"] < 2e-3  # the FP16 rounding, measured
    assert "plugin-to-ort" in data["verified_form"] and "not measured" in data["latency_note"]
    assert data["after"]["total_macs"] == data["before"]["total_macs"] == 3 * 256 * 32
    assert not data["after"]["macs_unknown"]
    assert result.output.splitlines()[-1].startswith("PASSED | to_plugin |")
    # the packed weight counts, though not float: the recipe changed every weight and MAC
    assert "changed: 100.0% of params (stored quantized included), 100.0% of weighted-layer MACs" in result.output


class _FlippedNibble(Int4ToPluginPass):
    """int4-to-plugin with one weight nibble changed after the repack: a layout defect."""

    name = "flipped-int4-to-plugin"

    def call(self, model: ir.Model) -> Any:
        result = super().call(model)
        packed = next(n for n in model.graph if n.op_type == "W4A16MatMul").inputs[1]
        words = packed.const_value.numpy().copy()
        words.flat[5] ^= 0x7 << 8
        packed.const_value = ir.Tensor(words, name=packed.name)
        return result


def test_optimize_catches_a_plugin_layout_defect(tmp_path: Path) -> None:
    from spa.workflows.optimize import optimize

    source = tmp_path / "nbits32.onnx"
    onnx.save(nbits_model(_scales_off_fp16(random_w4(2, 256, 32), 3)), source)
    result = optimize(source, tmp_path / "bad.onnx", passes=[_FlippedNibble()])
    assert result.decoded is not None and not result.decoded.passed
    assert result.verdict_line.startswith("FAILED")


@pytest.mark.parametrize("layout", ["column", "tile"])
def test_optimize_verifies_gqsa_to_plugin(run_cli, tmp_path: Path, layout: str) -> None:
    """A float model through `spa sparsify --pattern gqsa --form plugin` (documented op, FP32
    scales), then a gqsa-to-plugin recipe: both sides run through the reference lowering."""
    rng = np.random.default_rng(4)
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["A", "W0"], ["H"]), helper.make_node("Relu", ["H"], ["R"]),
             helper.make_node("MatMul", ["R", "W1"], ["Y"])], "g",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 256])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 32])],
            initializer=[numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
                         for name, shape in (("W0", (256, 128)), ("W1", (128, 32)))],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    dense, documented = tmp_path / "dense.onnx", tmp_path / "gqsa.onnx"
    onnx.save(proto, dense)
    made = run_cli("sparsify", dense, "-o", documented, "--pattern", "gqsa", "--form", "plugin",
                   "--gqsa-layout", layout)  # fmt: skip
    assert made.exit_code == 0, made.output
    (tmp_path / "to_plugin.yaml").write_text("passes:\n  - gqsa-to-plugin\n")
    out, report = tmp_path / "plugin.onnx", tmp_path / "report.json"
    result = run_cli("optimize", documented, "--recipe", tmp_path / "to_plugin.yaml", "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    expected = "GroupSparseTileMatMul" if layout == "tile" else "GroupSparseQuantMatMul"
    assert [n.op_type for n in onnx.load(out).graph.node] == [expected, "Relu", expected]
    data = json.loads(report.read_text())
    decoded = data["decoded"]
    assert decoded["passed"] and decoded["verification"]["max_rel_diff"] <= 1e-6
    assert decoded["drift"]["max_rel_diff"] > 0  # FP32 scales stored as FP16
    # shapes inferred through the chain of spa ops: every MAC counted (the dense product's)
    assert data["after"]["total_macs"] == 2 * (256 * 128 + 128 * 32) and not data["after"]["macs_unknown"]
    # with real data, quality is measured on held-out samples, the input (documented GQSA)
    # run through its lowering too
    calib = tmp_path / "calib.npz"
    np.savez(calib, A=rng.standard_normal((8, 2, 256)).astype(np.float32))
    measured = run_cli("optimize", documented, "--recipe", tmp_path / "to_plugin.yaml", "-o", tmp_path / "q.onnx",
                       "--calib", calib)  # fmt: skip
    assert measured.exit_code == 0, measured.output
    assert re.search(r"\| quality .*cos 1\.0000 \(2 held out\) \|", measured.output.splitlines()[-1])


@pytest.mark.parametrize(
    ("recipe", "plugin_op_type"),
    [
        # keep_float []: every layer, the only (first and last) one included
        ("  - name: quantize-weights\n    options: {keep_float: [], bits: 4, block: 128, target: ort}\n"
         "  - int4-to-plugin\n",
         "W4A16MatMul"),
        ("  - name: gqsa\n    options: {group: 16, sparsity: 0.5, form: plugin, layout: tile}\n  - gqsa-to-plugin\n",
         "GroupSparseTileMatMul"),
    ],
)  # fmt: skip
def test_a_recipe_that_rewrites_then_converts_is_checked_step_by_step(
    run_cli, tmp_path: Path, recipe: str, plugin_op_type: str
) -> None:
    """A float model quantized (or GQSA-sparsified) and turned into plugin ops by one recipe:
    the second pass rewrites weights the first one wrote, so each rewrite is checked exact
    against the model it read (the plugin form through plugin-to-ort), not the output against
    the float input."""
    rng = np.random.default_rng(8)
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["A", "W0"], ["H"]), helper.make_node("Relu", ["H"], ["Y"])], "g",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 256])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 64])],
            initializer=[numpy_helper.from_array(rng.standard_normal((256, 64)).astype(np.float32), "W0")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    dense, out, report = tmp_path / "dense.onnx", tmp_path / "plugin.onnx", tmp_path / "report.json"
    onnx.save(proto, dense)
    (tmp_path / "recipe.yaml").write_text("passes:\n" + recipe)
    result = run_cli("optimize", dense, "--recipe", tmp_path / "recipe.yaml", "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in onnx.load(out).graph.node] == [plugin_op_type, "Relu"]
    decoded = json.loads(report.read_text())["decoded"]
    assert decoded["passed"] and decoded["verification"]["max_rel_diff"] <= 1e-4
    assert decoded["reference"].startswith("each weight rewrite's own input (passes 1, 2;")
    assert result.output.splitlines()[-1].startswith("PASSED | recipe |")


def test_macs_and_shapes_continue_past_plugin_ops() -> None:
    """Neither ONNX nor ORT knows spa's domain: shape inference stands each plugin op in with
    standard ops of its output shape, so a chain of them with dynamic dims gets every MAC."""
    from spa.stats.report import compute_stats
    from spa.stats.shape_facts import infer_shapes

    def plugin(a: str, y: str, k: int, n: int) -> onnx.NodeProto:
        return helper.make_node("W4A16MatMul", [a, f"{y}_p", f"{y}_s"], [y], domain="spa", K=k, N=n, group_size=128)

    weights = [
        numpy_helper.from_array(np.zeros(shape, dtype), name) for name, shape, dtype in (
            ("H_p", (16, 2, 128), np.int32), ("H_s", (2, 128), np.float16),
            ("Y_p", (8, 1, 128), np.int32), ("Y_s", (1, 32), np.float16),
        )
    ]  # fmt: skip
    graph = helper.make_graph(
        [plugin("X", "H", 256, 128), helper.make_node("Relu", ["H"], ["R"]), plugin("R", "Y", 128, 32)], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "seq", 256])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("spa", 1)])
    shapes, _ = infer_shapes(model, dims={"batch": 2, "seq": 5})
    assert shapes["R"] == (2, 5, 128) and shapes["Y"] == (2, 5, 32)
    stats = compute_stats(model, dims={"batch": 2, "seq": 5})
    assert stats.total_macs == 2 * 5 * (256 * 128 + 128 * 32) and not stats.macs_unknown


def test_a_layer_the_plugin_pass_skips_reports_the_passs_reason(run_cli, tmp_path: Path) -> None:
    """N = 10 is no 16-column tile: int4-to-plugin skips the layer, and the change report says
    why in the pass's words, not only that no pass of the recipe changed it."""
    source = tmp_path / "n10.onnx"
    onnx.save(nbits_model(random_w4(4, 128, 10)), source)
    (tmp_path / "to_plugin.yaml").write_text("passes:\n  - int4-to-plugin\n")
    result = run_cli("optimize", source, "--recipe", tmp_path / "to_plugin.yaml", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert ("NOTHING CHANGED: spa optimize --recipe to_plugin left every weight as it was (main reason: "
            "int4-to-plugin: K=128 N=10: the kernels need K % 128 == 0 and N % 16 == 0)") in result.output  # fmt: skip
