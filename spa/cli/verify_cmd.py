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
    """Run REFERENCE and CANDIDATE on the same seeded inputs; one line per output.

    A model holding spa ops (TensorRT plugin ops, documented GQSA) runs through
    plugin-to-ort and the GQSA reference lowering, on a copy."""
    import tempfile

    from spa.model_io import load_proto
    from spa.verify import verify_models
    from spa.workflows.recipe_verify import ort_form

    load_proto(candidate)  # bad files fail with a one-line error before ORT sees them
    with tempfile.TemporaryDirectory(prefix="spa-verify-") as folder:
        runs = [ort_form(path, Path(folder) / side) for path, side in ((reference, "a"), (candidate, "b"))]
        for path, run in zip((reference, candidate), runs, strict=True):
            if run != path:
                click.echo(f"note: {path} holds spa ops; run through plugin-to-ort and the GQSA reference lowering")
        result = verify_models(
            runs[0],
            runs[1],
            policy=policy_from(rtol, atol, cosine, exact),
            seed=seed,
            samples=samples,
            **input_arguments(shapes, dims, int_ranges, model=reference),
        )
    click.echo(result.render())
    if not result.passed:
        raise click.exceptions.Exit(EXIT_VERIFY_FAILED)
