"""Importance criteria, reconstruction, calibration statistics and allocation
on tiny inline models with hand-computed expectations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from spa.analysis import analyze, prepare
from spa.calibration import collect_channel_statistics
from spa.errors import UserError
from spa.pruning.allocation import allocate
from spa.pruning.scores import score_group
from spa.pruning.plan import Plan, make_plan
from spa.pruning.proxy import proxy_moments
from spa.pruning.statistics import gather_statistics
from spa.workflows.prune import prune_model

# x[N,3] -> MatMul w1 [3,4] -> Relu -> MatMul w2 [4,2] -> y: one 4-channel group
W1 = np.array([[1, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 4]], dtype=np.float32)
W2 = np.array([[1, 1], [2, 0], [0, 1], [1, 3]], dtype=np.float32)
CALIB = np.array([[[1, 0, 1]], [[2, 1, 0]], [[0, 1, 1]]], dtype=np.float32)  # 3 samples [1,3]
HIDDEN = np.array([[1, 2, 0, 4], [2, 4, 3, 0], [0, 0, 3, 4]], dtype=np.float64)  # relu(x @ W1)

MLP_TEXT = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 2] y) {
    h0 = MatMul (x, w1)
    h = Relu (h0)
    y = MatMul (h, w2)
}"""


def mlp(w1: np.ndarray = W1, w2: np.ndarray = W2) -> onnx.ModelProto:
    model = onnx.parser.parse_model(MLP_TEXT)
    model.graph.initializer.extend(
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    )
    return model


def feeds(samples: np.ndarray = CALIB) -> list[dict[str, np.ndarray]]:
    return [{"x": sample} for sample in samples]


def one_group(proto: onnx.ModelProto) -> tuple[ir.Model, object]:
    model = prepare(ir.serde.deserialize_model(proto))
    analysis = analyze(model)
    (group,) = analysis.prunable_groups()
    return model, group


def normalised(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array / array.mean()


def test_magnitude_scores_by_hand() -> None:
    model, group = one_group(mlp())
    rng = np.random.default_rng(0)
    # w1 columns |.|: 1, 2, 3, 4; w2 rows: 2, 2, 1, 4
    l1 = normalised([1, 2, 3, 4]) + normalised([2, 2, 1, 4])
    np.testing.assert_allclose(score_group(model, group, "l1", rng), l1)
    l2 = normalised([1, 4, 9, 16]) + normalised([2, 4, 1, 10])
    np.testing.assert_allclose(score_group(model, group, "l2", rng), l2)
    l1_max = normalised([1, 2, 3, 4]) + normalised([1, 2, 1, 3])
    np.testing.assert_allclose(score_group(model, group, "l1", rng, reduction="max"), l1_max)
    l1_mean = normalised([1 / 3, 2 / 3, 1, 4 / 3]) + normalised([1, 1, 0.5, 2])
    np.testing.assert_allclose(score_group(model, group, "l1", rng, reduction="mean"), l1_mean)


def test_lamp_scores_by_hand() -> None:
    model, group = one_group(mlp())
    # w1 column energies 1, 4, 9, 16 -> e / (sum of energies >= e)
    first = normalised([1 / 30, 4 / 29, 9 / 25, 16 / 16])
    # w2 row energies 2, 4, 1, 10 (ascending: 1, 2, 4, 10)
    second = normalised([2 / 16, 4 / 14, 1 / 17, 10 / 10])
    scores = score_group(model, group, "lamp", np.random.default_rng(0))
    np.testing.assert_allclose(scores, first + second)


def conv_bn(gamma: np.ndarray, beta: np.ndarray, seed: int = 0) -> onnx.ModelProto:
    """x[N,6,4,4] -> 1x1 Conv (orthogonal) -> BN -> Relu -> 1x1 Conv w2 -> Conv w3 -> y.

    The BN running statistics match the data: for x ~ N(0, 1) the first Conv's
    channels are independent N(b1, 1), so the BN output is N(beta, gamma^2).
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    b1 = rng.standard_normal(6)
    arrays = {
        "w1": q.reshape(6, 6, 1, 1),
        "b1": b1,
        "s1": gamma,
        "o1": beta,
        "m1": b1,
        "var1": np.full(6, 1.0 - 1e-5),  # + epsilon = 1
        "w2": rng.standard_normal((5, 6, 1, 1)),
        "w3": rng.standard_normal((2, 5, 1, 1)),
    }
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 6, 4, 4] x) => (float[N, 2, 4, 4] y) {
            c1 = Conv (x, w1, b1)
            n1 = BatchNormalization <epsilon = 1e-5> (c1, s1, o1, m1, var1)
            r1 = Relu (n1)
            c2 = Conv (r1, w2)
            y = Conv (c2, w3)
        }"""
    )
    model.graph.initializer.extend(
        numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()
    )
    return model


