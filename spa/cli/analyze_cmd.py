"""``spa analyze``: the channel groups of a model, prunable or frozen with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from spa.cli.options import prunable_io_option

__all__ = ["analyze_command", "render_groups"]


def render_groups(analysis: Any, limit: int | None = None) -> str:
    """A table of groups with parameters: id, channels, members, status, reason."""
    # groups of one channel are left out (PP-OCRv5's detector showed 40 of them as
    # frozen by Conv)
    rows = analysis.counted_groups()
    single = sum(1 for g in analysis.groups if g.parameters) - len(rows)
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
    prunable = sum(1 for g in rows if g.prunable)
    frozen = [g for g in rows if g.frozen]
    lines.append(f"groups with parameters: {len(rows)} | prunable {prunable} | frozen {len(frozen)}")
    counts = analysis.frozen_reason_counts(frozen)
    for reason, count in counts.items():
        lines.append(f"  frozen: {count:4d} x {reason}")
    if single:
        lines.append(f"  (and {single} groups of one channel, e.g. size-1 axes of broadcast parameters: nothing to prune)")
    return "\n".join(lines)


@click.command("analyze")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), help="Write every group here."
)
@click.option("--limit", type=int, default=40, show_default=True, help="Rows shown in the table.")
@prunable_io_option
def analyze_command(model: Path, json_path: Path | None, limit: int, prunable_io: str) -> None:
    """Channel groups of MODEL: which can be pruned, and why the others cannot."""
    from spa.workflows.prune import analyze_file

    analysis = analyze_file(model, prunable_io or None)
    click.echo(render_groups(analysis, limit))
    if json_path is not None:
        data = {
            "fingerprint": analysis.fingerprint,
            "groups": [group.as_dict() for group in analysis.groups if group.parameters],
            "frozen_reasons": analysis.frozen_reason_counts(),
        }
        from spa.stats.report import write_report

        write_report(data, json_path, "--json")
