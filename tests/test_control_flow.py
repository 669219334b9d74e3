"""Control flow and constants: If/Loop bodies through analysis, pruning,
quantization, sparsity, cleanup and verification, on inline ONNX-text models
run in ONNX Runtime (issue 15, item 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from spa.analysis import analyze, prepare
from spa.model_io import load_model
from spa.pass_manager import run_passes
from spa.passes.prune import apply_plan
from spa.passes.quantize import QuantizeWeightsPass
from spa.passes.sparsify import Sparsify2to4Pass
from spa.pruning.plan import make_plan
from spa.verify import AllClose, CosineMaxAbs, input_specs, make_feeds, verify_models
from spa.verify.branches import branch_feeds
from spa.verify.mask import mask_model, masked_relative_error
from spa.verify.runner import run_model
from spa.workflows.recipes import get_pass_class
from spa.workflows.run import lift_constant_weights
from tests.analysis_helpers import group_with, model_from_text

#: Mask equivalence: pruned vs masked reference, relative to the output's scale.
MASK_TOLERANCE = 1e-5

LSTM_IN_IF = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[5, 1, 8] x, bool flag) => (float[5, 1, 4] y, float[5, 1, 8] z) {
    h = MatMul(x, w1)
    r = Relu(h)
    y = If(flag) <
        then_branch = lstm_branch () => (float[5, 1, 4] out1) {
            seq, last = LSTM <hidden_size = 6> (r, lw, lr)
            sq = Squeeze(seq, one)
            out1 = MatMul(sq, w3)
        },
        else_branch = dense_branch () => (float[5, 1, 4] out2) {
            out2 = MatMul(r, w2)
        }
    >
    a = MatMul(x, wa)
    b = Relu(a)
    z = MatMul(b, wb)
}
"""
LSTM_WEIGHTS = {
    "w1": (8, 16), "lw": (1, 24, 16), "lr": (1, 24, 6), "w2": (16, 4), "w3": (6, 4),
    "wa": (8, 12), "wb": (12, 8),
}  # fmt: skip


def _lstm_model() -> onnx.ModelProto:
    return model_from_text(LSTM_IN_IF, LSTM_WEIGHTS, constants={"one": np.array([1], np.int64)})


def test_a_group_read_by_an_lstm_inside_an_if_is_frozen_with_the_reason() -> None:
    """The group feeding the LSTM through an outer-scope reference was once prunable."""
    model = prepare(ir.serde.deserialize_model(_lstm_model()))
    analysis = analyze(model)
    hidden = group_with(analysis, "r", 2)
    assert hidden.frozen and not hidden.prunable
    assert any(
        "If" in reason and "'r'" in reason and "LSTM" in reason for reason in hidden.frozen_reasons
    ), hidden.frozen_reasons
    assert group_with(analysis, "b", 2).prunable  # the plain MLP beside it still prunes


@pytest.mark.parametrize("flag", [True, False])
def test_pruning_beside_an_lstm_inside_an_if_is_mask_equivalent_on_both_branches(
    flag: bool,
) -> None:
    proto = _lstm_model()
    model = prepare(ir.serde.deserialize_model(proto))
    analysis = analyze(model)
    plan = make_plan(model, analysis, ratio=0.5, criterion="random", seed=0)
    masked = prepare(ir.serde.deserialize_model(proto))
    mask_model(masked, analysis, plan)
    statistics = apply_plan(model, analysis, plan)
    assert statistics["channels_removed"] > 0
    assert model.graph.initializers["wa"].const_value.shape[1] < 12
    assert model.graph.initializers["w1"].const_value.shape[1] == 16  # read inside the body
    feeds = make_feeds(input_specs(proto), seed=0)
    feeds["flag"] = np.array(flag)
    assert masked_relative_error(masked, model, feeds) <= MASK_TOLERANCE
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def test_prune_cli_on_an_lstm_inside_an_if_writes_a_model_ort_runs(run_cli, tmp_path: Path) -> None:
    source, output = tmp_path / "lstm_if.onnx", tmp_path / "pruned.onnx"
    onnx.save(_lstm_model(), str(source))
    result = run_cli("prune", source, "-o", output, "--ratio", "0.5", "--verify")
    assert result.exit_code == 0, result.output
    assert "branches | If" in result.output and "then+else" in result.output
    feeds = make_feeds(input_specs(onnx.load(str(source))), seed=1)
    for flag in (True, False):
        outputs = run_model(output, {**feeds, "flag": np.array(flag)})
        assert outputs["y"].shape == (5, 1, 4) and outputs["z"].shape == (5, 1, 8)


