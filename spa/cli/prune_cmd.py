"""``spa analyze`` and ``spa prune``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from spa.analysis.defaults import DEFAULT_PRUNABLE_IO
from spa.cli.options import (
    EXIT_VERIFY_FAILED,
    input_arguments,
    input_options,
    policy_from,
    tolerance_options,
)

__all__ = [
    "analyze_command",
    "criterion_arguments",
    "criterion_options",
    "prune_command",
    "render_groups",
]

CRITERIA = ("random", "l1", "l2", "bn_scale", "lamp", "wanda_sp", "flap", "obs", "obspa")


def criterion_options(function: Any) -> Any:
    """``--criterion --reduction --bias-compensation --calib --allocation --max-group-ratio``."""
    options = [
        click.option(
            "--criterion",
            type=click.Choice(CRITERIA),
            default="l1",
            show_default=True,
            help="Channel importance (wanda_sp, flap, obs need --calib; see docs/criteria.md).",
        ),
        click.option(
            "--reduction",
            type=click.Choice(["sum", "mean", "max"]),
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
            "--calib",
            "calibration",
            type=click.Path(path_type=Path),
            help="Calibration inputs: an .npz (input name -> samples) or a folder of .npy.",
        ),
        click.option(
            "--allocation",
            type=click.Choice(["uniform", "global", "same-shape"]),
            default="uniform",
            show_default=True,
            help="Ratio per group, one global ranking, or a ranking per shape class.",
        ),
        click.option(
            "--max-group-ratio",
            type=float,
            default=0.9,
            show_default=True,
            help="No group loses more than this share of its channels.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def criterion_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``prune_model`` taken from ``criterion_options``."""
    names = (
        "criterion",
        "reduction",
        "bias_compensation",
        "calibration",
        "allocation",
        "max_group_ratio",
    )
    return {name: options.pop(name) for name in names}


def render_groups(analysis: Any, limit: int | None = None) -> str:
    """A table of groups with parameters: id, channels, members, status, reason."""
    rows = [g for g in analysis.groups if g.parameters]
    lines = [f"{'group':>5}  {'channels':>8}  {'members':>7}  {'status':9}  reason / root"]
    for group in rows[:limit]:
        status = "prunable" if group.prunable else ("frozen" if group.frozen else "fixed")
        detail = (
            group.frozen_reasons[0] if group.frozen else f"{group.root[0]} axis {group.root[1]}"
        )
        lines.append(
            f"{group.id:>5}  {group.size:>8}  {len(group.members):>7}  {status:9}  {detail}"
        )
    if limit is not None and len(rows) > limit:
        lines.append(f"  … {len(rows) - limit} more groups (use --json for all)")
    prunable = len(analysis.prunable_groups())
    frozen = sum(1 for g in rows if g.frozen)
    lines.append(f"groups with parameters: {len(rows)} | prunable {prunable} | frozen {frozen}")
    for reason, count in analysis.frozen_reason_counts().items():
        lines.append(f"  frozen: {count:4d} x {reason}")
    return "\n".join(lines)


@click.command("analyze")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), help="Write every group here."
)
@click.option("--limit", type=int, default=40, show_default=True, help="Rows shown in the table.")
@click.option(
    "--prunable-io",
    default=DEFAULT_PRUNABLE_IO,
    show_default=True,
    help="Regex of graph inputs/outputs that may shrink ('' freezes all).",
)
def analyze_command(model: Path, json_path: Path | None, limit: int, prunable_io: str) -> None:
    """Channel groups of MODEL: which can be pruned, and why the others cannot."""
    from spa.prune import analyze_file

    analysis = analyze_file(model, prunable_io or None)
    click.echo(render_groups(analysis, limit))
    if json_path is not None:
        data = {
            "fingerprint": analysis.fingerprint,
            "groups": [group.as_dict() for group in analysis.groups if group.parameters],
            "frozen_reasons": analysis.frozen_reason_counts(),
        }
        from spa.report import write_report

        write_report(data, json_path)


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
@click.option(
    "--round-to", type=int, default=1, show_default=True, help="Keep a multiple of K channels."
)
@click.option(
    "--exclude", multiple=True, metavar="REGEX", help="Leave groups touching matching values alone."
)
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), help="Apply a saved plan.")
@click.option("--save-plan", type=click.Path(path_type=Path), help="Save the plan used.")
@click.option(
    "--prunable-io",
    default=DEFAULT_PRUNABLE_IO,
    show_default=True,
    help="Regex of graph inputs/outputs that may shrink ('' freezes all).",
)
@click.option("--verify", is_flag=True, help="Check mask equivalence in ORT (exit 3 if it fails).")
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report."
)
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
    verify: bool,
    report_path: Path | None,
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
    from spa.cli.main import command_line
    from spa.prune import prune_model

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
        **input_arguments(shapes, dims, int_ranges),
        report_path=report_path,
        command=command_line(),
        prunable_io=prunable_io or None,
    )
    if not result.plan.kept:
        click.echo("nothing to prune: every group is frozen; the model was written unchanged")
        click.echo(render_groups(result.analysis, limit=0))
    rows = result.report.get("reconstruction") or []
    if rows:
        before = sum(row["error_before"] for row in rows) / len(rows)
        after = sum(row["error_after"] for row in rows) / len(rows)
        click.echo(
            f"reconstruction: {len(rows)} layers updated | mean relative output error "
            f"{before:.3g} → {after:.3g} (per layer in --report)"
        )
    if result.verification is not None:
        click.echo(result.verification.render())
    click.echo(result.verdict_line)
    if result.verification is not None and not result.verification.passed:
        raise click.exceptions.Exit(EXIT_VERIFY_FAILED)
