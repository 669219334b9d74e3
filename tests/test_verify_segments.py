"""Very large graphs run as a chain of ORT sessions (spa.ort_segments): same outputs
as one session, values crossing cuts (skips, If bodies, shared initializers), and the
fallbacks to one session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spa.ort import create_session
from spa.verify import Exact, verify_models
from spa.ort_segments import SEGMENT_ABOVE, SegmentedSession, maybe_segmented


def _chain(blocks: int, seed: int = 0, skip_every: int = 7) -> onnx.ModelProto:
    """MatMul/Add/Relu blocks (width 8) with a residual from every ``skip_every``-th block
    to the next one, a weight shared by every block, a second output read later,
    and an If whose branches read an outer value."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], [numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "shared")]
    current, saved = "x", "x"
    for block in range(blocks):
        w = numpy_helper.from_array((rng.normal(size=(8, 8)) / 3).astype(np.float32), f"w{block}")
        inits.append(w)
        nodes += [
            helper.make_node("MatMul", [current, f"w{block}"], [f"m{block}"]),
            helper.make_node("Add", [f"m{block}", "shared"], [f"a{block}"]),
            helper.make_node("Relu", [f"a{block}"], [f"r{block}"]),
        ]
        current = f"r{block}"
        if block % skip_every == 0:
            nodes.append(helper.make_node("Add", [current, saved], [f"s{block}"]))
            saved = current = f"s{block}"
    # An If near the end whose branches read a value computed near the start.
    then = helper.make_graph(
        [helper.make_node("Add", ["r1", "r1"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["r1"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    nodes += [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then, else_branch=other),
        helper.make_node("Add", [current, "branch"], ["y"]),
        helper.make_node("Mul", ["r2", "y"], ["z"]),
    ]
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("r2", "y", "z")],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_segments_compute_what_one_session_computes(tmp_path: Path) -> None:
    model = _chain(60)
    whole = create_session(model.SerializeToString())
    chained = maybe_segmented(model, create_session, tmp_path, above=10, segment_nodes=25)
    assert isinstance(chained, SegmentedSession) and chained.segments == -(
        -len(model.graph.node) // 25
    )
    assert [p.name for p in chained.get_inputs()] == ["x"]
    assert [p.name for p in chained.get_outputs()] == ["r2", "y", "z"]
    assert chained.get_inputs()[0].shape == ["N", 8]
    for sign in (1.0, -1.0):  # both branches of the If
        feeds = {
            "x": sign * np.abs(np.random.default_rng(1).normal(size=(3, 8))).astype(np.float32)
        }
        expected = whole.run(None, feeds)
        got = chained.run(None, feeds)
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        # A subset of outputs by name, in the order asked.
        z, r2 = chained.run(["z", "r2"], feeds)
        np.testing.assert_allclose(z, expected[2], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r2, expected[0], rtol=1e-5, atol=1e-6)


def test_external_weights_are_read_from_the_model_folder(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_chain(30), str(path), save_as_external_data=True, location="m.bin", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    chained = maybe_segmented(proto, create_session, tmp_path, above=10, segment_nodes=20)
    assert chained is not None
    feeds = {"x": np.ones((2, 8), np.float32)}
    for a, b in zip(create_session(path).run(None, feeds), chained.run(None, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_graphs_a_chain_cannot_express_run_as_one_session(tmp_path: Path) -> None:
    model = _chain(20)
    assert maybe_segmented(model, create_session, tmp_path, above=len(model.graph.node)) is None
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes[::-1])  # not in topological order
    assert maybe_segmented(shuffled, create_session, tmp_path, above=10, segment_nodes=8) is None
    passthrough = onnx.ModelProto()
    passthrough.CopyFrom(model)
    passthrough.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    assert maybe_segmented(passthrough, create_session, tmp_path, above=10, segment_nodes=8) is None


def test_verify_chains_sessions_above_the_threshold_and_still_finds_a_wrong_weight(
    tmp_path: Path,
) -> None:
    blocks = SEGMENT_ABOVE // 3 + 10
    reference, same, wrong = (tmp_path / f"{n}.onnx" for n in ("a", "b", "c"))
    model = _chain(blocks)
    onnx.save(model, str(reference))
    onnx.save(model, str(same))
    for tensor in model.graph.initializer:
        if tensor.name == f"w{blocks - 5}":
            array = numpy_helper.to_array(tensor).copy()
            array[0, 0] += 1.0
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(model, str(wrong))
    made: list[object] = []

    def counting(model, **options):  # the real factory, counted
        made.append(model)
        return create_session(model, **options)

    assert verify_models(reference, same, policy=Exact(), dims={"N": 2}, session=counting).passed
    assert len(made) > 2  # several sessions per model
    result = verify_models(reference, wrong, policy=Exact(), dims={"N": 2}, samples=2)
    assert not result.passed


def test_segments_bounded_by_weight_bytes_run_one_at_a_time(tmp_path: Path) -> None:
    model = _chain(40)  # 40 weights of 8x8 float32 = 256 bytes each
    chained = maybe_segmented(
        model, create_session, tmp_path, above=10**9, above_bytes=1000, segment_bytes=1100
    )
    assert chained is not None
    for segment in chained._segments:
        held = sum(len(t.raw_data) for t in segment.initializers)
        assert held <= 1100 or len(segment.initializers) == 1
    feeds = [{"x": np.full((2, 8), sign, np.float32)} for sign in (1.0, -1.0)]
    steps: list[int] = []
    runs = chained.run_many(None, feeds, progress=lambda: steps.append(1))
    whole = create_session(model.SerializeToString())
    for feed, run in zip(feeds, runs, strict=True):
        for a, b in zip(whole.run(None, feed), run, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert len(steps) == chained.segments
    assert all(segment.session is None for segment in chained._segments)  # each one closed
    assert maybe_segmented(model, create_session, tmp_path, above=10**9, above_bytes=10**9) is None


def test_calibration_on_a_very_large_graph_runs_segments_and_sees_the_same_values() -> None:
    from spa.calibration import _create_session, collect_channel_statistics

    model = _chain(SEGMENT_ABOVE // 3 + 10)
    feeds = [
        {"x": np.random.default_rng(seed).normal(size=(4, 8)).astype(np.float32)}
        for seed in range(2)
    ]
    last = f"r{SEGMENT_ABOVE // 3 + 9}"
    statistics = collect_channel_statistics(model, {"r1": 1, last: 1}, feeds)
    assert isinstance(_create_session(model, Path(".")), SegmentedSession)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in ("r1", last))
    whole = create_session(exposed.SerializeToString())
    for name in ("r1", last):
        rows = np.concatenate([whole.run([name], feed)[0] for feed in feeds])
        np.testing.assert_allclose(statistics[name].sums, rows.sum(axis=0), rtol=1e-4, atol=1e-4)


def test_ports_name_types_as_onnx_runtime_does(tmp_path: Path) -> None:
    model = _chain(20)
    chained = maybe_segmented(model, create_session, tmp_path, above=10, segment_nodes=8)
    whole = create_session(model.SerializeToString())
    assert [p.type for p in chained.get_inputs()] == [p.type for p in whole.get_inputs()]
    assert [p.type for p in chained.get_outputs()] == ["tensor(float)"] * 3


def test_quality_and_sensitivity_open_segment_sessions_for_very_large_graphs(
    tmp_path: Path,
) -> None:
    from spa.ort_segments import open_session
    from spa.verify.quality import measure_quality

    path = tmp_path / "big.onnx"
    onnx.save(_chain(SEGMENT_ABOVE // 3 + 10), str(path))
    assert isinstance(open_session(path), SegmentedSession)
    small = tmp_path / "small.onnx"
    onnx.save(_chain(20), str(small))
    assert not isinstance(open_session(small), SegmentedSession)
    feeds = [
        {"x": np.random.default_rng(seed).normal(size=(2, 8)).astype(np.float32)}
        for seed in range(2)
    ]
    quality = measure_quality(path, path, feeds)
    assert quality.samples == 2 and all(o.cosine == 1.0 for o in quality.outputs)
