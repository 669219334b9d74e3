"""spa's pass infrastructure, built on onnx-ir's.

A spa pass is an :class:`onnx_ir.passes.InPlacePass` with:

* ``name``: a kebab-case name used by recipes and the CLI (``fold-batchnorm``);
* ``summary``: one line for ``--print-passes``;
* keyword-only options (the constructor's arguments), set from a recipe;
* a result carrying named ``statistics`` (``nodes_removed``, ...), which the
  report collects, and ``details`` (per-node decisions, plans) for the
  workflow that ran it;
* optionally, :meth:`SpaPass.calibration_request`: the statistics it needs
  from calibration data, measured by the pipeline (never by the pass, which
  runs no inference session) and handed over with :meth:`SpaPass.use_calibration`.

:func:`run_passes` runs a list of passes with instruments around each one.
Instruments observe (timing, node/parameter diffs, IR dumps); passes never
print or time themselves. The registry of names lives here; the built-in
passes register themselves when :mod:`spa.passes` is imported (the workflows
layer does that, see :func:`spa.workflows.recipes.registered_passes`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import onnx_ir as ir

from spa.calibration import CalibrationRequest, CalibrationResult
from spa.destinations import record_output
from spa.errors import UserError
from spa.model_io import save_model

__all__ = [
    "Calibrator",
    "DumpInstrument",
    "Fidelity",
    "Instrument",
    "PassRecord",
    "SpaPass",
    "SpaPassResult",
    "count_parameters",
    "register_pass",
    "registry",
    "run_passes",
]

logger = logging.getLogger(__name__)

Statistics = dict[str, int | float]

#: What a pass's output computes, for verification: ``"exact"``: what its input
#: computes, to float rounding; ``"decoded"``: its input with each weight it rewrote
#: replaced by the values the stored form decodes to (the pass's ``decoded``
#: mapping, :mod:`spa.quant.decoded`); ``"lossy"``: something else by design, with
#: no decoded reference (pruning, activation quantization, low-rank factors).
Fidelity = Literal["exact", "decoded", "lossy"]


@dataclasses.dataclass
class SpaPassResult(ir.passes.PassResult):
    """A pass result with named statistics (counts the report shows)."""

    statistics: Statistics = dataclasses.field(default_factory=dict)
    #: What the workflow may want beyond counts (decisions, plans); not in reports.
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


#: Measures a request on the model as it is now (see :mod:`spa.workflows.run`).
Calibrator = Callable[[ir.Model, CalibrationRequest], CalibrationResult]


class SpaPass(ir.passes.InPlacePass):
    """Base class of every spa pass (in-place on an onnx-ir model)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: How its output can be verified (:data:`Fidelity`); a pass that changes the
    #: outputs by design declares ``"decoded"`` or ``"lossy"``.
    fidelity: ClassVar[Fidelity] = "exact"

    def ensures(self, model: ir.Model) -> None:
        """Postcondition of every spa pass: in topological order, no node reads a
        value that no graph input, initializer or earlier node defines."""
        defined: set[int] = {id(v) for v in model.graph.inputs}
        defined.update(id(v) for v in model.graph.initializers.values())
        for node in model.graph:
            for value in node.inputs:
                if value is not None and id(value) not in defined:
                    raise ir.passes.PostconditionError(
                        f"pass {self.name} left node '{node.name}' ({node.op_type}) reading "
                        f"'{value.name}', which nothing defines"
                    )
            defined.update(id(v) for v in node.outputs)

    def options(self) -> dict[str, Any]:
        """The options this pass was built with (for reports and dumps)."""
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}

    def calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        """Statistics this pass needs from calibration data on ``model`` (None: none)."""
        return None

    def use_calibration(self, result: CalibrationResult) -> None:
        """Receive what :meth:`calibration_request` asked for, before the pass runs."""

    def next_calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        """After :meth:`use_calibration`: another round of statistics (None: done).

        A pass that calibrates in rounds asks here, each round usually on a
        variant of ``model`` (:attr:`CalibrationRequest.model`) built from what
        the earlier rounds measured."""
        return None