def _constant(name: str, array: np.ndarray) -> str:
    values = ", ".join(f"{v:.7g}" for v in array.ravel())
    dims = ", ".join(str(d) for d in array.shape)
    return f"{name} = Constant <value = float[{dims}] {{{values}}}> ()"


def _loop_model(seed: int = 0) -> onnx.ModelProto:
    """A Loop whose body holds one weight as a Constant node (``wc``) and reads
    another (``wtop``) from the main graph by name."""
    rng = np.random.default_rng(seed)
    inner = (rng.standard_normal((32, 32)) * 0.2).astype(np.float32)
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 32] x, int64 trips) => (float[2, 32] y) {{
        cond = Constant <value = bool {{1}}> ()
        y = Loop(trips, cond, x) <
            body = step (int64 i, bool c, float[2, 32] h) => (bool c_out, float[2, 32] h_out) {{
                {_constant("wc", inner)}
                m = MatMul(h, wc)
                n = MatMul(m, wtop)
                h_out = Tanh(n)
                c_out = Identity(c)
            }}
        >
    }}
    """
    model = onnx.parser.parse_model(text)
    top = (rng.standard_normal((32, 32)) * 0.2).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(top, "wtop"))
    onnx.checker.check_model(model, full_check=True)
    return model


def _loop_feeds(trips: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32)
    return {"x": x, "trips": np.array(trips, dtype=np.int64)}


def test_constant_weights_inside_a_loop_body_are_lifted_counted_and_quantized(
    run_cli, tmp_path: Path
) -> None:
    source = tmp_path / "loop.onnx"
    onnx.save(_loop_model(), str(source))
    info = run_cli("inspect", source)
    assert "params    2.0k (2048)" in info.output, info.output
    model = load_model(source)
    assert lift_constant_weights(model) == 1
    assert "wc" in model.graph.initializers  # moved to the main graph; the body reads it by name
    output = tmp_path / "q.onnx"
    result = run_cli("quantize", source, "-o", output, "--weights", "int8", "--dim", "trips=3")
    assert result.exit_code == 0, result.output
    assert "nodes quantized 2" in result.output and "PASSED" in result.output
    assert "MACs covered 100.0%" in result.output  # body MatMuls count
    body = next(n for n in onnx.load(str(output)).graph.node if n.op_type == "Loop").attribute[0].g
    ops = [n.op_type for n in body.node]  # INT8 for ORT: Cast+Mul constants ORT folds at load
    assert ops.count("Cast") == 2 and ops.count("MatMul") == 2, ops


def test_a_constant_weight_inside_a_local_function_is_counted_inlined_and_quantized(
    run_cli, tmp_path: Path
) -> None:
    weight = np.random.default_rng(4).standard_normal((32, 16)).astype(np.float32)
    text = f"""
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    agraph (float[2, 32] x) => (float[2, 16] y) {{
        y = local.Dense(x)
    }}
    <domain: "local", opset_import: ["" : 17]>
    Dense (a) => (b) {{
        {_constant("w", weight)}
        b = MatMul(a, w)
    }}
    """
    source, output = tmp_path / "function.onnx", tmp_path / "q.onnx"
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(source))
    assert "params    512 (512)" in run_cli("inspect", source).output
    model = load_model(source)
    assert lift_constant_weights(model) == 1
    assert not model.functions and [n.op_type for n in model.graph] == ["MatMul"]
    result = run_cli("quantize", source, "-o", output, "--weights", "int8")
    assert result.exit_code == 0 and "nodes quantized 1" in result.output, result.output
    assert [n.op_type for n in onnx.load(str(output)).graph.node] == ["Cast", "Mul", "MatMul"]


@pytest.mark.parametrize("target", ["ort", "onnx"])
def test_a_matmul_weight_inside_a_loop_body_is_quantized_and_verified(
    target: str, tmp_path: Path
) -> None:
    source, output = tmp_path / "loop.onnx", tmp_path / "q.onnx"
    onnx.save(_loop_model(), str(source))
    model = load_model(source)
    lift_constant_weights(model)
    if target == "onnx":
        model.opset_imports[""] = 21
    quantize = QuantizeWeightsPass(bits=8, block=32, target=target)
    (record,) = run_passes(model, [quantize])
    assert record.statistics["nodes_quantized"] == 2
    onnx.save(ir.serde.serialize_model(model), str(output))
    expected, actual = run_model(source, _loop_feeds(2)), run_model(output, _loop_feeds(2))
    scale = float(np.abs(expected["y"]).max())
    # 2 iterations x 2 int8 MatMuls (block 32): 1.8% of the output's scale with the
    # dequantized weights (onnx.reference agrees); ORT's fused QDQ form also
    # quantizes the activations (2.6%)
    assert 0 < float(np.abs(expected["y"] - actual["y"]).max()) <= 0.03 * scale
    policy = CosineMaxAbs(min_cosine=0.9999)
    result = verify_models(source, output, policy=policy, int_ranges={"trips": (1, 2)})
    assert result.passed, result.render()


def test_sparsity_reaches_a_weight_inside_a_loop_body() -> None:
    model = ir.serde.deserialize_model(_loop_model())
    lift_constant_weights(model)
    (record,) = run_passes(model, [Sparsify2to4Pass()])
    assert record.statistics["nodes_sparsified"] == 2
    for name in ("wc", "wtop"):
        weight = model.graph.initializers[name].const_value.numpy()
        runs = weight.reshape(8, 4, 32)  # runs of 4 along K
        assert ((runs != 0).sum(axis=1) <= 2).all()
    h = _loop_feeds(2)["x"]
    for _ in range(2):  # the rewritten model computes exactly the sparse weights' Loop
        h = np.tanh(h @ model.graph.initializers["wc"].const_value.numpy()
                    @ model.graph.initializers["wtop"].const_value.numpy())  # fmt: skip
    got = run_model(ir.serde.serialize_model(model).SerializeToString(), _loop_feeds(2))["y"]
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-6)


IDENTITY_IF = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 8] x, bool flag) => (float[2, 8] y) {
    a = Relu(x)
    b = Neg(x)
    y = If(flag) <
        then_branch = pass_a () => (float[2, 8] t) { t = Identity(a) },
        else_branch = pass_b () => (float[2, 8] e) { e = Identity(b) }
    >
}
"""
CLEANUP_PASSES = [
    "remove-identity", "eliminate-dead-code", "remove-unused-initializers", "infer-shapes",
    "topological-sort", "fold-constants", "fold-batchnorm",
]  # fmt: skip


