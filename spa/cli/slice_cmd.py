"""``spa slice``: SliceGPT rotate-and-slice of a transformer's hidden size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from spa.cli.options import (
    EXIT_VERIFY_FAILED,
    calib_option,
    check_calib_exists,
    command_line,
    criterion_arguments,
    criterion_options,
    dump_dir_option,
    input_arguments,
    input_options,
    policy_from,
    print_pass_line,
    report_option,
    tolerance_options,
)

__all__ = ["slice_command"]


@click.command("slice")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option(
    "--ratio", type=float, default=0.25, show_default=True, help="Share of hidden channels removed."
)
@calib_option
@click.option(
    "--rotation",
    type=click.Choice(["pca", "random", "none"]),
    default="pca",
    show_default=True,
    help="PCA of the residual stream on --calib, a seeded random rotation, or none "
    "(prune the hidden channels of least energy: the baseline).",
)
@click.option(
    "--bases",
    type=click.Choice(["shared", "per-norm"]),
    default="shared",
    show_default=True,
    help="One rotation for the stream, or one per norm with Q_a^T Q_b on the residual skips.",
)
@click.option(
    "--sequential",
    is_flag=True,
    help="With --bases per-norm: measure each norm's PCA on the model whose earlier "
    "norms are already sliced (one calibration run per norm; the paper's algorithm).",
)
@click.option(
    "--round-to", type=int, default=8, show_default=True, help="Keep a multiple of K channels."
)
@click.option(
    "--max-samples", type=int, default=None, help="Use at most this many calibration samples."
)
@click.option(
    "--prune",
    type=float,
    default=None,
    help="Then prune this share of heads and MLP channels of the sliced model (--criterion ...).",
)
@criterion_options
@click.option("--no-exactness", is_flag=True, help="Skip the random-rotation exactness check.")
@click.option(
    "--verify", is_flag=True, help="Compare sliced and input outputs (exit 3 if it fails)."
)
@report_option
@dump_dir_option
@input_options
@tolerance_options(rtol=1e-4)
def slice_command(
    model: Path,
    output: Path,
    ratio: float,
    calib: Path | None,
    rotation: str,
    bases: str,
    sequential: bool,
    round_to: int,
    max_samples: int | None,
    prune: float | None,
    no_exactness: bool,
    verify: bool,
    report_path: Path | None,
    dump_dir: Path | None,
    seed: int,
    shapes: tuple[str, ...],
    dims: tuple[str, ...],
    int_ranges: tuple[str, ...],
    rtol: float,
    atol: float,
    cosine: float | None,
    exact: bool,
    **criteria: Any,
) -> None:
    """Rotate MODEL's residual stream and remove --ratio of its hidden size (SliceGPT).

    The tolerance flags judge --verify (the sliced model against the input);
    slicing is lossy, so give e.g. --cosine 0.95. The exactness check (a random
    rotation, nothing sliced) always uses rtol 1e-4. With --prune, heads and MLP
    channels of the sliced model are pruned in the same run (slice, then prune),
    checked by mask equivalence against the sliced model.
    """
    from spa.workflows.slice import PruneAfterSlice, slice_model

    check_calib_exists(calib)
    result = slice_model(
        model,
        output,
        ratio=ratio,
        calibration=calib,
        rotation=rotation,
        bases=bases,
        sequential=sequential,
        round_to=round_to,
        seed=seed,
        exactness=not no_exactness,
        verify=verify,
        policy=policy_from(rtol, atol, cosine, exact),
        **input_arguments(shapes, dims, int_ranges, calib=calib, model=model),
        max_calibration_samples=max_samples,
        report_path=report_path,
        command=command_line(),
        dump_dir=dump_dir,
        on_pass_end=print_pass_line,
        prune=None if prune is None else PruneAfterSlice(prune, **criterion_arguments(criteria)),
    )
    if result.exactness is not None:
        click.echo("exactness (random rotation, nothing sliced):")
        click.echo(result.exactness.render())
    if result.prune_verification is not None:
        click.echo("prune (mask equivalence against the sliced model):")
        click.echo(result.prune_verification.render())
    if result.verification is not None:
        click.echo(result.verification.render())
    click.echo(result.verdict_line)
    failed = [
        check
        for check in (result.exactness, result.prune_verification, result.verification)
        if check is not None and not check.passed
    ]
    if failed:
        raise click.exceptions.Exit(EXIT_VERIFY_FAILED)
