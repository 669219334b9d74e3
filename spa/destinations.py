"""Where spa may write: one check for every path a command writes.

Inside :func:`protect_inputs` (the CLI opens it around every command), each
model :func:`spa.model_io.load_proto` reads, and every external-data file it
references, is recorded by :func:`record_input`. :func:`check_destination` then
refuses any output (``-o``, ``--report``, ``--json``, ``--save-plan``, the
``--dump-dir`` files) that would overwrite one of them, following symbolic
links and recognising hard links, and refuses destinations that are not
regular files (``/dev/null``, a FIFO, a folder). :func:`write_text_atomic` is
the one atomic text writer (temporary file next to the destination, then
rename) used by the JSON reports and plans. Every file written in the scope is
recorded by :func:`record_output`; when the command ends in a user error (exit
1) the CLI removes them, so a failed command leaves no output behind.

>>> with protect_inputs():  # doctest: +SKIP
...     model = load_model("model.onnx")
...     check_destination("model.onnx", "--report")  # UserError: would overwrite the input
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spa.errors import UserError

__all__ = [
    "ProtectedFiles",
    "check_destination",
    "protect_inputs",
    "protected_files",
    "record_input",
    "record_output",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ProtectedFiles:
    """Files read in one scope (resolved paths and (device, inode) pairs) and the
    files written in it, so a failed command can take its outputs back."""

    paths: set[Path] = dataclasses.field(default_factory=set)
    inodes: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    written: list[Path] = dataclasses.field(default_factory=list)

    def remove_written(self) -> None:
        """Delete every file written in this scope (a command that failed leaves none)."""
        for path in reversed(self.written):
            with contextlib.suppress(OSError):
                if path.is_dir():  # a folder the command created (--dump-dir)
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
                logger.info("removed %s (the command failed)", path)
        self.written.clear()

    def add(self, path: Path) -> None:
        resolved = path.resolve()
        self.paths.add(resolved)
        with contextlib.suppress(OSError):
            info = resolved.stat()
            self.inodes.add((info.st_dev, info.st_ino))

    def wrote(self, path: Path) -> bool:
        """Whether this scope wrote ``path`` itself (an output it may read back and rewrite)."""
        resolved = path.resolve()
        return any(item.resolve() == resolved for item in self.written)

    def holds(self, path: Path) -> bool:
        if path.resolve() in self.paths:
            return True
        try:
            info = path.stat()
        except OSError:
            return False
        return (info.st_dev, info.st_ino) in self.inodes


_SCOPE: contextvars.ContextVar[ProtectedFiles | None] = contextvars.ContextVar(
    "spa_protected_files", default=None
)


@contextlib.contextmanager
def protect_inputs() -> Iterator[ProtectedFiles]:
    """A scope in which every file a load reads is never written over."""
    files = ProtectedFiles()
    token = _SCOPE.set(files)
    try:
        yield files
    finally:
        _SCOPE.reset(token)


def protected_files() -> ProtectedFiles | None:
    """The files read in the current :func:`protect_inputs` scope (None outside one)."""
    return _SCOPE.get()


def record_input(path: str | os.PathLike[str]) -> None:
    """Record ``path`` as read, so no output of this scope overwrites it."""
    files = _SCOPE.get()
    if files is not None:
        files.add(Path(path))


def record_output(path: str | os.PathLike[str]) -> None:
    """Record ``path`` as written by this scope (see :meth:`ProtectedFiles.remove_written`)."""
    files = _SCOPE.get()
    if files is not None:
        files.written.append(Path(path).absolute())


def check_destination(
    path: str | os.PathLike[str],
    flag: str,
    *,
    protected: set[Path] | frozenset[Path] = frozenset(),
) -> Path:
    """The absolute ``path`` if spa may write a file there, else a one-line UserError.

    Refused: a file read in this scope (the input model or its external data,
    through links too; not one this scope wrote before it read it back, such as an
    output the latency guard measured and then rewrites) or in ``protected``, a
    folder, anything that is not a regular file (``/dev/null``, a FIFO, a socket),
    a missing or read-only folder.
    ``flag`` names the option in the message (``-o``, ``--report``).
    """
    path = Path(path).absolute()
    files = _SCOPE.get()
    resolved = path.resolve()
    if resolved in {Path(item).resolve() for item in protected} or (
        files is not None and files.holds(path) and not files.wrote(path)
    ):
        raise UserError(
            f"{flag} {path}: would overwrite the input model or its data "
            f"'{resolved.name}'; choose another path"
        )
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{flag} {path}: is a folder; give a file name inside it")
        if not stat.S_ISREG(mode):
            raise UserError(
                f"{flag} {path}: is not a regular file (a device, FIFO or socket); give a file path"
            )
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: folder '{parent}' is not writable; choose another path")
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str, flag: str) -> Path:
    """Write ``text`` at ``path`` (checked by :func:`check_destination`) atomically:
    a temporary file in the same folder, renamed into place once complete."""
    path = check_destination(path, flag)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
        record_output(path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)
    return path
