"""``spa quantize``: weight-only int4/int8 block quantization (thin face over
:func:`spa.workflows.quantize.quantize_model`) and, with ``--activations int8|fp8``,
static QDQ quantization (:func:`spa.workflows.quantize_static.quantize_static_model`).
Every option is described in ``docs/quantization.md``."""

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

__all__ = [
    "latency_lines",
    "quantize_command",
    "render_decisions",
    "render_static_decisions",
    "static_verdict_line",
    "verdict_line",
]

#: Weight-only options that static quantization (--activations) cannot honour.
_WEIGHT_ONLY_OPTIONS = {
    "block": "--block", "method": "--method", "symmetric": "--symmetric/--asymmetric",
    "act_order": "--act-order", "all_layers": "--all-layers",
}  # fmt: skip
#: Static-only options that weight-only quantization ignores.
_STATIC_OPTIONS = {
    "calib_method": "--calib-method", "percentile": "--percentile",
    "quantize_norms": "--quantize-norms", "quantize_bmm": "--quantize-bmm",
    "quantize_residual_matmul": "--quantize-residual-matmul",
}  # fmt: skip


def render_decisions(result: Any) -> list[str]:
    """One line per quantized/skipped node, then coverage and calibration lines."""
    lines = []
    for decision in result.decisions:
        node = decision["node"] or decision["weight"] or "?"
        if decision["action"] == "quantized":
            shape = f"W[{decision['k']}x{decision['n']}]"
            size = (
                f"{human_size(decision['bytes_before'])} -> {human_size(decision['bytes_after'])}"
            )
            note = f" ({decision['reason']})" if decision["reason"] else ""
            lines.append(f"quantized {decision['op_type']:8s} {node} {shape} {size}{note}")
        else:
            lines.append(f"skipped   {decision['op_type']:8s} {node}: {decision['reason']}")
    stats = result.statistics
    lines.append(
        f"nodes quantized {stats.get('nodes_quantized', 0)} | skipped {stats.get('nodes_skipped', 0)}"
        f" | weighted-layer MACs covered {result.mac_coverage:.1%}"
    )
    lines.append(f"calibration: {result.calibration}")
    return [*lines, *latency_lines(result)]


def verdict_line(result: Any) -> str:
    """``PASSED | quantize int4 g128 rtn -> ort | bytes 12.1 MB -> 3.4 MB (-72%) | cos 0.99991 | 2.1s``."""
    options = result.options
    verdict = "PASSED" if result.passed else "FAILED"
    if result.statistics.get("nodes_quantized", 0) == 0:
        verdict = "NOTHING TO DO" if result.passed else verdict
    kind = f"int{options['bits']} g{options['block']} {options['method']}"
    if not options["symmetric"]:
        kind += " asym"
    return f"{verdict} | quantize {kind} -> {options['target']} | {verdict_tail(result)}"


def render_static_decisions(result: Any) -> list[str]:
    """One line per quantized/skipped node (float nodes counted), then coverage and calibration."""
    lines = []
    for decision in result.decisions:
        node = decision["node"] or "?"
        if decision["action"] == "quantized":
            inputs = ", ".join(decision["inputs"])
            weight = (
                f" weight {decision['weight']} axis {decision['axis']}"
                if decision["weight"]
                else ""
            )
            lines.append(f"quantized {decision['op_type']:8s} {node} Q/DQ on [{inputs}]{weight}")
        elif decision["action"] == "skipped":
            lines.append(f"skipped   {decision['op_type']:8s} {node}: {decision['reason']}")
    stats = result.statistics
    lines.append(
        f"nodes quantized {stats.get('nodes_quantized', 0)} | skipped {stats.get('nodes_skipped', 0)}"
        f" | left float {stats.get('nodes_float', 0)} (reasons in --report)"
        f" | Q/DQ pairs {stats.get('qdq_pairs', 0)} | weighted-layer MACs covered {result.mac_coverage:.1%}"
    )
    lines.append(
        f"calibration: {result.calibration} | {result.calibration_method} | "
        f"{result.calibration_samples} samples"
    )
    return [*lines, *latency_lines(result)]


def latency_lines(result: Any) -> list[str]:
    """The latency guard's line (spa.workflows.latency_guard), when it ran."""
    guard = getattr(result, "latency", None)
    return [guard["note"]] if guard else []


