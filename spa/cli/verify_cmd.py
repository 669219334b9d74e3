"""``spa verify``: compare two models in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import click

from spa.cli.options import (
    EXIT_VERIFY_FAILED,
    input_arguments,
    input_options,
    policy_from,
    tolerance_options,
)

__all__ = ["verify_command"]


@click.command("verify")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--samples", type=int, default=1, show_default=True, help="Seeded feeds to run.")
@input_options
@tolerance_options()
def verify_command(
    reference: Path,
    candidate: Path,
    samples: int,
    seed: int,
    shapes: tuple[str, ...],
    dims: tuple[str, ...],
    int_ranges: tuple[str, ...],
    rtol: float,
    atol: float,
    cosine: float | None,
    exact: bool,
) -> None:
    """Run REFERENCE and CANDIDATE on the same seeded inputs; one line per output."""
    from spa.model_io import load_proto
    from spa.verify import verify_models

    load_proto(candidate)  # bad files fail with a one-line error before ORT sees them
    result = verify_models(
        reference,
        candidate,
        policy=policy_from(rtol, atol, cosine, exact),
        seed=seed,
        samples=samples,
        **input_arguments(shapes, dims, int_ranges, model=reference),
    )
    click.echo(result.render())
    if not result.passed:
        raise click.exceptions.Exit(EXIT_VERIFY_FAILED)
