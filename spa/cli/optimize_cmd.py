"""``spa optimize``: a recipe of passes (optionally after pruning) over a model,
or, with ``--max-drop``, the search for the fastest (or smallest) model within a
quality budget (docs/optimize.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

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
    quality_options,
    report_option,
    tolerance_options,
)
from spa.errors import UserError
from spa.pruning.allocation import AUTO_ROUND

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
    help="With --prune, keep a multiple of K channels (with --max-drop the default is "
    "spa prune's auto rule).",
)
@quality_options
@click.option(
    "--max-drop",
    metavar="SHARE",
    help="Search candidates and keep the best whose quality loss is at most this "
    "(1% or 0.01); needs --calib (docs/optimize.md).",
)
@click.option(
    "--target",
    default="ort-cpu",
    show_default=True,
    help="With --max-drop: ort-cpu measures latency in ONNX Runtime here; tensorrt ranks "
    "INT8 QDQ, INT4 weight-only, 2:4 and pruning by spa's TensorRT cost model for an H200 "
    "(an estimate).",
)
@click.option(
    "--objective",
    default="latency",
    show_default=True,
    metavar="latency|size",
    help="With --max-drop: what the search minimises.",
)
@click.option(
    "--allow-slower", is_flag=True, help="With --max-drop: accept candidates slower than the input."
)
@click.option(
    "--time-budget", metavar="DURATION", help="With --max-drop: stop trying candidates after 90s, 10m, 1h."
)
@click.option(
    "--cache",
    "search_cache",
    type=click.Path(path_type=Path),
    help="With --max-drop: keep measured candidates here and resume from them.",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="With --max-drop: build and measure the quality of candidates in this many local "
    "processes (latency is always measured here, one candidate at a time).",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="auto|local|ADDRESS",
    help="With --max-drop: build and measure candidates on a Ray cluster (pip install "
    "'spa[ray]'); workers must see this machine's files.",
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
    max_drop: str | None,
    target: str,
    objective: str,
    allow_slower: bool,
    time_budget: str | None,
    search_cache: Path | None,
    workers: int,
    ray_address: str | None,
    **criteria: Any,
) -> None:
    """Run a recipe of passes over MODEL and write the optimized model to -o; with
    --max-drop, search for the fastest (or smallest) model within that quality loss."""
    context = click.get_current_context()
    search_flags = ("target", "objective", "allow_slower", "time_budget", "search_cache",
                    "workers", "ray_address")  # fmt: skip
    if max_drop is not None:
        _search(context, model, output, calib, max_drop, target, objective, allow_slower,
                time_budget, holdout, metric, seed, shapes, dims, int_ranges, report_path,
                round_to, search_cache, criteria, workers, ray_address)  # fmt: skip
        return
    given = [_flag(name) for name in search_flags if _given(context, name)]
    if given:
        raise UserError(f"{given[0]} only applies to the search; add --max-drop, e.g. --max-drop 1%")
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
        raise click.UsageError("Missing option '-o' / '--output' (say where to write the optimized model).")
    from spa.cli.outcome import verification_lines
    from spa.workflows.optimize import optimize

    # a tolerance the user gave keeps its meaning; without one a recipe that rewrote
    # weights is judged by its decoded reference only (its drift is reported)
    tolerances = ("rtol", "atol", "cosine", "exact")
    explicit = any(_given(context, name) for name in tolerances)
    result = optimize(
        model,
        output,
        recipe=loaded,
        passes=passes,
        verify=verify,
        policy=policy_from(rtol, atol, cosine, exact) if explicit else None,
        seed=seed,
        **input_arguments(shapes, dims, int_ranges, calib=calib, model=model),
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
    decoded = result.decoded
    if decoded is not None:
        for line in verification_lines(decoded):
            click.echo(line)
        if decoded.prefix is not None:
            for line in decoded.prefix.render().splitlines():
                click.echo(f"{decoded.prefix_steps} before the weight rewrite: {line}")
    elif result.verification is not None:
        click.echo(result.verification.render())
    for key in ("verified_form", "latency_note"):
        if key in result.report:
            click.echo(f"{key.replace('_', ' ')}: {result.report[key]}")
    checks = (result.verification, result.prune_verification, *result.step_verifications)
    failed = [v for v in checks if v and not v.passed]
    failed_decoded = decoded is not None and not decoded.passed
    if not any(_given(context, name) for name in ("recipe", "prune_ratio")):
        data = str(calib) if calib is not None else "DATA"
        click.echo(
            "hint: this ran the cleanup recipe only; for a faster model within a quality "
            f"budget, search pruning and quantization: spa optimize {model} -o {output} "
            f"--calib {data} --max-drop 1%"
        )
    echo_verdict(result.verdict_line, not failed and not failed_decoded, result.output)


def _flag(name: str) -> str:
    return {"prune_ratio": "--prune", "search_cache": "--cache", "ray_address": "--ray"}.get(name, f"--{name.replace('_', '-')}")


def _given(context: click.Context, name: str) -> bool:
    source = context.get_parameter_source(name)
    return source is not None and source != click.core.ParameterSource.DEFAULT


def _search(
    context: click.Context, model: Path, output: Path | None, calib: Path | None, max_drop: str,
    target: str, objective: str, allow_slower: bool, time_budget: str | None, holdout: float,
    metric: str | None, seed: int, shapes: tuple[str, ...], dims: tuple[str, ...],
    int_ranges: tuple[str, ...], report_path: Path | None, round_to: int,
    cache: Path | None, criteria: dict[str, Any], workers: int, ray_address: str | None,
) -> None:  # fmt: skip
    """``--max-drop``: check the flags, run :func:`spa.workflows.search.optimize_search`, print."""
    from spa.workflows.executor import make_executor
    from spa.workflows.search import (
        optimize_search,
        parse_max_drop,
        parse_time_budget,
        render_candidates,
    )

    share = parse_max_drop(max_drop)
    budget = parse_time_budget(time_budget)
    for name in ("recipe", "prune_ratio", "dry_run", "latency_runs"):
        if _given(context, name):
            raise UserError(f"{_flag(name)} does not combine with --max-drop (the search picks the steps); drop one")
    if output is None:
        raise click.UsageError("Missing option '-o' / '--output' (say where to write the optimized model).")
    if calib is None:
        raise UserError("--max-drop needs real samples to measure quality on; give --calib DATA")
    check_calib_exists(calib)
    chosen = {name: criteria[name] for name in ("criterion", "allocation") if _given(context, name)}
    executor = make_executor(workers, ray_address)
    try:
        result = optimize_search(
            model, output, calibration=calib, max_drop=share, target=target, objective=objective,
            allow_slower=allow_slower, time_budget_s=budget, holdout=holdout, metric=metric,
            round_to=round_to if _given(context, "round_to") else AUTO_ROUND, seed=seed,
            **input_arguments(shapes, dims, int_ranges, calib=calib, model=model),
            report_path=report_path, command=command_line(), cache=cache, executor=executor,
            **chosen,
        )  # fmt: skip
    finally:
        executor.close()
    click.echo(render_candidates(result.candidates, result.report["search"]["input_macs"]))
    click.echo(f"quality: {result.report['search']['quality_measure']}")
    if result.report["search"]["resolution_note"]:
        click.echo(f"note: {result.report['search']['resolution_note']}")
    click.echo(result.verdict_line)
