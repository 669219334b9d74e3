"""GPTQ against RTN on correlated inputs, and calibration Hessians through ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from spa.calibration import collect_hessians, file_name_for_input, load_calibration
from spa.errors import UserError
from spa.quant.blockwise import dequantize, quantize_rtn
from spa.quant.gptq import gptq_quantize, hessian_error, upper_cholesky_of_inverse


def _correlated_inputs(seed: int, rows: int, k: int) -> np.ndarray:
    """Inputs with strongly correlated channels of very different scales (like LLM activations)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((k, k)) * 0.4 + np.eye(k)
    scales = rng.uniform(0.2, 3.0, k)
    return (rng.standard_normal((rows, k)) @ mixing) * scales


@pytest.mark.parametrize(
    ("bits", "block", "symmetric", "act_order"),
    [(4, 32, True, False), (4, 64, False, False), (4, 32, True, True), (8, 32, True, False)],
)
def test_gptq_beats_rtn_on_calibration_data(
    bits: int, block: int, symmetric: bool, act_order: bool
) -> None:
    pool = _correlated_inputs(0, 2048, 128)
    x, held_out = pool[:1024], pool[1024:]
    weight = np.random.default_rng(1).standard_normal((128, 48)).astype(np.float32)
    hessian = 2 * x.T @ x
    rtn = dequantize(quantize_rtn(weight, bits, block, symmetric))
    gptq = dequantize(gptq_quantize(weight, hessian, bits, block, symmetric, act_order=act_order))
    rtn_error = np.linalg.norm(x @ weight - x @ rtn)
    gptq_error = np.linalg.norm(x @ weight - x @ gptq)
    assert gptq_error < 0.8 * rtn_error
    assert hessian_error(hessian, weight, gptq) < hessian_error(hessian, weight, rtn)
    # Held-out data from the same distribution: GPTQ still wins.
    assert np.linalg.norm(held_out @ (weight - gptq)) < np.linalg.norm(held_out @ (weight - rtn))


def test_gptq_without_data_or_with_identity_is_rtn() -> None:
    weight = np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32)
    rtn = quantize_rtn(weight, 4, 32, True)
    for hessian in (None, np.eye(64)):
        result = gptq_quantize(weight, hessian, 4, 32, True)
        np.testing.assert_array_equal(result.q, rtn.q)
        np.testing.assert_array_equal(result.scales, rtn.scales)


def test_gptq_handles_dead_inputs_and_short_last_block() -> None:
    x = _correlated_inputs(3, 256, 40)
    x[:, 5] = 0.0  # an input that is always zero: H[5, 5] = 0
    weight = np.random.default_rng(4).standard_normal((40, 8)).astype(np.float32)
    result = gptq_quantize(weight, 2 * x.T @ x, 4, 16, False, act_order=True)
    assert result.q.shape == (40, 8) and result.scales.shape == (3, 8)
    assert np.isfinite(dequantize(result)).all()


