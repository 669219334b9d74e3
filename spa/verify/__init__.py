"""Numerical verification: run two models on the same seeded inputs and compare.

>>> result = verify_models("model.onnx", "small.onnx", policy=AllClose(rtol=1e-5))  # doctest: +SKIP
>>> print(result.render())  # doctest: +SKIP
PASSED | output logits | max|Δ| 2.4e-07 | rel 1.1e-07 | cos 1.000000 | rtol 1e-05 atol 0
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.graph_outputs import softmax_inputs
from spa.model_io import load_proto
from spa.ort import create_session
from spa.ort_segments import maybe_segmented
from spa.verify.branches import BranchCoverage, branch_feeds, branch_selectors
from spa.verify.feeds import InputSpec, input_specs, make_feeds, parse_shape_option
from spa.verify.runner import run_model, run_model_many
from spa.verify.tolerance import (
    AllClose,
    CosineMaxAbs,
    Exact,
    OutputCheck,
    Policy,
    bounded_resolutions,
)

__all__ = [
    "PRE_SOFTMAX",
    "AllClose",
    "BranchCoverage",
    "CosineMaxAbs",
    "Exact",
    "InputSpec",
    "OutputCheck",
    "Policy",
    "VerifyResult",
    "create_session",
    "input_specs",
    "make_feeds",
    "parse_shape_option",
    "run_model",
    "verify_models",
]


@dataclasses.dataclass
class VerifyResult:
    """Per-output checks of one comparison, plus the seed that made the inputs."""

    checks: list[OutputCheck]
    seed: int
    samples: int
    branches: BranchCoverage | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=0.0)

    @property
    def max_rel_diff(self) -> float:
        return max((c.max_rel_diff for c in self.checks), default=0.0)

    def render(self) -> str:
        lines = [check.line() for check in self.checks]
        if self.branches is not None and self.branches.line():
            lines.append(self.branches.line())
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "seed": self.seed,
            "samples": self.samples,
            "outputs": [check.as_dict() for check in self.checks],
            **({"branches": self.branches.as_dict()} if self.branches is not None else {}),
        }


def verify_models(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    seed: int = 0,
    samples: int = 1,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dims: Mapping[str, int] | None = None,
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
    adapt: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    session: Callable[..., Any] = create_session,
    resolutions: Mapping[str, float] | None = None,
    expose: Sequence[str] = (),
) -> VerifyResult:
    """Run both models on ``samples`` seeded feeds; compare outputs by name.

    Inputs are generated from the reference model's input specs. Outputs are
    matched by name; an output missing from the candidate fails. ``adapt``
    maps reference arrays to what the candidate reads and writes (used where a
    pruned model's KV-cache inputs and outputs have fewer heads): it is applied
    to the feeds given to the candidate and to the reference's outputs.

    Where an ``If`` branches on a bool/int input, extra feeds take the branch
    the seeded ones miss (:mod:`spa.verify.branches`); ``branches`` in the
    result says which branches were checked. ``session`` makes the ORT
    sessions: :func:`spa.ort.create_session` or a function with its signature
    (graph optimization levels differ by caller). ``resolutions``: output
    name -> absolute difference that counts as equal (the producing op's
    precision, see :mod:`spa.verify.tolerance`; by default that of each output
    a bounded activation such as Sigmoid produces). ``expose``: names of values
    inside both graphs to compare as well, as if they were outputs (the files
    are not changed). Very large graphs (more nodes or bytes of weights than
    :mod:`spa.ort_segments` sets) run as a chain of smaller sessions, one
    segment in memory at a time: ORT's session creation is superlinear in the
    graph size, and a whole session holds all the weights.
    """
    from spa.errors import UserError

    policy = policy or AllClose()
    reference_proto, candidate_proto = load_proto(reference), load_proto(candidate)
    if resolutions is None:
        resolutions = bounded_resolutions(reference_proto.graph)
    specs = input_specs(reference_proto)
    missing = sorted({spec.name for spec in input_specs(candidate_proto)} - {spec.name for spec in specs})
    if missing and adapt is None:
        raise UserError(
            f"{candidate}: reads input(s) {missing} that {reference} does not have; "
            "compare models with the same inputs"
        )
    logits = {
        output: names
        for output, names in _common_pre_softmax(reference_proto, candidate_proto).items()
        if names[0] not in expose  # compared under its own name already
    }
    all_feeds = [
        make_feeds(specs, seed=seed + sample, shapes=shapes, dims=dims, int_ranges=int_ranges)
        for sample in range(samples)
    ]
    coverage = None
    if branch_selectors(reference_proto):
        first = (
            all_feeds[0]
            if all_feeds
            else make_feeds(specs, seed=seed, shapes=shapes, dims=dims, int_ranges=int_ranges)
        )
        extras, coverage = branch_feeds(reference_proto, first, int_ranges)
        all_feeds.extend(extras)
    # One model in ONNX Runtime at a time: peak memory is the larger model, not both.
    runner = _session(session, reference, reference_proto, logits, 0, expose)
    expected_all = run_model_many(runner, all_feeds, "verify (reference)")
    del runner
    runner = _session(session, candidate, candidate_proto, logits, 1, expose)
    candidate_feeds = [adapt(feeds) if adapt else feeds for feeds in all_feeds]
    actual_all = run_model_many(runner, candidate_feeds, "verify (candidate)")
    del runner
    worst: dict[str, OutputCheck] = {}
    for expected, actual in zip(expected_all, actual_all, strict=True):
        if adapt:
            expected = adapt(expected)
        for name, value in expected.items():
            if name.endswith(PRE_SOFTMAX) and name not in actual:
                continue
            if name not in actual:
                raise UserError(
                    f"{candidate}: has no output named '{name}' (it has {sorted(actual)}); "
                    "compare models with the same outputs"
                )
            check = policy.check(name, value, actual[name], (resolutions or {}).get(name, 0.0))
            previous = worst.get(name)
            if (
                previous is None
                or (previous.passed and not check.passed)
                or (previous.passed == check.passed and check.max_abs_diff > previous.max_abs_diff)
            ):
                worst[name] = check
    return VerifyResult(list(worst.values()), seed, len(all_feeds), coverage)


#: Suffix of the extra check on the values a Softmax output is computed from.
PRE_SOFTMAX = " (pre-softmax)"


def _common_pre_softmax(
    reference: onnx.ModelProto, candidate: onnx.ModelProto
) -> dict[str, tuple[str, str]]:
    """Outputs that both models compute with a (Log)Softmax, looking through
    Identity nodes after it (:func:`spa.graph_outputs.softmax_inputs`), and the
    names of the two Softmax inputs: output -> (reference input, candidate input).

    A softmax saturates: on random inputs a classifier's probabilities are often
    exactly one-hot, so comparing them proves little. The logits behind them are
    compared as well (an extra check named ``output (pre-softmax)``), unless no
    node computes them (a graph input or initializer) or they are a graph output
    already.
    """

    def inputs(proto: onnx.ModelProto) -> dict[str, str]:
        # logits the graph computes and does not return already (those are compared as they are)
        produced = {out for node in proto.graph.node for out in node.output}
        outputs = {value.name for value in proto.graph.output}
        return {
            name: logits
            for name, logits in softmax_inputs(proto).items()
            if logits in produced and logits not in outputs
        }

    ours, theirs = inputs(reference), inputs(candidate)
    return {name: (ours[name], theirs[name]) for name in ours.keys() & theirs.keys()}


def _session(
    factory: Callable[..., Any],
    path: str | os.PathLike[str],
    proto: onnx.ModelProto,
    logits: Mapping[str, tuple[str, str]],
    side: int,
    expose: Sequence[str] = (),
) -> Any:
    """A session (made by ``factory``, :func:`spa.ort.create_session` or one with
    its signature) on the model at ``path``; with ``logits``, one that also
    returns each Softmax input as ``output (pre-softmax)`` (an Identity on it),
    and each value of ``expose`` the graph computes under its own name. The graph
    is edited in memory; external data is read from the model's folder."""
    produced = {name for node in proto.graph.node for name in node.output}
    present = {value.name for value in proto.graph.output}
    extra = [name for name in dict.fromkeys(expose) if name in produced and name not in present]
    if not logits and not extra:
        return maybe_segmented(proto, factory, Path(path).parent) or factory(path)
    edited = onnx.ModelProto()
    edited.CopyFrom(proto)
    for output, names in sorted(logits.items()):
        exposed = output + PRE_SOFTMAX
        edited.graph.node.append(onnx.helper.make_node("Identity", [names[side]], [exposed]))
        edited.graph.output.append(onnx.helper.make_empty_tensor_value_info(exposed))
    for name in extra:
        edited.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    folder = Path(path).parent
    return maybe_segmented(edited, factory, folder) or factory(
        edited.SerializeToString(), external_folder=folder
    )