def test_bn_scale_and_fallback_to_l2() -> None:
    gamma = np.array([0.5, -3.0, 1.0, 2.0, -0.25, 1.5])
    proto = conv_bn(gamma, np.zeros(6))
    model = prepare(ir.serde.deserialize_model(proto))
    analysis = analyze(model)
    bn_group = next(g for g in analysis.prunable_groups() if g.size == 6)
    scores = score_group(model, bn_group, "bn_scale", np.random.default_rng(0))
    np.testing.assert_allclose(scores, normalised(list(np.abs(gamma))), rtol=1e-6)
    # the 5-channel group (w2 out, w3 in) has no BatchNormalization: l2
    plain = next(g for g in analysis.prunable_groups() if g.size == 5)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(
        score_group(model, plain, "bn_scale", rng), score_group(model, plain, "l2", rng)
    )


def test_activation_criteria_by_hand() -> None:
    model, group = one_group(mlp())
    analysis = analyze(model)
    stats = gather_statistics(model, analysis, feeds(), full=True)
    rng = np.random.default_rng(0)
    # ||X_c|| over the 3 samples x sum_o |w2[c, o]|
    wanda = [np.sqrt(5) * 2, np.sqrt(20) * 2, np.sqrt(18) * 1, np.sqrt(32) * 4]
    np.testing.assert_allclose(
        score_group(model, group, "wanda_sp", rng, statistics=stats), normalised(wanda)
    )
    # population variance of each channel x ||w2[c, :]||^2
    flap = [2 / 3 * 2, 8 / 3 * 4, 2 * 1, 32 / 9 * 10]
    np.testing.assert_allclose(
        score_group(model, group, "flap", rng, statistics=stats), normalised(flap)
    )
    moment = HIDDEN.T @ HIDDEN / 3
    damped = moment + 0.01 * np.mean(np.diag(moment)) * np.eye(4)
    obs = (W2.astype(np.float64) ** 2).sum(axis=1) / np.diag(np.linalg.inv(damped))
    np.testing.assert_allclose(
        score_group(model, group, "obs", rng, statistics=stats), normalised(list(obs))
    )
    # statistics gathered without X^T X: the diagonal E[x_c^2] stands in for 1/[H^-1]_cc
    diagonal = gather_statistics(model, analysis, feeds(), full=False)
    expected = (W2.astype(np.float64) ** 2).sum(axis=1) * (HIDDEN**2).mean(axis=0)
    np.testing.assert_allclose(
        score_group(model, group, "obs", rng, statistics=diagonal), normalised(list(expected))
    )


