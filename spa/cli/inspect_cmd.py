"""``spa inspect``: what a model holds."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["inspect_command"]


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write JSON here.")
@click.option(
    "--read-weights", is_flag=True, help="Also read external data for the 2:4 weight check."
)
def inspect_command(model: Path, json_path: Path | None, read_weights: bool) -> None:
    """Opsets, op histogram, inputs/outputs, weights by dtype, custom ops, 2:4 weights."""
    from spa.stats.inspect import inspect_model, render_model_info

    info = inspect_model(model, read_weights=read_weights)
    click.echo(render_model_info(info))
    if json_path is not None:
        from spa.stats.report import write_report

        write_report(info.as_dict(), json_path, "--json")
