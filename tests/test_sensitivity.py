"""Sensitivity-aware allocation (spa.pruning.sensitivity): measured output
distortion per group on calibration feeds, the greedy MAC budget, fragile
groups left whole with a reason, through make_plan and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from spa.analysis import prepare
from spa.analysis.index_maps import Identity
from spa.passes.prune import apply_plan, mac_costs
from spa.pruning.plan import Plan, make_plan
from spa.pruning.scores import score_group
from spa.pruning.sensitivity import (
    AxisShare,
    GroupSensitivity,
    RemovalOrder,
    _expose_logits,
    allocate_by_sensitivity,
    measure_sensitivity,
    saved_macs,
)
from spa.verify.mask import mask_model, masked_relative_error
from spa.verify.runner import run_model
from tests.analysis_helpers import analysis_of, model_from_text

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
chain (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
  a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
  r = Relu (a)
  b = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, w2, b2)
  s = Relu (b)
  y = Conv <kernel_shape = [1, 1]> (s, w3, b3)
}
"""
WEIGHTS = {
    "w1": (16, 3, 3, 3), "b1": (16,), "w2": (32, 16, 3, 3), "b2": (32,),
    "w3": (4, 32, 1, 1), "b3": (4,),
}  # fmt: skip


def _chain() -> onnx.ModelProto:
    return model_from_text(CHAIN, WEIGHTS)


