"""factorize-embeddings (spa.passes.factorize) and `spa prune --embedding-rank`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from spa.errors import UserError
from spa.model_io import load_model, save_model
from spa.passes.factorize import FactorizeEmbeddingsPass, resolve_rank
from spa.verify import create_session

MODEL = """
<ir_version: 10, opset_import: ["" : 17]>
encoder (int64[B, S] ids, int64[B, S] positions) => (float[B, S, 8] Y) {{
    T = Gather <axis = 0> (table, ids)
    P = Gather <axis = 0> (pos_table, positions)
    E = Add(T, P)
    H = MatMul(E, W1)
    G = Relu(H)
    O = MatMul(G, W2)
    R = Add(O, E)
    {tail}
}}
"""
VOCAB, WIDTH = 96, 8


def _model(path: Path, tied: bool = False, seed: int = 0) -> Path:
    tail = "Tt = Transpose <perm = [1, 0]> (table)\n    Y = MatMul(R, Tt)" if tied else "Y = Identity(R)"
    text = MODEL.format(tail=tail)
    if tied:
        text = text.replace("float[B, S, 8] Y", f"float[B, S, {VOCAB}] Y")
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((VOCAB, WIDTH))
    arrays = {
        "table": table,
        "pos_table": rng.standard_normal((4, WIDTH)) * 0.1,
        "W1": rng.standard_normal((WIDTH, 16)) / np.sqrt(WIDTH),
        "W2": rng.standard_normal((16, WIDTH)) / 4.0,
    }
    for name, array in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    onnx.save(model, path)
    return path


def _feeds(batch: int = 2, seq: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, VOCAB, (batch, seq), dtype=np.int64)
    positions = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
    return {"ids": ids, "positions": positions}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return create_session(str(path)).run(None, feeds)[0]


def test_factorized_model_computes_the_rank_r_table(tmp_path: Path) -> None:
    """The output equals the model whose table is its best rank-3 approximation
    (numpy's SVD), the position table (4 rows < 8 per column) is not touched."""
    source = _model(tmp_path / "m.onnx")
    model = load_model(source)
    factorize = FactorizeEmbeddingsPass(3)
    result = factorize(model)
    output = save_model(model, tmp_path / "f.onnx")
    assert result.modified and result.statistics["tables_factorized"] == 1
    (decision,) = factorize.decisions
    assert (decision.table, decision.rank, decision.rows, decision.columns) == ("table", 3, VOCAB, WIDTH)
    assert decision.params_after == (VOCAB + WIDTH) * 3
    proto = onnx.load(str(source))
    table = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "table"))
    u, s, vt = np.linalg.svd(table.astype(np.float64), full_matrices=False)
    assert decision.energy == pytest.approx(float((s[:3] ** 2).sum() / (s**2).sum()), abs=1e-5)
    for tensor in proto.graph.initializer:
        if tensor.name == "table":
            tensor.CopyFrom(numpy_helper.from_array(((u[:, :3] * s[:3]) @ vt[:3]).astype(np.float32), "table"))
    onnx.save(proto, tmp_path / "expected.onnx")
    names = {t.name for t in onnx.load(str(output)).graph.initializer}
    assert "table" not in names and "pos_table" in names
    feeds = _feeds()
    np.testing.assert_allclose(
        _run(output, feeds), _run(tmp_path / "expected.onnx", feeds), rtol=1e-4, atol=1e-5
    )


def test_tied_tables_and_useless_ranks_are_left_with_a_reason(tmp_path: Path) -> None:
    model = load_model(_model(tmp_path / "tied.onnx", tied=True))
    factorize = FactorizeEmbeddingsPass(2)
    assert not factorize(model).modified
    (decision,) = factorize.decisions
    assert decision.action == "skipped" and "also read by Transpose" in decision.reason
    model = load_model(_model(tmp_path / "m.onnx"))
    factorize = FactorizeEmbeddingsPass(8)  # (96 + 8) * 8 >= 96 * 8
    assert not factorize(model).modified
    assert "saves nothing" in factorize.decisions[0].reason


def test_rank_shares_and_bad_ranks() -> None:
    assert resolve_rank(0.5, 384) == 192 and resolve_rank(0.3, 10) == 3 and resolve_rank(16, 384) == 16
    for bad in (0, -1, 1.5):
        with pytest.raises(UserError, match="--embedding-rank"):
            resolve_rank(bad, 384)


def test_prune_cli_verifies_the_pruning_and_reports_the_factorization(run_cli, tmp_path: Path) -> None:
    source = _model(tmp_path / "m.onnx")
    output, report = tmp_path / "p.onnx", tmp_path / "r.json"
    result = run_cli("prune", source, "-o", output, "--ratio", "0.25", "--embedding-rank", "0.5",
                     "--round-to", "1", "--verify", "--dim", "B=2", "--dim", "S=4", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "factorized table [96x8] -> rank 4" in result.output
    assert "embeddings factorized: rank 4" in result.output and "PASSED" in result.output
    data = json.loads(report.read_text())
    assert data["factorization"][0]["action"] == "factorized"
    assert data["groups_pruned"] >= 1 and data["params_after"] < data["params_before"]
    names = {t.name for t in onnx.load(str(output)).graph.initializer}
    assert "table_low4" in names and "table" not in names
    # only the factorization: nothing to prune is not a no-op then
    only = run_cli("prune", source, "-o", tmp_path / "f.onnx", "--ratio", "0.25",
                   "--exclude", ".*", "--embedding-rank", "2")  # fmt: skip
    assert only.exit_code == 0, only.output
    assert "table_low2" in {t.name for t in onnx.load(str(tmp_path / "f.onnx")).graph.initializer}
