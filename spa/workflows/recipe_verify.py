"""``spa optimize --verify`` for a recipe whose passes rewrite weights by design.

A recipe that quantizes weights (``quantize-weights``), sparsifies them
(``sparsify-2to4``) or both (``gqsa``) changes the outputs on purpose, so its
output compared with its input under a float tolerance fails every healthy
model. Such passes declare ``fidelity = "decoded"``
(:data:`spa.pass_manager.Fidelity`) and record, per weight they rewrote, the
values its stored form decodes to. The recipe is then verified as ``spa
quantize`` verifies (:mod:`spa.workflows.results`):

* **exactness**: the output against the *decoded reference*, the model the first
  rewriting pass read (a snapshot) with every rewritten weight replaced by its
  decoded values, to :data:`spa.workflows.results.DECODED_RTOL`, both run
  without ORT graph optimizations. The passes after the rewrite (cleanup,
  format conversions) must be exact too. Several rewriting passes merge their
  maps onto that model, a later pass's values winning, when every weight they
  name is one of that model's weights; otherwise the decoded reference is not
  used and the verdict says why;
* the **recipe steps before** the first rewrite, against the recipe's input
  with the exact policy of a recipe without rewrites (from the last prune step
  on: prune steps have their own mask-equivalence check);
* **drift**: the output against the recipe's input, reported, and judged only by
  the policy the caller gave (``--cosine``, ``--rtol``, ``--exact``).

A model holding spa's TensorRT plugin ops (``int4-to-plugin``,
``gqsa-to-plugin``), or the documented ``spa.GroupSparseQuantMatMul``, is run
in ONNX Runtime in its ORT form (:func:`ort_form`: ``plugin-to-ort``, then the
GQSA reference lowering, on a copy), on both sides of each comparison. The
plugin passes' decoded reference is the model they read with its scales
rounded to FP16, which is what the plugin layouts store.

A recipe in which a lossy pass without a decoded reference (``quantize-static``,
``quantize-dynamic``, ``rotate-slice``, ``factorize-embeddings``; a prune step
after the rewrites) changed the model keeps the comparison with its input under
the caller's policy, as before; the verdict names the pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from spa.model_io import load_model, save_model
from spa.pass_manager import PassRecord, SpaPass
from spa.passes.gqsa import GQSAToReferencePass
from spa.passes.plugins import PluginToOrtPass
from spa.passes.prune import PrunePass
from spa.passes.quantize import DecidingPass
from spa.quant.gqsa_ir import LOWERING_OPSET
from spa.trt.ops import SPA_DOMAIN
from spa.verify import AllClose, CosineMaxAbs, Exact, Policy, VerifyResult, verify_models
from spa.workflows.results import DecodedResult, measure_drift, verify_decoded
from spa.workflows.run import PipelineOutcome, RunOptions, convert_opset

__all__ = [
    "ORT_FORM_NOTE",
    "DecodedCheck",
    "DecodedPlan",
    "check_decoded_recipe",
    "decoded_snapshots",
    "has_spa_ops",
    "holds_spa_ops",
    "ort_form",
    "plan_decoded",
]

Decoded = dict[str, Callable[[], np.ndarray]]


@dataclasses.dataclass
class DecodedCheck(DecodedResult):
    """The verification of a recipe with weight rewrites: ``verification`` is the
    output against the decoded reference, ``drift`` against the recipe's input."""

    output: Path
    verification: VerifyResult | None
    drift: VerifyResult | None
    #: The policy the caller gave, which judges ``drift`` (None: measured, not judged).
    policy: Policy | None = None
    #: The cosine floor of ``policy`` when it is one (``--cosine``).
    min_cosine: float | None = None
    #: The model the decoded reference is built on ("the output of pass 2 (fold-batchnorm)").
    reference: str = ""
    #: The recipe steps before the first rewrite against the recipe's input, if any.
    prefix: VerifyResult | None = None
    #: Which passes ``prefix`` checked ("passes 1-2").
    prefix_steps: str = ""

    @property
    def drift_gate(self) -> str | None:
        return None if self.policy is None else policy_text(self.policy)

    @property
    def passed(self) -> bool:
        return super().passed and (self.prefix is None or self.prefix.passed)

    def decoded_verdict(self) -> str:
        """:meth:`DecodedResult.decoded_verdict`, then the steps before the rewrite."""
        text = super().decoded_verdict()
        if self.prefix is not None:
            state = "exact" if self.prefix.passed else "MISMATCH"
            text += f" | {self.prefix_steps} {state} (rel {self.prefix.max_rel_diff:.1g})"
        return text

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data["policy"] = self.drift_gate
        data["prefix"] = None if self.prefix is None else self.prefix.as_dict()
        return data


#: What a check of a model holding spa ops ran (the report's ``verified_form``).
ORT_FORM_NOTE = (
    "spa ops checked in ONNX Runtime through plugin-to-ort and the GQSA reference lowering "
    "(the plugin layouts read back; TensorRT runs the plugin ops)"
)