def test_streamed_statistics_equal_one_shot() -> None:
    rng = np.random.default_rng(1)
    samples = rng.standard_normal((7, 2, 3)).astype(np.float32)  # 7 batches of 2 rows
    proto = mlp()
    streamed = collect_channel_statistics(
        proto, {"h": -1, "x": -1}, (feed for feed in feeds(samples)), full=True
    )
    rows = samples.reshape(-1, 3)
    hidden = np.maximum(rows.astype(np.float64) @ W1, 0)
    for name, expected in (("h", hidden), ("x", rows.astype(np.float64))):
        stats = streamed[name]
        assert stats.rows == 14
        np.testing.assert_allclose(stats.xtx, expected.T @ expected, rtol=1e-5)
        np.testing.assert_allclose(stats.mean, expected.mean(axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(stats.variance, expected.var(axis=0), rtol=1e-5, atol=1e-7)
        # only running sums are kept, never the activations
        sizes = [v.size for v in vars(stats).values() if isinstance(v, np.ndarray)]
        assert max(sizes) == expected.shape[1] ** 2
    assert set(vars(streamed["h"])) == {"sums", "sum_squares", "xtx", "rows"}
    diagonal_only = collect_channel_statistics(proto, {"h": -1}, feeds(samples))
    assert diagonal_only["h"].xtx is None


def test_data_criteria_need_calibration(tmp_path: Path) -> None:
    model, _ = one_group(mlp())
    for criterion in ("wanda_sp", "flap", "obs"):
        with pytest.raises(UserError, match=f"criterion {criterion} needs --calib"):
            make_plan(model, analyze(model), ratio=0.5, criterion=criterion)
    plan = make_plan(model, analyze(model), ratio=0.5, criterion="flap", calibration=feeds())
    # flap = [4/3, 32/3, 2, 320/9]: channels 1 and 3 stay
    assert list(plan.kept.values()) == [[1, 3]]
    assert plan.policy["calibrated"] is True


def run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_obs_reconstruction_reduces_output_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((3, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 4)).astype(np.float32)
    source = tmp_path / "m.onnx"
    onnx.save(mlp(w1, w2), str(source))
    samples = rng.standard_normal((32, 4, 3)).astype(np.float32)
    plan_file = tmp_path / "plan.json"
    result = prune_model(
        source,
        tmp_path / "obs.onnx",
        ratio=0.5,
        criterion="obs",
        calibration=feeds(samples),
        save_plan=plan_file,
        verify=True,
    )
    assert result.verification is not None and result.verification.passed
    # the same channels removed without any update
    prune_model(source, tmp_path / "plain.onnx", plan_path=plan_file, criterion="l1")
    x = samples.reshape(-1, 3)
    dense = run(source, x)
    error_obs = np.square(run(tmp_path / "obs.onnx", x) - dense).sum()
    error_plain = np.square(run(tmp_path / "plain.onnx", x) - dense).sum()
    assert error_obs < 0.9 * error_plain
    (row,) = result.report["reconstruction"]
    assert row["moments"] == "calibration" and row["error_after"] < row["error_before"]
    # the reported relative error matches the measured one
    measured = error_obs / np.square(dense).sum()
    assert row["error_after"] == pytest.approx(measured, rel=0.05)


def test_obspa_reconstruction_without_data_on_conv_bn(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    gamma = rng.uniform(0.5, 1.5, 6)
    beta = rng.uniform(0.5, 2.0, 6)
    source = tmp_path / "m.onnx"
    onnx.save(conv_bn(gamma, beta), str(source))
    plan_file = tmp_path / "plan.json"
    result = prune_model(
        source,
        tmp_path / "obspa.onnx",
        ratio=0.5,
        criterion="obspa",
        save_plan=plan_file,
        verify=True,
        exclude=["w3"],
    )
    assert result.verification is not None and result.verification.passed
    assert result.plan.policy["calibrated"] is False
    (row,) = result.report["reconstruction"]
    assert row["moments"] == "BatchNormalization statistics through Relu"
    prune_model(source, tmp_path / "plain.onnx", plan_path=plan_file)
    x = rng.standard_normal((16, 6, 4, 4)).astype(np.float32)
    dense = run(source, x)
    error_obspa = np.square(run(tmp_path / "obspa.onnx", x) - dense).sum()
    error_plain = np.square(run(tmp_path / "plain.onnx", x) - dense).sum()
    assert error_obspa < 0.9 * error_plain


def test_proxy_moments_by_hand() -> None:
    gamma = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 1.0])
    beta = np.array([0.0, 1.0, -1.0, 0.0, 0.0, 2.0])
    model = prepare(ir.serde.deserialize_model(conv_bn(gamma, beta)))
    relu_out = next(n for n in model.graph if n.op_type == "Relu").outputs[0]
    moment, mean, source = proxy_moments(relu_out, 6)
    assert source == "BatchNormalization statistics through Relu"
    # relu(N(0, 1)): mean 1/sqrt(2 pi), second moment 1/2
    assert mean[0] == pytest.approx(1 / np.sqrt(2 * np.pi))
    assert moment[0, 0] == pytest.approx(0.5)
    assert moment[0, 1] == pytest.approx(mean[0] * mean[1])  # independent channels
    # Monte Carlo check of a shifted channel
    z = np.maximum(np.random.default_rng(0).normal(1.0, 2.0, 400_000), 0)
    assert mean[1] == pytest.approx(z.mean(), rel=1e-2)
    assert moment[1, 1] == pytest.approx((z**2).mean(), rel=1e-2)
    bn_out = next(n for n in model.graph if n.op_type == "BatchNormalization").outputs[0]
    moment, mean, _ = proxy_moments(bn_out, 6)
    np.testing.assert_allclose(moment, np.diag(gamma**2) + np.outer(beta, beta), rtol=1e-6)


def test_proxy_moments_of_swiglu_product() -> None:
    proto = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 3] y) {
            gate = MatMul (x, wg)
            sig = Sigmoid (gate)
            act = Mul (gate, sig)
            up = MatMul (x, wu)
            h = Mul (act, up)
            y = MatMul (h, wd)
        }"""
    )
    rng = np.random.default_rng(2)
    wg, wu = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    proto.graph.initializer.extend(
        numpy_helper.from_array(a.astype(np.float32), n)
        for n, a in (("wg", wg), ("wu", wu), ("wd", rng.standard_normal((6, 3))))
    )
    model = prepare(ir.serde.deserialize_model(proto))
    h = next(n for n in model.graph if n.outputs[0].name == "h").outputs[0]
    moment, mean, source = proxy_moments(h, 6)
    assert source == "(MatMul weights through SiLU) x (MatMul weights)"
    # SiLU taken as Relu: arc-cosine kernel of the gate's covariance, times the up covariance
    cov_g, cov_u = wg.T @ wg, wu.T @ wu
    std = np.sqrt(np.diag(cov_g))
    theta = np.arccos(np.clip(cov_g / np.outer(std, std), -1, 1))
    kernel = np.outer(std, std) * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
    np.testing.assert_allclose(moment, kernel * cov_u, rtol=1e-5)
    np.testing.assert_allclose(mean, 0.0)


def test_bias_compensation_creates_bias_by_hand(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(mlp(), str(source))
    result = prune_model(
        source,
        tmp_path / "out.onnx",
        ratio=0.5,
        criterion="l2",
        calibration=feeds(),
        bias_compensation=True,
        verify=True,
    )
    assert result.verification is not None and result.verification.passed
    assert result.report["biases_added"] == 1
    # l2 keeps channels 1 and 3; removed 0 and 2 have means 1 and 2:
    # bias = 1 * w2[0] + 2 * w2[2] = [1, 1] + [0, 2]
    (kept,) = result.plan.kept.values()
    assert kept == [1, 3]
    out = onnx.load(str(tmp_path / "out.onnx"))
    biases = [numpy_helper.to_array(t) for t in out.graph.initializer if "spa_bias" in t.name]
    np.testing.assert_allclose(biases[0], [1.0, 3.0])
    (row,) = result.report["reconstruction"]
    assert row["error_after"] < row["error_before"]


def test_obs_on_a_consumer_too_wide_for_moments_keeps_bias_compensation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer of more inputs than MAX_HESSIAN_K (VGG's 25088-wide classifier ran OBS
    pruning out of memory at 24 GiB) gets no C x C moment: no X^T X collected, no
    least-squares update, and bias compensation by the removed inputs' measured mean.
    The cap is lowered to 2 so the 4-wide hidden layer of the hand MLP stands in."""
    import spa.calibration
    import spa.pruning.reconstruct

    monkeypatch.setattr(spa.calibration, "MAX_HESSIAN_K", 2)
    monkeypatch.setattr(spa.pruning.reconstruct, "MAX_HESSIAN_K", 2)
    source = tmp_path / "m.onnx"
    onnx.save(mlp(), str(source))
    result = prune_model(source, tmp_path / "out.onnx", ratio=0.5, criterion="obs",
                         calibration=feeds(), bias_compensation=True, verify=True)  # fmt: skip
    assert result.verification is not None and result.verification.passed
    assert result.report["reconstruction"] == []  # no row: no moment to measure the error with
    (kept,) = result.plan.kept.values()
    removed = [c for c in range(4) if c not in kept]
    out = onnx.load(str(tmp_path / "out.onnx"))
    stored = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    (bias,) = [array for name, array in stored.items() if "spa_bias" in name]
    np.testing.assert_allclose(bias, HIDDEN.mean(axis=0)[removed] @ W2[removed], rtol=1e-6)
    np.testing.assert_array_equal(stored["w2"], W2[kept])  # kept rows not reconstructed


