"""``spa quantize``: weight-only int4/int8 block quantization (thin face over
:func:`spa.quant.api.quantize_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from spa.cli.options import EXIT_VERIFY_FAILED, input_arguments, input_options

__all__ = ["quantize_command", "render_decisions", "verdict_line"]


def _megabytes(size: int) -> str:
    if size >= 1_000_000:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.1f} kB"


def render_decisions(result: Any) -> list[str]:
    """One line per quantized/skipped node, then coverage and calibration lines."""
    lines = []
    for decision in result.decisions:
        node = decision["node"] or decision["weight"] or "?"
        if decision["action"] == "quantized":
            shape = f"W[{decision['k']}x{decision['n']}]"
            size = (
                f"{_megabytes(decision['bytes_before'])} -> {_megabytes(decision['bytes_after'])}"
            )
            note = f" ({decision['reason']})" if decision["reason"] else ""
            lines.append(f"quantized {decision['op_type']:8s} {node} {shape} {size}{note}")
        else:
            lines.append(f"skipped   {decision['op_type']:8s} {node}: {decision['reason']}")
    stats = result.statistics
    lines.append(
        f"nodes quantized {stats.get('nodes_quantized', 0)} | skipped {stats.get('nodes_skipped', 0)}"
        f" | MatMul/Gemm/Conv MACs covered {result.mac_coverage:.1%}"
    )
    lines.append(f"calibration: {result.calibration}")
    return lines


def verdict_line(result: Any) -> str:
    """``PASSED | quantize int4 g128 rtn -> ort | bytes 12.1 MB -> 3.4 MB (-72%) | cos 0.99991 | 2.1s``."""
    options = result.options
    verdict = "PASSED" if result.passed else "FAILED"
    if result.statistics.get("nodes_quantized", 0) == 0:
        verdict = "NOTHING TO DO" if result.passed else verdict
    before, after = result.bytes_before, result.bytes_after
    change = f"{(after - before) / before:+.0%}" if before else "n/a"
    cosine = f"cos {result.cosine:.5f}" if result.cosine is not None else "not verified"
    kind = f"int{options['bits']} g{options['block']} {options['method']}"
    if not options["symmetric"]:
        kind += " asym"
    return (
        f"{verdict} | quantize {kind} -> {options['target']} | bytes {_megabytes(before)} -> "
        f"{_megabytes(after)} ({change}) | {cosine} | {result.seconds:.1f}s"
    )


@click.command("quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the result.",
)
@click.option("--weights", type=click.Choice(["int4", "int8"]), default="int4", show_default=True)
@click.option(
    "--block", type=int, default=128, show_default=True, help="Weights per scale along K."
)
@click.option("--method", type=click.Choice(["rtn", "gptq"]), default="rtn", show_default=True)
@click.option(
    "--symmetric/--asymmetric", default=True, show_default=True, help="Zero points or not."
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    help="GPTQ data: .npz or folder of <input>.npy (leading sample axis).",
)
@click.option(
    "--calib-samples", type=int, default=None, help="Use at most this many calibration samples."
)
@click.option(
    "--act-order", is_flag=True, help="GPTQ: visit inputs by decreasing Hessian diagonal."
)
@click.option(
    "--target", type=click.Choice(["ort", "tensorrt", "onnx"]), default="ort", show_default=True
)
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here."
)
@click.option(
    "--verify/--no-verify", default=True, show_default=True, help="Compare outputs in ORT CPU."
)
@click.option(
    "--min-cosine",
    type=float,
    default=None,
    help="Verification threshold [default: 0.9999 int8, 0.98 int4].",
)
@input_options
def quantize_command(
    model: Path,
    output: Path,
    weights: str,
    block: int,
    method: str,
    symmetric: bool,
    calib: Path | None,
    calib_samples: int | None,
    act_order: bool,
    target: str,
    report_path: Path | None,
    verify: bool,
    min_cosine: float | None,
    seed: int,
    shapes: tuple[str, ...],
    dims: tuple[str, ...],
    int_ranges: tuple[str, ...],
) -> None:
    """Quantize MatMul/Gemm weights of MODEL to int4/int8 blocks and write -o."""
    from spa.errors import UserError
    from spa.quant.api import quantize_model

    if calib is not None and method != "gptq":
        raise UserError("--calib is only used by --method gptq; add --method gptq or drop --calib")
    if calib is not None and not calib.exists():
        raise UserError(
            f"--calib {calib}: no such file or folder; give an .npz or a folder of .npy"
        )
    result = quantize_model(
        model, output, bits=4 if weights == "int4" else 8, block=block, method=method,
        symmetric=symmetric, target=target, calib=calib, seed=seed, act_order=act_order,
        verify=verify, min_cosine=min_cosine, max_calibration_samples=calib_samples,
        **input_arguments(shapes, dims, int_ranges),
    )  # fmt: skip
    for line in render_decisions(result):
        click.echo(line)
    if result.verification is not None:
        click.echo(result.verification.render())
    if report_path is not None:
        from spa.report import write_report

        write_report(result.as_dict(), report_path)
    click.echo(verdict_line(result))
    if not result.passed:
        raise click.exceptions.Exit(EXIT_VERIFY_FAILED)
