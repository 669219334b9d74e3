"""``spa prune``: structured pruning (the ``prune`` pass through the pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from spa.cli.analyze_cmd import render_groups
from spa.cli.options import (
    calib_option,
    check_calib_exists,
    command_line,
    criterion_arguments,
    criterion_options,
    dump_dir_option,
    echo_verdict,
    input_arguments,
    input_options,
    policy_from,
    print_pass_line,
    prunable_io_option,
    quality_options,
    report_option,
    tolerance_options,
)
from spa.stats.inspect import human_count

__all__ = ["parse_round_to", "prune_command"]


def parse_round_to(value: str | int) -> int:
    """``auto`` -> :data:`spa.pruning.allocation.AUTO_ROUND`; else a multiple >= 1."""
    from spa.pruning.allocation import AUTO_ROUND

    if str(value).strip().lower() == "auto":
        return AUTO_ROUND
    try:
        multiple = int(value)
    except ValueError:
        raise click.BadParameter(f"'{value}': give auto or an integer >= 1") from None
    if multiple < 1:
        raise click.BadParameter(f"'{value}': give auto or an integer >= 1")
    return multiple


@click.command("prune")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option(
    "--ratio",
    type=float,
    default=0.3,
    show_default=True,
    help="Share of channels removed per group.",
)
@criterion_options
@calib_option
@click.option(
    "--round-to",
    default="auto",
    show_default=True,
    callback=lambda _context, _param, value: parse_round_to(value),
    help="Keep a multiple of K channels in every group; auto: multiples of 16 in channel "
    "groups of 32 or more, of 8 in groups of 16-31 (whole NCHWc blocks of ONNX Runtime's CPU "
    "kernels on AVX2 and AVX-512), exact elsewhere.",
)
@click.option(
    "--exclude", multiple=True, metavar="REGEX", help="Leave groups touching matching values alone."
)
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), help="Apply a saved plan.")
@click.option("--save-plan", type=click.Path(path_type=Path), help="Save the plan used.")
@prunable_io_option
@click.option(
    "--embedding-rank",
    type=float,
    default=None,
    help="Also factorize vocabulary tables read by Gather (>= 8 rows per column) to this "
    "rank (an integer, or a share of the width below 1) by truncated SVD. Not exact: "
    "--verify checks the pruning before it; measure quality with --calib/--eval.",
)
@click.option("--verify", is_flag=True, help="Check mask equivalence in ORT (exit 3 if it fails).")
@click.option(
    "--target",
    type=click.Choice(["none", "ort"]),
    default="none",
    show_default=True,
    help="ort: time the output against the input on ONNX Runtime CPU (one thread, "
    "interleaved) and write nothing when it measures slower beyond noise (median of 3 "
    "below 0.97x).",
)
@click.option(
    "--allow-slower",
    is_flag=True,
    help="--target ort: write the pruned model even when it measures slower than the input.",
)
@report_option
@dump_dir_option
@quality_options
@input_options
@tolerance_options(rtol=1e-4)
def prune_command(
    model: Path,
    output: Path,
    ratio: float,
    round_to: int,
    exclude: tuple[str, ...],
    plan_path: Path | None,
    save_plan: Path | None,
    prunable_io: str,
    embedding_rank: float | None,
    verify: bool,
    target: str,
    allow_slower: bool,
    report_path: Path | None,
    dump_dir: Path | None,
    calib: Path | None,
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
    **criteria: Any,
) -> None:
    """Remove channels from MODEL (structured pruning) and write -o."""
    from spa.workflows.prune import interface_line, prune_model

    check_calib_exists(calib)
    result = prune_model(
        model,
        output,
        ratio=ratio,
        **criterion_arguments(criteria),
        seed=seed,
        round_to=round_to,
        exclude=exclude,
        plan_path=plan_path,
        save_plan=save_plan,
        verify=verify,
        policy=policy_from(rtol, atol, cosine, exact),
        **input_arguments(shapes, dims, int_ranges, calib=calib, model=model),
        report_path=report_path,
        command=command_line(),
        prunable_io=prunable_io or None,
        calibration=calib,
        dump_dir=dump_dir,
        on_pass_end=print_pass_line,
        holdout=holdout,
        metric=metric,
        embedding_rank=embedding_rank,
        target=None if target == "none" else target,
        allow_slower=allow_slower,
    )
    for table in result.report.get("factorization") or []:
        if table["action"] == "factorized":
            click.echo(
                f"factorized {table['table']} [{table['rows']}x{table['columns']}] -> rank "
                f"{table['rank']}: params {human_count(table['params_before'])} -> "
                f"{human_count(table['params_after'])}, {table['energy']:.1%} of its energy kept"
            )
        else:
            click.echo(f"left {table['table']}: {table['reason']}")
    if not result.plan.kept and not any(
        t["action"] == "factorized" for t in result.report.get("factorization") or []
    ):
        open_groups = [g for g in result.analysis.groups if g.parameters and not g.frozen]
        if open_groups and plan_path is None:
            click.echo(
                f"nothing pruned: at --ratio {ratio} every one of the {len(open_groups)} prunable groups "
                "kept all its channels once rounded up to its --round-to multiple; the model was written "
                "unchanged (raise --ratio, or give --round-to 1 for exact counts)"
            )
        else:
            click.echo("nothing to prune: every group is frozen; the model was written unchanged")
            click.echo(render_groups(result.analysis, limit=0))
    skipped = result.plan.policy.get("skipped") or {}
    if "sensitivity" in result.plan.policy:
        click.echo(
            f"sensitivity: {len(result.plan.policy['sensitivity'])} groups measured on "
            f"{result.plan.policy['sensitivity_samples']} calibration samples | "
            f"{len(skipped)} left whole as fragile (per group in --report)"
        )
    for group_id, reason in skipped.items():
        click.echo(f"  group {group_id}: {reason}")
    if result.change is not None:
        for line in result.change.lines("spa prune"):
            click.echo(line)
    if interface := interface_line(result.report.get("interface") or []):
        click.echo(interface)
    rows = result.report.get("reconstruction") or []
    if rows:
        before = sum(row["error_before"] for row in rows) / len(rows)
        after = sum(row["error_after"] for row in rows) / len(rows)
        click.echo(
            f"reconstruction: {len(rows)} layers updated | mean relative output error "
            f"{before:.3g} → {after:.3g} (per layer in --report)"
        )
    if result.report.get("latency"):
        click.echo(result.report["latency"]["note"])
    if result.verification is not None:
        click.echo(result.verification.render())
    passed = result.verification is None or result.verification.passed
    echo_verdict(result.verdict_line, passed, result.output)