def has_spa_ops(model: ir.Model) -> bool:
    """True when ``model`` holds an op of spa's domain (plugin ops, documented GQSA)."""
    return any(
        node.domain == SPA_DOMAIN for node in ir.traversal.RecursiveGraphIterator(model.graph)
    )


@functools.lru_cache(maxsize=64)
def _file_holds_spa_ops(path: str, mtime_ns: int, size: int) -> bool:
    """:func:`has_spa_ops` of a file, read once per version of it (a verification asks
    for the same files several times)."""
    return has_spa_ops(load_model(path))


def holds_spa_ops(path: Path) -> bool:
    """Whether the model file ``path`` holds spa ops (read once per version of the file)."""
    status = Path(path).stat()
    return _file_holds_spa_ops(str(path), status.st_mtime_ns, status.st_size)


def ort_form(path: Path, folder: Path) -> Path:
    """The file ONNX Runtime runs for ``path``: ``path`` itself, or, when it holds spa ops,
    a copy in ``folder`` with plugin ops turned back into MatMulNBits / documented GQSA
    (``plugin-to-ort``, exact) and documented GQSA lowered to standard ops
    (``gqsa-to-reference``, exact; the copy is converted to opset 21 first when below 18)."""
    if not holds_spa_ops(path):
        return path
    model = load_model(path)
    PluginToOrtPass()(model)
    if has_spa_ops(model):
        model = convert_opset(
            model, below=LOWERING_OPSET, version=21, purpose="the GQSA reference lowering",
            fix="check the model with --no-verify",
        )  # fmt: skip
        GQSAToReferencePass()(model)
    folder.mkdir(parents=True, exist_ok=True)
    return save_model(model, folder / f"{path.stem}.ort-form.onnx", input_path=path)


def policy_text(policy: Policy) -> str:
    """What a policy requires, as a verdict reads it (``cos >= 0.99``, ``rel <= 1e-05``)."""
    if isinstance(policy, CosineMaxAbs):
        bound = "" if math.isinf(policy.max_abs) else f", max|Δ| <= {policy.max_abs:g}"
        return f"cos >= {policy.min_cosine:g}{bound}"
    if isinstance(policy, AllClose):
        either = f" or max|Δ| <= {policy.atol:g}" if policy.atol > 0 else ""
        return f"rel <= {policy.rtol:g}{either}"
    if isinstance(policy, Exact):
        return "bit-exact"
    return type(policy).__name__


@dataclasses.dataclass(frozen=True)
class DecodedPlan:
    """Which model the decoded reference is built on, from which passes' weights."""

    #: The reference is the model after this pass (0: the pipeline's input).
    reads: int
    #: The passes that rewrote weights (1-based), in order.
    rewrites: tuple[int, ...]
    #: The recipe steps after this pass, up to ``reads``, are checked exact.
    exact_from: int


def _label(passes: Sequence[SpaPass], index: int) -> str:
    return f"pass {index} ({passes[index - 1].name})"


def _candidates(passes: Sequence[SpaPass], recipe_start: int) -> list[int]:
    return [
        index for index, spa_pass in enumerate(passes, start=1)
        if index > recipe_start and spa_pass.fidelity == "decoded"
    ]  # fmt: skip


def _decoded_of(spa_pass: SpaPass) -> Decoded:
    return spa_pass.decoded if isinstance(spa_pass, DecidingPass) else {}


def decoded_snapshots(passes: Sequence[SpaPass], recipe_start: int) -> list[int]:
    """The passes after which the model must be kept for :func:`check_decoded_recipe`:
    each one before a recipe pass that may rewrite weights (``fidelity = "decoded"``;
    the pipeline's input, 0, is kept anyway). ``recipe_start``: the passes before
    the recipe's own (``optimize --prune`` and its statistics corrections)."""
    return [index - 1 for index in _candidates(passes, recipe_start) if index > 1]


def plan_decoded(
    passes: Sequence[SpaPass], records: Sequence[PassRecord], recipe_start: int
) -> DecodedPlan | str | None:
    """After the run (``records``): how to check the recipe against its decoded
    reference; None when no pass rewrote a weight (the comparison with the input is
    exact), or why the decoded reference cannot be used (a lossy pass without one
    that changed the model)."""
    rewrites = tuple(
        index for index in _candidates(passes, recipe_start) if _decoded_of(passes[index - 1])
    )
    if not rewrites:
        return None
    first = rewrites[0]
    exact_from = recipe_start
    for index in range(recipe_start + 1, len(passes) + 1):
        if passes[index - 1].fidelity != "lossy" or not records[index - 1].modified:
            continue
        if index > first:
            return (
                f"{_label(passes, index)} changes the outputs after the weight rewrite of "
                f"{_label(passes, first)} and has no decoded reference"
            )
        if not isinstance(passes[index - 1], PrunePass):
            return f"{_label(passes, index)} changes the outputs and has no decoded reference"
        exact_from = index  # checked by mask equivalence on its own output
    return DecodedPlan(first - 1, rewrites, exact_from)


