"""Tile-shared GQSA (docs/formats.md (c)): the selection (shared by the 16 columns of a
tile, a whole number of groups per 128-k slab), the two stages on that mask, the
constraint errors, the ``gqsa`` pass's ``layout`` option with its skips, and
``spa sparsify --gqsa-layout tile`` (ORT CPU through the reference lowering)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from spa.errors import UserError
from spa.passes.gqsa import GQSAPass, check_gqsa_options
from spa.passes.plugins import GQSAToPluginPass
from spa.quant.gqsa import (
    gqsa_quantize,
    layer_error,
    select_groups,
    tile_keep_per_slab,
)
from spa.quant.gqsa_ir import read_gqsa
from spa.trt import repack
from tests.test_gqsa import _correlated, _model, _run


def _tiles_share_groups(kept: np.ndarray, keep_per_slab: int) -> bool:
    """Every 16 columns keep the same groups, ``keep_per_slab`` of every 8."""
    blocks, cols = kept.shape
    tiles = kept.reshape(blocks, cols // 16, 16)
    per_slab = kept.reshape(blocks // 8, 8, cols).sum(axis=1)
    return bool(np.all(tiles == tiles[:, :, :1]) and np.all(per_slab == keep_per_slab))


@pytest.mark.parametrize(("sparsity", "keep"), [(0.5, 4), (0.75, 2), (0.125, 7), (0.875, 1)])
def test_tile_keep_per_slab(sparsity: float, keep: int) -> None:
    assert tile_keep_per_slab(sparsity) == keep


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.2])
def test_tile_sparsity_must_remove_whole_groups_per_slab(sparsity: float) -> None:
    with pytest.raises(ValueError, match=r"use a multiple of 1/8 in 0\.125\.\.0\.875"):
        tile_keep_per_slab(sparsity)


def test_tile_selection_sums_saliency_over_the_tile() -> None:
    """In slab 0, group 2 is the largest in 15 columns and tiny in column 0; group 5 is large
    only in column 0. Per column, column 0 would keep 5; the tile (summed) keeps 2 everywhere."""
    weight = np.full((128, 16), 0.1)
    weight[32:48, 1:] = 3.0  # group 2, columns 1..15
    weight[80:96, 0] = 5.0  # group 5, column 0
    weight[0:16, :] = 1.5  # group 0: second in every column, second in the tile
    column = select_groups(weight, None, 16, 2)
    assert column[5, 0] and not column[2, 0]
    tile = select_groups(weight, None, 16, 2, layout="tile")
    assert np.array_equal(np.flatnonzero(tile[:, 0]), [0, 2]) and _tiles_share_groups(tile, 2)


def test_tile_selection_ties_keep_the_lowest_positions() -> None:
    tile = select_groups(np.ones((256, 32)), None, 16, 6, layout="tile")
    assert np.array_equal(np.flatnonzero(tile[:, 7]), [0, 1, 2, 8, 9, 10])


def test_tile_selection_errors() -> None:
    with pytest.raises(ValueError, match="give a multiple of 2"):
        select_groups(np.ones((256, 16)), None, 16, 5, layout="tile")
    with pytest.raises(ValueError, match=r"N % 16 == 0 \(got group 16, K=128, N=8\)"):
        select_groups(np.ones((128, 8)), None, 16, 4, layout="tile")
    with pytest.raises(ValueError, match="layout 'row'"):
        select_groups(np.ones((128, 16)), None, 16, 4, layout="row")


@pytest.mark.parametrize("calibrated", [False, True])
@pytest.mark.parametrize(("sparsity", "keep"), [(0.5, 4), (0.75, 2)])
def test_tile_quantize_keeps_shared_groups_and_both_stages_work(
    calibrated: bool, sparsity: float, keep: int
) -> None:
    rng = np.random.default_rng(keep)
    weight = rng.standard_normal((256, 32)).astype(np.float32)
    x = _correlated(1024, 256, 5)
    hessian = 2 * x.T @ x / len(x) if calibrated else None
    frozen = gqsa_quantize(weight, hessian, sparsity=sparsity, layout="tile", refine=False)
    refined = gqsa_quantize(weight, hessian, sparsity=sparsity, layout="tile")
    assert _tiles_share_groups(refined.kept, keep)
    assert np.array_equal(frozen.q, refined.q) and np.array_equal(frozen.kept, refined.kept)
    assert np.all(refined.q[np.repeat(~refined.kept, 16, axis=0)] == 0)
    assert np.abs(refined.q).max() <= 7
    before = layer_error(hessian, weight, frozen.dequantize())
    after = layer_error(hessian, weight, refined.dequantize())
    assert after < before  # stage 2 still lowers the error on the shared mask
    if calibrated:  # stage 1's error propagation still pays off against data-free
        free = gqsa_quantize(weight, None, sparsity=sparsity, layout="tile")
        assert after < 0.7 * layer_error(hessian, weight, free.dequantize())


@pytest.mark.parametrize(
    ("shape", "group", "sparsity", "message"),
    [
        ((192, 16), 16, 0.5, r"tile layout needs group 16, K % 128 == 0 and N % 16 == 0 \(got "
         r"group 16, K=192, N=16\): use layout='column'"),
        ((128, 24), 16, 0.5, "N=24"),
        ((128, 16), 32, 0.5, "got group 32"),
        ((128, 16), 16, 0.3, "sparsity 0.3 removes 2.4 of the 8 groups"),
    ],
)  # fmt: skip
def test_tile_quantize_errors(
    shape: tuple[int, int], group: int, sparsity: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gqsa_quantize(np.ones(shape, np.float32), None, group=group, sparsity=sparsity,
                      layout="tile")  # fmt: skip


TWO_LAYERS = """
<ir_version: 10, opset_import: ["" : 21]>
two (float[B, 128] X) => (float[B, 16] Y) {
    H0 = MatMul(X, W1)
    H1 = Relu(H0)
    Y = MatMul(H1, W2)
}
"""


def _two_layers() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    weights = {
        "W1": (rng.standard_normal((128, 48)) / 8).astype(np.float32),
        "W2": (rng.standard_normal((48, 16)) / 6).astype(np.float32),  # K = 48: not tile
    }
    return _model(TWO_LAYERS, weights), weights


@pytest.mark.parametrize("form", ["reference", "plugin"])
def test_tile_pass_skips_layers_that_do_not_fit(form: str) -> None:
    proto, weights = _two_layers()
    model = ir.serde.deserialize_model(proto)
    spa_pass = GQSAPass(group=16, sparsity=0.5, form=form, layout="tile")
    assert spa_pass(model).statistics["nodes_quantized"] == 1
    (skipped,) = [d for d in spa_pass.decisions if d.action == "skipped"]
    assert skipped.weight == "W2"
    assert skipped.reason == (
        "tile layout needs group 16, K % 128 == 0 and N % 16 == 0 (got group 16, K=48, N=16); "
        "--gqsa-layout column would take this layer"
    )
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    if form == "plugin":
        (node,) = [n for n in model.graph if n.op_type == "GroupSparseQuantMatMul"]
        arrays, reason = read_gqsa(node)
        assert arrays is not None, reason
        tile = repack.GQSAArrays(arrays.values, arrays.col_idx, arrays.row_ptr, arrays.scales,
                                 arrays.k, arrays.n, arrays.group)  # fmt: skip
        assert repack.tile_keep(tile) == 4
        assert GQSAToPluginPass().call(model).statistics["nodes_converted"] == 1
        (node,) = [n for n in model.graph if n.domain == "spa"]
        assert node.op_type == "GroupSparseTileMatMul" and node.attributes.get_int("keep") == 4
        return
    (actual,) = _run(model, {"X": x})
    w1 = spa_pass.decoded["W1"]()
    assert _tiles_share_groups((w1 != 0).reshape(8, 16, 48).any(axis=1), 4)
    expected = np.maximum(x @ w1, 0) @ weights["W2"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_tile_options_are_user_errors() -> None:
    with pytest.raises(
        UserError, match=r"layout tile needs group size 16 \(got 32\): use --group 16"
    ):
        check_gqsa_options(32, 0.5, 4, "reference", "tile")
    with pytest.raises(UserError, match=r"sparsity 0\.3: layout tile removes a whole number"):
        GQSAPass(sparsity=0.3, layout="tile")
    with pytest.raises(UserError, match="layout tile is for the 4-bit"):
        GQSAPass(bits=8, layout="tile")
    with pytest.raises(UserError, match="layout 'rows': choose one of column, tile"):
        GQSAPass(layout="rows")


def test_sparsify_gqsa_tile_cli(run_cli, tmp_path: Path) -> None:
    proto, _ = _two_layers()
    source = tmp_path / "two.onnx"
    onnx.save(proto, str(source))
    np.savez(
        tmp_path / "calib.npz", X=_correlated(64, 128, 2).astype(np.float32).reshape(16, 4, 128)
    )
    result = run_cli(
        "sparsify", source, "-o", tmp_path / "tile.onnx", "--pattern", "gqsa", "--gqsa-layout",
        "tile", "--sparsity", "0.75", "--form", "plugin", "--calib", tmp_path / "calib.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "PASSED | sparsify gqsa tile g16 75% int4 -> plugin" in result.output
    assert "--gqsa-layout column would take this layer" in result.output
    column = run_cli(
        "sparsify", source, "-o", tmp_path / "column.onnx", "--pattern", "gqsa", "--sparsity",
        "0.125",
    )  # fmt: skip
    assert column.exit_code == 0, column.output
    assert "PASSED | sparsify gqsa g16 12.5% int4 -> reference" in column.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gqsa-layout", "tile", "--group", "32"], "layout tile needs group size 16"),
        (["--gqsa-layout", "tile", "--sparsity", "0.3"], "sparsity 0.3: layout tile"),
        (["--pattern", "2:4", "--gqsa-layout", "tile"], "--gqsa-layout apply to --pattern gqsa"),
    ],
)
def test_sparsify_gqsa_tile_bad_options_one_line_exit_1(
    run_cli, tmp_path: Path, args: list[str], message: str
) -> None:
    proto, _ = _two_layers()
    source = tmp_path / "two.onnx"
    onnx.save(proto, str(source))
    pattern = [] if "--pattern" in args else ["--pattern", "gqsa"]
    result = run_cli("sparsify", source, "-o", tmp_path / "out.onnx", *pattern, *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "out.onnx").exists()
