"""The ``spa`` command line: thin subcommands over library functions.

Exit codes: 0 ok, 1 user error (one line naming the problem and the fix, no
traceback), 2 usage error, 3 verification failed. Internal errors keep their
traceback. One file per command; every shared flag is defined once in
:mod:`spa.cli.options`. Heavy modules are imported inside the commands so
``spa --help`` stays fast.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from types import FrameType
from typing import Any

import click

from spa import __version__
from spa.cli.analyze_cmd import analyze_command
from spa.cli.build_cmd import build_command
from spa.cli.inspect_cmd import inspect_command
from spa.cli.optimize_cmd import optimize_command
from spa.cli.options import EXIT_USER_ERROR, EXIT_VERIFY_FAILED
from spa.cli.plugins_cmd import plugins_group
from spa.cli.prune_cmd import prune_command
from spa.cli.quantize_cmd import quantize_command
from spa.cli.slice_cmd import slice_command
from spa.cli.sparsify_cmd import sparsify_command
from spa.cli.verify_cmd import verify_command
from spa.cli.zoo_cmd import zoo_group
from spa.destinations import protect_inputs
from spa.errors import UserError, VerificationFailed

__all__ = ["cli", "main"]


class UserFailure(click.ClickException):
    """A :class:`UserError` shown as one line, exit code 1."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class SpaGroup(click.Group):
    """The one error boundary: maps library exceptions to exit codes for every subcommand.

    It is also the one scope of :func:`spa.destinations.protect_inputs`: no file a
    command reads (the model, its external data) is overwritten by what it writes,
    and a command that ends in a user error removes what it wrote (exit 3 keeps
    the output for inspection).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with protect_inputs() as files:
                try:
                    return super().invoke(ctx)
                except UserError:
                    files.remove_written()  # exit 1 leaves no output behind
                    raise
                except (KeyboardInterrupt, SystemExit) as stop:
                    # Ctrl-C, SIGTERM or SIGHUP (see _exit_on_signal) before the
                    # command finished, e.g. during verification: an output that
                    # was saved but not yet verified is not published.
                    if isinstance(stop, KeyboardInterrupt) or stop.code not in (0, None):
                        files.remove_written()
                    raise
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
    if verbose < 2:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_one_line_library_warnings)


def _one_line_library_warnings(record: logging.LogRecord) -> bool:
    """Warnings that libraries (onnx-ir, onnx) log with a traceback become one line.

    onnx-ir logs e.g. "Shape inference failed: %s. Model is left unchanged" with
    the whole exception attached; the user needs its last line, not the stack
    (``-vv`` keeps the stack).
    """
    if record.exc_info and not record.name.startswith("spa") and record.levelno < logging.ERROR:
        error = record.exc_info[1]
        detail = str(error).strip().splitlines()[-1] if error and str(error).strip() else ""
        message = record.getMessage().replace("%s", "").replace(": .", ".").strip()
        record.msg, record.args = f"{message} ({detail})" if detail else message, None
        record.exc_info, record.exc_text = None, None
    return True


for _command in (
    inspect_command,
    verify_command,
    optimize_command,
    analyze_command,
    prune_command,
    quantize_command,
    sparsify_command,
    slice_command,
    build_command,
    plugins_group,
    zoo_group,
):
    cli.add_command(_command)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP raise SystemExit, so every ``finally`` (staging folders,
    temporary files) runs before the process ends."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (SIGTERM cleans up like Ctrl-C does)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    cli.main(args=list(argv) if argv is not None else None, prog_name="spa")


if __name__ == "__main__":
    main()