@pytest.mark.parametrize("name", CLEANUP_PASSES)
def test_an_if_whose_branches_are_one_identity_survives_every_cleanup_pass(name: str) -> None:
    """remove-identity once returned an outer value straight from a branch (ORT refuses it)."""
    proto = onnx.parser.parse_model(IDENTITY_IF)
    model = ir.serde.deserialize_model(proto)
    run_passes(model, [get_pass_class(name)()])
    rewritten = ir.serde.serialize_model(model)
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        want = run_model(proto.SerializeToString(), feeds)["y"]
        got = run_model(rewritten.SerializeToString(), feeds)["y"]
        np.testing.assert_array_equal(got, want)


INT_SELECTED_IF = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[4, 32] x, int64 mode) => (float[4, 16] y) {
    limit = Constant <value = int64 {5}> ()
    cond = Greater(mode, limit)
    y = If(cond) <
        then_branch = wide () => (float[4, 16] t) { t = MatMul(x, wt) },
        else_branch = narrow () => (float[4, 16] e) { e = MatMul(x, we) }
    >
}
"""


def test_verification_feeds_take_both_branches_an_integer_input_selects(
    tmp_path: Path,
) -> None:
    """Seeded feeds give mode in [0, 2): only the else branch, unless the verifier looks."""
    proto = model_from_text(INT_SELECTED_IF, {"wt": (32, 16), "we": (32, 16)})
    feeds = make_feeds(input_specs(proto), seed=0)
    extras, coverage = branch_feeds(proto, feeds)
    assert coverage.taken == {"#2": {"then", "else"}}
    assert len(extras) == 1 and int(extras[0]["mode"]) > 5
    source, broken = tmp_path / "m.onnx", tmp_path / "broken.onnx"
    onnx.save(proto, str(source))
    changed = onnx.load(str(source))
    for tensor in changed.graph.initializer:
        if tensor.name == "wt":  # a wrong rewrite inside the branch the seeds never take
            tensor.CopyFrom(numpy_helper.from_array(np.zeros((32, 16), np.float32), "wt"))
    onnx.save(changed, str(broken))
    result = verify_models(source, broken, policy=AllClose(rtol=1e-5))
    assert not result.passed
    assert "branches | If '#2': then+else" in result.render()
    assert result.as_dict()["branches"] == {"#2": {"checked": ["then", "else"], "note": ""}}


def test_a_branch_no_tried_value_selects_is_named_as_unchecked() -> None:
    text = INT_SELECTED_IF.replace("int64 {5}", "int64 {1000}")
    proto = model_from_text(text, {"wt": (32, 16), "we": (32, 16)})
    extras, coverage = branch_feeds(proto, make_feeds(input_specs(proto), seed=0))
    assert extras == [] and coverage.taken == {"#2": {"else"}}
    assert "If '#2': else (not checked: then; no tried value of mode selects it)" in (
        coverage.line()
    )


BRANCHES_AFTER_A_MATMUL = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[4, 32] x, int64 mode) => (float[4, 16] y) {
    h = MatMul(x, w0)
    limit = Constant <value = int64 {5}> ()
    cond = Greater(mode, limit)
    y = If(cond) <
        then_branch = wide () => (float[4, 16] t) { t = MatMul(h, wt) },
        else_branch = narrow () => (float[4, 16] e) { e = Neg(h) }
    >
}
"""


