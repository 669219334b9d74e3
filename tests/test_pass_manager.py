"""The pass manager: records, statistics, the shared postcondition, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from spa.errors import UserError
from spa.pass_manager import SpaPass, SpaPassResult, run_passes
from spa.workflows.recipes import build_passes, load_recipe, registered_passes
from tests.conftest import mlp_model


class DropFirstNode(SpaPass):
    """A broken pass for the test: removes a node whose output is still read."""

    name = "drop-first-node"

    def call(self, model: ir.Model) -> SpaPassResult:
        node = next(iter(model.graph))
        model.graph.remove(node)
        return SpaPassResult(model, True, {"nodes_removed": 1})


def test_records_carry_timing_statistics_and_diffs() -> None:
    model = ir.serde.deserialize_model(mlp_model())
    records = run_passes(model, build_passes(load_recipe("cleanup")))
    assert [r.name for r in records] == [s.name for s in load_recipe("cleanup").steps]
    identity = next(r for r in records if r.name == "remove-identity")
    assert identity.statistics["nodes_removed"] == 1
    assert identity.nodes_before - identity.nodes_after == 1
    assert all(r.seconds >= 0 for r in records)
    json.dumps([r.as_dict() for r in records])  # reports are JSON


def test_postcondition_catches_a_dangling_input() -> None:
    model = ir.serde.deserialize_model(mlp_model())
    with pytest.raises(ir.passes.PostconditionError, match="nothing defines"):
        run_passes(model, [DropFirstNode()])


def test_recipe_files_and_errors(tmp_path: Path) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(
        json.dumps({"passes": [{"name": "fold-constants", "options": {"max_output_elements": 8}}]})
    )
    (step,) = build_passes(load_recipe(str(recipe)))
    assert step.options() == {"max_output_elements": 8}
    recipe.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_recipe(str(recipe))
    recipe.write_text(json.dumps({"steps": []}))
    with pytest.raises(UserError, match="top-level 'passes:' list"):
        load_recipe(str(recipe))


def test_every_registered_pass_documents_itself() -> None:
    passes = registered_passes()
    assert {"fold-batchnorm", "fold-constants", "prune", "quantize-weights"} <= set(passes)
    for name, cls in passes.items():
        assert cls.summary and cls.__doc__, name
    onnx.checker.check_model(mlp_model())