def static_verdict_line(result: Any) -> str:
    """``PASSED | quantize static int8 (minmax) | bytes 46.8 MB -> 11.8 MB (-75%) | cos 0.99974 | 2.2s``."""
    verdict = "PASSED" if result.passed else "FAILED"
    if result.statistics.get("nodes_quantized", 0) == 0:
        verdict = "NOTHING TO DO" if result.passed else verdict
    kind = f"static {result.options['activations']} ({result.calibration_method})"
    return f"{verdict} | quantize {kind} | {verdict_tail(result)}"


def _explicit(context: click.Context, names: dict[str, str]) -> list[str]:
    """The flags among ``names`` that the user gave on the command line."""
    from click.core import ParameterSource

    return [
        flag for name, flag in names.items()
        if context.get_parameter_source(name) == ParameterSource.COMMANDLINE
    ]  # fmt: skip


def _check_mode(
    context: click.Context, activations: str | None, weights: str | None, method: str
) -> None:
    """One-line errors for option mixes of the weight-only and static modes."""
    from spa.errors import UserError

    if activations is None:
        if weights == "fp8":
            raise UserError(
                "--weights fp8 is static QDQ only; add --activations fp8 "
                "(weight-only mode is --weights int4|int8)"
            )
        static = _explicit(context, _STATIC_OPTIONS)
        if static:
            raise UserError(f"{static[0]} needs --activations int8|fp8 (static quantization)")
        return
    if weights == "int4":
        raise UserError(
            f"--weights int4 is weight-only block quantization and cannot go with "
            f"--activations {activations}; use --weights {activations} or drop --activations"
        )
    weight_only = _explicit(context, _WEIGHT_ONLY_OPTIONS)
    if weight_only:
        raise UserError(
            f"{weight_only[0]} is a weight-only option; --activations {activations} writes "
            "symmetric per-channel QDQ (standard ONNX; --target ort or tensorrt): drop it"
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
@click.option(
    "--weights",
    type=click.Choice(["int4", "int8", "fp8"]),
    default=None,
    help="Weight type [default: int4; with --activations, the activation type].",
)
@click.option(
    "--activations",
    type=click.Choice(["int8", "fp8"]),
    default=None,
    help="Static QDQ: calibrated per-tensor activations + per-channel weights.",
)
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
    help="Static: how activation ranges are chosen.",
)
@click.option(
    "--percentile",
    type=float,
    default=99.99,
    show_default=True,
    help="Static: share of |x| kept by --calib-method percentile.",
)
@click.option(
    "--quantize-norms", is_flag=True, help="Static: Q/DQ on LayerNorm/Softmax/Resize inputs too."
)
@click.option(
    "--quantize-bmm", is_flag=True, help="Static: Q/DQ on MatMuls of two activations too."
)
@click.option(
    "--quantize-residual-matmul",
    is_flag=True,
    help="Static: Q/DQ on residual Adds after MatMul/Gemm too (default: after Conv only).",
)
@click.option(
    "--block", type=int, default=128, show_default=True, help="Weights per scale along K (int4 Conv: along each output channel's weights)."
)
@click.option(
    "--method", type=click.Choice(["auto", "rtn", "gptq"]), default="auto", show_default=True,
    help="Weight-only: round-to-nearest or GPTQ; auto = gptq for int4 when --calib is given, "
    "rtn otherwise.",
)  # fmt: skip
@click.option(
    "--symmetric/--asymmetric", default=True, show_default=True, help="Zero points or not."
)
@calib_option
@click.option(
    "--calib-samples", type=int, default=None, help="Use at most this many calibration samples."
)
@click.option(
    "--act-order", is_flag=True, help="GPTQ: visit inputs by decreasing Hessian diagonal."
)
@click.option(
    "--target",
    type=click.Choice(["ort", "tensorrt", "onnx"]),
    default="ort",
    show_default=True,
    help="Format: weight-only as in docs/quantization.md; static: ort = UINT8 activations "
    "(zero point 128), tensorrt = INT8.",
)
@click.option(
    "--all-layers",
    is_flag=True,
    help="int4: quantize depthwise Conv and the first and last weighted layers too "
    "(kept in float by default).",
)
@report_option
@dump_dir_option
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check the output in ORT CPU: weight-only against the input with its quantized "
    "weights decoded (exact to float rounding), static against the input by cosine.",
)
@click.option(
    "--cosine",
    "--min-cosine",
    "min_cosine",
    type=float,
    default=None,
    help="Fail unless every output's cosine to the float input on the seeded inputs is >= "
    "this [default: weight-only: measured and reported, not judged; static: 0.99].",
)
@click.option(
    "--allow-slower",
    is_flag=True,
    help="--target ort: keep the requested form even when it measures slower than the input "
    "(by default a slower MatMulNBits model is written in the folded Cast form, and static "
    "Q/DQ leaves its smallest layers float).",
)
@quality_options
@input_options
def quantize_command(
    model: Path,
    output: Path,
    weights: str | None,
    activations: str | None,
    calib_method: str,
    percentile: float,
    quantize_norms: bool,
    quantize_bmm: bool,
    quantize_residual_matmul: bool,
    block: int,
    method: str,
    symmetric: bool,
    calib: Path | None,
    calib_samples: int | None,
    act_order: bool,
    target: str,
    all_layers: bool,
    report_path: Path | None,
    dump_dir: Path | None,
    verify: bool,
    min_cosine: float | None,
    allow_slower: bool,
    holdout: float,
    metric: str | None,
    seed: int,
    shapes: tuple[str, ...],
    dims: tuple[str, ...],
    int_ranges: tuple[str, ...],
) -> None:
    """Quantize the MatMul/Gemm/Conv/LSTM weights of MODEL to int4/int8 blocks (or,
    with --activations, static INT8/FP8 QDQ) and write -o."""
    from spa.workflows.quantize import quantize_model

    _check_mode(click.get_current_context(), activations, weights, method)
    if activations is not None:
        check_calib_exists(calib)
        _static(
            model, output, activations, weights, calib, calib_method, percentile,
            quantize_norms, quantize_bmm, quantize_residual_matmul, calib_samples, report_path,
            verify, min_cosine, seed, target, allow_slower,
            {**input_arguments(shapes, dims, int_ranges, calib=calib, model=model), "holdout": holdout, "metric": metric},
            dump_dir,
        )  # fmt: skip
        return
    weights = weights or "int4"
    check_calib_exists(calib)
    result = quantize_model(
        model, output, bits=4 if weights == "int4" else 8, block=block, method=method,
        symmetric=symmetric, target=target, calib=calib, seed=seed, act_order=act_order,
        verify=verify, min_cosine=min_cosine, max_calibration_samples=calib_samples,
        **input_arguments(shapes, dims, int_ranges, calib=calib, model=model), dump_dir=dump_dir,
        on_pass_end=print_pass_line, holdout=holdout, metric=metric,
        keep_float=() if all_layers else None, allow_slower=allow_slower,
    )  # fmt: skip
    finish(result, render_decisions(result), verdict_line(result), report_path, "spa quantize")


