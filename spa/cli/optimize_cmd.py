"""``spa optimize``: a recipe of passes (optionally after pruning) over a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from spa.cli.options import (
    calib_option,
    command_line,
    criterion_arguments,
    criterion_options,
    dump_dir_option,
    echo_verdict,
    input_arguments,
    input_options,
    policy_from,
    print_pass_line,
    quality_options,
    report_option,
    tolerance_options,
)
from spa.errors import UserError

__all__ = ["optimize_command"]


@click.command("optimize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the result.")
@click.option(
    "--recipe", default="cleanup", show_default=True, help="Built-in name or YAML/JSON file."
)
@report_option
@dump_dir_option
@click.option("--latency-runs", type=int, default=0, help="Also time ORT CPU (median of N runs).")
@click.option(
    "--verify/--no-verify", default=True, show_default=True, help="Compare outputs in ORT."
)
@click.option("--print-passes", is_flag=True, help="List every pass and exit.")
@click.option("--dry-run", is_flag=True, help="Show the pipeline the recipe builds and exit.")
@click.option("--prune", "prune_ratio", type=float, help="First prune this share of channels.")
@criterion_options
@calib_option
@click.option(
    "--round-to",
    type=int,
    default=1,
    show_default=True,
    help="With --prune, keep a multiple of K channels.",
)
@quality_options
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
    holdout: float,
    metric: str | None,
    seed: int,
    shapes: tuple[str, ...],
    dims: tuple[str, ...],
    int_ranges: tuple[str, ...],
    rtol: float,
    atol: float,
    cosine: float | None,
    exact: bool,
    calib: Path | None,
    **criteria: Any,
) -> None:
    """Run a recipe of passes over MODEL and write the optimized model to -o."""
    if print_passes:
        from spa.workflows.recipes import registered_passes

        for name, cls in registered_passes().items():
            click.echo(f"{name:28s} {cls.summary}")
        return
    from spa.workflows.recipes import build_passes, load_recipe

    loaded = load_recipe(recipe)
    passes = build_passes(loaded)
    if dry_run:
        for index, spa_pass in enumerate(passes, start=1):
            click.echo(f"[{index}/{len(passes)}] {spa_pass.name} {json.dumps(spa_pass.options())}")
        return
    if output is None:
        raise UserError("missing -o/--output; say where to write the optimized model")
    from spa.workflows.optimize import optimize

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
        on_pass_end=print_pass_line,
        prune=prune_ratio,
        round_to=round_to,
        calibration=calib,
        holdout=holdout,
        metric=metric,
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
    failed = [v for v in (result.verification, result.prune_verification) if v and not v.passed]
    echo_verdict(result.verdict_line, not failed, result.output)
