"""Structured pruning: apply a plan by physically slicing the model.

Cases handled by :func:`apply_plan`:

* every parameter member of a pruned group is sliced along its axis (a weight
  in two groups, e.g. a Conv's out and in channels, is sliced along both);
* attributes that count a pruned space follow it: depthwise Conv/ConvTranspose
  ``group`` (grouped ones keep theirs: they lose the same positions in every group),
  ``num_heads``, ``kv_num_heads``, ``q_num_heads``, MatMulNBits ``N``,
  ``hidden_size``;
* Reshape/Expand/ConstantOfShape targets (constant, or run-time chains spa can
  read) are rewritten where an entry is a pruned axis's old size, and Split
  sizes follow their outputs (a constant shared by several nodes is copied
  first, so each node gets its own);
* shapes of intermediate values are dropped and re-inferred.

:class:`PrunePass` is the whole of structured pruning: prepare and analyse the
model, ask the pipeline for calibration statistics when the criterion (or bias
compensation) needs them, make or load the plan, update the consumers' kept
weights (OBS/OBSPA reconstruction, bias compensation), then apply the plan.
Its result details carry the analysis, the plan, the reconstruction rows and,
with ``keep_reference``, the updated model before slicing (the reference that
:func:`spa.verify.mask.verify_masked` masks).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from spa.analysis import Analysis, analyze, prepare
from spa.analysis.defaults import DEFAULT_PRUNABLE_IO
from spa.analysis.groups import Group
from spa.analysis.rules import RuleContext
from spa.analysis.rules.attention import sized_attributes
from spa.analysis.rules.reshape import merge_sources
from spa.analysis.rules.shape import slice_bounds, slice_windows
from spa.analysis.shape_exprs import ComputedDim, CopiedDim, evaluate_target
from spa.calibration import CalibrationRequest, CalibrationResult, ChannelStatistics
from spa.errors import UserError
from spa.ir_shapes import infer_shapes
from spa.model_io import copy_model, read_array
from spa.pass_manager import SpaPass, SpaPassResult, register_pass
from spa.pruning.allocation import AUTO_ROUND
from spa.pruning.consumers import add_missing_biases, consumers_of, remove_zero_biases
from spa.pruning.correction import CorrectionTarget, correction_targets, slice_statistics
from spa.pruning.criteria import DATA_ALLOCATIONS, DATA_CRITERIA
from spa.pruning.plan import Plan, member_indices, plan_for
from spa.pruning.reconstruct import apply_updates, compute_updates
from spa.pruning.sensitivity import (
    FRAGILE_DISTORTION,
    SENSITIVITY_SAMPLES,
    AxisShare,
    CostTerm,
    MacCosts,
)
from spa.pruning.statistics import needed_values
from spa.quant.ir_format import add_initializer
from spa.stats.coverage import node_macs
from spa.stats.shape_facts import infer_shapes as infer_value_shapes
from spa.stats.shape_facts import known_shape
from spa.verify.mask import mask_model

__all__ = ["PrunePass", "apply_plan", "mac_costs"]

logger = logging.getLogger(__name__)


Resized = dict[tuple[str, int], tuple[int, int]]  # activation space -> (old, new) size


Kept = dict[tuple[str, int], np.ndarray]  # activation space -> kept indices


def _parameter_slices(
    model: ir.Model, analysis: Analysis, plan: Plan
) -> tuple[dict[str, list[tuple[int, np.ndarray]]], Resized, Kept]:
    parameters: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    resized: Resized = {}
    kept_activations: Kept = {}
    by_id = {group.id: group for group in analysis.groups}
    old_sizes = {m.space: m.index_map.target_size for g in plan.kept for m in by_id[g].members}
    for (name, axis), kept in member_indices(analysis, plan).items():
        if name in model.graph.initializers:
            parameters[name].append((axis, kept))
        else:
            resized[(name, axis)] = (old_sizes[(name, axis)], len(kept))
            kept_activations[(name, axis)] = kept
    return parameters, resized, kept_activations


def _slice_lazily(value: ir.Value, slices: list[tuple[int, np.ndarray]]) -> None:
    """Give ``value`` its kept slices as a tensor computed when read.

    Nothing is sliced until a pass or the save reads the tensor, one tensor at a
    time, so pruning a model whose weights are memory-mapped external data holds
    no copy of all the pruned weights at once (it did: 2.8 GB for a 2.4 GB model).
    """
    source = value.const_value
    assert source is not None
    shape = list(source.shape.numpy())
    for axis, kept in slices:
        shape[axis] = len(kept)

    def evaluate() -> ir.Tensor:
        array = read_array(source)
        for axis, kept in slices:
            array = np.take(array, kept, axis=axis)
        return ir.Tensor(np.ascontiguousarray(array), dtype=source.dtype)

    value.const_value = ir.LazyTensor(
        evaluate, dtype=source.dtype, shape=ir.Shape(shape), name=value.name
    )
    value.shape = ir.Shape(shape)


def _replace_constant(value: ir.Value, array: np.ndarray) -> None:
    tensor = value.const_value
    assert tensor is not None
    value.const_value = ir.Tensor(np.ascontiguousarray(array), dtype=tensor.dtype, name=value.name)
    value.shape = ir.Shape(array.shape)


def _constant_input(model: ir.Model, node: ir.Node, index: int, array: np.ndarray) -> None:
    """Give ``node`` a new constant at input ``index`` (copy-on-write if shared)."""
    current = node.inputs[index]
    assert current is not None
    if (
        current.const_value is not None
        and len(current.uses()) == 1
        and current.name in model.graph.initializers
    ):
        _replace_constant(current, array)
        return
    base = f"{current.name}__{node.name or id(node)}"
    node.replace_input_with(index, add_initializer(model.graph, base, ir.Tensor(array)))


#: op -> index of its target-shape input (Resize's ``sizes`` holds every axis,
#: the channel axis too, unless its ``axes`` attribute names a subset)
_TARGET_INPUT = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0, "Resize": 3}


def _target_input(node: ir.Node) -> int | None:
    index = _TARGET_INPUT.get(node.op_type) if node.domain == "" else None
    if node.op_type == "Resize" and "axes" in node.attributes:
        return None  # sizes of the named axes only; the analyzer freezes a listed N or C
    if index is None or len(node.inputs) <= index or node.inputs[index] is None:
        return None
    return index


def _fix_shape_targets(model: ir.Model, resized: Resized) -> int:
    """Rewrite constant Reshape/Expand/ConstantOfShape targets whose entry is a
    pruned axis's old size."""
    rewritten = 0
    for node in list(model.graph):
        index = _target_input(node)
        if index is None:
            continue
        output, target = node.outputs[0], node.inputs[index]
        if target is None or target.const_value is None:
            continue
        original = target.const_value.numpy()
        shape = original.copy()
        offset = len(output.shape) - len(shape) if output.shape is not None else 0
        for (name, axis), (old, new) in resized.items():
            entry = axis - offset
            if name == output.name and 0 <= entry < len(shape) and shape[entry] == old:
                shape[entry] = new
        if not np.array_equal(shape, original):
            _constant_input(model, node, index, shape)
            rewritten += 1
    return rewritten


