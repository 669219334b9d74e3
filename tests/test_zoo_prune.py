"""Zoo-wide structured pruning: `prune --ratio 0.3 --criterion random --verify`.

Every zoo model must pass mask equivalence (relative error <= 1e-4 in fp32).
Every model not frozen by design must lose >= 15% of its parameters; the
frozen ones are listed in EXPECTED_FROZEN with the reason the analyzer gives,
and the test prints every model's frozen-group reasons. Pruned models with a
dynamic batch axis must still run at another batch size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spa import zoo
from spa.model_io import load_proto
from spa.prune import prune_model
from spa.verify import AllClose, create_session, input_specs, make_feeds

ENTRIES = zoo.entries()

#: model -> substring of the reason that keeps it from losing 15% of parameters.
EXPECTED_FROZEN: dict[str, str] = {
    # grouped 1x1 convolutions (group=4, not depthwise) feed channel shuffles;
    # grouped convolutions are barriers until spa prunes within groups
    "onnx-shufflenet": "has group=",
}


def _shapes(entry: zoo.ZooEntry) -> dict[str, tuple[int, ...]]:
    return {spec.name: spec.shape for spec in entry.inputs}


def _ranges(entry: zoo.ZooEntry) -> dict[str, tuple[int, int]]:
    return {s.name: (s.low, s.high) for s in entry.inputs if s.low is not None and s.high is not None}


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_prune_random_30_percent(entry: zoo.ZooEntry, tmp_path: Path) -> None:
    source = zoo.materialize(entry.name, tmp_path / "model.onnx")
    result = prune_model(
        source, tmp_path / "pruned.onnx", ratio=0.3, criterion="random", seed=0, verify=True,
        policy=AllClose(rtol=1e-4), shapes=_shapes(entry), int_ranges=_ranges(entry),
    )
    report = result.report
    print(f"\n{entry.name}: params {report['params_before']} -> {report['params_after']}, "
          f"groups {report['groups_pruned']}/{report['groups_total']} pruned, "
          f"frozen reasons {report['frozen_reasons']}")
    assert result.verification is not None
    assert result.verification.passed, result.verification.render()
    removed = 1 - report["params_after"] / report["params_before"]
    if entry.name in EXPECTED_FROZEN:
        reasons = " ".join(r for g in result.analysis.groups for r in g.frozen_reasons)
        assert EXPECTED_FROZEN[entry.name] in reasons
    else:
        assert removed >= 0.15, f"only {removed:.1%} removed; frozen: {report['frozen_reasons']}"
    _runs_at_other_batch(result.output, entry)


def _runs_at_other_batch(path: Path, entry: zoo.ZooEntry) -> None:
    specs = input_specs(load_proto(path))
    dynamic = [spec for spec in specs if spec.dims and not isinstance(spec.dims[0], int)]
    if not dynamic:
        return
    shapes = {s.name: (3, *s.shape[1:]) for s in entry.inputs if s.name in {d.name for d in dynamic}}
    feeds = make_feeds(specs, seed=1, shapes=shapes, int_ranges=_ranges(entry))
    outputs = create_session(path).run(None, feeds)
    assert all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")