def _feeds(count: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def test_greedy_spends_the_budget_where_distortion_grows_least() -> None:
    cheap = GroupSensitivity(1, "cheap", 10, 1.0, [1, 3, 5], [0.001, 0.002, 0.004])
    costly = GroupSensitivity(2, "costly", 10, 1.0, [1, 3, 5], [0.01, 0.2, 0.4])
    removed = allocate_by_sensitivity([cheap, costly], ratio=0.3, total_cost=20.0, fragile=1.0)
    assert removed == {1: 5, 2: 1}  # 6 channels of cost 1 = 0.3 * 20, the cheap group first
    fragile = GroupSensitivity(3, "fragile", 10, 1.0, [1, 3, 5], [0.3, 0.5, 0.9])
    removed = allocate_by_sensitivity([cheap, fragile], ratio=0.2, total_cost=20.0, fragile=0.1)
    assert removed == {1: 4, 3: 0}  # the last step taken in part: 4 channels = 0.2 * 20
    assert fragile.skipped.startswith("fragile: losing 1 of 10 channels alone")
    assert cheap.skipped == ""


def test_measured_distortion_is_the_masked_models_output_error() -> None:
    proto, feeds = _chain(), _feeds()
    model, analysis = analysis_of(proto)
    plan = make_plan(model, analysis, ratio=0.2, criterion="l2", allocation="sensitivity",
                     samples=feeds, fragile=10.0)  # fmt: skip
    rows = plan.policy["sensitivity"]
    assert {row["group"] for row in rows} == {g.id for g in analysis.prunable_groups()}
    # recompute one measurement independently: that group alone, its lowest l2 channels zeroed
    row = rows[0]
    group = next(g for g in analysis.groups if g.id == row["group"])
    scores = score_group(model, group, "l2", np.random.default_rng(0))
    kept = sorted(np.argsort(-scores, kind="stable")[: group.size - row["removed"][1]].tolist())
    masked = prepare(ir.serde.deserialize_model(proto))
    mask_model(masked, analysis, Plan(analysis.fingerprint, {group.id: kept}, {group.id: group.size}))
    dense_bytes = proto.SerializeToString()
    masked_bytes = ir.serde.serialize_model(masked).SerializeToString()
    # y is [1, 4, 8, 8]: per output channel (its feature axis), each share capped at 1
    error = energy = np.zeros(4)
    for feed in feeds:
        want = run_model(dense_bytes, feed)["y"].astype(np.float64)
        got = run_model(masked_bytes, feed)["y"].astype(np.float64)
        error = error + ((got - want) ** 2).sum(axis=(0, 2, 3))
        energy = energy + (want**2).sum(axis=(0, 2, 3))
    assert np.isclose(row["distortion"][1], np.minimum(error / energy, 1.0).mean(), rtol=1e-5, atol=0)
    assert row["distortion"][0] > 0 and row["distortion"][2] > row["distortion"][0]


CLASSIFIER = """
<ir_version: 8, opset_import: ["" : 17]>
classifier (float[1, 3, 8, 8] x) => (float[1, 4] y) {
  a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
  r = Relu (a)
  p = GlobalAveragePool (r)
  f = Flatten (p)
  z = Gemm (f, w2, b2)
  t = Mul (z, temperature)
  y = Softmax <axis = -1> (t)
}
"""


def test_distortion_of_a_softmax_output_is_measured_on_its_logits() -> None:
    """Confident probabilities barely move when channels go (one-hot rows stay
    one-hot), so a classifier's or CTC recogniser's groups all looked free: the
    neck of PP-OCRv4 rec lost most of its channels at a measured distortion of
    0.002 and its CER doubled. Measured on the logits, the same loss shows."""
    proto = model_from_text(
        CLASSIFIER, {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (16, 4), "b2": (4,)},
        constants={"temperature": np.array(200.0, np.float32)},
    )  # fmt: skip
    model, analysis = analysis_of(proto)
    feeds = _feeds()
    plan = make_plan(model, analysis, ratio=0.2, criterion="l2", allocation="sensitivity",
                     samples=feeds, fragile=10.0)  # fmt: skip
    (row,) = plan.policy["sensitivity"]
    probabilities = [run_model(proto.SerializeToString(), feed)["y"] for feed in feeds]
    assert all(np.sort(p, axis=-1)[:, -1].min() > 0.999 for p in probabilities)  # one-hot
    assert row["distortion"][0] > 1e-3  # on probabilities: ~1e-12


def test_a_softmax_output_behind_identity_is_measured_on_its_logits() -> None:
    """Paddle's and skl2onnx's classifiers end in Softmax -> Identity -> output:
    still probabilities, so measured on the logits, as ``spa verify`` compares
    them (spa.graph_outputs.softmax_inputs, the one finder)."""
    text = CLASSIFIER.replace(
        "y = Softmax <axis = -1> (t)", "s = Softmax <axis = -1> (t)\n  y = Identity (s)"
    )
    proto = model_from_text(
        text, {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (16, 4), "b2": (4,)},
        constants={"temperature": np.array(200.0, np.float32)},
    )  # fmt: skip
    feeds = _feeds()
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    assert _expose_logits(exposed) == {"y": "y (logits)"}
    for feed in feeds:  # ONNX Runtime returns the Softmax input beside the probabilities
        values = run_model(exposed.SerializeToString(), feed)
        logits = values["y (logits)"].astype(np.float64)
        want = np.exp(logits - logits.max(-1, keepdims=True))
        np.testing.assert_allclose(values["y"], want / want.sum(-1, keepdims=True), atol=1e-6)
    model, analysis = analysis_of(proto)
    plan = make_plan(model, analysis, ratio=0.2, criterion="l2", allocation="sensitivity",
                     samples=feeds, fragile=10.0)  # fmt: skip
    (row,) = plan.policy["sensitivity"]
    assert row["distortion"][0] > 1e-3  # on the probabilities: ~1e-12


def test_sensitivity_plan_meets_the_mac_budget_and_stays_mask_equivalent() -> None:
    proto, feeds = _chain(), _feeds()
    model, analysis = analysis_of(proto)
    groups = analysis.prunable_groups()
    costs, total, _ = mac_costs(model, groups, feeds[0])
    # a 3x3 Conv output channel of w1 costs 27 * 64 MACs, its input side in w2 32 * 9 * 64
    by_root = {g.root[0]: costs[g.id] for g in groups}
    assert by_root["a"] == 27 * 64 + 32 * 9 * 64
    plan = make_plan(model, analysis, ratio=0.25, criterion="l2", allocation="sensitivity",
                     samples=feeds, costs=costs, total_cost=total, fragile=10.0)  # fmt: skip
    saved = sum((plan.sizes[g] - len(k)) * costs[g] for g, k in plan.kept.items())
    assert 0.25 * total <= saved <= 0.25 * total + max(costs.values())
    masked = prepare(ir.serde.deserialize_model(proto))
    mask_model(masked, analysis, plan)
    apply_plan(model, analysis, plan)
    assert masked_relative_error(masked, model, feeds[0]) < 1e-5


def test_rounded_plan_still_meets_the_mac_budget() -> None:
    # kept counts rounded to multiples of 8: 10% of 16 or 32 channels (2 or 3) had been
    # measured and allocated, then rounded back to 16 / 32 kept, saving nothing
    proto, feeds = _chain(), _feeds()
    model, analysis = analysis_of(proto)
    groups = analysis.prunable_groups()
    costs, total, _ = mac_costs(model, groups, feeds[0])
    for ratio in (0.1, 0.3):
        plan = make_plan(model, analysis, ratio=ratio, criterion="l2", allocation="sensitivity",
                         samples=feeds, costs=costs, total_cost=total, fragile=10.0,
                         round_to=8)  # fmt: skip
        assert all(len(kept) % 8 == 0 for kept in plan.kept.values())
        saved = sum((plan.sizes[g] - len(k)) * costs[g] for g, k in plan.kept.items())
        assert ratio * total <= saved <= ratio * total + 8 * max(costs.values())
        for row in plan.policy["sensitivity"]:
            assert row["multiple"] == 8 and all(n % 8 == 0 for n in row["removed"])
    masked = prepare(ir.serde.deserialize_model(proto))
    mask_model(masked, analysis, plan)
    apply_plan(model, analysis, plan)
    assert masked_relative_error(masked, model, feeds[0]) < 1e-5


def test_a_measurement_is_reused_for_the_same_model_scores_and_samples(caplog: pytest.LogCaptureFixture) -> None:
    """A search prunes one model at several ratios; the measurement does not
    depend on the ratio, so the second plan reuses the first's (as copies: the
    allocation marks rows it skips), and other samples or weights measure anew."""
    proto, feeds = _chain(), _feeds()
    model, analysis = analysis_of(proto)
    groups = analysis.prunable_groups()
    scores = {g.id: score_group(model, g, "l2", np.random.default_rng(0)) for g in groups}
    costs = {g.id: 1.0 for g in groups}
    first = measure_sensitivity(model, groups, scores, feeds[:2], costs)
    first[0].skipped, first[0].distortion[0] = "marked by an allocation", 99.0
    with caplog.at_level("INFO", logger="spa.pruning.sensitivity"):
        again = measure_sensitivity(model, groups, scores, feeds[:2], costs)
    assert "is reused" in caplog.text
    assert again[0].skipped == "" and again[0].distortion[0] != 99.0
    assert [r.distortion for r in again[1:]] == [r.distortion for r in first[1:]]
    caplog.clear()
    with caplog.at_level("INFO", logger="spa.pruning.sensitivity"):
        other = measure_sensitivity(model, groups, scores, feeds[2:4], costs)
    assert "is reused" not in caplog.text
    assert [r.distortion for r in other] != [r.distortion for r in again]
    weights = model.graph.initializers[groups[0].parameters[0].space[0]].const_value.numpy() * 2.0
    model.graph.initializers[groups[0].parameters[0].space[0]].const_value = ir.tensor(weights)
    changed = measure_sensitivity(model, groups, scores, feeds[:2], costs)
    assert [r.distortion for r in changed] != [r.distortion for r in again]


def test_last_partial_step_stops_on_a_count_the_rounded_plan_keeps() -> None:
    row = GroupSensitivity(1, "g", 32, 1.0, [8, 16, 24], [0.01, 0.02, 0.04], multiple=8)
    assert allocate_by_sensitivity([row], ratio=0.3, total_cost=32.0, fragile=1.0) == {1: 16}
    assert allocate_by_sensitivity([row], ratio=0.5, total_cost=32.0, fragile=1.0) == {1: 16}


def _fine_and_coarse(coarse_distortion: float) -> tuple[GroupSensitivity, GroupSensitivity]:
    """A group stepping 16 of 128 channels at cost 2 each, and one whose only step
    (16 of 32 channels at 20 each) saves 320: past a budget of 100 whenever taken."""
    fine = GroupSensitivity(1, "fine", 128, 2.0, [16, 32, 48, 64], [0.001, 0.01, 0.05, 0.1], multiple=16)
    return fine, GroupSensitivity(2, "coarse", 32, 20.0, [16], [coarse_distortion], multiple=16)


def test_a_coarse_last_step_waits_for_finer_steps_nearer_the_target() -> None:
    # the coarse step would save 320 for a budget of 100; the fine group's steps close
    # the gap and measured less distortion
    fine, coarse = _fine_and_coarse(0.2)
    notes: list[str] = []
    removed = allocate_by_sensitivity([fine, coarse], ratio=0.1, total_cost=1000.0, fragile=1.0, notes=notes)
    assert removed == {1: 64, 2: 0} and notes == []  # 128 saved; the greedy order alone took 32 + 16: 384
    # with nothing finer left, the coarse step is taken: the target is met
    assert allocate_by_sensitivity([coarse], ratio=0.1, total_cost=1000.0, fragile=1.0) == {2: 16}


def test_a_farther_plan_that_measured_less_distortion_is_kept_and_said() -> None:
    # the coarse step is cheap in distortion (0.02): 16 + 16 (352 saved, 0.021) beats the
    # fine group alone at 64 (128 saved, 0.1): it removes more and changes the outputs less
    fine, coarse = _fine_and_coarse(0.02)
    notes: list[str] = []
    removed = allocate_by_sensitivity([fine, coarse], ratio=0.1, total_cost=1000.0, fragile=1.0, notes=notes)
    assert removed == {1: 16, 2: 16}
    assert len(notes) == 1 and "saving 35.2% of the cost where 10.0% was asked" in notes[0]
    assert "nearest the target (12.8%) measured more distortion (0.1)" in notes[0]


def test_a_node_two_pruned_groups_read_is_counted_once() -> None:
    # one node of 100 MACs read by groups 1 and 2 (a Conv's input and output channels,
    # 10 each): first-order accounting counts removing 5 of 10 from each as 100 saved,
    # the plan keeps 0.5 x 0.7 = 35 % of that node after 5 + 3 go; the exact count takes 5 + 5
    def rows() -> list[GroupSensitivity]:
        return [GroupSensitivity(1, "a", 10, 10.0, [5], [0.01]), GroupSensitivity(2, "b", 10, 10.0, [5], [0.02])]

    def axis(group: int) -> list[AxisShare]:
        return [AxisShare(group, Identity(10), 10, 0.1)]

    terms = [(100.0, [axis(1), axis(2)])]
    assert allocate_by_sensitivity(rows(), ratio=0.75, total_cost=100.0, fragile=1.0) == {1: 5, 2: 3}
    exact = allocate_by_sensitivity(rows(), ratio=0.75, total_cost=100.0, fragile=1.0, terms=terms)
    assert exact == {1: 5, 2: 5}
    assert saved_macs(terms, exact) == 75.0
    # a weight whose rows and columns are one group's shrinks with the square of its share
    assert saved_macs([(100.0, [axis(1), axis(1)])], {1: 5}) == 75.0


CONCAT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
  a = Conv <kernel_shape = [1, 1]> (x, wa, ba)
  b = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wb, bb)
  ra = Relu (a)
  rb = Relu (b)
  c = Concat <axis = 1> (ra, rb)
  y = Conv <kernel_shape = [1, 1]> (c, wc, bc)
}
"""


def test_a_concat_rooted_group_saves_what_its_removed_channels_take() -> None:
    # a 1x1 Conv (8 filters) and a 3x3 Conv (16) concatenated into a Conv with 24 inputs form
    # one group of 24 root channels; on average a root channel takes a mix of both branches'
    # filters, but a plan removes the lowest-scoring first, and 4 of them in the cheap
    # branch save far less than 4 in the costly one (PP-OCRv4 det's FPN: four branches of a
    # 96-channel concat at different resolutions, 8.8 % of MACs removed for 10 %)
    proto = model_from_text(CONCAT, {"wa": (8, 3, 1, 1), "ba": (8,), "wb": (16, 3, 3, 3), "bb": (16,),
                                     "wc": (4, 24, 1, 1), "bc": (4,)})  # fmt: skip
    model, analysis = analysis_of(proto)
    (group,) = analysis.prunable_groups()
    costs = mac_costs(model, [group], {"x": np.zeros((1, 3, 8, 8), np.float32)})
    cheap, costly, consumer = 3 * 64, 27 * 64, 4 * 24 * 64
    assert costs.total == 8 * cheap + 16 * costly + consumer
    assert costs.per_channel[group.id] == pytest.approx((8 * cheap + 16 * costly + consumer) / 24)
    assert saved_macs(costs.terms, {group.id: 4}) == pytest.approx(4 * costs.per_channel[group.id])
    # root channels 0..7 are the first Concat input (the 1x1 branch)
    cheap_first, costly_first = RemovalOrder({group.id: np.arange(24)}), RemovalOrder({group.id: np.arange(24)[::-1]})
    assert saved_macs(costs.terms, {group.id: 4}, cheap_first) == pytest.approx(4 * cheap + consumer / 6)
    assert saved_macs(costs.terms, {group.id: 4}, costly_first) == pytest.approx(4 * costly + consumer / 6)


def test_sensitivity_plan_meets_its_mac_target_in_the_pruned_model() -> None:
    proto, feeds = _chain(), _feeds()
    for ratio in (0.25, 0.5):
        model, analysis = analysis_of(proto)
        groups = analysis.prunable_groups()
        costs = mac_costs(model, groups, feeds[0])
        plan = make_plan(model, analysis, ratio=ratio, criterion="l2", allocation="sensitivity",
                         samples=feeds, costs=costs.per_channel, total_cost=costs.total, fragile=10.0,
                         cost_terms=costs.terms)  # fmt: skip
        apply_plan(model, analysis, plan)
        pruned = mac_costs(model, [], feeds[0]).total
        assert ratio <= 1 - pruned / costs.total <= ratio + max(costs.per_channel.values()) / costs.total


# Paddle's SVTR attention: the packed QKV reshaped by a target computed at run
# time (plain shape inference leaves the tokens unknown), two MatMuls between
# activations per head.
RUNTIME_HEADS = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[1, 6, 8] x) => (float[1, 6, 8] y) {
    qkv = MatMul (x, wqkv)
    shp = Shape (x)
    bn = Slice (shp, zero, two)
    packed = Concat <axis = 0> (bn, heads)
    q5 = Reshape (qkv, packed)
    t = Transpose <perm = [2, 0, 3, 1, 4]> (q5)
    q = Gather <axis = 0> (t, s0)
    k = Gather <axis = 0> (t, s1)
    v = Gather <axis = 0> (t, s2)
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    s = MatMul (q, kt)
    p = Softmax <axis = -1> (s)
    o = MatMul (p, v)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    merged = Concat <axis = 0> (bn, minus)
    om = Reshape (ot, merged)
    y = MatMul (om, wo)
}
"""