def _rebuild_target(model: ir.Model, node: ir.Node, entries: list[Any], input_index: int) -> None:
    """Give ``node`` a private run-time target: Concat of literals and Shape->Gather dims."""
    values = {v.name: v for v in model.graph.inputs}
    values.update({v.name: v for n in model.graph for v in n.outputs})
    values.update(model.graph.initializers)
    tag = node.name or str(id(node))
    original = node.inputs[input_index]
    assert original is not None

    def literal(suffix: str, number: int) -> ir.Value:
        """A new [number] initializer (named apart from a target an earlier prune rebuilt)."""
        tensor = ir.Tensor(np.array([number], dtype=np.int64))
        return add_initializer(model.graph, f"{tag}__dim{suffix}", tensor)

    parts: list[ir.Value] = []
    new_nodes: list[ir.Node] = []
    for position, entry in enumerate(entries):
        if isinstance(entry, CopiedDim):
            shape = ir.node("Shape", [values[entry.value]])
            index = literal(f"{position}_index", entry.axis)
            gather = ir.node("Gather", [shape.outputs[0], index], attributes={"axis": 0})
            new_nodes += [shape, gather]
            part = gather.outputs[0]
            if entry.factor != 1:
                factor = literal(f"{position}_factor", entry.factor)
                times = ir.node("Mul", [part, factor])
                new_nodes.append(times)
                part = times.outputs[0]
            if entry.divisor != 1:
                divisor = literal(f"{position}_divisor", entry.divisor)
                over = ir.node("Div", [part, divisor])
                new_nodes.append(over)
                part = over.outputs[0]
            parts.append(part)
        elif isinstance(entry, ComputedDim):  # read back from the original target
            index = literal(f"{position}_index", position)
            gather = ir.node("Gather", [original, index], attributes={"axis": 0})
            new_nodes.append(gather)
            parts.append(gather.outputs[0])
        else:
            parts.append(literal(str(position), entry))
    concat = ir.node("Concat", parts, attributes={"axis": 0})
    new_nodes.append(concat)
    model.graph.insert_before(node, new_nodes)
    node.replace_input_with(input_index, concat.outputs[0])


