"""Check spa's torch-free Resemblyzer encoder against Resemblyzer itself (torch and librosa).

Compares, on synthetic utterances of the evaluation split: spa's NumPy mel spectrogram with
``resemblyzer.audio.wav_to_mel_spectrogram`` (librosa); the ONNX encoder built by
``spa.testbeds.voice.model_path`` with ``resemblyzer.VoiceEncoder`` (torch) on the same
partial windows; and the utterance embeddings of both. Resemblyzer's VAD trimming is skipped on
both sides, as in the test bed.

Needs the ``models`` environment (torch) plus ``pip install librosa webrtcvad-wheels`` and
``pip install --no-deps Resemblyzer==0.1.4``, and spa:

    python models/check_resemblyzer_torch.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.testbeds import session_for, voice
from spa.testbeds.synthetic_voices import speaker, utterance


def main() -> None:
    from resemblyzer import VoiceEncoder, audio

    encoder = VoiceEncoder(device="cpu", verbose=False)
    session = session_for(voice.model_path())
    worst_mel = worst_net = worst_embed = 0.0
    for index in range(4):
        wav = utterance(speaker("eval", 0, index), "eval", 0, index, 0)
        wav = voice._normalize_volume(wav)
        reference_mel = audio.wav_to_mel_spectrogram(wav)
        ours_mel = voice.mel_spectrogram(wav)
        scale = float(np.abs(reference_mel).max())
        worst_mel = max(worst_mel, float(np.abs(reference_mel - ours_mel).max()) / scale)
        mels = voice.partial_mels(wav)
        with torch.no_grad():
            reference = encoder(torch.from_numpy(mels)).numpy()
        (ours,) = session.run(["embeds"], {"mels": mels})
        worst_net = max(worst_net, float(np.abs(reference - ours).max()))
        worst_embed = max(worst_embed, float(np.abs(
            encoder.embed_utterance(wav) - voice.embed_utterance(session, wav)).max()))
    print(f"mel spectrogram: max|librosa - spa| / max = {worst_mel:.2e}")
    print(f"partial embeddings: max|torch - spa ONNX| = {worst_net:.2e}")
    print(f"utterance embeddings: max|Resemblyzer - spa| = {worst_embed:.2e}")


if __name__ == "__main__":
    main()
