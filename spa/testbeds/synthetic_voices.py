"""Synthetic speakers for the speaker-verification test bed: a source-filter vowel synthesizer.

Each speaker is a set of voice parameters drawn from its own generator: sex, mean pitch (male
90-150 Hz, female 165-250 Hz), a vocal-tract scale for the formants (male 0.90-1.02, female
1.08-1.22) with a personal offset of up to +-6% per formant, glottal spectral tilt, breathiness,
jitter, intonation range and speaking rate. An utterance (2.0 to 3.2 s at 16 kHz) is a random
run of vowels (the formants F1-F3 of Peterson and Barney's 1952 male averages, F4 3,500 Hz,
scaled by the speaker), short unvoiced fricative bursts and pauses. Voiced segments are a
jittered glottal pulse train at the speaker's pitch contour, low-passed by the tilt, plus
aspiration noise, through a cascade of four two-pole formant resonators (bandwidths 60, 90, 120,
160 Hz), with 15 ms raised-cosine fades.

Speakers and utterances come from generators seeded with (split, seed, speaker[, utterance]),
so the calibration and evaluation speakers never coincide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spa.errors import UserError

__all__ = ["SAMPLE_RATE", "Speaker", "speaker", "utterance"]

SAMPLE_RATE = 16000
_SPLITS = {"calibration": 1, "eval": 2}
#: F1, F2, F3 in Hz (Peterson and Barney 1952, men): i I E ae a c U u V er
_VOWELS = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410],
    [730, 1090, 2440], [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240],
    [640, 1190, 2390], [490, 1350, 1690],
], dtype=np.float64)
_BANDWIDTHS = np.array([60.0, 90.0, 120.0, 160.0])


@dataclass(frozen=True)
class Speaker:
    """The voice parameters of one synthetic speaker."""

    pitch: float  #: mean f0 in Hz
    formant_scale: np.ndarray  #: [4] multipliers of F1..F4
    tilt: float  #: pole of the glottal low-pass (higher: darker voice)
    breath: float  #: aspiration noise relative to the pulses
    jitter: float  #: relative period jitter
    intonation: float  #: relative f0 swing over an utterance
    rate: float  #: multiplier of segment durations


def _rng(split: str, *key: int) -> np.random.Generator:
    if split not in _SPLITS:
        raise UserError(f"unknown split {split!r}; use 'calibration' or 'eval'")
    return np.random.default_rng([7, _SPLITS[split], *key])


def speaker(split: str, seed: int, index: int) -> Speaker:
    """Speaker ``index`` of ``split`` under ``seed``."""
    rng = _rng(split, seed, index)
    female = bool(rng.random() < 0.5)
    pitch = rng.uniform(165, 250) if female else rng.uniform(90, 150)
    scale = rng.uniform(1.08, 1.22) if female else rng.uniform(0.90, 1.02)
    return Speaker(
        pitch=float(pitch),
        formant_scale=scale * rng.uniform(0.94, 1.06, size=4),
        tilt=float(rng.uniform(0.80, 0.97)),
        breath=float(rng.uniform(0.02, 0.25)),
        jitter=float(rng.uniform(0.003, 0.02)),
        intonation=float(rng.uniform(0.05, 0.25)),
        rate=float(rng.uniform(0.8, 1.25)),
    )


def _resonate(signal: np.ndarray, frequency: float, bandwidth: float) -> np.ndarray:
    from scipy.signal import lfilter

    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * frequency / SAMPLE_RATE
    denominator = [1.0, -2 * radius * np.cos(theta), radius * radius]
    return lfilter([1.0 - radius], denominator, signal)


def _voiced(voice: Speaker, formants: np.ndarray, pitch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import lfilter

    period = 1.0 / (pitch * (1 + voice.jitter * rng.standard_normal(len(pitch))))
    phase = np.cumsum(1.0 / (period * SAMPLE_RATE))
    pulses = np.diff(np.floor(phase), prepend=0.0)
    source = lfilter([1.0], [1.0, -voice.tilt], pulses)
    source /= max(np.abs(source).max(), 1e-9)
    source += voice.breath * rng.standard_normal(len(source))
    out = source
    for frequency, bandwidth in zip(formants, _BANDWIDTHS * voice.formant_scale, strict=True):
        out = _resonate(out, float(min(frequency, 0.45 * SAMPLE_RATE)), float(bandwidth))
    return out


def _fade(segment: np.ndarray) -> np.ndarray:
    ramp = min(len(segment) // 2, int(0.015 * SAMPLE_RATE))
    window = np.ones(len(segment))
    window[:ramp] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    window[len(segment) - ramp :] = window[:ramp][::-1]
    return segment * window


def utterance(voice: Speaker, split: str, seed: int, speaker_index: int, index: int) -> np.ndarray:
    """Utterance ``index`` of a speaker: float32 samples at 16 kHz, peak 0.5."""
    rng = _rng(split, seed, speaker_index, 1000 + index)
    total = int(rng.uniform(2.0, 3.2) * SAMPLE_RATE)
    formant_table = np.column_stack([_VOWELS, np.full(len(_VOWELS), 3500.0)])
    pieces, length = [], 0
    while length < total:
        kind = rng.random()
        if kind < 0.72:  # vowel
            duration = int(rng.uniform(0.10, 0.28) * voice.rate * SAMPLE_RATE)
            formants = formant_table[rng.integers(len(formant_table))] * voice.formant_scale
            swing = voice.intonation * np.sin(
                np.linspace(0, rng.uniform(1, 3) * np.pi, duration) + rng.uniform(0, 2 * np.pi))
            piece = _voiced(voice, formants, voice.pitch * (1 + swing), rng)
            piece /= max(np.abs(piece).max(), 1e-9)
        elif kind < 0.9:  # fricative: high-passed noise
            duration = int(rng.uniform(0.05, 0.14) * voice.rate * SAMPLE_RATE)
            piece = _resonate(rng.standard_normal(duration), rng.uniform(3000, 6000), 1500.0)
            piece *= 0.3 / max(np.abs(piece).max(), 1e-9)
        else:  # short pause
            duration = int(rng.uniform(0.03, 0.12) * SAMPLE_RATE)
            piece = 0.002 * rng.standard_normal(duration)
        pieces.append(_fade(piece))
        length += duration
    wav = np.concatenate(pieces)[:total]
    return (0.5 * wav / max(np.abs(wav).max(), 1e-9)).astype(np.float32)
