"""Numerical verification: run two models on the same seeded inputs and compare.

>>> result = verify_models("model.onnx", "small.onnx", policy=AllClose(rtol=1e-5))  # doctest: +SKIP
>>> print(result.render())  # doctest: +SKIP
PASSED | output logits | max|Δ| 2.4e-07 | rel 1.1e-07 | cos 1.000000 | rtol 1e-05 atol 0
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from spa.model_io import load_proto
from spa.ort import create_session
from spa.progress import track
from spa.verify.feeds import InputSpec, input_specs, make_feeds, parse_shape_option
from spa.verify.runner import run_model
from spa.verify.tolerance import AllClose, CosineMaxAbs, Exact, OutputCheck, Policy

__all__ = [
    "AllClose",
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
        return "\n".join(check.line() for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "seed": self.seed,
            "samples": self.samples,
            "outputs": [check.as_dict() for check in self.checks],
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
    resolutions: Mapping[str, float] | None = None,
) -> VerifyResult:
    """Run both models on ``samples`` seeded feeds; compare outputs by name.

    Inputs are generated from the reference model's input specs. Outputs are
    matched by name; an output missing from the candidate fails. ``adapt``
    maps reference arrays to what the candidate reads and writes (used where a
    pruned model's KV-cache inputs and outputs have fewer heads): it is applied
    to the feeds given to the candidate and to the reference's outputs.
    ``resolutions``: output name -> absolute difference that counts as equal
    (the producing op's precision, see :mod:`spa.verify.tolerance`).
    """
    from spa.errors import UserError

    policy = policy or AllClose()
    specs = input_specs(load_proto(reference))
    reference_session = create_session(reference)
    candidate_session = create_session(candidate)
    worst: dict[str, OutputCheck] = {}
    for sample in track(range(samples), total=samples, description="verify"):
        feeds = make_feeds(
            specs, seed=seed + sample, shapes=shapes, dims=dims, int_ranges=int_ranges
        )
        expected = run_model(reference_session, feeds)
        actual = run_model(candidate_session, adapt(feeds) if adapt else feeds)
        if adapt:
            expected = adapt(expected)
        for name, value in expected.items():
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
    return VerifyResult(checks=list(worst.values()), seed=seed, samples=samples)
