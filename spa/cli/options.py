"""Option groups shared by several commands, defined once.

Flags are kebab-case; each maps to the Python keyword of the library function
it feeds (``--int-range`` -> ``int_ranges``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "EXIT_USER_ERROR",
    "EXIT_VERIFY_FAILED",
    "check_calib_exists",
    "input_arguments",
    "input_options",
    "parse_dims",
    "parse_int_ranges",
    "parse_shapes",
    "tolerance_options",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes shared by every command (0 ok, 2 usage comes from click).
EXIT_USER_ERROR = 1
EXIT_VERIFY_FAILED = 3


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def input_options(function: F) -> F:
    """How seeded inputs are made: --seed, --shapes, --dim, --int-range."""
    return _compose(
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for inputs."),
        click.option(
            "--shapes",
            "shapes",
            multiple=True,
            metavar="INPUT:1x3x224x224",
            help="Concrete shape of an input with dynamic dims (repeatable).",
        ),
        click.option(
            "--dim",
            "dims",
            multiple=True,
            metavar="NAME=SIZE",
            help="Size of a symbolic dimension, e.g. batch=8 (repeatable).",
        ),
        click.option(
            "--int-range",
            "int_ranges",
            multiple=True,
            metavar="INPUT:LOW:HIGH",
            help="Range [LOW, HIGH) of an integer input such as token ids (repeatable).",
        ),
    )(function)


def tolerance_options(rtol: float = 1e-5) -> Callable[[F], F]:
    """How outputs are compared: --rtol/--atol, or --cosine, or --exact."""
    return _compose(
        click.option(
            "--rtol",
            type=float,
            default=rtol,
            show_default=True,
            help="Largest allowed max|Δ| / max|reference|.",
        ),
        click.option(
            "--atol",
            type=float,
            default=0.0,
            show_default=True,
            help="Largest allowed max|Δ| (passes if either holds).",
        ),
        click.option(
            "--cosine",
            type=float,
            default=None,
            help="Judge by cosine similarity >= this instead (with --atol as max|Δ| if > 0).",
        ),
        click.option("--exact", is_flag=True, help="Require bit-identical outputs."),
    )


def check_calib_exists(calib: Path | None) -> None:
    """One-line error when ``--calib`` names nothing on disk."""
    from spa.errors import UserError

    if calib is not None and not calib.exists():
        raise UserError(
            f"--calib {calib}: no such file or folder; give an .npz or a folder of .npy"
        )


def input_arguments(
    shapes: tuple[str, ...], dims: tuple[str, ...], int_ranges: tuple[str, ...]
) -> dict[str, Any]:
    """The ``shapes``/``dims``/``int_ranges`` keywords of the library, parsed from flags."""
    return {
        "shapes": parse_shapes(shapes),
        "dims": parse_dims(dims),
        "int_ranges": parse_int_ranges(int_ranges),
    }


def parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from spa.verify import parse_shape_option

    return dict(parse_shape_option(value) for value in values)


def parse_dims(values: tuple[str, ...]) -> dict[str, int]:
    from spa.errors import UserError

    dims: dict[str, int] = {}
    for value in values:
        name, sep, size = value.partition("=")
        if not sep or not name or not size.isdigit():
            raise UserError(f"bad --dim '{value}'; write it as NAME=SIZE, e.g. batch=8")
        dims[name] = int(size)
    return dims


def parse_int_ranges(values: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    from spa.errors import UserError

    ranges: dict[str, tuple[int, int]] = {}
    for value in values:
        parts = value.rsplit(":", 2)
        try:
            name, low, high = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise UserError(f"bad --int-range '{value}'; write it as INPUT:LOW:HIGH") from None
        if high <= low:
            raise UserError(f"--int-range '{value}': HIGH must be greater than LOW")
        ranges[name] = (low, high)
    return ranges


def policy_from(rtol: float, atol: float, cosine: float | None, exact: bool) -> Any:
    from spa.verify import AllClose, CosineMaxAbs, Exact

    if exact:
        return Exact()
    if cosine is not None:
        return CosineMaxAbs(min_cosine=cosine, max_abs=atol if atol > 0 else float("inf"))
    return AllClose(rtol=rtol, atol=atol)
