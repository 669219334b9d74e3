"""A folder of measured search candidates, so an interrupted or repeated
``spa optimize --max-drop --cache DIR`` resumes instead of rebuilding.

Each candidate is stored under a key that hashes everything its measurement
depends on: the input model's bytes, the calibration and held-out samples, the
task metric's name, the target, the steps and the options that shape them
(pruning policy, rounding, seed). A changed model, data set or option gives a
new key, so a stale entry is never reused. An entry is a folder holding
``result.json`` (the measured figures) and ``model.onnx`` (with its ``.data``
file when it has one). Latency figures are reused as measured; delete the
folder to measure again on a machine whose load changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spa.calibration import hash_samples
from spa.model_io import load_model, save_model

__all__ = ["SearchCache", "hash_file", "hash_samples"]


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    for file in (path, path.with_name(path.name + ".data")):
        if file.is_file():
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


class SearchCache:
    """Measured candidates under ``folder``, keyed by ``context`` (a JSON-able
    description of the input, data and options) plus the candidate's steps."""

    def __init__(self, folder: Path, context: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.context = json.dumps(context, sort_keys=True, default=str)

    def _entry(self, steps: Iterable[str]) -> Path:
        key = hashlib.sha256(f"{self.context}|{'/'.join(steps)}".encode()).hexdigest()[:24]
        return self.folder / key

    def load(self, steps: list[str]) -> tuple[dict[str, Any], Path] | None:
        """(stored figures, model path) of ``steps``, or None when not stored."""
        entry = self._entry(steps)
        result, model = entry / "result.json", entry / "model.onnx"
        if not (result.is_file() and model.is_file()):
            return None
        return json.loads(result.read_text()), model

    def store(self, steps: list[str], figures: Mapping[str, Any], model: Path) -> None:
        entry = self._entry(steps)
        entry.mkdir(parents=True, exist_ok=True)
        if model.with_name(model.name + ".data").is_file():  # its data file is named after it
            save_model(load_model(model), entry / "model.onnx")
        else:
            shutil.copyfile(model, entry / "model.onnx")
        (entry / "result.json").write_text(json.dumps(dict(figures), indent=1, default=str))
