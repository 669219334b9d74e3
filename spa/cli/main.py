"""The ``spa`` command line: thin subcommands over library functions.

Exit codes: 0 ok, 1 user error (one line naming the problem and the fix, no
traceback), 2 usage error, 3 verification failed. Internal errors keep their
traceback. Heavy modules are imported inside the commands so ``spa --help``
stays fast.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from spa import __version__
from spa.cli.options import (
    EXIT_USER_ERROR,
    EXIT_VERIFY_FAILED,
    input_arguments,
    input_options,
    policy_from,
    tolerance_options,
)
from spa.cli.prune_cmd import criterion_arguments, criterion_options
from spa.errors import UserError, VerificationFailed

__all__ = ["cli", "command_line", "main"]


class UserFailure(click.ClickException):
    """A :class:`UserError` shown as one line, exit code 1."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class SpaGroup(click.Group):
    """Maps library exceptions to exit codes for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise UserFailure(str(error)) from None
        except VerificationFailed as error:
            click.echo(f"FAILED | {error}", err=True)
            ctx.exit(EXIT_VERIFY_FAILED)


@click.group(cls=SpaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spa")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """spa: make ONNX models smaller and faster without retraining."""
    from spa import progress

    progress.enable()
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def command_line() -> str:
    return " ".join(shlex.quote(arg) for arg in ["spa", *sys.argv[1:]])


@cli.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write JSON here.")
@click.option(
    "--read-weights", is_flag=True, help="Also read external data for the 2:4 weight check."
)
def inspect_command(model: Path, json_path: Path | None, read_weights: bool) -> None:
    """Opsets, op histogram, inputs/outputs, weights by dtype, custom ops, 2:4 weights."""
    from spa.inspect import inspect_model, render_model_info

    info = inspect_model(model, read_weights=read_weights)
    click.echo(render_model_info(info))
    if json_path is not None:
        from spa.report import write_report

        write_report(info.as_dict(), json_path)


@cli.command("verify")
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
        **input_arguments(shapes, dims, int_ranges),
    )
    click.echo(result.render())
    if not result.passed:
        raise click.exceptions.Exit(EXIT_VERIFY_FAILED)


@cli.command("optimize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the result.")
@click.option(
    "--recipe", default="cleanup", show_default=True, help="Built-in name or YAML/JSON file."
)
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here."
)
@click.option(
    "--dump-dir", type=click.Path(path_type=Path), help="Save the model after each pass here."
)
@click.option("--latency-runs", type=int, default=0, help="Also time ORT CPU (median of N runs).")
@click.option(
    "--verify/--no-verify", default=True, show_default=True, help="Compare outputs in ORT."
)
@click.option("--print-passes", is_flag=True, help="List every pass and exit.")
@click.option("--dry-run", is_flag=True, help="Show the pipeline the recipe builds and exit.")
@click.option("--prune", "prune_ratio", type=float, help="First prune this share of channels.")
@criterion_options
@click.option(
    "--round-to",
    type=int,
    default=1,
    show_default=True,
    help="With --prune, keep a multiple of K channels.",
)
@input_options
@tolerance_options()
def optimize_command(
    model: Path,
    output: Path | None,
    recipe: str,
    report_path: Path | None,
    dump_dir: Path | None,
    latency_runs: int,
    verify: bool,
    print_passes: bool,
    dry_run: bool,
    prune_ratio: float | None,
    round_to: int,
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
    """Run a recipe of passes over MODEL and write the optimized model to -o."""
    if print_passes:
        from spa.pass_manager import registered_passes

        for name, cls in registered_passes().items():
            click.echo(f"{name:28s} {cls.summary}")
        return
    from spa.recipes import build_passes, load_recipe

    loaded = load_recipe(recipe)
    passes = build_passes(loaded)
    if dry_run:
        for index, spa_pass in enumerate(passes, start=1):
            click.echo(f"[{index}/{len(passes)}] {spa_pass.name} {json.dumps(spa_pass.options())}")
        return
    if output is None:
        raise UserError("missing -o/--output; say where to write the optimized model")
    from spa.optimize import optimize

    result = optimize(
        model,
        output,
        recipe=loaded,
        passes=passes,
        verify=verify,
        policy=policy_from(rtol, atol, cosine, exact),
        seed=seed,
        **input_arguments(shapes, dims, int_ranges),
        report_path=report_path,
        dump_dir=dump_dir,
        latency_runs=latency_runs,
        command=command_line(),
        on_pass_end=_print_pass_line,
        prune=prune_ratio,
        round_to=round_to,
        **criterion_arguments(criteria),
    )
    if result.prune_verification is not None:
        click.echo("prune (mask equivalence):")
        click.echo(result.prune_verification.render())
    click.echo(result.summary_table)
    latency = result.report.get("latency")
    if latency:
        before_ms, after_ms = latency["before"]["median_ms"], latency["after"]["median_ms"]
        click.echo(
            f"latency (ORT CPU, median of {latency['after']['runs']}): {before_ms:.2f} ms → "
            f"{after_ms:.2f} ms ({before_ms / after_ms:.2f}x)"
        )
    if result.verification is not None:
        click.echo(result.verification.render())
    click.echo(result.verdict_line)
    failed = [v for v in (result.verification, result.prune_verification) if v and not v.passed]
    if failed:
        raise click.exceptions.Exit(EXIT_VERIFY_FAILED)


def _print_pass_line(record: Any, total: int) -> None:
    delta = record.nodes_after - record.nodes_before
    stats = " ".join(f"{key}={value}" for key, value in record.statistics.items() if value)
    click.echo(
        f"[{record.index}/{total}] {record.name:26s} {record.seconds:6.2f} s  {delta:+d} nodes  {stats}".rstrip()
    )


def _register_subcommands() -> None:
    from spa.cli.build_cmd import build_command, plugins_group
    from spa.cli.prune_cmd import analyze_command, prune_command
    from spa.cli.quantize_cmd import quantize_command
    from spa.cli.sparsify_cmd import sparsify_command

    cli.add_command(analyze_command)
    cli.add_command(prune_command)
    cli.add_command(quantize_command)
    cli.add_command(sparsify_command)
    cli.add_command(build_command)
    cli.add_command(plugins_group)


_register_subcommands()


@cli.group("zoo")
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


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="spa")


if __name__ == "__main__":
    main()