def _merged_heads_entries(
    node: ir.Node, entries: list[Any], resized: Resized, values: dict[str, ir.Value], context: RuleContext
) -> list[Any]:
    """The heads count inside run-time batch x heads entries (the analyzer's merged-heads
    rule): ``batch * H`` where a Reshape merges its input's pruned heads axis 1 into
    axis 0, and ``merged // H`` wherever a batch is read back from an axis that merged
    pruned heads (:func:`~spa.analysis.rules.reshape.merge_sources`)."""
    changed = list(entries)
    x = node.inputs[0] if node.op_type == "Reshape" else None
    merged = resized.get((x.name or "", 1)) if x is not None else None
    for position, entry in enumerate(entries):
        if not isinstance(entry, CopiedDim):
            continue
        if position == 0 and merged is not None and entry.size is None and entry.divisor == 1 and entry.factor == merged[0]:
            changed[position] = dataclasses.replace(entry, factor=merged[1])
        elif entry.divisor != 1 and entry.value in values:
            merges = merge_sources(values[entry.value], entry.axis, context, set()) or []
            heads = {resized.get((m.inputs[0].name or "", 1)) for m in merges if m.inputs[0] is not None}
            change = heads.pop() if len(heads) == 1 else None
            if change is not None and entry.divisor == change[0]:
                changed[position] = dataclasses.replace(entry, divisor=change[1])
    return changed


def _fix_computed_targets(model: ir.Model, resized: Resized) -> int:
    """Run-time Reshape/Expand/ConstantOfShape targets whose literal entry is a
    pruned axis's old size."""
    context = RuleContext()
    rewritten = 0
    values = {v.name or "": v for n in model.graph for v in n.outputs}
    for node in list(model.graph):
        index = _target_input(node)
        if index is None:
            continue
        output, target = node.outputs[0], node.inputs[index]
        if target is None or target.const_value is not None:
            continue
        entries = evaluate_target(target, context)
        if entries is None or output.shape is None:
            continue
        offset = len(output.shape) - len(entries)
        changed = list(entries)
        for (value_name, axis), (old, new) in resized.items():
            position = axis - offset
            inside = value_name == output.name and 0 <= position < len(changed)
            if inside and isinstance(changed[position], int) and changed[position] == old:
                changed[position] = new
        changed = _merged_heads_entries(node, changed, resized, values, context)
        if changed != entries:
            _rebuild_target(model, node, changed, index)
            rewritten += 1
    return rewritten


def _fix_split_sizes(model: ir.Model, resized: Resized) -> int:
    rewritten = 0
    for node in list(model.graph):
        if node.op_type != "Split" or node.domain != "":
            continue
        rank = len(node.outputs[0].shape) if node.outputs[0].shape is not None else 0
        axis = node.attributes["axis"].value % rank if "axis" in node.attributes and rank else 0
        changed = [resized.get((out.name or "", axis)) for out in node.outputs]
        if not any(changed):
            continue
        sizes = np.array([new for _, new in (c for c in changed if c)], dtype=np.int64)
        if len(sizes) != len(node.outputs):
            continue  # every output of a split axis is in the same group, or none is
        if "split" in node.attributes:
            node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())
        elif len(node.inputs) > 1 and node.inputs[1] is not None:
            _constant_input(model, node, 1, sizes)
        else:  # opset 18 num_outputs (equal parts): sizes are no longer equal
            node.attributes.pop("num_outputs", None)
            value = add_initializer(
                model.graph, f"{node.name or id(node)}__split_sizes", ir.Tensor(sizes)
            )
            node.resize_inputs(2)
            node.replace_input_with(1, value)
        rewritten += 1
    return rewritten