def test_unused_added_bias_is_taken_out_again(tmp_path: Path) -> None:
    # h = h0 * h0 has no proxy (identity moments, zero mean): nothing to compensate
    text = MLP_TEXT.replace("h = Relu (h0)", "h = Mul (h0, h0)")
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")]
    )
    source = tmp_path / "m.onnx"
    onnx.save(proto, str(source))
    result = prune_model(
        source,
        tmp_path / "out.onnx",
        ratio=0.5,
        criterion="obspa",
        bias_compensation=True,
        verify=True,
    )
    assert result.verification is not None and result.verification.passed
    (row,) = result.report["reconstruction"]
    assert row["moments"] == "identity" and row["error_after"] == row["error_before"]
    assert result.report["biases_added"] == 0
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Mul", "MatMul"]
    assert [o.name for o in out.graph.output] == ["y"]
    assert len(out.graph.initializer) == 2


def test_bias_shared_through_identity_gets_a_private_copy(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 3] y) {
            h0 = Gemm (x, w1, ba)
            h = Relu (h0)
            bc = Identity (bs)
            y0 = Gemm (h, w2, bc)
            bd = Identity (bs)
            y = Add (y0, bd)
        }"""
    )
    rng = np.random.default_rng(11)
    arrays = {
        "w1": rng.standard_normal((4, 6)),
        "ba": np.ones(6),
        "w2": rng.standard_normal((6, 3)),
        "bs": np.array([0.5, -1.0, 2.0]),
    }
    proto.graph.initializer.extend(
        numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()
    )
    source = tmp_path / "m.onnx"
    onnx.save(proto, str(source))
    samples = rng.standard_normal((8, 2, 4)).astype(np.float32)
    result = prune_model(
        source,
        tmp_path / "out.onnx",
        ratio=0.5,
        criterion="flap",
        calibration=feeds(samples),
        bias_compensation=True,
        verify=True,
    )
    assert result.verification is not None and result.verification.passed
    (row,) = result.report["reconstruction"]
    assert row["bias"] is not None and row["error_after"] < row["error_before"]
    written = onnx.load(str(tmp_path / "out.onnx"))
    out = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    add = next(node for node in written.graph.node if node.op_type == "Add")
    added = next(out[name] for name in add.input if name in out)
    np.testing.assert_array_equal(added, arrays["bs"].astype(np.float32))  # the other user's: untouched
    assert not np.allclose(out[row["bias"]], arrays["bs"])


def test_obs_with_bias_compensation_keeps_mask_equivalence(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    source = tmp_path / "m.onnx"
    onnx.save(conv_bn(rng.uniform(0.5, 1.5, 6), rng.uniform(-1, 1, 6)), str(source))
    samples = rng.standard_normal((4, 2, 6, 4, 4)).astype(np.float32)
    result = prune_model(
        source,
        tmp_path / "out.onnx",
        ratio=0.4,
        criterion="obs",
        calibration=feeds(samples),
        bias_compensation=True,
        verify=True,
        allocation="global",
    )
    assert result.verification is not None and result.verification.passed
    assert result.verification.max_rel_diff <= 1e-4
    assert len(result.report["reconstruction"]) == 2
    assert all(r["error_after"] <= r["error_before"] for r in result.report["reconstruction"])


def test_allocation_global_same_shape_and_cap() -> None:
    scores = {
        0: np.array([1.0, 1.0, 1.0, 1.0]),  # flat: nothing stands out
        1: np.array([0.01, 0.01, 3.0, 0.98]),  # two near-zero channels
        2: np.array([0.1, 1.9, 1.0, 1.0]),
    }
    uniform = allocate(scores, ratio=0.25, allocation="uniform")
    assert uniform == {0: 3, 1: 3, 2: 3}
    # 3 of 12 channels go: the two tiny ones of group 1, then 0.1 of group 2
    assert allocate(scores, ratio=0.25, allocation="global") == {0: 4, 1: 2, 2: 3}
    # a cap of 0.25 lets group 1 lose only one channel
    capped = allocate(scores, ratio=0.25, allocation="global", max_group_ratio=0.25)
    assert capped == {0: 3, 1: 3, 2: 3} or capped == {0: 4, 1: 3, 2: 2}
    assert capped[1] == 3
    assert allocate(scores, ratio=0.25, allocation="global", round_to=2) == {0: 4, 1: 2, 2: 4}
    classes = {0: "a", 1: "a", 2: "b"}
    same = allocate(scores, ratio=0.25, allocation="same-shape", shape_class=classes)
    assert same == {0: 4, 1: 2, 2: 3}


def test_plan_policy_records_allocation(tmp_path: Path) -> None:
    model, _ = one_group(mlp())
    plan = make_plan(
        model,
        analyze(model),
        ratio=0.5,
        criterion="lamp",
        allocation="global",
        max_group_ratio=0.6,
        reduction="max",
    )
    plan.save(tmp_path / "plan.json")
    policy = json.loads((tmp_path / "plan.json").read_text())["policy"]
    assert policy["allocation"] == "global" and policy["max_group_ratio"] == 0.6
    assert policy["reduction"] == "max" and policy["criterion"] == "lamp"
    assert isinstance(Plan.load(tmp_path / "plan.json", analyze(model)), Plan)
    with pytest.raises(UserError, match="max-group-ratio"):
        make_plan(model, analyze(model), ratio=0.5, max_group_ratio=1.5)


def test_cli_needs_calib_and_accepts_npz(run_cli, tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(mlp(), str(source))
    result = run_cli("prune", source, "-o", tmp_path / "o.onnx", "--criterion", "wanda_sp")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: criterion wanda_sp needs --calib DATA (calibration inputs)"
    ]
    assert not (tmp_path / "o.onnx").exists()
    missing = run_cli(
        "prune",
        source,
        "-o",
        tmp_path / "o.onnx",
        "--criterion",
        "flap",
        "--calib",
        tmp_path / "no.npz",
    )
    assert missing.exit_code == 1 and "no such file or folder" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    np.savez(tmp_path / "calib.npz", x=CALIB)
    report = tmp_path / "r.json"
    ok = run_cli(
        "prune",
        source,
        "-o",
        tmp_path / "o.onnx",
        "--criterion",
        "obs",
        "--calib",
        tmp_path / "calib.npz",
        "--bias-compensation",
        "--verify",
        "--report",
        report,
    )
    assert ok.exit_code == 0, ok.output
    assert "reconstruction: 1 layers updated | mean relative output error" in ok.output
    data = json.loads(report.read_text())
    assert data["plan"]["criterion"] == "obs" and data["plan"]["bias_compensation"] is True
    assert data["reconstruction"][0]["error_after"] <= data["reconstruction"][0]["error_before"]
    optimized = run_cli(
        "optimize",
        source,
        "-o",
        tmp_path / "opt.onnx",
        "--prune",
        "0.5",
        "--criterion",
        "flap",
        "--calib",
        tmp_path / "calib.npz",
    )
    assert optimized.exit_code == 0, optimized.output


def test_round_to_auto_keeps_multiples_of_16_in_groups_of_32_or_more_and_of_8_in_smaller() -> None:
    from spa.pruning.allocation import AUTO_ROUND, group_multiple

    sizes = (8, 12, 16, 20, 24, 32, 40, 48, 60, 64, 1536)
    assert [group_multiple(size, AUTO_ROUND) for size in sizes] == [1, 1, 8, 1, 8, 16, 8, 16, 1, 16, 16]
    assert group_multiple(384, AUTO_ROUND, unit_width=32) == 1  # heads of 32 channels
    # GroupNorm's 32 groups of 2 convolution channels: 8 groups fill a block of 16 channels
    assert group_multiple(32, AUTO_ROUND, unit_width=2, blocked_units=True) == 8
    assert group_multiple(32, AUTO_ROUND, unit_width=4) == 16  # an LSTM's units (4 gate rows) count whole
    assert group_multiple(64, 4) == 4  # an explicit multiple wins
    scores = {0: np.arange(1.0, 65.0), 1: np.arange(1.0, 13.0)}
    # 64 * 0.9 = 57.6 -> 58 -> 64 (a multiple of 16); 12 * 0.9 = 10.8 -> 11 (exact)
    assert allocate(scores, ratio=0.1, round_to=AUTO_ROUND) == {0: 64, 1: 11}
    assert allocate(scores, ratio=0.3, round_to=AUTO_ROUND) == {0: 48, 1: 9}
    assert allocate(scores, ratio=0.3, round_to={0: 1, 1: 4}) == {0: 45, 1: 12}


def test_round_to_auto_counts_conv_channels_that_a_flatten_spreads_over_a_gemm(
    tmp_path: Path,
) -> None:
    """64 channels of 3x3 reach the Gemm as 64 x 9 inputs: the group's widest parameter
    spans 9 per channel, yet its Conv's channels are one each and keep NCHWc blocks (the
    Fashion-MNIST CNN had been cut to 61 channels and ran 0.94x of its input)."""
    from spa.pruning.allocation import AUTO_ROUND

    rng = np.random.default_rng(5)
    proto = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[1, 8, 5, 5] x) => (float[1, 10] y) {
            c = Conv <pads = [0, 0, 0, 0]> (x, w, b)
            r = Relu (c)
            f = Flatten (r)
            y = Gemm <transB = 1> (f, fc, fb)
        }""")
    for name, shape in (("w", (64, 8, 3, 3)), ("b", (64,)), ("fc", (10, 576)), ("fb", (10,))):
        array = rng.standard_normal(shape).astype(np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    source, out = tmp_path / "flatten.onnx", tmp_path / "pruned.onnx"
    onnx.save(proto, str(source))
    prune_model(source, out, ratio=0.3, round_to=AUTO_ROUND, verify=True)  # 44.8 -> 48
    shapes = {t.name: tuple(t.dims) for t in onnx.load(str(out)).graph.initializer}
    assert shapes["w"] == (48, 8, 3, 3) and shapes["fc"] == (10, 48 * 9)


def test_prune_cli_rounds_by_default_and_takes_an_explicit_multiple(run_cli, tmp_path: Path) -> None:
    from conftest import mlp_model

    source = tmp_path / "mlp64.onnx"
    onnx.save(mlp_model(hidden=64), str(source))

    def hidden(*flags: str) -> int:
        out = tmp_path / "p.onnx"
        result = run_cli("prune", source, "-o", out, "--ratio", "0.3", "--verify", *flags)
        assert result.exit_code == 0, result.output
        weights = {t.name: t for t in onnx.load(str(out)).graph.initializer}
        return int(weights["W1"].dims[1])

    assert hidden() == 48  # 64 * 0.7 = 44.8 -> 45 -> 48
    # at a small ratio rounding keeps all 64: said so, not "every group is frozen"
    out = tmp_path / "same.onnx"
    same = run_cli("prune", source, "-o", out, "--ratio", "0.05", "--verify")
    assert same.exit_code == 0 and "kept all its channels once rounded up" in same.output, same.output
    assert "every group is frozen" not in same.output
    assert hidden("--round-to", "auto") == 48
    assert hidden("--round-to", "1") == 45
    bad = run_cli("prune", source, "-o", tmp_path / "q.onnx", "--round-to", "0")
    assert bad.exit_code == 2 and "give auto or an integer >= 1" in bad.output
