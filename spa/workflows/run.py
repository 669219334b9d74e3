"""The pipeline, written once: load -> [convert] -> run passes (calibrating
what they ask for) -> flush subnormal weights -> save -> verify.

Every command (``optimize``, ``prune``, ``quantize``, ``sparsify``) builds its
passes and its verification, then calls :func:`run_pipeline`, so the per-pass
lines, ``--dump-dir``, timings and calibration work the same for all of them.
The input file is parsed once; everything after works on that in-memory model.

>>> outcome = run_pipeline("model.onnx", "out.onnx", passes, RunOptions())  # doctest: +SKIP
>>> [record.name for record in outcome.records]  # doctest: +SKIP
['infer-shapes', 'fold-constants', ...]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import (
    InlinePass,
    LiftConstantsToInitializersPass,
    LiftSubgraphInitializersToMainGraphPass,
    RemoveUnusedNodesPass,
)
from typing_extensions import TypedDict

from spa.calibration import (
    CalibrationInputs,
    CalibrationRequest,
    CalibrationResult,
    CalibrationSource,
    calibrate,
    load_calibration,
    model_inputs,
)
from spa.errors import UserError, first_line
from spa.ir_shapes import clear_inferred_shapes
from spa.model_io import iter_graph_protos, load_model, save_model, stored_bytes
from spa.pass_manager import Calibrator, DumpInstrument, Instrument, PassRecord, SpaPass, run_passes
from spa.passes.cleanup import flush_subnormals
from spa.quant.static import RANDOM_CALIBRATION
from spa.verify import VerifyResult, input_specs, make_feeds
from spa.verify.quality import Quality, load_metric, measure_quality

__all__ = [
    "RANDOM_SAMPLES",
    "PipelineOutcome",
    "RunKeywords",
    "RunOptions",
    "Snapshot",
    "convert_opset",
    "default_opset_of",
    "feeds_calibrator",
    "finish_for_save",
    "lift_constant_weights",
    "model_proto",
    "run_pipeline",
    "split_holdout",
]

logger = logging.getLogger(__name__)

#: Seeded random samples used when a pass must calibrate and no data was given.
RANDOM_SAMPLES = 8
_PROTO_LIMIT = 1_800_000_000


class RunKeywords(TypedDict, total=False):
    """The pipeline's keywords every command function accepts (see :class:`RunOptions`)."""

    seed: int
    shapes: Mapping[str, tuple[int, ...]] | None
    dims: Mapping[str, int] | None
    int_ranges: Mapping[str, tuple[int, int]] | None
    max_calibration_samples: int | None
    dump_dir: str | os.PathLike[str] | None
    on_pass_end: Callable[[PassRecord, int], None] | None
    holdout: float
    metric: str | None


@dataclasses.dataclass
class RunOptions:
    """How the pipeline runs around the passes; shared by every command.

    ``calibration``: real samples (an ``.npz``, a folder of ``.npy``, or an
    iterable of feed dicts) for passes that ask for statistics; without them
    a pass runs data-free, except one whose request is ``required`` (static
    quantization's ranges), measured on seeded random inputs with a warning.
    ``seed``/``shapes``/``dims``/``int_ranges`` make the seeded inputs of
    verification and random calibration.
    """

    seed: int = 0
    shapes: Mapping[str, tuple[int, ...]] | None = None
    dims: Mapping[str, int] | None = None
    int_ranges: Mapping[str, tuple[int, int]] | None = None
    calibration: CalibrationSource | None = None
    max_calibration_samples: int | None = None
    dump_dir: str | os.PathLike[str] | None = None
    on_pass_end: Callable[[PassRecord, int], None] | None = None
    #: Share of the calibration samples held out of calibration to measure quality.
    holdout: float = 0.25
    #: ``module:function`` of a task metric (model path -> number, higher is better).
    metric: str | None = None

    @property
    def inputs(self) -> dict[str, Any]:
        """The seeded-input keywords of :func:`spa.verify.verify_models`."""
        return {"shapes": self.shapes, "dims": self.dims, "int_ranges": self.int_ranges}