_REGISTRY: dict[str, type[SpaPass]] = {}


def register_pass(cls: type[SpaPass]) -> type[SpaPass]:
    """Class decorator: make a pass reachable by name from recipes and the CLI."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"pass {cls.__name__} needs a unique name, got {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[SpaPass]]:
    """The passes registered so far, by name."""
    return dict(sorted(_REGISTRY.items()))


def count_parameters(model: ir.Model) -> int:
    """Elements held by initializers of the main graph (the usual 'params')."""
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.size
    return total


def count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


@dataclasses.dataclass
class PassRecord:
    """What happened in one pass: filled by :func:`run_passes`, read by reports."""

    index: int
    name: str
    options: dict[str, Any]
    seconds: float = 0.0
    modified: bool = False
    nodes_before: int = 0
    nodes_after: int = 0
    params_before: int = 0
    params_after: int = 0
    statistics: Statistics = dataclasses.field(default_factory=dict)
    #: The pass's own result details (decisions, plans); kept out of reports.
    details: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "details"
        }


class Instrument:
    """Hooks around each pass. Subclasses override what they need."""

    def before_pass(self, record: PassRecord, model: ir.Model) -> None:
        """Called before the pass runs."""

    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        """Called after the pass ran and ``record`` is complete."""


class DumpInstrument(Instrument):
    """Writes the model after each pass to ``folder/NN-pass-name.onnx``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(
                f"--dump-dir {self.folder}: is a file, not a folder; give a folder path"
            )
        try:
            if not self.folder.exists():
                self.folder.mkdir(parents=True)
                record_output(self.folder)
        except OSError as error:
            raise UserError(
                f"--dump-dir {self.folder}: cannot create the folder ({error.strerror}); "
                "give a writable folder"
            ) from None

    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        save_model(model, self.folder / f"{record.index:02d}-{record.name}.onnx", flag="--dump-dir")


def run_passes(
    model: ir.Model,
    passes: Sequence[SpaPass],
    *,
    instruments: Sequence[Instrument] = (),
    on_pass_end: Callable[[PassRecord, int], None] | None = None,
    calibrator: Calibrator | None = None,
) -> list[PassRecord]:
    """Run ``passes`` in order on ``model`` (in place); return one record per pass.

    Timing and node/parameter diffs are always recorded; ``instruments`` add
    more (IR dumps). ``on_pass_end(record, total)`` lets a caller show progress.
    A pass that asks for calibration statistics gets them from ``calibrator``
    on the model as it is just before the pass (the time counts as the pass's);
    without a calibrator it runs on its own fallback (data-free, or an error).
    """
    records: list[PassRecord] = []
    for index, spa_pass in enumerate(passes, start=1):
        record = PassRecord(index=index, name=spa_pass.name, options=spa_pass.options())
        record.nodes_before, record.params_before = count_nodes(model), count_parameters(model)
        for instrument in instruments:
            instrument.before_pass(record, model)
        start = time.perf_counter()
        request = spa_pass.calibration_request(model)
        while request is not None and not request.empty and calibrator is not None:
            measured = model if request.model is None else request.model
            spa_pass.use_calibration(calibrator(measured, request))
            request = spa_pass.next_calibration_request(model)
        result = spa_pass(model)
        record.seconds = time.perf_counter() - start
        model = result.model
        record.modified = result.modified
        if isinstance(result, SpaPassResult):
            record.statistics = dict(result.statistics)
            record.details = result.details
        record.nodes_after, record.params_after = count_nodes(model), count_parameters(model)
        for instrument in instruments:
            instrument.after_pass(record, model)
        logger.info("pass %s: %.3f s, %s", record.name, record.seconds, record.statistics)
        records.append(record)
        if on_pass_end is not None:
            on_pass_end(record, len(passes))
    return records