TWO_LAYER = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[B, 16] X) => (float[B, 8] Y) {
    H = MatMul(X, W1)
    A = Relu(H)
    Y = MatMul(A, W2)
}
"""


def _two_layer() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(TWO_LAYER)
    for name, shape in (("W1", (16, 32)), ("W2", (32, 8))):
        model.graph.initializer.append(
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    return model


def test_collect_hessians_matches_numpy() -> None:
    model = _two_layer()
    rng = np.random.default_rng(5)
    feeds = [{"X": rng.standard_normal((3, 16)).astype(np.float32)} for _ in range(4)]
    statistics = collect_hessians(model, ["X", "A"], iter(feeds))
    x = np.concatenate([feed["X"] for feed in feeds]).astype(np.float64)
    w1 = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    a = np.maximum(x @ w1, 0)
    assert statistics["X"].rows == 12 and statistics["A"].rows == 12
    np.testing.assert_allclose(statistics["X"].xtx, x.T @ x, rtol=1e-6)
    np.testing.assert_allclose(statistics["A"].xtx, a.T @ a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(statistics["X"].hessian, 2 * x.T @ x / 12, rtol=1e-6)


def test_calibration_sources(tmp_path: Path) -> None:
    samples = np.random.default_rng(6).standard_normal((3, 2, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", X=samples)
    from_npz = list(load_calibration(tmp_path / "calib.npz", ["X"]))
    assert len(from_npz) == 3
    np.testing.assert_array_equal(from_npz[1]["X"], samples[1])
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / file_name_for_input("X"), samples)
    from_folder = list(load_calibration(folder, ["X"]))
    np.testing.assert_array_equal(from_folder[2]["X"], samples[2])
    with pytest.raises(UserError, match="no array for input"):
        load_calibration(tmp_path / "calib.npz", ["X", "mask"])
    with pytest.raises(UserError, match=r"no 'mask\.npy'"):
        load_calibration(folder, ["mask"])
    with pytest.raises(UserError, match=r"not an \.npz"):
        load_calibration(tmp_path / "calib.txt", ["X"])
    with pytest.raises(UserError, match="no samples"):
        collect_hessians(_two_layer(), ["X"], [])


WIDE_LINE = """
<ir_version: 10, opset_import: ["" : 21]>
line (float[1, 4, 8, W] x) => (float[1, 6] y) {
    c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wc)
    r = Relu(c)
    p = GlobalAveragePool(r)
    f = Flatten(p)
    y = MatMul(f, wm)
}
"""


def test_a_folder_of_npz_samples_of_different_widths_calibrates(run_cli, tmp_path: Path) -> None:
    """Text lines of different widths cannot share one array: a folder of .npz files, one
    sample each, is read file by file (shapes may differ), for the Hessians, the held-out
    quality and the verification's symbolic dims; a file lacking an input is one line."""
    rng = np.random.default_rng(7)
    weights = {"wc": rng.standard_normal((16, 4, 3, 3)).astype(np.float32),
               "wm": rng.standard_normal((16, 6)).astype(np.float32)}  # fmt: skip
    model = onnx.parser.parse_model(WIDE_LINE)
    model.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in weights.items())
    onnx.save(model, str(tmp_path / "m.onnx"))
    folder = tmp_path / "lines"
    folder.mkdir()
    widths = [12, 20, 33, 17, 25, 40, 9, 28]
    for index, width in enumerate(widths):
        np.savez(folder / f"{index:03d}.npz", x=rng.standard_normal((1, 4, 8, width)).astype(np.float32))
    feeds = list(load_calibration(folder, {"x": 4}))
    assert [feed["x"].shape[-1] for feed in feeds] == widths  # file order, one feed each
    result = run_cli("quantize", tmp_path / "m.onnx", "-o", tmp_path / "q.onnx", "--weights", "int4",
                     "--block", "16", "--calib", folder, "--all-layers", "--allow-slower")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "calibration: hessians for 1 activations and 1 Conv patch Hessians (--method auto" in result.output
    assert "quality not measured" not in result.output
    np.savez(folder / "999.npz", image=np.zeros((1, 4, 8, 5), np.float32))
    with pytest.raises(UserError, match=r"999\.npz: no array for input\(s\) \['x'\]"):
        load_calibration(folder, {"x": 4})


