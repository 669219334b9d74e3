"""``spa sparsify``: 2:4 sparsity or GQSA (thin face over
:func:`spa.workflows.sparsify.sparsify_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from spa.cli.options import (
    calib_option,
    check_calib_exists,
    dump_dir_option,
    input_arguments,
    input_options,
    print_pass_line,
    quality_options,
    report_option,
)
from spa.cli.outcome import finish, human_size, verdict_tail

__all__ = ["render_sparsify", "sparsify_command", "sparsify_verdict"]


def render_sparsify(result: Any) -> list[str]:
    """One line per rewritten/skipped node, then coverage, sparsity and calibration lines."""
    lines = []
    for decision in result.decisions:
        node = decision["node"] or decision["weight"] or "?"
        if decision["action"] == "skipped":
            lines.append(f"skipped    {decision['op_type']:8s} {node}: {decision['reason']}")
            continue
        shape = f"W[{decision['k']}x{decision['n']}]"
        size = f"{human_size(decision['bytes_before'])} -> {human_size(decision['bytes_after'])}"
        note = f" ({decision['reason']})" if decision["reason"] else ""
        zeros = f"zeros {decision['sparsity']:.1%}"
        lines.append(
            f"{decision['action']:10s} {decision['op_type']:8s} {node} {shape} {size} {zeros}{note}"
        )
    skipped = len(result.decisions) - result.rewritten
    lines.append(
        f"nodes rewritten {result.rewritten} | skipped {skipped} | weighted-layer MACs covered "
        f"{result.mac_coverage:.1%} | sparsity of rewritten weights {result.sparsity:.1%}"
    )
    lines.append(f"calibration: {result.calibration}")
    return lines


def sparsify_verdict(result: Any) -> str:
    """``PASSED | sparsify gqsa g16 50% int4 -> reference | bytes .. -> .. | decoded weights
    exact (rel 1e-06) | cos 0.97 to float (seeded inputs) | quality ... | 1.2s``
    (``gqsa tile g16 ...`` for the tile-shared layout)."""
    options = result.options
    verdict = "PASSED" if result.passed else "FAILED"
    if result.rewritten == 0 and result.passed:
        verdict = "NOTHING TO DO"
    if options["pattern"] == "gqsa":
        tile = "tile " if options.get("layout") == "tile" else ""
        share = f"{options['sparsity']:.1%}".replace(".0%", "%")  # 50%, 87.5%
        kind = f"gqsa {tile}g{options['group']} {share} int{options['bits']} -> {options['form']}"
    else:
        kind = f"2:4 {options['method']}"
    return f"{verdict} | sparsify {kind} | {verdict_tail(result)}"


@click.command("sparsify")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--pattern", type=click.Choice(["2:4", "gqsa"]), default="2:4", show_default=True)
@click.option("--group", type=int, default=16, show_default=True, help="GQSA group size along K.")
@click.option("--sparsity", type=float, default=None, help="GQSA share of groups removed [0.5].")
@click.option("--bits", type=int, default=4, show_default=True, help="GQSA bits of kept groups.")
@click.option(
    "--method", type=click.Choice(["auto", "magnitude", "sparsegpt"]), default="auto",
    show_default=True,
    help="2:4 mask selection; auto = sparsegpt when --calib is given, magnitude otherwise.",
)  # fmt: skip
@calib_option
@click.option("--calib-samples", type=int, default=None, help="Use at most this many samples.")
@click.option(
    "--form", type=click.Choice(["reference", "plugin"]), default="reference", show_default=True,
    help="GQSA: standard-ONNX lowering (ORT CPU) or spa.GroupSparseQuantMatMul (TensorRT plugin).",
)  # fmt: skip
@click.option(
    "--gqsa-layout", "layout", type=click.Choice(["column", "tile"]), default="column",
    show_default=True,
    help="GQSA: each column picks its groups, or 'tile': the 16 columns of a tile share "
    "their groups, a whole number per 128 k (--group 16, sparsity a multiple of 1/8), so "
    "gqsa-to-plugin writes the tensor-core kernel w4_gqsa_tile for TensorRT (sparsity 0.5 "
    "or 0.75; other shares keep the w4_gqsa kernel).",
)  # fmt: skip
@click.option(
    "--all-layers", is_flag=True,
    help="2:4: sparsify depthwise Conv and the first and last weighted layers too (kept dense by default).",
)  # fmt: skip
@report_option
@dump_dir_option
@click.option(
    "--verify/--no-verify", default=True, show_default=True,
    help="Check in ORT CPU against the input with its rewritten weights decoded (exact to "
    "float rounding); the cosine to the float input is reported beside it.",
)  # fmt: skip
@click.option(
    "--cosine", "--verify-cosine", "verify_cosine", type=float, default=None,
    help="Fail unless every output's cosine to the float input on the seeded inputs is >= "
    "this [default: measured and reported, not judged].",
)  # fmt: skip
@quality_options
@input_options
def sparsify_command(
    model: Path, output: Path, pattern: str, group: int, sparsity: float | None, bits: int,
    method: str, calib: Path | None, calib_samples: int | None, form: str, layout: str,
    all_layers: bool,
    report_path: Path | None, dump_dir: Path | None, verify: bool, verify_cosine: float | None,
    holdout: float, metric: str | None, seed: int,
    shapes: tuple[str, ...], dims: tuple[str, ...], int_ranges: tuple[str, ...],
) -> None:  # fmt: skip
    """2:4-sparsify or GQSA-quantize MatMul/Gemm(/Conv) weights of MODEL and write -o."""
    from spa.errors import UserError
    from spa.workflows.sparsify import sparsify_model

    check_calib_exists(calib)
    if report_path is not None and not report_path.parent.is_dir():
        raise UserError(f"--report {report_path}: folder does not exist; create it first")
    result = sparsify_model(
        model, output, pattern=pattern, group=group, sparsity=sparsity, bits=bits,
        method=method, calib=calib, form=form, layout=layout, seed=seed, verify=verify,
        min_cosine=verify_cosine, max_calibration_samples=calib_samples,
        **input_arguments(shapes, dims, int_ranges, calib=calib, model=model), dump_dir=dump_dir,
        on_pass_end=print_pass_line, holdout=holdout, metric=metric,
        keep_float=() if all_layers else None,
    )  # fmt: skip
    finish(result, render_sparsify(result), sparsify_verdict(result), report_path, "spa sparsify")
