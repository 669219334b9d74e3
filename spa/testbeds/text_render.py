"""Deterministic images of printed English text, for the OCR and orientation test beds.

Fonts: the DejaVu and STIX TrueType files that the ``matplotlib`` wheel bundles
(``matplotlib/mpl-data/fonts/ttf``; DejaVu: Bitstream Vera licence, STIX: SIL OFL), so a fresh
``pip install`` renders the same pixels on every machine. Pillow's FreeType renderer draws them.

Text: lines cut from gensim's news documents (:mod:`spa.testbeds.gensim_data`). The split is
by source: calibration text comes from ``lee_background.cor``, evaluation text from ``lee.cor``
(disjoint documents), and every image is drawn from its own ``numpy`` generator seeded with
(split, seed, index), so the two splits never share an image.

Images are ``uint8`` arrays ``[height, width, 3]`` in BGR channel order, as ``cv2.imread``
gives them and as RapidOCR feeds the PaddleOCR models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from spa.errors import UserError
from spa.testbeds.gensim_data import lee_background, lee_documents
from spa.testbeds.packages import package_file

__all__ = ["FONTS", "Page", "font", "render_line", "render_page", "rng_for", "text_lines"]

#: Font files of ``matplotlib/mpl-data/fonts/ttf`` used for rendering.
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "STIXGeneral.ttf",
)
_INSTALL = "pip install 'spa[testbeds]' (matplotlib ships the fonts, Pillow renders them)"
_SPLITS = {"calibration": 1, "eval": 2}


def _pillow() -> tuple[Any, Any, Any]:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UserError(f"Pillow is missing; {_INSTALL}") from None
    return Image, ImageDraw, ImageFont


@functools.cache
def font(name: str, size: int) -> Any:
    """The bundled font ``name`` (one of :data:`FONTS`) at ``size`` pixels (a Pillow
    ``FreeTypeFont``)."""
    _, _, image_font = _pillow()
    path = package_file("matplotlib", f"matplotlib/mpl-data/fonts/ttf/{name}", _INSTALL)
    return image_font.truetype(str(path), size)


def rng_for(split: str, seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` ("calibration" or "eval") under ``seed``."""
    if split not in _SPLITS:
        raise UserError(f"unknown split {split!r}; use 'calibration' or 'eval'")
    return np.random.default_rng([_SPLITS[split], seed, index])


@functools.cache
def text_lines(split: str, max_chars: int = 40) -> tuple[str, ...]:
    """Every line of at most ``max_chars`` characters that the words of ``split``'s documents
    fill greedily, in document order (printable ASCII only; other characters dropped)."""
    if split not in _SPLITS:
        raise UserError(f"unknown split {split!r}; use 'calibration' or 'eval'")
    documents = lee_background() if split == "calibration" else lee_documents()[0]
    lines: list[str] = []
    for document in documents:
        words = ["".join(ch for ch in word if 32 < ord(ch) < 127) for word in document.split()]
        current = ""
        for word in filter(None, words):
            if current and len(current) + 1 + len(word) > max_chars:
                lines.append(current)
                current = ""
            current = f"{current} {word}" if current else word[:max_chars]
        if current:
            lines.append(current)
    return tuple(lines)


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A light paper colour and a dark ink colour (each channel at least 50 levels apart)."""
    red, green, blue = (int(v) for v in rng.integers(160, 256, size=3))
    ink_red, ink_green, ink_blue = (int(v) for v in rng.integers(0, 110, size=3))
    return (red, green, blue), (ink_red, ink_green, ink_blue)


def _finish(image: Any, rng: np.random.Generator) -> np.ndarray:
    """RGB image -> BGR uint8 array, blurred (Gaussian, radius 0..1.2 px) and with Gaussian
    sensor noise (sigma 0..8 grey levels)."""
    from PIL import ImageFilter

    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, 1.2))))
    pixels = np.asarray(image, dtype=np.float64)
    noisy = pixels + rng.normal(0.0, rng.uniform(0.0, 8.0), size=pixels.shape)
    return np.ascontiguousarray(np.clip(noisy, 0, 255).round().astype(np.uint8)[..., ::-1])


def render_line(text: str, rng: np.random.Generator) -> np.ndarray:
    """One text line, cropped with a small margin (font, size 14..36 px, colours from ``rng``)."""
    image_cls, draw_cls, _ = _pillow()
    face = font(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(14, 37)))
    left, top, right, bottom = face.getbbox(text)
    margin_x, margin_y = (int(v) for v in rng.integers(2, 9, size=2))
    size = (right - left + 2 * margin_x, bottom - top + 2 * margin_y)
    paper, ink = _colours(rng)
    image = image_cls.new("RGB", size, paper)
    draw_cls.Draw(image).text((margin_x - left, margin_y - top), text, font=face, fill=ink)
    return _finish(image, rng)


@dataclass(frozen=True)
class Page:
    """A rendered page and where its text lines are."""

    image: np.ndarray  #: BGR uint8 [height, width, 3]
    boxes: np.ndarray  #: float [lines, 4]: x0, y0, x1, y1 of each line's ink, in pixels
    texts: tuple[str, ...]


def render_page(lines: list[str], rng: np.random.Generator, width: int = 640,
                height: int = 480) -> Page:
    """``lines`` placed top to bottom at random left offsets and gaps (one font and size per
    line, 12..32 px, smaller when the line would not fit the width); the lines that would
    run off the bottom are dropped."""
    image_cls, draw_cls, _ = _pillow()
    paper, ink = _colours(rng)
    image = image_cls.new("RGB", (width, height), paper)
    draw = draw_cls.Draw(image)
    y = int(rng.integers(8, 40))
    boxes, texts = [], []
    for text in lines:
        name, size = FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(12, 33))
        left, top, right, bottom = font(name, size).getbbox(text)
        if right - left > width - 16:  # too wide at this size: the largest size that fits
            size = size * (width - 16) // (right - left)
            left, top, right, bottom = font(name, size).getbbox(text)
        face = font(name, size)
        x = int(rng.integers(8, max(9, width - (right - left) - 7)))
        if y + bottom - top + 8 > height:
            break
        draw.text((x - left, y - top), text, font=face, fill=ink)
        boxes.append((x, y, x + right - left, y + bottom - top))
        texts.append(text)
        y += bottom - top + int(rng.integers(12, 40))
    return Page(_finish(image, rng), np.array(boxes, dtype=np.float64).reshape(-1, 4), tuple(texts))