def _smooth_images(seed: int, count: int, channels: int = 3, size: int = 16) -> np.ndarray:
    """Images whose neighbouring pixels are correlated (random 4x4 images, upsampled), so
    a Conv's im2col patches have a far-from-diagonal Hessian."""
    coarse = np.random.default_rng(seed).standard_normal((count, channels, 4, 4))
    return np.repeat(np.repeat(coarse, size // 4, axis=2), size // 4, axis=3).astype(np.float32)


def test_gptq_conv_beats_rtn_in_blocks_and_is_rtn_without_data() -> None:
    from spa.calibration import ConvPatches, conv_patches
    from spa.quant.gptq import conv_matrix, gptq_conv

    weight = np.random.default_rng(7).standard_normal((8, 3, 3, 3)).astype(np.float32)
    spec = ConvPatches("x", (3, 3), pads=(1, 1, 1, 1))
    patches = conv_patches(_smooth_images(8, 6).astype(np.float64), spec)
    held_out = conv_patches(_smooth_images(9, 6).astype(np.float64), spec)
    # the patches' (kh, kw, c) columns against conv_matrix's (c, kh, kw) rows
    in_patch_order = weight.transpose(2, 3, 1, 0).reshape(27, 8)
    matrix = conv_matrix(weight)
    np.testing.assert_array_equal(matrix, weight.reshape(8, 27).T)
    for bits, block, symmetric in ((4, 9, True), (4, 27, False), (8, 27, True)):
        rtn = quantize_rtn(matrix, bits, block, symmetric)
        gptq = gptq_conv(weight, 2 * patches.T @ patches, bits, block, symmetric)
        assert gptq.shape == (27, 8) and gptq.scales.shape == (27 // block, 8)
        errors = []
        for quantized in (rtn, gptq):
            decoded = dequantize(quantized).T.reshape(weight.shape)
            as_patches = decoded.transpose(2, 3, 1, 0).reshape(27, 8)
            errors.append(np.linalg.norm(held_out @ (in_patch_order - as_patches)))
        assert errors[1] < 0.8 * errors[0], (bits, block, symmetric, errors)
        # an identity Hessian propagates no error: RTN, integers and scales
        same = gptq_conv(weight, np.eye(27), bits, block, symmetric)
        np.testing.assert_array_equal(same.q, rtn.q)
        np.testing.assert_array_equal(same.scales, rtn.scales)
    with pytest.raises(ValueError, match="does not match 27 patch columns"):
        gptq_conv(weight, np.eye(9), 4, 9)


def test_an_input_too_wide_for_a_hessian_gets_rtn_with_the_reason(tmp_path: Path) -> None:
    """A K x K Hessian past MAX_HESSIAN_K is not collected (VGG's K = 25088 ran a 24 GiB
    machine out of memory): that layer is RTN with the reason, the others GPTQ."""
    from spa.calibration import MAX_HESSIAN_K
    from spa.workflows.quantize import quantize_model

    wide = MAX_HESSIAN_K + 32
    model = onnx.parser.parse_model(f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[1, {wide}] X) => (float[1, 8] Y) {{
    H = MatMul(X, W1)
    Y = MatMul(H, W2)
}}
""")
    rng = np.random.default_rng(0)
    for name, shape in (("W1", (wide, 32)), ("W2", (32, 8))):
        model.graph.initializer.append(
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    onnx.save(model, str(tmp_path / "wide.onnx"))
    calibration = [{"X": rng.standard_normal((1, wide)).astype(np.float32)} for _ in range(2)]
    result = quantize_model(tmp_path / "wide.onnx", tmp_path / "q.onnx", bits=4, block=32,
                            method="gptq", calib=calibration, keep_float=(), allow_slower=True)  # fmt: skip
    notes = {d["weight"]: d["reason"] for d in result.decisions}
    assert notes["W1"] == f"K={wide} > {MAX_HESSIAN_K}: its K x K Hessian would take 2.0 GiB: RTN"
    assert notes["W2"] == ""  # GPTQ on its collected Hessian
    assert result.calibration == "hessians for 1 activations"
    assert result.passed


def test_auto_method_uses_gptq_when_calibration_data_is_given(tmp_path: Path) -> None:
    """The default ``method="auto"``: GPTQ at 4 bits with data, RTN without data or at 8 bits;
    the calibration line says what auto chose."""
    from spa.workflows.quantize import quantize_model

    onnx.save(_two_layer(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(1)
    calibration = [{"X": rng.standard_normal((3, 16)).astype(np.float32)} for _ in range(4)]
    common = {"block": 16, "allow_slower": True, "keep_float": ()}
    auto = quantize_model(tmp_path / "m.onnx", tmp_path / "a.onnx", bits=4, calib=calibration,
                          **common)  # fmt: skip
    assert auto.options["method"] == "gptq"
    assert auto.calibration == (
        "hessians for 2 activations (--method auto: gptq, since --calib was given)"
    )
    explicit = quantize_model(tmp_path / "m.onnx", tmp_path / "g.onnx", bits=4, method="gptq",
                              calib=calibration, **common)  # fmt: skip
    assert _integers(tmp_path / "a.onnx") == _integers(tmp_path / "g.onnx")
    assert explicit.calibration == "hessians for 2 activations"
    without = quantize_model(tmp_path / "m.onnx", tmp_path / "r.onnx", bits=4, **common)
    assert (without.options["method"], without.calibration) == ("rtn", "not needed (rtn)")
    assert _integers(tmp_path / "r.onnx") != _integers(tmp_path / "a.onnx")
    eight = quantize_model(tmp_path / "m.onnx", tmp_path / "8.onnx", bits=8, calib=calibration,
                           **common)  # fmt: skip
    assert eight.options["method"] == "rtn"


def _integers(path: Path) -> list[bytes]:
    """The integer initializers of a quantized model, in file order."""
    model = onnx.load(str(path))
    return [t.raw_data or numpy_helper.to_array(t).tobytes() for t in model.graph.initializer
            if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
                               onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]  # fmt: skip


def test_rtn_with_calibration_data_says_gptq_would_use_it(tmp_path: Path) -> None:
    from spa.workflows.quantize import quantize_model

    onnx.save(_two_layer(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(1)
    calibration = [{"X": rng.standard_normal((3, 16)).astype(np.float32)} for _ in range(4)]
    result = quantize_model(tmp_path / "m.onnx", tmp_path / "q.onnx", bits=4, block=16,
                            method="rtn", calib=calibration, allow_slower=True, keep_float=())  # fmt: skip
    assert result.calibration == (
        "not needed (rtn; the calibration samples measure quality only, "
        "--method gptq would also use them to quantize)"
    )
    assert result.quality is not None  # the samples did measure quality


@pytest.mark.parametrize("size", [7, 128, 300])
def test_upper_cholesky_of_inverse(size: int) -> None:
    """U is upper triangular with U^T U = (H + damp I)^-1, through the halving triangular
    inverse (300 splits twice, down to blocks <= 128); a dead input gets a unit diagonal."""
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2 * size, size)) @ (np.eye(size) + 0.3 * rng.standard_normal((size, size)))
    hessian = x.T @ x / len(x)
    hessian[2, :] = hessian[:, 2] = 0.0  # a dead input
    upper = upper_cholesky_of_inverse(hessian, percdamp=0.01)
    assert np.array_equal(upper, np.triu(upper))
    repaired = hessian.copy()
    repaired[2, 2] = 1.0
    diagonal = np.diag(repaired)
    damped = repaired + 0.01 * float(np.mean(diagonal)) * np.eye(size)
    np.testing.assert_allclose(upper.T @ upper @ damped, np.eye(size), atol=1e-9)
