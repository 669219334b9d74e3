"""``spa zoo list`` and ``spa zoo get``."""

from __future__ import annotations

from pathlib import Path

import click

from spa.errors import UserError

__all__ = ["zoo_group"]


@click.group("zoo")
def zoo_group() -> None:
    """The bundled model zoo (light models, regenerated weights)."""


@zoo_group.command("list")
def zoo_list() -> None:
    """Name, framework, exporter and tags of every zoo model."""
    from spa import zoo

    for item in zoo.entries():
        click.echo(
            f"{item.name:28s} {item.framework:12s} {item.exporter:14s} {','.join(item.tags)}"
        )


@zoo_group.command("get")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the weights.")
def zoo_get(name: str, output: Path, seed: int) -> None:
    """Write zoo model NAME with deterministic weights to -o."""
    from spa import zoo

    if not output.parent.is_dir():
        raise UserError(f"{output}: folder '{output.parent}' does not exist; create it first")
    written = zoo.materialize(name, output, seed=seed)
    click.echo(f"wrote {written}")