def test_mac_costs_give_heads_their_attention_products_at_run_time_shapes() -> None:
    constants = {
        "zero": np.array([0]), "two": np.array([2]), "heads": np.array([3, 4, 2]),
        "minus": np.array([-1]), "s0": np.array(0), "s1": np.array(1), "s2": np.array(2),
    }  # fmt: skip
    proto = model_from_text(RUNTIME_HEADS, {"wqkv": (8, 24), "wo": (8, 8)}, constants=constants)
    model, analysis = analysis_of(proto)
    (heads,) = analysis.prunable_groups()
    assert heads.size == 4
    costs, total, _ = mac_costs(model, [heads], {"x": np.zeros((1, 6, 8), np.float32)})
    # 6 tokens: QKV 6 * 8 * 24, output 6 * 8 * 8, Q @ K^T and P @ V 4 heads * 6 * 6 * 2 each
    assert total == 1152 + 384 + 288 + 288
    assert costs[heads.id] * heads.size == total  # every MatMul loses 1/4 per head


def test_fragile_groups_stay_whole_with_their_reason() -> None:
    model, analysis = analysis_of(_chain())
    plan = make_plan(model, analysis, ratio=0.2, criterion="l2", allocation="sensitivity",
                     samples=_feeds(), fragile=1e-9)  # fmt: skip
    assert plan.kept == {}
    assert len(plan.policy["skipped"]) == len(analysis.prunable_groups())
    assert all(reason.startswith("fragile: ") for reason in plan.policy["skipped"].values())