def _static(
    model: Path, output: Path, activations: str, weights: str | None, calib: Path | None,
    calib_method: str, percentile: float, quantize_norms: bool, quantize_bmm: bool,
    quantize_residual_matmul: bool, calib_samples: int | None, report_path: Path | None, verify: bool,
    min_cosine: float | None, seed: int, target: str, allow_slower: bool, inputs: dict[str, Any],
    dump_dir: Path | None,
) -> None:  # fmt: skip
    from spa.errors import UserError
    from spa.workflows.quantize_static import quantize_static_model

    if target == "onnx":
        raise UserError(
            "--activations writes standard QDQ for --target ort (UINT8 activations, what ORT "
            "CPU runs) or --target tensorrt (INT8); choose one of them"
        )
    result = quantize_static_model(
        model, output, activations=activations, weights=weights, calib=calib,
        calib_method=calib_method, percentile=percentile, quantize_norms=quantize_norms,
        quantize_bmm=quantize_bmm, quantize_residual_matmul=quantize_residual_matmul,
        max_calibration_samples=calib_samples, seed=seed, target=target,
        verify=verify, min_cosine=min_cosine, **inputs, dump_dir=dump_dir,
        on_pass_end=print_pass_line, allow_slower=allow_slower,
    )  # fmt: skip
    if result.random_calibration:
        click.echo(
            "WARNING: NO CALIBRATION DATA (--calib): activation ranges come from seeded random "
            "inputs and are NOT representative of real data; accuracy on real inputs may be poor",
            err=True,
        )
    finish(
        result, render_static_decisions(result), static_verdict_line(result), report_path,
        "spa quantize --activations",
    )  # fmt: skip