@dataclasses.dataclass
class PipelineOutcome:
    """What :func:`run_pipeline` did: the records of every pass, the saved
    output, the model before the passes (as a proto without its weights'
    bytes duplicated) and the verification, if one was asked for."""

    output: Path
    records: list[PassRecord]
    before: onnx.ModelProto
    verification: VerifyResult | None
    seconds: float
    quality: Quality | None = None
    #: Why quality was not measured (empty when it was).
    quality_note: str = ""
    #: Constant nodes holding weights (>= 16 elements) made initializers before the passes.
    constants_lifted: int = 0
    #: Nodes computing a weight from constants alone (weight standardisation) folded before the passes.
    weights_folded: int = 0
    #: The input on disk: the model file and every external-data file it reads.
    input_bytes: int = 0

    def model_before(self, source: Path) -> ir.Model:
        """The model as it was before the passes (external weights read from ``source``'s folder)."""
        model = ir.serde.deserialize_model(self.before)
        ir.external_data.set_base_dir(model.graph, str(Path(source).resolve().parent))
        return model

    def details(self, pass_name: str) -> dict[str, Any]:
        """The result details of the last pass called ``pass_name`` ({} if none ran)."""
        for record in reversed(self.records):
            if record.name == pass_name:
                return record.details
        return {}


