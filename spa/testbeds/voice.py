"""Resemblyzer's speaker encoder (a 3-layer LSTM), scored by equal error rate on synthetic voices.

Model: ``resemblyzer/pretrained.pt`` of the ``Resemblyzer`` 0.1.4 wheel (Apache-2.0; the GE2E
speaker encoder of Wan et al. 2018 as trained by Resemble AI). The wheel requires torch,
librosa and webrtcvad; spa needs none of them, so install it with
``pip install --no-deps Resemblyzer==0.1.4``. The checkpoint is a legacy ``torch.save`` file,
read without torch (:mod:`spa.testbeds.torch_legacy`); :func:`model_path` writes the network as
``torch.onnx.export`` lays out a ``batch_first`` ``nn.LSTM`` (opset 17): input ``mels`` float32
``[batch, frames, 40]``, ``Transpose`` to time-major, three ONNX ``LSTM`` nodes of 256 units
(PyTorch's gate order i, f, g, o rewritten as ONNX's i, o, f, c; the two bias vectors
concatenated), the last layer's final hidden state through ``Linear(256, 256)``, ``Relu`` and
L2 normalisation; output ``embeds`` ``[batch, 256]``.

Pre-processing as Resemblyzer's ``preprocess_wav`` and ``embed_utterance``, in NumPy: the 16 kHz
waveform raised (never lowered) to -30 dBFS; the power mel spectrogram librosa computes with
Resemblyzer's settings (25 ms Hann window, n_fft 400, hop 160, centred with zero padding, 40
Slaney mel bands from 0 to 8 kHz, Slaney-normalised), not logged; partial windows of 160 frames
every 77 frames (1.3 per second), the last kept when it covers 75%; the utterance embedding is
the L2-normalised mean of its partial embeddings. Resemblyzer's voice-activity trimming
(webrtcvad) is left out: the synthetic utterances have no long silences.

Metric: equal error rate of speaker verification over every pair of evaluation utterances
(same speaker: target; different: impostor) scored by cosine similarity, on 24 synthetic
speakers x 4 utterances (:mod:`spa.testbeds.synthetic_voices`). Calibration: partial windows
of utterances of other synthetic speakers (the calibration split's generators).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spa.errors import UserError
from spa.testbeds import Testbed, cache_dir, session_for
from spa.testbeds.packages import package_file
from spa.testbeds.synthetic_voices import SAMPLE_RATE, speaker, utterance
from spa.testbeds.torch_legacy import read_legacy_checkpoint

__all__ = ["DENSE", "EVAL_SPEAKERS", "TESTBEDS", "UTTERANCES", "build_encoder_onnx",
           "calibration_feeds", "embed_utterance", "equal_error_rate", "evaluate",
           "mel_spectrogram", "model_path", "partial_mels"]

INSTALL = "pip install --no-deps Resemblyzer==0.1.4 (its own dependencies pull in torch)"
EVAL_SPEAKERS, UTTERANCES = 24, 4
#: Full-evaluation figures of the dense model (docs/testbeds.md says how they were measured).
DENSE = {"eer": 0.1696}
_N_FFT, _HOP, _MELS, _PARTIAL = 400, 160, 40, 160
_ONNX_NAME = "resemblyzer-encoder.spa-v1.onnx"


def _gates_to_onnx(weight: np.ndarray) -> np.ndarray:
    """PyTorch LSTM gate blocks (i, f, g, o) along axis 0 -> ONNX order (i, o, f, c)."""
    i, f, g, o = np.split(weight, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def build_encoder_onnx(state: dict[str, np.ndarray], layers: int = 3) -> onnx.ModelProto:
    """The encoder graph from Resemblyzer's ``model_state`` (``lstm.*``, ``linear.*``)."""
    hidden = state["lstm.weight_hh_l0"].shape[1]
    nodes = [helper.make_node("Transpose", ["mels"], ["time_major"], name="/lstm/Transpose",
                              perm=[1, 0, 2])]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axes_1"),
             numpy_helper.from_array(np.array([0], np.int64), "axes_0")]
    x = "time_major"
    for layer in range(layers):
        names = [f"lstm.weight_ih_l{layer}", f"lstm.weight_hh_l{layer}", f"lstm.bias_l{layer}"]
        bias = np.concatenate([_gates_to_onnx(state[f"lstm.bias_ih_l{layer}"]),
                               _gates_to_onnx(state[f"lstm.bias_hh_l{layer}"])])
        for name, value in zip(names, (_gates_to_onnx(state[names[0]]),
                                       _gates_to_onnx(state[names[1]]), bias), strict=True):
            inits.append(numpy_helper.from_array(value[None].astype(np.float32), name))
        outputs = [f"/lstm/LSTM_{layer}_Y", f"/lstm/LSTM_{layer}_Y_h", f"/lstm/LSTM_{layer}_Y_c"]
        nodes.append(helper.make_node("LSTM", [x, *names], outputs, name=f"/lstm/LSTM_{layer}",
                                      hidden_size=hidden))
        if layer < layers - 1:  # Y [seq, 1, batch, hidden] -> [seq, batch, hidden]
            x = f"/lstm/Squeeze_{layer}_output_0"
            nodes.append(helper.make_node("Squeeze", [outputs[0], "axes_1"], [x],
                                          name=f"/lstm/Squeeze_{layer}"))
    last = f"/lstm/LSTM_{layers - 1}_Y_h"
    inits += [numpy_helper.from_array(np.ascontiguousarray(state["linear.weight"].T), "linear.weight"),
              numpy_helper.from_array(state["linear.bias"], "linear.bias")]
    nodes += [
        helper.make_node("Squeeze", [last, "axes_0"], ["/Squeeze_output_0"], name="/Squeeze"),
        helper.make_node("MatMul", ["/Squeeze_output_0", "linear.weight"], ["/linear/MatMul_output_0"],
                         name="/linear/MatMul"),
        helper.make_node("Add", ["linear.bias", "/linear/MatMul_output_0"], ["/linear/Add_output_0"],
                         name="/linear/Add"),
        helper.make_node("Relu", ["/linear/Add_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node("ReduceL2", ["/relu/Relu_output_0"], ["/ReduceL2_output_0"],
                         name="/ReduceL2", axes=[1], keepdims=1),
        helper.make_node("Div", ["/relu/Relu_output_0", "/ReduceL2_output_0"], ["embeds"], name="/Div"),
    ]
    graph = helper.make_graph(
        nodes, "resemblyzer_voice_encoder",
        [helper.make_tensor_value_info("mels", TensorProto.FLOAT, ["batch", "frames", _MELS])],
        [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="spa.testbeds.voice")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def model_path() -> Path:
    """The ONNX encoder in :func:`spa.testbeds.cache_dir`, built from the wheel the first time."""
    target = cache_dir() / "testbeds" / _ONNX_NAME
    if target.is_file():
        return target
    checkpoint = read_legacy_checkpoint(package_file("Resemblyzer", "resemblyzer/pretrained.pt", INSTALL))
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise UserError(f"Resemblyzer's pretrained.pt has no model_state; reinstall: {INSTALL}")
    model = build_encoder_onnx(checkpoint["model_state"])
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    onnx.save(model, str(partial))
    partial.replace(target)
    return target


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


@functools.cache
def _mel_filters() -> np.ndarray:
    """[40, 201] triangular Slaney-normalised filters (as ``librosa.filters.mel``)."""
    bins = np.linspace(0, SAMPLE_RATE / 2, _N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2.0), _MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """float32 [frames, 40] power mel spectrogram (librosa.feature.melspectrogram with
    Resemblyzer's settings: n_fft 400, hop 160, periodic Hann, centred, zero padding)."""
    padded = np.pad(wav.astype(np.float64), _N_FFT // 2)
    frames = 1 + (len(padded) - _N_FFT) // _HOP
    index = np.arange(_N_FFT)[None, :] + _HOP * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)
    power = np.abs(np.fft.rfft(padded[index] * window, axis=1)) ** 2
    return (power @ _mel_filters().T).astype(np.float32)


def _normalize_volume(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    change = target_dbfs - 10 * np.log10(np.mean(wav.astype(np.float64) ** 2))
    return wav if change < 0 else (wav * 10 ** (change / 20)).astype(np.float32)


def partial_mels(wav: np.ndarray, rate: float = 1.3, min_coverage: float = 0.75) -> np.ndarray:
    """[partials, 160, 40] windows of an utterance, as Resemblyzer's ``embed_utterance``."""
    wav = _normalize_volume(wav)
    n_frames = int(np.ceil((len(wav) + 1) / _HOP))
    step = int(np.round(SAMPLE_RATE / rate / _HOP))
    starts = list(range(0, max(1, n_frames - _PARTIAL + step + 1), step))
    coverage = (len(wav) - starts[-1] * _HOP) / (_PARTIAL * _HOP)
    if coverage < min_coverage and len(starts) > 1:
        starts.pop()
    needed = (starts[-1] + _PARTIAL) * _HOP
    if needed >= len(wav):
        wav = np.pad(wav, (0, needed - len(wav)))
    mel = mel_spectrogram(wav)
    return np.stack([mel[s : s + _PARTIAL] for s in starts])


def embed_utterance(session: Any, wav: np.ndarray) -> np.ndarray:
    """Unit-norm utterance embedding: the normalised mean of the partial embeddings."""
    (partials,) = session.run(["embeds"], {"mels": partial_mels(wav)})
    mean = partials.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def equal_error_rate(scores: np.ndarray, targets: np.ndarray) -> float:
    """The rate where false acceptances of impostors equal false rejections of targets, the
    two rates interpolated linearly between neighbouring thresholds."""
    order = np.argsort(-scores, kind="stable")
    is_target = targets[order].astype(bool)
    accepted_targets = np.cumsum(is_target)
    accepted_impostors = np.cumsum(~is_target)
    false_reject = np.concatenate([[1.0], 1 - accepted_targets / is_target.sum()])
    false_accept = np.concatenate([[0.0], accepted_impostors / (~is_target).sum()])
    crossing = int(np.argmax(false_accept >= false_reject))
    if crossing == 0:
        return 0.0
    before = false_reject[crossing - 1] - false_accept[crossing - 1]
    after = false_accept[crossing] - false_reject[crossing]
    weight = before / (before + after) if before + after > 0 else 0.0
    return float(false_accept[crossing - 1] + weight * (false_accept[crossing] - false_accept[crossing - 1]))


def evaluate(model: Any, limit: int | None = None) -> dict[str, float]:
    """``{"eer"}`` over all utterance pairs of the evaluation speakers (the first ``limit``
    speakers when given), four utterances each."""
    session = session_for(model)
    count = EVAL_SPEAKERS if limit is None else min(limit, EVAL_SPEAKERS)
    embeddings, owners = [], []
    for index in range(count):
        voice = speaker("eval", 0, index)
        for take in range(UTTERANCES):
            embeddings.append(embed_utterance(session, utterance(voice, "eval", 0, index, take)))
            owners.append(index)
    vectors, who = np.stack(embeddings), np.array(owners)
    upper = np.triu_indices(len(who), 1)
    scores = (vectors @ vectors.T)[upper]
    return {"eer": equal_error_rate(scores, (who[:, None] == who[None, :])[upper])}


def calibration_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` feeds ``{"mels": float32 [1, 160, 40]}``: the first partial window of one
    utterance of each of ``n`` calibration speakers."""
    feeds = []
    for index in range(n):
        wav = utterance(speaker("calibration", seed, index), "calibration", seed, index, 0)
        feeds.append({"mels": partial_mels(wav)[:1].copy()})
    return feeds


TESTBEDS = (Testbed(
    name="voice",
    description="Resemblyzer speaker encoder, 3-layer LSTM (Resemblyzer wheel)",
    metric="eer",
    higher_is_better=False,
    model_path=model_path,
    calibration_feeds=calibration_feeds,
    evaluate=evaluate,
    dense=DENSE,
),)