def _fix_slice_windows(model: ir.Model, kept: Kept) -> int:
    """Constant bounds of a Slice window on a pruned axis follow the kept channels:
    the window starts after the kept channels before it and holds its own kept ones
    (an end that ran past the axis still does; a negative bound stays one)."""
    context = RuleContext()
    rewritten = 0
    for node in list(model.graph):
        if node.op_type != "Slice" or node.domain:
            continue
        x = node.inputs[0]
        shape = context.shape(x)  # still the sizes before pruning
        bounds = slice_bounds(node, context)
        if x is None or shape is None or bounds is None:
            continue
        windows = slice_windows(node, context, shape)
        starts = np.array([start for _, start, _, _ in bounds], dtype=np.int64)
        ends = np.array([end for _, _, end, _ in bounds], dtype=np.int64)
        for position, (axis, start, end, _) in enumerate(bounds):
            axis %= len(shape)
            kept_in = kept.get((x.name or "", axis))
            dim = shape[axis]
            if axis not in windows or kept_in is None or dim is None:
                continue
            first, stop = windows[axis]
            new_first, new_stop = (int(np.count_nonzero(kept_in < bound)) for bound in (first, stop))
            starts[position] = new_first - len(kept_in) if start < 0 else new_first
            if end < dim:  # an end at or past the axis still clamps to it
                ends[position] = new_stop - len(kept_in) if end < 0 else new_stop
        if not np.array_equal(starts, [b[1] for b in bounds]):
            _constant_input(model, node, 1, starts)
            rewritten += 1
        if not np.array_equal(ends, [b[2] for b in bounds]):
            _constant_input(model, node, 2, ends)
            rewritten += 1
    return rewritten


def _fix_heads_attributes(model: ir.Model, resized: Resized) -> int:
    """Attributes that count a pruned space follow its new size: depthwise ``group``, ``num_heads``,
    ``kv_num_heads``/``q_num_heads`` of fused attention, ``N`` of MatMulNBits,
    ``hidden_size`` of LSTM/GRU/RNN (see ``sized_attributes``)."""
    rewritten = 0
    for node in model.graph:
        for attribute, space in sized_attributes(node):
            change = resized.get(space)
            if change is not None:
                node.attributes[attribute] = ir.AttrInt64(attribute, change[1])
                rewritten += 1
    return rewritten


def _resize_graph_io(model: ir.Model, resized: Resized) -> list[str]:
    """New dims for graph inputs/outputs the plan shrinks (KV caches)."""
    changed = []
    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.shape is None:
            continue
        dims = list(value.shape)
        for axis in range(len(dims)):
            change = resized.get((value.name or "", axis))
            if change is not None:
                dims[axis] = change[1]
        if dims != list(value.shape):
            value.shape = ir.Shape(dims)
            changed.append(value.name or "")
    return changed


def _clear_inferred_shapes(model: ir.Model) -> None:
    keep = {id(v) for v in (*model.graph.inputs, *model.graph.outputs)}
    for node in model.graph:
        for value in node.outputs:
            if id(value) not in keep:
                value.shape = None


def apply_plan(model: ir.Model, analysis: Analysis, plan: Plan) -> dict[str, int | float]:
    """Slice ``model`` in place by ``plan``; return statistics."""
    parameters, resized, kept = _parameter_slices(model, analysis, plan)
    params_before = sum(
        v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None
    )
    for name, slices in parameters.items():
        _slice_lazily(model.graph.initializers[name], slices)
    shape_targets = _fix_shape_targets(model, resized) + _fix_computed_targets(model, resized)
    splits = _fix_split_sizes(model, resized) + _fix_slice_windows(model, kept)
    heads = _fix_heads_attributes(model, resized)
    io_changed = _resize_graph_io(model, resized)
    _clear_inferred_shapes(model)
    common_passes.DeduplicateHashedInitializersPass()(model)  # merge unshared copies
    common_passes.RemoveUnusedNodesPass()(model)
    # Strict inference or none: a partial guess would be saved as value_info that
    # ONNX Runtime then rejects; without value_info ORT infers shapes itself.
    infer_shapes(model, strict_mode=True)
    params_after = sum(
        v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None
    )
    channels = sum(plan.sizes[g] - len(k) for g, k in plan.kept.items())
    return {
        "groups_pruned": len(plan.kept),
        "channels_removed": channels,
        "params_removed": int(params_before - params_after),
        "shape_targets_rewritten": shape_targets,
        "splits_rewritten": splits,
        "heads_attributes_rewritten": heads,
        "graph_io_resized": len(io_changed),
    }