@pytest.mark.parametrize("flags", [("--weights", "int8"), ("--activations", "int8", "--allow-slower")])
def test_quantize_verifies_both_branches_an_integer_input_selects(
    flags: tuple[str, str], run_cli, tmp_path: Path
) -> None:
    """`spa quantize` on such a model once crashed in verification (feeds took the other branch)."""
    proto = model_from_text(BRANCHES_AFTER_A_MATMUL, {"w0": (32, 16), "wt": (16, 16)})
    source, output = tmp_path / "if.onnx", tmp_path / "q.onnx"
    onnx.save(proto, str(source))
    result = run_cli("quantize", source, "-o", output, *flags)
    assert result.exit_code == 0, result.output
    assert "branches | If '#3': then+else" in result.output
    assert result.output.splitlines()[-1].startswith("PASSED")


NESTED = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 8] x, int64 trips, bool flag) => (float[2, 16] y) {
    h = MatMul(x, w1)
    r = Relu(h)
    start = MatMul(x, w0)
    cond = Constant <value = bool {1}> ()
    y = Loop(trips, cond, start) <
        body = step (int64 i, bool c, float[2, 16] s) => (bool c_out, float[2, 16] s_out) {
            s_out = If(flag) <
                then_branch = inner_a () => (float[2, 16] t) { t = Add(s, r) },
                else_branch = inner_b () => (float[2, 16] e) { e = Identity(s) }
            >
            c_out = Identity(c)
        }
    >
}
"""


def test_an_outer_value_read_two_bodies_deep_freezes_its_group() -> None:
    proto = model_from_text(NESTED, {"w1": (8, 16), "w0": (8, 16)})
    model = prepare(ir.serde.deserialize_model(proto))
    group = group_with(analyze(model), "r", 1)
    assert not group.prunable
    assert any(
        "Loop" in reason and "'r'" in reason and "Add" in reason for reason in group.frozen_reasons
    )


@pytest.mark.parametrize("command", ["quantize", "sparsify", "prune", "optimize"])
def test_a_recursive_function_holding_a_constant_weight_is_one_line(
    command: str, run_cli, tmp_path: Path
) -> None:
    """Inlining it to lift the weight once raised onnx-ir's PreconditionError."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    agraph (float[2, 32] x) => (float[2, 32] y) {{
        y = local.Dense(x)
    }}
    <domain: "local", opset_import: ["" : 17, "local" : 1]>
    Dense (a) => (b) {{
        {_constant("w", np.ones((32, 32), np.float32))}
        m = MatMul(a, w)
        b = local.Dense(m)
    }}
    """
    source, output = tmp_path / "recursive.onnx", tmp_path / "out.onnx"
    onnx.save(onnx.parser.parse_model(text), str(source))
    result = run_cli(command, source, "-o", output)
    assert result.exit_code == 1, result.output
    assert "functions must not call themselves" in result.output
    assert "Traceback" not in result.output and not output.exists()


IF_WITH_GEMMS = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 128] x, bool flag) => (float[2, 16] y) {
    val_0 = Relu(x)
    y = If(flag) <
        then_branch = first () => (float[2, 16] ya) {
            ya = Gemm(val_0, wa, ba)
        },
        else_branch = second () => (float[2, 16] yb) {
            yb = Gemm(val_0, wb, bb)
        }
    >
}
"""