def test_cli_sensitivity_reports_and_needs_calibration(run_cli, tmp_path: Path) -> None:
    model = tmp_path / "chain.onnx"
    onnx.save(_chain(), str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.stack([feed["x"] for feed in _feeds(8)]))
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    result = run_cli("prune", model, "-o", out, "--ratio", "0.2", "--criterion", "l2",
                     "--allocation", "sensitivity", "--fragile", "0.09", "--calib", calib, "--round-to", "1",
                     "--verify", "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "sensitivity: 2 groups measured on 6 calibration samples" in result.output
    data = json.loads(report.read_text())
    assert data["plan"]["allocation"] == "sensitivity" and data["verify"]["passed"] is True
    assert list(data["plan"]["skipped"]) == ["4"]  # 0.095 at 10%: above 0.09, group 1 (0.084) is not
    assert data["groups_pruned"] == 1
    for group_id, reason in data["plan"]["skipped"].items():
        assert f"group {group_id}: {reason}" in result.output
    missing = run_cli("prune", model, "-o", out, "--allocation", "sensitivity")
    assert missing.exit_code == 1
    assert "--allocation sensitivity needs --calib DATA" in missing.output


LSTM = """
<ir_version: 8, opset_import: ["" : 17]>
rnn (float[5, 1, 3] x) => (float[5, 1, 1, 4] y) {
  y = LSTM <hidden_size = 4> (x, w, r)
}
"""


def test_mac_costs_count_recurrent_weights_once_per_time_step() -> None:
    model, analysis = analysis_of(model_from_text(LSTM, {"w": (1, 16, 3), "r": (1, 16, 4)}))
    feed = {"x": np.zeros((5, 1, 3), np.float32)}
    _, total, _ = mac_costs(model, analysis.prunable_groups(), feed)
    assert total == 5 * (16 * 3 + 16 * 4)


def test_groups_can_lose_three_quarters_and_an_unreachable_budget_is_reported(caplog) -> None:
    # with 0.5 as the largest measured ratio no group could lose more than half its channels
    proto, feeds = _chain(), _feeds()
    model, analysis = analysis_of(proto)
    groups = analysis.prunable_groups()
    costs, total, _ = mac_costs(model, groups, feeds[0])
    plan = make_plan(model, analysis, ratio=0.9, criterion="l2", allocation="sensitivity",
                     samples=feeds, costs=costs, total_cost=total, fragile=10.0)  # fmt: skip
    removed = {g: plan.sizes[g] - len(k) for g, k in plan.kept.items()}
    assert 0.5 < max(removed[g.id] / g.size for g in groups) <= 0.75  # 0.75: the largest measured
    masked = prepare(ir.serde.deserialize_model(proto))
    mask_model(masked, analysis, plan)
    apply_plan(model, analysis, plan)
    assert masked_relative_error(masked, model, feeds[0]) < 1e-5
    # a budget past every group's last step: all of it spent that can be, and a warning says why
    small = GroupSensitivity(1, "small", 8, 1.0, [1, 2, 4, 6], [0.01, 0.02, 0.04, 0.08])
    fragile = GroupSensitivity(2, "fragile", 8, 1.0, [1, 2, 4, 6], [0.5, 0.6, 0.7, 0.9])
    with caplog.at_level("WARNING", logger="spa.pruning.sensitivity"):
        assert allocate_by_sensitivity([small, fragile], ratio=0.9, total_cost=16.0,
                                       fragile=0.25) == {1: 6, 2: 0}  # fmt: skip
    (line,) = [r.getMessage() for r in caplog.records if "sensitivity allocation" in r.message]
    assert line.startswith("sensitivity allocation saved 6 of the 14.4 asked")
    assert "largest measured ratio, and 1 fragile group(s) stay whole" in line