def model_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto (external weights stay references to their files)."""
    return ir.serde.serialize_model(model)


def default_opset_of(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def convert_opset(model: ir.Model, *, below: int, version: int, purpose: str, fix: str) -> ir.Model:
    """``model``, or a copy converted to opset ``version`` when its default-domain
    opset is below ``below``; a failure is one line naming ``purpose`` and ``fix``."""
    opset = default_opset_of(model)
    if opset >= below:
        return model
    for graph in (model.graph,):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):  # the converter needs the bytes
                value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
    try:
        converted = onnx.version_converter.convert_version(model_proto(model), version)
    except Exception as error:  # the converter raises its own C++ error types
        first = first_line(error)
        raise UserError(
            f"opset {opset} could not be converted to {version} for {purpose} ({first}); {fix}"
        ) from None
    logger.info("converted opset %d -> %d for %s", opset, version, purpose)
    return ir.serde.deserialize_model(converted)


def _random_feeds(proto: onnx.ModelProto, options: RunOptions) -> Iterator[dict[str, np.ndarray]]:
    specs = input_specs(proto)
    for index in range(RANDOM_SAMPLES):  # the seed itself is left to verification
        yield make_feeds(specs, seed=options.seed + 1 + index, **options.inputs)


def _source_label(source: CalibrationSource) -> str:
    return str(source) if isinstance(source, str | os.PathLike) else "feeds"


class Snapshot(Instrument):
    """Saves the model after the pass at ``index`` (e.g. the pruned model, before
    the passes that follow it), for a check of that stage alone."""

    def __init__(self, index: int, path: Path) -> None:
        self.index, self.path = index, path

    def after_pass(self, record: PassRecord, model: ir.Model) -> None:
        if record.index == self.index:
            save_model(model, self.path)


def _io_adapter(
    model: ir.Model, records: Sequence[PassRecord]
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None:
    """The graph inputs and outputs that pruning resized (a KV cache that lost
    heads), as one function from the input model's arrays to the output's."""
    from spa.verify.mask import io_adapter

    adapters = [
        adapter
        for record in records
        if record.details.get("plan") is not None and record.details.get("analysis") is not None
        if (adapter := io_adapter(model, record.details["analysis"], record.details["plan"]))
    ]
    if not adapters:
        return None

    def adapt(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for adapter in adapters:
            arrays = adapter(arrays)
        return arrays

    return adapt


def feeds_calibrator(
    source: CalibrationSource | None,
    options: RunOptions | None = None,
    *,
    label: str | None = None,
) -> Calibrator:
    """A calibrator over ``source`` (named ``label`` in reports); with None,
    required requests are measured on seeded random inputs (labelled so) and
    the others get empty statistics."""
    options = options or RunOptions()

    def measure(model: ir.Model, request: CalibrationRequest) -> CalibrationResult:
        if source is None and not request.required:
            return CalibrationResult(source="none")  # the pass runs data-free
        proto = _with_weights(model)
        if source is None:
            logger.warning(
                "NO CALIBRATION DATA: statistics come from %d seeded random inputs and are "
                "not representative; give real samples with --calib",
                RANDOM_SAMPLES,
            )
            return calibrate(
                proto, request, lambda: _random_feeds(proto, options), source=RANDOM_CALIBRATION,
                max_samples=options.max_calibration_samples,
            )  # fmt: skip
        listed = _replayable(source, model_inputs(proto))
        return calibrate(
            proto, request, listed, source=label or _source_label(source),
            max_samples=options.max_calibration_samples,
        )  # fmt: skip

    return measure


def _replayable(
    source: CalibrationSource, names: CalibrationInputs
) -> Callable[[], Iterable[Mapping[str, np.ndarray]]]:
    """Feeds that can be walked more than once (a file is reopened; an
    iterable of dicts is kept as a list when it is a one-shot iterator)."""
    if isinstance(source, str | os.PathLike):
        path = source
        return lambda: load_calibration(path, names)
    kept: list[Mapping[str, np.ndarray]] = list(source)  # walked once per statistic
    return lambda: kept


def lift_constant_weights(model: ir.Model) -> int:
    """Make every ``Constant`` node of 16 or more elements a main-graph
    initializer, so the passes see it as a weight (a model exported with
    Constant-node weights was otherwise left untouched, with 0 params
    reported); return how many.

    Constants inside If/Loop/Scan bodies are lifted too, and every body
    initializer moves to the main graph (bodies read it by name, as an
    outer-scope reference), so pruning masks, quantization and external-data
    saving find each weight in one place. Model-local functions that hold such
    a Constant are inlined first: a function cannot hold initializers.
    """
    before = _constant_weights(model)
    if any(_function_constant_weights(function) for function in model.functions.values()):
        try:
            InlinePass(criteria=lambda function: _function_constant_weights(function) > 0)(model)
        except ir.passes.PreconditionError as error:  # recursion; ONNX forbids it
            raise UserError(
                f"model-local functions cannot be inlined ({error}); ONNX functions must "
                "not call themselves: re-export the model without recursive functions"
            ) from None
        logger.info("inlined the model-local functions that hold Constant-node weights")
    LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=_LIFT_ELEMENTS)(model)
    LiftSubgraphInitializersToMainGraphPass()(model)
    lifted = before - _constant_weights(model)
    if lifted:
        logger.info("lifted %d Constant-node weights to initializers", lifted)
    return lifted


_LIFT_ELEMENTS = 16  # as spa.stats.inspect.CONSTANT_WEIGHT_ELEMENTS counts weights


def _is_constant_weight(node: ir.Node) -> bool:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return False
    attr = node.attributes.get("value")
    if attr is None or attr.type != ir.AttributeType.TENSOR:
        return False
    return attr.as_tensor().size >= _LIFT_ELEMENTS


def _constant_weights(model: ir.Model) -> int:
    """Constant-node weights in the main graph and every body, functions included."""
    count = sum(
        _is_constant_weight(node) for node in ir.traversal.RecursiveGraphIterator(model.graph)
    )
    return count + sum(_function_constant_weights(f) for f in model.functions.values())


def _function_constant_weights(function: ir.Function) -> int:
    return sum(_is_constant_weight(node) for node in ir.traversal.RecursiveGraphIterator(function))


def split_holdout(
    source: CalibrationSource | None, model: ir.Model, share: float
) -> tuple[list[Mapping[str, np.ndarray]] | None, list[Mapping[str, np.ndarray]], str]:
    """(calibration samples, held-out samples, why none are held out).

    The last ``share`` of the samples (rounded, at least one) are held out
    when there are 4 or more; the order of the user's samples is kept.
    """
    if source is None:
        return None, [], "quality not measured: no real data (give --calib)"
    names = model_inputs(model)
    samples = list(load_calibration(source, names) if isinstance(source, str | os.PathLike) else source)
    if not 0.0 <= share < 1.0:
        raise UserError(f"--holdout {share}: give a share in [0, 1), e.g. 0.25")
    held = max(1, round(len(samples) * share)) if share > 0 and len(samples) >= 4 else 0
    if held == 0:
        reason = "--holdout 0" if share == 0 else f"{len(samples)} calibration samples (< 4)"
        return samples, [], f"quality not measured: {reason}, none held out"
    return samples[: len(samples) - held], samples[len(samples) - held :], ""


def _with_weights(model: ir.Model) -> onnx.ModelProto:
    """A proto ORT can run from memory (external weights read in), below 2 GB."""
    proto = model_proto(model)
    if proto.ByteSize() < _PROTO_LIMIT:
        base = _base_dir(model)
        if base is not None:
            onnx.external_data_helper.load_external_data_for_model(proto, str(base))
    return proto


def _base_dir(model: ir.Model) -> Path | None:
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            return Path(value.const_value.base_dir)
    return None


def fold_computed_weights(model: ir.Model) -> int:
    """Fold the weights a model computes from constants alone, in place, and return how
    many nodes folded (:func:`spa.analysis.fold_weight_chains`). BiT's and NFNet's
    convolutions standardise their weights in the graph (ReduceMean, BatchNormalization
    in training mode): their Conv read no constant weight, so quantization and 2:4
    skipped 98 % of a ResNetV2-BiT's MACs as "computed weights". ONNX Runtime
    folds the same nodes when it loads the model; the raw weights they read are
    dropped (a standardised export stores each weight twice)."""
    from spa.analysis import fold_weight_chains

    folded = fold_weight_chains(model)
    if folded:
        RemoveUnusedNodesPass()(model)
        logger.info("folded %d nodes computing weights from constants (weight standardisation)", folded)
    return folded


def finish_for_save(model: ir.Model, before: onnx.ModelProto) -> None:
    """What every output gets before it is saved: only the value_info ``before`` (the input)
    declared (spa's inferred shapes cost ORT fusions), and subnormal weights set to zero
    (x86 CPUs run arithmetic on them up to 15x slower)."""
    declared = {info.name for graph in iter_graph_protos(before.graph) for info in graph.value_info}
    clear_inferred_shapes(model, declared)
    flush_subnormals(model)


def run_pipeline(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    passes: Sequence[SpaPass] | Callable[[ir.Model], Sequence[SpaPass]],
    options: RunOptions,
    *,
    model: ir.Model | None = None,
    prepare: Callable[[ir.Model], ir.Model] | None = None,
    verify: Callable[[Path, Path, PipelineOutcome], VerifyResult | None] | None = None,
    instruments: Sequence[Instrument] = (),
    runnable: Callable[[Path, Path], Path] | None = None,
    session: Callable[[Path], Any] | None = None,
    after_save: Callable[[ir.Model, PipelineOutcome], None] | None = None,
) -> PipelineOutcome:
    """Load ``source`` (or take ``model``, already loaded from it), ``prepare``
    it (opset conversion), run ``passes`` (or the list ``passes(model)``
    builds) with calibration, ``--dump-dir``, ``instruments`` and progress,
    set subnormal weights to zero (``flush-subnormals``: every output, since
    x86 CPUs run them slowly and rewrites such as OBS updates make them),
    save to ``output`` (never over the input or its data), then
    ``verify(source, output, outcome)``, then measure quality on the held-out
    samples. ``runnable(path, folder)`` gives a file ORT can run in the place of
    the input or the output (a plugin op's reference lowering) and ``session`` makes the ORT sessions.
    ``after_save(model, outcome)`` runs between saving and verification (the
    latency guard, which may write another form over the output and replace
    ``outcome.records``).
    """
    start = time.perf_counter()
    source, output = Path(source), Path(output)
    metric = load_metric(options.metric) if options.metric else None  # fail before any work
    model = model if model is not None else load_model(source)
    input_bytes = stored_bytes(source, model)
    lifted = lift_constant_weights(model)
    folded = fold_computed_weights(model)
    if prepare is not None:
        model = prepare(model)
    before = model_proto(model)
    pass_list = list(passes(model) if callable(passes) else passes)
    instruments = [*instruments, *([DumpInstrument(options.dump_dir)] if options.dump_dir else [])]
    calibration, holdout, note = split_holdout(options.calibration, model, options.holdout)
    label = None if options.calibration is None else _source_label(options.calibration)
    calibrator = feeds_calibrator(calibration, options, label=label)
    records = run_passes(
        model,
        pass_list,
        instruments=instruments,
        on_pass_end=options.on_pass_end,
        calibrator=calibrator,
    )
    finish_for_save(model, before)
    save_model(model, output, input_path=source)
    outcome = PipelineOutcome(
        output, records, before, None, 0.0, constants_lifted=lifted, weights_folded=folded,
        input_bytes=input_bytes,
    )
    if after_save is not None:
        after_save(model, outcome)
    if verify is not None:
        outcome.verification = verify(source, output, outcome)
    if holdout or metric is not None:
        with tempfile.TemporaryDirectory(prefix="spa-quality-") as folder:
            reference, candidate = source, output
            if runnable is not None:
                reference = runnable(source, Path(folder) / "reference")
                candidate = runnable(output, Path(folder))
            outcome.quality = measure_quality(
                reference, candidate, holdout, metric=metric, metric_name=options.metric,
                session=session, adapt=_io_adapter(model, records),
            )  # fmt: skip
    outcome.quality_note = note if not holdout else ""
    outcome.seconds = time.perf_counter() - start
    return outcome