def _weight_names(model: ir.Model) -> set[str]:
    """Names of the constant inputs of every node (subgraphs included): what
    :func:`spa.quant.decoded.decoded_model` can replace."""
    return {
        value.name or ""
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        for value in node.inputs
        if value is not None and value.const_value is not None
    }


def _merged(plan: DecodedPlan, passes: Sequence[SpaPass], model: ir.Model) -> Decoded | str:
    """The decoded weights of every rewriting pass, later ones winning, or why they
    do not all name weights of ``model`` (the one the first of them read)."""
    names = _weight_names(model)
    merged: Decoded = {}
    for index in plan.rewrites:
        decoded = _decoded_of(passes[index - 1])
        missing = sorted(set(decoded) - names)
        if missing:
            return (
                f"weight '{missing[0]}' that {_label(passes, index)} rewrote is not a weight of "
                f"the model {_label(passes, plan.rewrites[0])} read"
            )
        merged.update(decoded)
    return merged


def _check_chain(
    plan: DecodedPlan,
    passes: Sequence[SpaPass],
    models_after: Mapping[int, Path],
    outcome: PipelineOutcome,
    output: Path,
    options: RunOptions,
) -> tuple[VerifyResult, str] | None:
    """Each weight rewrite against the model it read (its own decoded reference), up to
    the model before the next rewrite (the exact passes between them included) or the
    output: the worst comparison and what it was. None when a rewrite names a weight
    the model it read lacks."""
    results: list[tuple[VerifyResult, int]] = []
    for position, index in enumerate(plan.rewrites):
        path = models_after[index - 1]
        model = outcome.model_before(path) if index - 1 == 0 else load_model(path)
        decoded = _decoded_of(passes[index - 1])
        if not set(decoded) <= _weight_names(model):
            return None
        last = position + 1 == len(plan.rewrites)
        candidate = output if last else models_after[plan.rewrites[position + 1] - 1]
        result = verify_decoded(
            model, path, decoded, candidate, options, runnable=ort_form
        )  # fmt: skip
        results.append((result, index))
    worst, index = max(results, key=lambda item: (not item[0].passed, item[0].max_rel_diff))
    labels = ", ".join(str(i) for i in plan.rewrites)
    return worst, f"each weight rewrite's own input (passes {labels}; worst: {_label(passes, index)})"


def _steps(first: int, last: int) -> str:
    return f"pass {first}" if first == last else f"passes {first}-{last}"


def check_decoded_recipe(
    passes: Sequence[SpaPass],
    recipe_start: int,
    models_after: Mapping[int, Path],
    outcome: PipelineOutcome,
    output: Path,
    options: RunOptions,
    policy: Policy | None,
) -> DecodedCheck | str | None:
    """Verify ``output`` as the module says. ``models_after[i]``: the model after
    pass ``i`` (0: the pipeline's input; those of :func:`decoded_snapshots`, each
    prune step and ``recipe_start``). Returns None when no pass rewrote a weight and
    a reason when the decoded reference cannot be used: the caller then compares
    the output with the recipe's input under ``policy``, as for any recipe."""
    plan = plan_decoded(passes, outcome.records, recipe_start)
    if plan is None or isinstance(plan, str):
        return plan
    path = models_after[plan.reads]
    source = models_after[0]
    model = outcome.model_before(source) if plan.reads == 0 else load_model(path)
    decoded = _merged(plan, passes, model)
    reads = (
        "the recipe's input"
        if plan.reads == recipe_start
        else f"the output of {_label(passes, plan.reads)}"
    )
    if isinstance(decoded, str):  # a rewrite of a rewrite (gqsa, then gqsa-to-plugin)
        chained = _check_chain(plan, passes, models_after, outcome, output, options)
        if chained is None:
            return decoded
        verification, reads = chained
    else:
        verification = verify_decoded(
            model, path, decoded, output, options, runnable=ort_form
        )
    prefix, steps = None, ""
    if plan.exact_from < plan.reads:
        exact = policy if isinstance(policy, AllClose | Exact) else AllClose()
        prefix = verify_models(
            models_after[plan.exact_from], path, policy=exact, seed=options.seed, **options.inputs
        )
        steps = _steps(plan.exact_from + 1, plan.reads)
    recipe_input = models_after[recipe_start]
    drift = measure_drift(
        recipe_input, output, None, options, ort_form, policy=policy
    )
    return DecodedCheck(
        output=output, verification=verification, drift=drift, policy=policy,
        min_cosine=policy.min_cosine if isinstance(policy, CosineMaxAbs) else None,
        reference=reads, prefix=prefix, prefix_steps=steps,
    )  # fmt: skip
