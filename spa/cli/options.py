"""Option groups shared by several commands, defined once.

Flags are kebab-case; each maps to the Python keyword of the library function
it feeds (``--int-range`` -> ``int_ranges``).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from spa.analysis.defaults import DEFAULT_PRUNABLE_IO
from spa.errors import UserError
from spa.pruning.criteria import ALLOCATION_TABLE, ALLOCATIONS, CRITERIA, REDUCTIONS
from spa.pruning.sensitivity import FRAGILE_DISTORTION

__all__ = [
    "EXIT_USER_ERROR",
    "EXIT_VERIFY_FAILED",
    "calib_option",
    "check_calib_exists",
    "command_line",
    "criterion_arguments",
    "criterion_options",
    "dump_dir_option",
    "echo_verdict",
    "input_arguments",
    "input_options",
    "parse_dims",
    "parse_int_ranges",
    "parse_shapes",
    "policy_from",
    "print_pass_line",
    "prunable_io_option",
    "quality_options",
    "report_option",
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


def command_line() -> str:
    """The command as the user typed it (for reports)."""
    return " ".join(shlex.quote(arg) for arg in ["spa", *sys.argv[1:]])


def print_pass_line(record: Any, total: int) -> None:
    """``[2/8] fold-constants   0.03 s  -4 nodes  nodes_folded=4`` after each pass."""
    delta = record.nodes_after - record.nodes_before
    stats = " ".join(f"{key}={value}" for key, value in record.statistics.items() if value)
    click.echo(
        f"[{record.index}/{total}] {record.name:26s} {record.seconds:6.2f} s  {delta:+d} nodes  {stats}".rstrip()
    )


#: ``--calib``: one definition for every command that calibrates.
calib_option = click.option(
    "--calib",
    type=click.Path(path_type=Path),
    help="Calibration inputs: an .npz (input name -> samples), a folder of <input>.npy "
    "(leading sample axis; an input with a batch axis also takes samples stacked along it), "
    "or a folder of .npz files, one sample each (shapes may differ between them).",
)
def quality_options(function: F) -> F:
    """``--holdout`` and ``--eval``: quality measured on held-out real data."""
    return _compose(
        click.option(
            "--holdout",
            type=float,
            default=0.25,
            show_default=True,
            help="Share of --calib samples kept out of calibration to measure quality on.",
        ),
        click.option(
            "--eval",
            "metric",
            metavar="MODULE:FUNCTION",
            help="Task metric: FUNCTION(model_path) -> number (higher is better), "
            "reported for the input and the output.",
        ),
    )(function)


#: ``--dump-dir``: the model after each pass.
dump_dir_option = click.option(
    "--dump-dir", type=click.Path(path_type=Path), help="Save the model after each pass here."
)
#: ``--report``: the JSON report.
report_option = click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here."
)
#: ``--prunable-io``: graph inputs/outputs that may shrink.
prunable_io_option = click.option(
    "--prunable-io",
    default=DEFAULT_PRUNABLE_IO,
    show_default=True,
    help="Regex of graph inputs/outputs that may shrink ('' freezes all).",
)


def criterion_options(function: F) -> F:
    """``--criterion --reduction --bias-compensation --allocation --fragile --max-group-ratio``
    (the pruning policy; ``--calib`` comes from :data:`calib_option`)."""
    return _compose(
        click.option(
            "--criterion",
            type=click.Choice(CRITERIA),
            default="l1",
            show_default=True,
            help="Channel importance (wanda_sp, flap, obs need --calib; see docs/criteria.md).",
        ),
        click.option(
            "--reduction",
            type=click.Choice(REDUCTIONS),
            default="sum",
            show_default=True,
            help="How a slice's weights reduce to one number (l1, l2, lamp).",
        ),
        click.option(
            "--bias-compensation",
            is_flag=True,
            help="Fold the removed channels' mean into the consumers' biases.",
        ),
        click.option(
            "--allocation",
            type=click.Choice(ALLOCATIONS),
            default="uniform",
            show_default=True,
            help="; ".join(f"{row.name}: {row.summary}" for row in ALLOCATION_TABLE)
            + " (sensitivity needs --calib; see docs/criteria.md).",
        ),
        click.option(
            "--fragile",
            type=float,
            default=FRAGILE_DISTORTION,
            show_default=True,
            help="--allocation sensitivity leaves a group whole when losing 10% of its "
            "channels alone moves the outputs by more than this relative squared error.",
        ),
        click.option(
            "--correct-statistics",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            metavar="ROUNDS",
            help="After pruning, match each pruned layer's per-channel output mean and spread "
            "to the dense model's on --calib (BatchNorm re-calibration on folded graphs); "
            "ROUNDS rounds, each on the model the previous one left.",
        ),
        click.option(
            "--sequential-stages",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            metavar="N",
            help="Measure the statistics of the weight updates (--criterion obs, "
            "--bias-compensation) in N stages in graph order, each on the model pruned up "
            "to it (one calibration run per stage).",
        ),
        click.option(
            "--max-group-ratio",
            type=float,
            default=0.9,
            show_default=True,
            help="No group loses more than this share of its channels.",
        ),
    )(function)


def criterion_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """The pruning-policy keywords of the library, taken from ``criterion_options``."""
    names = (
        "criterion", "reduction", "bias_compensation", "allocation", "max_group_ratio", "fragile",
        "correct_statistics", "sequential_stages",
    )  # fmt: skip
    return {name: options.pop(name) for name in names}


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


def echo_verdict(verdict: str, passed: bool, output: Path) -> None:
    """Print the verdict line; when verification failed, say that the output is
    kept (for inspection) and exit with EXIT_VERIFY_FAILED."""
    if passed:
        click.echo(verdict)
        return
    click.echo(f"{verdict} | output kept: {output}")
    raise click.exceptions.Exit(EXIT_VERIFY_FAILED)


def check_calib_exists(calib: Path | None) -> None:
    """One-line error when ``--calib`` names nothing on disk."""
    if calib is not None and not calib.exists():
        raise UserError(
            f"--calib {calib}: no such file or folder; give an .npz or a folder of .npy"
        )


def input_arguments(
    shapes: tuple[str, ...],
    dims: tuple[str, ...],
    int_ranges: tuple[str, ...],
    *,
    calib: Path | None = None,
    model: Path | None = None,
) -> dict[str, Any]:
    """The ``shapes``/``dims``/``int_ranges`` keywords of the library, parsed from flags.

    With ``calib`` and ``model``, the symbolic dims that neither ``--dim`` nor
    ``--shapes`` sets take their size from the calibration samples (a decoder's
    ``past``/``total`` lengths must agree; 1 everywhere rarely runs), so seeded
    inputs for verification and statistics have the shapes of real data.
    """
    parsed_shapes, parsed_dims = parse_shapes(shapes), parse_dims(dims)
    parsed_ranges = parse_int_ranges(int_ranges)
    if calib is not None and model is not None and calib.exists():
        parsed_dims = {**_calibration_dims(model, calib, parsed_shapes), **parsed_dims}
    if model is not None and Path(model).is_file():
        parsed_dims = {**_probed_dims(model, parsed_shapes, parsed_dims, parsed_ranges), **parsed_dims}
    return {"shapes": parsed_shapes, "dims": parsed_dims, "int_ranges": parsed_ranges}


def _probed_dims(
    model: Path,
    shapes: dict[str, tuple[int, ...]],
    dims: dict[str, int],
    int_ranges: dict[str, tuple[int, int]],
) -> dict[str, int]:
    """Sizes for dynamic dims the model cannot run at 1 (:func:`spa.verify.runnable_dims`),
    announced on stderr so the user can set them with --dim."""
    from spa.model_io import load_proto
    from spa.verify.runner import runnable_dims

    found = runnable_dims(model, load_proto(model), shapes=shapes, dims=dims, int_ranges=int_ranges)
    if found:
        chosen = " ".join(f"--dim {name}={size}" for name, size in found.items())
        click.echo(
            f"note: {model.name} does not run with its dynamic dims at 1 (ONNX Runtime fails, or an "
            "output's dim differs from the input dim of the same name); seeded inputs use "
            f"{chosen} (give --dim or --calib to choose)",
            err=True,
        )
    return found


def _calibration_dims(
    model: Path, calib: Path, shapes: dict[str, tuple[int, ...]]
) -> dict[str, int]:
    from spa.calibration import calibration_shapes, model_inputs
    from spa.model_io import load_proto
    from spa.verify import input_specs
    from spa.verify.feeds import dims_from_shapes

    proto = load_proto(model)
    specs = input_specs(proto)
    inputs = {name: rank for name, rank in model_inputs(proto).items() if name not in shapes}
    found = calibration_shapes(calib, inputs)
    for spec in specs:
        shape = found.get(spec.name)
        if shape is not None and (
            len(shape) != len(spec.dims)
            or any(isinstance(d, int) and d != s for d, s in zip(spec.dims, shape, strict=True))
        ):
            dims = "x".join(str(d) for d in spec.dims)
            raise UserError(
                f"--calib {calib}: samples of input '{spec.name}' are "
                f"{'x'.join(map(str, shape))}, the model reads {dims}; save samples shaped "
                "like the input after one leading sample axis (or, where the input's first "
                "dim is a batch axis, stack them along it)"
            )
    return dims_from_shapes(specs, found)


def parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from spa.verify import parse_shape_option

    return dict(parse_shape_option(value) for value in values)


def parse_dims(values: tuple[str, ...]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for value in values:
        name, sep, size = value.partition("=")
        if not sep or not name or not size.isdigit():
            raise UserError(f"bad --dim '{value}'; write it as NAME=SIZE, e.g. batch=8")
        dims[name] = int(size)
    return dims


def parse_int_ranges(values: tuple[str, ...]) -> dict[str, tuple[int, int]]:
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