@dataclasses.dataclass
class _Stage:
    """The prepared, analysed model a prune works on (kept between the
    calibration request and the call, which see the same model object)."""

    model: ir.Model
    analysis: Analysis
    created: list[ir.Node]


@register_pass
class PrunePass(SpaPass):
    """Structured pruning of every prunable group (see the module docstring).

    Options: ``ratio``, ``criterion`` (:data:`spa.pruning.criteria.CRITERIA`),
    ``seed``, ``round_to``, ``exclude`` (regexes of values whose groups stay),
    ``plan_path`` (apply a saved plan), ``save_plan`` (write the plan used),
    ``reduction``, ``allocation``, ``max_group_ratio``, ``bias_compensation``,
    ``prunable_io`` (regex of graph inputs/outputs that may shrink: KV caches),
    ``fragile`` (threshold of the ``sensitivity`` allocation, which measures
    groups on ``sensitivity_samples`` calibration feeds and spends a MAC
    budget), ``correct_statistics`` (measure the dense output statistics of the
    layers that read pruned channels, for a following
    :class:`spa.passes.correct_statistics.CorrectStatisticsPass`) and ``keep_reference``.
    """

    name = "prune"
    summary = "Remove channels/heads by a plan (analyzer groups, criterion, allocation)"
    fidelity = "lossy"

    def __init__(
        self,
        ratio: float = 0.3,
        criterion: str = "l1",
        seed: int = 0,
        round_to: int = AUTO_ROUND,
        exclude: tuple[str, ...] = (),
        plan_path: str | None = None,
        *,
        save_plan: str | None = None,
        reduction: str = "sum",
        allocation: str = "uniform",
        max_group_ratio: float = 0.9,
        bias_compensation: bool = False,
        prunable_io: str | None = DEFAULT_PRUNABLE_IO,
        keep_reference: bool = False,
        fragile: float = FRAGILE_DISTORTION,
        sensitivity_samples: int = SENSITIVITY_SAMPLES,
        correct_statistics: bool = False,
        sequential: int = 0,
    ) -> None:
        super().__init__()
        self.ratio, self.criterion, self.seed = ratio, criterion, seed
        self.round_to, self.exclude, self.plan_path = round_to, tuple(exclude), plan_path
        self.save_plan, self.reduction, self.allocation = save_plan, reduction, allocation
        self.max_group_ratio, self.bias_compensation = max_group_ratio, bias_compensation
        self.prunable_io, self.keep_reference = prunable_io, keep_reference
        self.fragile, self.sensitivity_samples = fragile, sensitivity_samples
        self.correct_statistics = correct_statistics
        if sequential < 0:
            raise UserError(f"--sequential-stages {sequential}: give a number of stages >= 1")
        if sequential and not (criterion == "obs" or (bias_compensation and criterion != "obspa")):
            raise UserError(
                "--sequential-stages re-measures the statistics the weight updates read: "
                "add --criterion obs or --bias-compensation"
            )
        self.sequential = sequential
        #: For :class:`spa.passes.correct_statistics.CorrectStatisticsPass`: the layers
        #: to correct and the dense (mean, std) of their outputs on the kept channels.
        self._correction: tuple[list[CorrectionTarget], dict[str, Any]] | None = None
        self._stage: _Stage | None = None
        self._statistics: dict[str, ChannelStatistics] | None = None
        self._samples: list[dict[str, np.ndarray]] = []
        #: Sequential reconstruction: the plan (made once, on dense statistics), the
        #: consumer inputs in graph order cut into stages, and the stage measured last.
        self._plan: Plan | None = None
        self._chunks: list[list[str]] = []
        self._reads: dict[int, dict[str, int]] = {}  # kept group -> consumer inputs read
        self._round = 0

    def _wants_statistics(self) -> bool:
        data = self.criterion in DATA_CRITERIA
        return data or (self.bias_compensation and self.criterion != "obspa")

    @property
    def correction(self) -> tuple[list[CorrectionTarget], dict[str, Any]] | None:
        """The layers to correct and the dense (mean, std) of their outputs, once pruned."""
        return self._correction

    def _wants_samples(self) -> bool:
        return self.plan_path is None and self.allocation in DATA_ALLOCATIONS

    def _prepared(self, model: ir.Model) -> _Stage:
        if self._stage is None or self._stage.model is not model:
            prepare(model)
            analysis = analyze(model, self.prunable_io)
            created: list[ir.Node] = []
            if self.bias_compensation or self.correct_statistics:
                analysis, created = _with_biases(model, analysis, self.prunable_io)
            self._stage = _Stage(model, analysis, created)
        return self._stage

    def calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        samples = self.sensitivity_samples if self._wants_samples() else 0
        if not (self._wants_statistics() or samples or self.correct_statistics):
            return None  # a saved plan still reconstructs with data
        stage = self._prepared(model)
        groups = stage.analysis.prunable_groups()
        values = needed_values(model, groups) if self._wants_statistics() else {}
        if self.correct_statistics:
            values.update({t.value: t.axis for t in correction_targets(model, groups)})
        return CalibrationRequest(
            channels=values,
            full_channels=self.criterion == "obs",
            samples=samples,
        )

    def use_calibration(self, result: CalibrationResult) -> None:
        if self._round:  # a sequential stage: its values measured on the pruned-so-far model
            assert self._statistics is not None
            self._statistics.update(result.channels)
            return
        self._statistics = result.channels or None  # None: no data was given
        self._samples = result.samples

    def _updates_statistics(self) -> bool:
        """Whether the weight updates read calibration statistics (what
        sequential stages re-measure): OBS reconstruction or bias compensation."""
        return self._statistics is not None and (
            self.criterion == "obs" or self.bias_compensation
        )

    def next_calibration_request(self, model: ir.Model) -> CalibrationRequest | None:
        """Sequential reconstruction (the layer-by-layer order of OBC/SparseGPT,
        on the inputs the pruned model gives): the consumers' inputs, in graph
        order, are cut into ``sequential`` stages; stage ``s`` is measured on a
        copy of the model whose groups read only in earlier stages are already
        updated and masked (their removed slices zeroed: the pruned function at
        full width). The plan itself is made once, on the dense statistics."""
        if not self.sequential:
            return None
        if not self._updates_statistics():
            logger.warning("--sequential-stages: no calibration data, nothing to re-measure")
            return None
        stage = self._prepared(model)
        if self._plan is None:
            self._plan = self._make_plan(model, stage)
            by_id = {group.id: group for group in stage.analysis.groups}
            self._reads = {g: needed_values(model, [by_id[g]]) for g in self._plan.kept}
            self._chunks = _stages(model, self._reads, self.sequential)
        self._round += 1
        if self._round >= len(self._chunks):
            return None
        measured = {name for chunk in self._chunks[: self._round] for name in chunk}
        done = [group_id for group_id, reads in self._reads.items() if set(reads) <= measured]
        subplan = dataclasses.replace(
            self._plan,
            kept={g: self._plan.kept[g] for g in done},
            sizes={g: self._plan.sizes[g] for g in done},
        )
        updates, _ = compute_updates(
            model, stage.analysis, subplan, reconstruct=self.criterion == "obs",
            bias_compensation=self.bias_compensation, statistics=self._statistics,
        )  # fmt: skip
        variant = copy_model(model)
        apply_updates(variant, updates)
        mask_model(variant, stage.analysis, subplan)
        axes = {name: axis for reads in self._reads.values() for name, axis in reads.items()}
        return CalibrationRequest(
            channels={name: axes[name] for name in self._chunks[self._round]},
            full_channels=self.criterion == "obs",
            model=variant,
        )

    def _make_plan(self, model: ir.Model, stage: _Stage) -> Plan:
        analysis, statistics = stage.analysis, self._statistics
        # with no prunable group nothing was measured (no value to calibrate):
        # the plan is empty, and the report says why nothing changed
        prunable = bool(analysis.prunable_groups())
        if self.criterion in DATA_CRITERIA and statistics is None and prunable:
            raise UserError(f"criterion {self.criterion} needs --calib DATA (calibration inputs)")
        sensitivity: dict[str, Any] = {}
        if self._wants_samples() and prunable:
            if not self._samples:
                raise UserError("--allocation sensitivity needs --calib DATA (calibration inputs)")
            costs = mac_costs(model, analysis.prunable_groups(), self._samples[0])
            sensitivity = {
                "samples": self._samples, "costs": costs.per_channel, "total_cost": costs.total,
                "cost_terms": costs.terms,
            }  # fmt: skip
        plan = plan_for(
            model, analysis, plan_path=self.plan_path, ratio=self.ratio,
            criterion=self.criterion, seed=self.seed, round_to=self.round_to,
            exclude=self.exclude, reduction=self.reduction, allocation=self.allocation,
            max_group_ratio=self.max_group_ratio, statistics=statistics, fragile=self.fragile,
            **sensitivity,
        )  # fmt: skip
        plan.policy["bias_compensation"] = self.bias_compensation
        if self.sequential and self._updates_statistics():
            plan.policy["sequential_stages"] = self.sequential
        return plan

    def call(self, model: ir.Model) -> SpaPassResult:
        stage = self._prepared(model)
        analysis, statistics = stage.analysis, self._statistics
        plan = self._plan if self._plan is not None else self._make_plan(model, stage)
        self._plan, self._chunks, self._reads, self._round = None, [], {}, 0
        if self.save_plan is not None:
            plan.save(self.save_plan)
        updates, reconstruction = compute_updates(
            model, analysis, plan,
            reconstruct=self.criterion in ("obs", "obspa"),
            bias_compensation=self.bias_compensation,
            statistics=statistics if self.criterion != "obspa" else None,
        )  # fmt: skip
        apply_updates(model, updates)
        details: dict[str, Any] = {
            "analysis": analysis, "plan": plan, "reconstruction": reconstruction,
            "biases_added": 0, "reference": None,
        }  # fmt: skip
        self._stage = None
        if not plan.kept:
            return SpaPassResult(model, False, {"groups_pruned": 0}, details)
        if self.keep_reference:  # the updated model before slicing, for mask equivalence
            details["reference"] = copy_model(model)
        targets: list[CorrectionTarget] = []
        if self.correct_statistics and statistics is not None:
            by_id = {group.id: group for group in analysis.groups}
            targets = correction_targets(model, [by_id[g] for g in plan.kept])
            dense = slice_statistics(statistics, analysis, member_indices(analysis, plan))
            self._correction = (targets, dense)
        statistics_out = apply_plan(model, analysis, plan)
        # biases created for the correction stay (it gives them values)
        removed = 0 if targets else remove_zero_biases(model, stage.created)
        details["biases_added"] = len(stage.created) - removed
        return SpaPassResult(model, True, statistics_out, details)