def test_quantizing_a_gemm_in_each_branch_of_an_if_writes_a_model_ort_loads(
    run_cli, tmp_path: Path
) -> None:
    """A rewrite names its new values per graph (onnx-ir's ``val_0``, ``val_1``, ...),
    so each branch's new product was ``val_0``, the name of an outer value it
    then shadowed: ONNX Runtime refused the saved model ("the graph is not
    acyclic", a real Silero VAD export). Saving makes every name unique."""
    weights = {"wa": (128, 16), "ba": (16,), "wb": (128, 16), "bb": (16,)}
    source, output = tmp_path / "if_gemm.onnx", tmp_path / "q.onnx"
    onnx.save(model_from_text(IF_WITH_GEMMS, weights), str(source))
    result = run_cli("quantize", source, "-o", output, "--weights", "int4")
    assert result.exit_code == 0, result.output
    assert "nodes quantized 2" in result.output and "PASSED" in result.output
    assert "100.0% of weighted-layer MACs" in result.output  # body nodes count in the change
    proto = onnx.load(str(output))
    onnx.checker.check_model(proto, full_check=True)  # SSA across both branches
    branches = next(n for n in proto.graph.node if n.op_type == "If").attribute
    assert all("Cast" in [n.op_type for n in b.g.node] for b in branches)  # both quantized
    x = np.random.default_rng(2).standard_normal((2, 128)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        expected, actual = run_model(source, feeds)["y"].ravel(), run_model(output, feeds)["y"].ravel()
        cosine = float(expected @ actual / np.linalg.norm(expected) / np.linalg.norm(actual))
        assert cosine >= 0.98  # int4 block 128 on a 2-layer body


IF_WITH_CONVS = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 8, 10, 10] x, bool flag) => (float[1, 16, 8, 8] y) {
    val_0 = Relu(x)
    y = If(flag) <
        then_branch = first () => (float[1, 16, 8, 8] ya) {
            ya = Conv <kernel_shape = [3, 3]> (val_0, wa, ba)
        },
        else_branch = second () => (float[1, 16, 8, 8] yb) {
            yb = Conv <kernel_shape = [3, 3]> (val_0, wb, bb)
        }
    >
}
"""


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_int4_conv_inside_branches_converts_the_opset_and_quantizes_them(
    method: str, tmp_path: Path
) -> None:
    """An opset-17 model whose Conv layers all sit in If branches (a real Silero VAD
    export) was left unchanged at int4 ("model opset 16 < 21"): the opset conversion only
    looked for main-graph Conv. GPTQ collects no patch Hessian inside a body (its values
    are not model outputs), so those layers get RTN there."""
    from spa.workflows.quantize import quantize_model

    weights = {"wa": (16, 8, 3, 3), "ba": (16,), "wb": (16, 8, 3, 3), "bb": (16,)}
    source, output = tmp_path / "if_conv.onnx", tmp_path / "q.onnx"
    onnx.save(model_from_text(IF_WITH_CONVS, weights), str(source))
    rng = np.random.default_rng(3)
    calibration = [{"x": rng.standard_normal((1, 8, 10, 10)).astype(np.float32), "flag": np.array(True)}
                   for _ in range(4)]  # fmt: skip
    result = quantize_model(source, output, bits=4, block=32, method=method, keep_float=(),
                            calib=calibration if method == "gptq" else None)  # fmt: skip
    assert [d["action"] for d in result.decisions] == ["quantized", "quantized"], result.decisions
    if method == "gptq":
        assert all("inside an If/Loop/Scan body" in d["reason"] for d in result.decisions)
        assert result.calibration.startswith("none: no layer's input can be read")
    assert result.passed and result.verification is not None and result.verification.passed
    proto = onnx.load(str(output))
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        expected, actual = run_model(source, feeds)["y"].ravel(), run_model(output, feeds)["y"].ravel()
        assert float(expected @ actual / np.linalg.norm(expected) / np.linalg.norm(actual)) >= 0.98


def test_weights_read_only_inside_bodies_are_left_by_prune_with_that_reason(
    run_cli, tmp_path: Path
) -> None:
    """A model whose layers all sit in If branches (Silero VAD's spox export) was
    reported as "op type none: its weights belong to no channel group"."""
    weights = {"wa": (128, 16), "ba": (16,), "wb": (128, 16), "bb": (16,)}
    source = tmp_path / "if_gemm.onnx"
    onnx.save(model_from_text(IF_WITH_GEMMS, weights), str(source))
    result = run_cli("prune", source, "-o", tmp_path / "p.onnx", "--ratio", "0.5")
    assert result.exit_code == 0, result.output
    assert "left 100.0% params, 100.0% MACs (4 weights" in result.output, result.output
    assert "read only inside an If/Loop/Scan body: spa prunes the main graph" in result.output