_RECURRENT = ("LSTM", "GRU", "RNN")


def _recurrent_macs(node: Any, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """MACs of an LSTM/GRU/RNN's input (W) and recurrent (R) weights: one
    product with each per time step and batch row (``X`` is [seq, batch, in])."""
    steps = shapes.get(node.input[0])
    if not steps or len(steps) < 2:
        return {}
    macs = {}
    for name in node.input[1:3]:
        weight = shapes.get(name)
        if name and weight:
            macs[name] = steps[0] * steps[1] * int(np.prod(weight))
    return macs


def mac_costs(model: ir.Model, groups: list[Group], sample: dict[str, np.ndarray]) -> MacCosts:
    """MACs per root channel of each group at the shapes of ``sample``, the
    model's total MACs (Conv/MatMul/Gemm, and LSTM/GRU/RNN weights once per time
    step), and each node's MACs with the share of each of its weight's axes that
    one root channel of a group removes (:class:`MacCosts`).

    A member on axis ``a`` of a node's weight (input 1) covers part of that axis
    (all of it for a Conv's own filters; a branch of a Concat-rooted group is
    reached by only its part of the root): one root channel removes on average
    a share ``covered / size / len(a)`` of the node's MACs, the first-order
    cost; which channels go first decides the exact share
    (:class:`spa.pruning.sensitivity.RemovalOrder`). A product of two
    activations (a MatMul without a weight: attention's ``Q @ K^T`` and
    ``scores @ V``) shrinks with the groups on either input, once each. Shapes
    come from :func:`spa.stats.shape_facts.infer_shapes`, as in the MACs of
    spa's report (data propagation, ONNX Runtime's symbolic inference, and a
    run on zeros for what both leave open): with plain shape inference the
    tokens of an attention block reshaped at run time stay unknown, and its
    MatMuls were counted as one token (or not at all)."""
    proto = ir.serde.serialize_model(model)
    inferred, _ = infer_value_shapes(
        proto, shapes={name: tuple(np.shape(array)) for name, array in sample.items()}
    )
    shapes = {name: shape for name in inferred if (shape := known_shape(inferred, name))}
    weights = {tensor.name for tensor in proto.graph.initializer}
    # value -> axis -> the members of pruned groups on it
    members: dict[str, dict[int, list[AxisShare]]] = defaultdict(lambda: defaultdict(list))
    for group in groups:
        every = np.arange(group.size, dtype=np.int64)
        for member in group.members:
            value, axis = member.space
            length = member.index_map.target_size
            if length > 0:
                covered = np.unique(member.index_map.forward(every)).size
                share = covered / group.size / length
                members[value][axis].append(AxisShare(group.id, member.index_map, length, share))
    per_channel: dict[int, float] = defaultdict(float)
    terms: list[CostTerm] = []
    total = 0

    def charge(macs: int, axes: list[list[AxisShare]]) -> None:
        axes = [on_axis for on_axis in axes if on_axis]
        for on_axis in axes:
            for entry in on_axis:
                per_channel[entry.group] += macs * entry.share
        if axes:
            terms.append((float(macs), axes))

    def weight_axes(name: str) -> list[list[AxisShare]]:
        return list(members[name].values()) if name in members else []

    for node in proto.graph.node:
        if node.op_type in _RECURRENT and node.domain == "":
            for name, macs in _recurrent_macs(node, shapes).items():
                total += macs
                charge(macs, weight_axes(name))
            continue
        macs = node_macs(node, shapes)
        total += macs
        if not macs or len(node.input) < 2:
            continue
        if node.input[1] in weights:
            charge(macs, weight_axes(node.input[1]))
        else:  # a product of activations: each group on either input shrinks it, once
            either: dict[int, AxisShare] = {}
            for name in node.input[:2]:
                for on_axis in weight_axes(name):
                    for entry in on_axis:
                        if entry.group not in either or entry.share > either[entry.group].share:
                            either[entry.group] = entry
            charge(macs, [list(either.values())])
    costs = {group.id: per_channel.get(group.id, 0.0) for group in groups}
    return MacCosts(costs, float(total), terms)


def _stages(model: ir.Model, reads: dict[int, dict[str, int]], count: int) -> list[list[str]]:
    """The consumer inputs that the kept groups' updates read (``reads``: group id ->
    value -> channel axis) in graph order of their first reader, cut into at most
    ``count`` stages of about equal size."""
    values = {name for group_reads in reads.values() for name in group_reads}
    first_reader: dict[str, int] = {}
    end = 0
    for end, node in enumerate(model.graph, start=1):
        for value in node.inputs:
            if value is not None and value.name in values:
                first_reader.setdefault(value.name, end)
    ordered = sorted(values, key=lambda name: first_reader.get(name, end + 1))
    count = max(1, min(count, len(ordered)))
    return [chunk.tolist() for chunk in np.array_split(np.array(ordered, dtype=object), count)]


def _with_biases(
    model: ir.Model, analysis: Analysis, prunable_io: str | None
) -> tuple[Analysis, list[ir.Node]]:
    """Give every consumer of a prunable group a bias of its own to compensate
    into (zero if it had none), and analyse again."""
    nodes = {id(c.node): c.node for g in analysis.prunable_groups() for c in consumers_of(model, g)}
    created = add_missing_biases(model, list(nodes.values()))
    return analyze(model, prunable_io), created  # new biases and private copies join groups
