"""SliceGPT: the residual stream finder, the invariant form and rotate-and-slice.

Small models written in ONNX text (a decomposed-RMSNorm decoder, a
LayerNormalization decoder with Gemm readers and a tied head), then every
decoder of the zoo: a random orthogonal rotation must reproduce the outputs
(ORT, seeded inputs, 1e-4 relative), and a stream of rank ``D'`` sliced to
``D'`` by PCA must too.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from spa import zoo
from spa.analysis.residual import find_residual_stream
from spa.pass_manager import run_passes
from spa.passes.slice import (
    RotateSlicePass,
    RotationInvariantPass,
    kept_channels,
    random_rotation,
)
from spa.verify import input_specs, make_feeds
from spa.verify.runner import run_model
from spa.workflows.run import feeds_calibrator

HIDDEN, VOCAB, MLP, SEQ = 16, 24, 20, 6
TOLERANCE = 1e-4

RMS_TEXT = f"""
<ir_version: 9, opset_import: ["" : 18]>
rms (int64[1, {SEQ}] ids) => (float[1, {SEQ}, {VOCAB}] logits) {{
  emb = Gather(table, ids)
  sq1 = Pow(emb, two)
  ms1 = ReduceMean(sq1, axes)
  me1 = Add(ms1, eps)
  rt1 = Sqrt(me1)
  inv1 = Reciprocal(rt1)
  nx1 = Mul(emb, inv1)
  n1 = Mul(g1, nx1)
  h = MatMul(n1, w1)
  u = MatMul(n1, w3)
  s = Sigmoid(h)
  a = Mul(s, u)
  o = MatMul(a, w2)
  r1 = Add(emb, o)
  sq2 = Pow(r1, two)
  ms2 = ReduceMean(sq2, axes)
  me2 = Add(ms2, eps)
  rt2 = Sqrt(me2)
  nx2 = Div(r1, rt2)
  n2 = Mul(nx2, g2)
  logits = MatMul(n2, head)
}}
"""

LN_TEXT = f"""
<ir_version: 8, opset_import: ["" : 17]>
ln (int64[1, {SEQ}] ids) => (float[1, {SEQ}, {VOCAB}] logits) {{
  tok = Gather(table, ids)
  pos = Gather(ptable, pids)
  x = Add(tok, pos)
  n1 = LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)
  flat = Reshape(n1, shp2)
  h = Gemm<transB=1>(flat, w1t, c1)
  a = Relu(h)
  o = Gemm(a, w2, c2)
  o3 = Reshape(o, shp3)
  r = Add(x, o3)
  n2 = LayerNormalization<axis=-1, epsilon=1e-5>(r, g2, b2)
  headw = Transpose<perm=[1, 0]>(table)
  logits = MatMul(n2, headw)
}}
"""


def _rms_model(seed: int = 0, rank: int | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    basis = _basis(rng, rank)
    weights = {
        "table": rng.standard_normal((VOCAB, HIDDEN)) @ basis,
        "w1": rng.standard_normal((HIDDEN, MLP)) * 0.3,
        "w3": rng.standard_normal((HIDDEN, MLP)) * 0.3,
        "w2": rng.standard_normal((MLP, HIDDEN)) @ basis * 0.3,
        "head": rng.standard_normal((HIDDEN, VOCAB)),
        "g1": 1.0 + 0.3 * rng.standard_normal(HIDDEN),
        "g2": 1.0 + 0.3 * rng.standard_normal(HIDDEN),
        "two": np.array(2.0),
        "eps": np.array(1e-5),
    }
    constants = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    constants["axes"] = np.array([-1], dtype=np.int64)
    return _model(RMS_TEXT, constants)


def _ln_model(seed: int = 0, rank: int | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    basis = _basis(rng, rank)
    weights = {
        "table": rng.standard_normal((VOCAB, HIDDEN)) @ basis,
        "ptable": rng.standard_normal((SEQ, HIDDEN)) @ basis,
        "w1t": rng.standard_normal((MLP, HIDDEN)) * 0.3,
        "c1": rng.standard_normal(MLP) * 0.1,
        "w2": rng.standard_normal((MLP, HIDDEN)) @ basis * 0.3,
        "c2": rng.standard_normal(HIDDEN) @ basis * 0.1,
        "g1": 1.0 + 0.3 * rng.standard_normal(HIDDEN),
        "b1": 0.1 * rng.standard_normal(HIDDEN),
        "g2": 1.0 + 0.3 * rng.standard_normal(HIDDEN),
        "b2": 0.1 * rng.standard_normal(HIDDEN),
    }
    constants = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    constants["pids"] = np.arange(SEQ, dtype=np.int64)[None]
    constants["shp2"] = np.array([-1, HIDDEN], dtype=np.int64)
    constants["shp3"] = np.array([1, SEQ, HIDDEN], dtype=np.int64)
    return _model(LN_TEXT, constants)


def _basis(rng: np.random.Generator, rank: int | None) -> np.ndarray:
    """``HIDDEN x HIDDEN``: the identity, or a projection onto a random ``rank``-dim subspace."""
    if rank is None:
        return np.eye(HIDDEN)
    vectors = np.linalg.qr(rng.standard_normal((HIDDEN, rank)))[0]
    return vectors @ vectors.T


def _model(text: str, constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for name, array in constants.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model)
    return model


def _with_norms(rng: np.random.Generator, constants: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``constants`` and two norms' scales and biases (g1, b1, g2, b2), all float32."""
    for index in (1, 2):
        constants[f"g{index}"] = 1.0 + 0.3 * rng.standard_normal(HIDDEN)
        constants[f"b{index}"] = 0.1 * rng.standard_normal(HIDDEN)
    return {k: v.astype(np.float32) for k, v in constants.items()}


def _feeds(proto: onnx.ModelProto, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    specs = input_specs(proto)
    return [make_feeds(specs, seed=seed + i, int_ranges={"ids": (0, VOCAB)}) for i in range(count)]


def _relative_error(reference: onnx.ModelProto, model: ir.Model, feeds: list) -> float:
    candidate = ir.serde.serialize_model(model).SerializeToString()
    worst = 0.0
    for feed in feeds:
        expected = run_model(reference.SerializeToString(), feed)
        got = run_model(candidate, feed)
        for name, array in expected.items():
            worst = max(worst, float(np.abs(array - got[name]).max() / np.abs(array).max()))
    return worst


@pytest.mark.parametrize("build", [_rms_model, _ln_model], ids=["rmsnorm", "layernorm"])
def test_stream_found_in_text_models(build) -> None:
    stream = find_residual_stream(ir.serde.deserialize_model(build()))
    assert stream.reason is None
    assert stream.hidden == HIDDEN and len(stream.norms) == 2
    assert stream.kind == ("rms" if build is _rms_model else "layer")
    # RMS: embedding + down projection; LN: two embeddings, down weight and its bias
    assert len(stream.writers) == (2 if build is _rms_model else 4)
    assert len(stream.readers) == (3 if build is _rms_model else 2)


@pytest.mark.parametrize("bases", ["shared", "per-norm"])
@pytest.mark.parametrize("build", [_rms_model, _ln_model], ids=["rmsnorm", "layernorm"])
def test_random_rotation_is_exact(build, bases: str) -> None:
    proto = build()
    model = ir.serde.deserialize_model(proto)
    rotate_pass = RotateSlicePass(ratio=0.0, rotation="random", seed=3, bases=bases)
    records = run_passes(model, [RotationInvariantPass(), rotate_pass])
    assert records[1].statistics["hidden_after"] == HIDDEN
    # one residual skip (embedding -> first add) changes basis when each norm has its own
    assert records[1].statistics["shortcuts"] == (1 if bases == "per-norm" else 0)
    assert _relative_error(proto, model, _feeds(proto, 3)) < TOLERANCE
    onnx.checker.check_model(ir.serde.serialize_model(model))
    # the tied head was untied: the embedding table is no longer read by a Transpose, and the
    # statistics count the copy (the LayerNorm model's head reads its table; the RMSNorm one's is its own)
    assert all(node.op_type != "Transpose" for node in model.graph)
    assert records[0].statistics["untied_params"] == (VOCAB * HIDDEN if build is _ln_model else 0)


@pytest.mark.parametrize("bases", ["shared", "per-norm"])
@pytest.mark.parametrize("build", [_rms_model, _ln_model], ids=["rmsnorm", "layernorm"])
def test_pca_slice_of_a_low_rank_stream_is_exact(build, bases: str) -> None:
    """Every term lies in a 12-dim subspace: PCA finds it and slicing 16 -> 12 loses nothing."""
    proto = build(seed=1, rank=12)
    model = ir.serde.deserialize_model(proto)
    calibrator = feeds_calibrator(_feeds(proto, 4, seed=10))
    records = run_passes(
        model,
        [RotationInvariantPass(), RotateSlicePass(ratio=0.25, round_to=4, bases=bases)],
        calibrator=calibrator,
    )
    assert records[1].statistics["hidden_after"] == 12
    assert records[1].statistics["variance_kept"] > 1 - 1e-9
    assert _relative_error(proto, model, _feeds(proto, 2, seed=20)) < 1e-3
    table = next(node for node in model.graph if node.op_type == "Gather").inputs[0]
    assert table.const_value is not None and table.const_value.shape == (VOCAB, 12)


def test_slicing_full_rank_loses_something_but_runs() -> None:
    proto = _ln_model(seed=2)
    model = ir.serde.deserialize_model(proto)
    calibrator = feeds_calibrator(_feeds(proto, 4, seed=10))
    run_passes(
        model,
        [RotationInvariantPass(), RotateSlicePass(ratio=0.5, round_to=1)],
        calibrator=calibrator,
    )
    error = _relative_error(proto, model, _feeds(proto, 1, seed=20))
    assert 1e-3 < error < 10.0


POST_NORM = f"""
<ir_version: 8, opset_import: ["" : 17]>
post (int64[1, {SEQ}] ids) => (float[1, {SEQ}, {VOCAB}] y) {{
  x = Gather(table, ids)
  h = MatMul(x, w1)
  r = Add(x, h)
  n = LayerNormalization<axis=-1>(r, g1, b1)
  h2 = MatMul(n, w1)
  r2 = Add(n, h2)
  n2 = LayerNormalization<axis=-1>(r2, g1, b1)
  y = MatMul(n2, head)
}}
"""

QUANTIZED_WRITER = f"""
<ir_version: 8, opset_import: ["" : 17]>
q (int64[1, {SEQ}] ids, float[{HIDDEN}, {HIDDEN}] w) => (float[1, {SEQ}, {VOCAB}] y) {{
  x = Gather(table, ids)
  n = LayerNormalization<axis=-1>(x, g1, b1)
  h = MatMul(n, w)
  r = Add(x, h)
  n2 = LayerNormalization<axis=-1>(r, g1, b1)
  y = MatMul(n2, head)
}}
"""


BRANCH_NORM = f"""
<ir_version: 8, opset_import: ["" : 17]>
branch (int64[1, {SEQ}] ids) => (float[1, {SEQ}, {VOCAB}] y) {{
  x = Gather(table, ids)
  n = LayerNormalization<axis=-1>(x, g1, b1)
  h = MatMul(n, w1)
  hn = LayerNormalization<axis=-1>(h, g1, b1)
  r = Add(x, hn)
  n2 = LayerNormalization<axis=-1>(r, g1, b1)
  y = MatMul(n2, head)
}}
"""


# A projection of the stream added back with no norm before it: accepted as a writer before,
# so the rotation came out wrong (rel error ~1) instead of a refusal.
UNNORMED_READER = f"""
<ir_version: 8, opset_import: ["" : 17]>
bare (int64[1, {SEQ}] ids) => (float[1, {SEQ}, {VOCAB}] y) {{
  x = Gather(table, ids)
  h = MatMul(x, w1)
  r = Add(x, h)
  n2 = LayerNormalization<axis=-1>(r, g1, b1)
  y = MatMul(n2, head)
}}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (POST_NORM, "post-norm block: the output of LayerNormalization"),
        (QUANTIZED_WRITER, "non-constant"),
        (BRANCH_NORM, "LayerNormalization 'hn' normalizes a branch before the add"),
        (UNNORMED_READER, "MatMul 'h' reads the residual stream 'x' without a norm"),
    ],
    ids=["post-norm", "non-constant-writer", "norm-on-branch", "reader-without-norm"],
)
def test_refusals_name_the_node(text: str, expected: str) -> None:
    rng = np.random.default_rng(0)
    shapes = {"table": (VOCAB, HIDDEN), "w1": (HIDDEN, HIDDEN), "g1": (HIDDEN,), "b1": (HIDDEN,),
              "head": (HIDDEN, VOCAB)}  # fmt: skip
    model = onnx.parser.parse_model(text)
    used = {name for node in model.graph.node for name in node.input}
    for name, shape in shapes.items():
        if name in used:
            array = rng.standard_normal(shape).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(array, name))
    stream = find_residual_stream(ir.serde.deserialize_model(model))
    assert stream.reason is not None and expected in stream.reason


def test_kept_channels_and_random_rotation() -> None:
    assert kept_channels(128, 0.25, 8) == 96
    assert kept_channels(192, 0.1, 8) == 176
    assert kept_channels(16, 0.0, 4) == 16
    q = random_rotation(8, seed=1)
    np.testing.assert_allclose(q @ q.T, np.eye(8), atol=1e-12)


DECODERS = ["hf-llama-gqa", "hf-llama-gqa-ts", "hf-qwen2-gqa", "hf-mistral-gqa", "hf-gpt2",
            "hf-gpt2-dynamo", "hf-opt", "hf-gpt-neox", "hf-phi", "hf-gpt2-ort-fused",
            "hf-llama-kv", "hf-gpt2-kv-ts", "hf-phi-kv", "hf-qwen2-kv", "hf-mistral-kv-ts",
            "hf-opt-kv"]  # fmt: skip
#: the decoders exported as one decoding step with their KV cache (past_key_values.* in, present.* out)
KV_DECODERS = [name for name in DECODERS if "kv-cache" in zoo.entry(name).tags]


def _zoo_feeds(name: str, proto: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs of the zoo model ``name`` (loaded as ``proto``) at the registry's
    shapes (a KV-cache step needs total = past + seq)."""
    entry = zoo.entry(name)
    return make_feeds(
        input_specs(proto), seed=seed, shapes=entry.shapes, int_ranges=entry.int_ranges
    )


REFUSED = {
    "hf-bert": "post-norm block",
    "hf-bert-dynamo": "post-norm block",
    "hf-roberta": "post-norm block",
    "hf-distilbert": "post-norm block",
    "hf-albert": "post-norm block",
    "hf-bert-ort-fused": "EmbedLayerNormalization",
    "hf-t5-encoder": "graph output",  # the analysis alone; the pass gives it a reader (below)
}


@pytest.mark.slow
@pytest.mark.parametrize("bases", ["shared", "per-norm"])
@pytest.mark.parametrize("name", DECODERS)
def test_zoo_decoder_random_rotation_is_exact(name: str, bases: str) -> None:
    proto = zoo.load(name)
    model = ir.serde.deserialize_model(proto)
    rotate_pass = RotateSlicePass(ratio=0.0, rotation="random", seed=1, bases=bases)
    records = run_passes(model, [RotationInvariantPass(), rotate_pass])
    assert (records[1].statistics["shortcuts"] > 0) == (bases == "per-norm")
    feeds = [_zoo_feeds(name, proto, seed=0)]
    assert _relative_error(proto, model, feeds) < TOLERANCE


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSED.items()))
def test_zoo_refusals_say_why(name: str, reason: str) -> None:
    stream = find_residual_stream(ir.serde.deserialize_model(zoo.load(name)))
    assert stream.reason is not None and reason in stream.reason


NORM_OPS_TEXT = """
<ir_version: 10, opset_import: ["" : {opset}, "com.microsoft" : 1]>
g (int64[1, {seq}] ids) => (float[1, {seq}, {vocab}] y) {{
  x = Gather(table, ids)
  n = {first}
  h = MatMul(n, w1)
  n2, m2, i2, r2 = {skip}(h, x, g2{beta})
  h2 = MatMul(n2, w2)
  n3 = {last}
  y = MatMul(n3, head)
}}
"""
NORM_OP_CASES = {
    "rmsnormalization-23": dict(
        opset=23, first="RMSNormalization<epsilon=1e-5>(x, g1)", skip="com.microsoft.SkipSimplifiedLayerNormalization",
        beta="", last="RMSNormalization<epsilon=1e-5>(r2, g3)",
    ),
    "ort-simplified-and-skip": dict(
        opset=17, first="SimplifiedLayerNormalization<axis=-1, epsilon=1e-5>(x, g1)",
        skip="com.microsoft.SkipSimplifiedLayerNormalization", beta="",
        last="SimplifiedLayerNormalization<axis=-1, epsilon=1e-5>(r2, g3)",
    ),
    "ort-skip-layernorm": dict(
        opset=17, first="LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)",
        skip="com.microsoft.SkipLayerNormalization", beta=", b2",
        last="LayerNormalization<axis=-1, epsilon=1e-5>(r2, g3, b3)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NORM_OP_CASES))
def test_norm_ops_and_fused_skip_norms_rotate_exactly(case: str) -> None:
    text = NORM_OPS_TEXT.format(seq=SEQ, vocab=VOCAB, **NORM_OP_CASES[case])
    rng = np.random.default_rng(0)
    constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "head": rng.standard_normal((HIDDEN, VOCAB)),
                 "w1": rng.standard_normal((HIDDEN, HIDDEN)), "w2": rng.standard_normal((HIDDEN, HIDDEN))}  # fmt: skip
    for name in ("g1", "g2", "g3", "b1", "b2", "b3"):
        constants[name] = (1.0 if name[0] == "g" else 0.0) + 0.3 * rng.standard_normal(HIDDEN)
    proto = onnx.parser.parse_model(text)
    used = {name for node in proto.graph.node for name in node.input}
    for name, array in constants.items():
        if name in used:
            proto.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    model = ir.serde.deserialize_model(proto)
    records = run_passes(
        model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random")]
    )
    assert records[0].statistics["skip_norms_unfused"] == 1
    assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE


CAST_LN_TEXT = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (int64[1, {SEQ}] ids) => (float[1, {SEQ}, {VOCAB}] y) {{
  x = Gather(table, ids)
  c1 = Cast<to=1>(x)
  l1 = LayerNormalization<axis=-1, epsilon=1e-5>(c1, ones, zeros)
  n1 = Cast<to=1>(l1)
  h = MatMul(n1, w1)
  r = Add(x, h)
  c2 = Cast<to=1>(r)
  l2 = LayerNormalization<axis=-1, epsilon=1e-5>(c2, ones, zeros)
  n2 = Cast<to=1>(l2)
  y = MatMul(n2, head)
}}
"""


def test_a_layernorm_between_casts_rotates_and_leaves_nothing_reading_the_stream() -> None:
    """OLMo's LayerNorm (no affine) runs in float32 between two Casts. Its replacement read
    the stream before the first Cast and left the LayerNormalization, dead, still reading it:
    found again as a norm, it made `spa slice` refuse ("the stream mixes LayerNorm and RMSNorm")."""
    rng = np.random.default_rng(0)
    constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "head": rng.standard_normal((HIDDEN, VOCAB)),
                 "w1": rng.standard_normal((HIDDEN, HIDDEN)) * 0.3, "ones": np.ones(HIDDEN),
                 "zeros": np.zeros(HIDDEN)}  # fmt: skip
    proto = _model(CAST_LN_TEXT, {k: v.astype(np.float32) for k, v in constants.items()})
    model = ir.serde.deserialize_model(proto)
    run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random")])
    assert not [node for node in model.graph if node.op_type == "LayerNormalization"]
    assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE
    sliced = ir.serde.deserialize_model(proto)
    records = run_passes(sliced, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, round_to=4, rotation="random")])
    assert records[1].statistics["hidden_after"] == 12, records[1].statistics


EMBEDDING_LN_TEXT = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (int64[1, {SEQ}] ids) => (float[1, {SEQ}, {VOCAB}] y) {{
  e = Gather(table, ids)
  x = LayerNormalization<axis=-1, epsilon=1e-5>(e, g0, b0)
  n1 = LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)
  h = MatMul(n1, w1)
  r = Add(x, h)
  n2 = LayerNormalization<axis=-1, epsilon=1e-5>(r, g2, b2)
  y = MatMul(n2, head)
}}
"""


def test_a_stream_that_starts_after_an_embedding_layernorm_rotates_and_slices() -> None:
    """BLOOM normalises its token embedding (word_embeddings_layernorm) before the first
    block: the stream starts at a norm's output, which SliceGPT's form has no place for
    ("post-norm block: the output of LayerNormalization is added into the residual
    stream"). The norm's scale and bias become a MatMul(diag(g)) and an Add: the stream
    starts at a linear writer, and the embedding table is sliced with everything else.
    A projection reading that norm's output directly reads the norm (scale and bias folded)."""
    rng = np.random.default_rng(0)
    constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "head": rng.standard_normal((HIDDEN, VOCAB)),
                 "w1": rng.standard_normal((HIDDEN, HIDDEN)) * 0.3}  # fmt: skip
    for index in range(3):
        constants[f"g{index}"] = 1.0 + 0.3 * rng.standard_normal(HIDDEN)
        constants[f"b{index}"] = 0.1 * rng.standard_normal(HIDDEN)
    proto = _model(EMBEDDING_LN_TEXT, {k: v.astype(np.float32) for k, v in constants.items()})
    model = ir.serde.deserialize_model(proto)
    records = run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random")])
    assert records[0].statistics["embedding_norms_split"] == 1
    assert records[0].statistics["untied_params"] == 0  # the norm's MatMul reads and writes: no tie
    assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE
    sliced = ir.serde.deserialize_model(proto)
    records = run_passes(sliced, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, round_to=4, rotation="random")])
    assert records[1].statistics["hidden_after"] == 12
    gather = next(node for node in sliced.graph if node.op_type == "Gather")
    assert gather.inputs[0].const_value is not None and gather.inputs[0].const_value.shape == (VOCAB, 12)
    out = run_model(ir.serde.serialize_model(sliced).SerializeToString(), _feeds(proto, 1)[0])
    assert out["y"].shape == (1, SEQ, VOCAB) and np.isfinite(out["y"]).all()
    # ModernBERT's first block has no norm of its own (attn_norm is Identity): its projection
    # read the stream ("MatMul reads the residual stream"); it reads the embedding norm now
    bare = EMBEDDING_LN_TEXT.replace("n1 = LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)\n", "")
    proto = _model(bare.replace("h = MatMul(n1, w1)", "h = MatMul(x, w1)"),
                   {k: v.astype(np.float32) for k, v in constants.items() if k not in ("g1", "b1")})  # fmt: skip
    for ratio in (0.0, 0.25):
        model = ir.serde.deserialize_model(proto)
        run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=ratio, round_to=4, rotation="random")])
        if ratio == 0.0:
            assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE
    out = run_model(ir.serde.serialize_model(model).SerializeToString(), _feeds(proto, 1)[0])
    assert out["y"].shape == (1, SEQ, VOCAB) and np.isfinite(out["y"]).all()


def test_jax_encoder_with_flax_layernorm_and_mean_pooling_rotates_and_slices() -> None:
    """The zoo's jax2onnx encoder writes Flax's LayerNorm from raw moments (var = max(mean(x^2)
    - mean(x)^2, 0), then (x - mean(x)) / sqrt(var + eps)) and pools its last norm over the
    tokens (ReduceSum over axis 1, Div by the count) before its head: refused before ("no
    LayerNormalization / RMSNorm found", then "ReduceSum reads the output of ..."). Both are
    exact under a rotation of the hidden axis."""
    proto = zoo.load("jax-encoder")
    feeds = [_zoo_feeds("jax-encoder", proto, seed=0)]
    model = ir.serde.deserialize_model(proto)
    records = run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random", seed=1)])
    assert records[0].statistics["norms_folded"] == 5 and records[0].statistics["writers_centred"] > 0
    assert _relative_error(proto, model, feeds) < TOLERANCE
    sliced = ir.serde.deserialize_model(proto)
    records = run_passes(sliced, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, rotation="random", seed=1)])
    assert records[1].statistics["hidden_after"] == 48
    out = run_model(ir.serde.serialize_model(sliced).SerializeToString(), feeds[0])
    assert all(np.isfinite(array).all() for array in out.values())


@pytest.mark.parametrize("name", ["timm-vit-tiny", "timm-deit-tiny-distilled"])
def test_vision_transformer_patch_embedding_starts_the_stream(name: str) -> None:
    """A ViT's stream starts at its patch embedding: a Conv whose output channels become the
    hidden axis through Reshape ([N, D, H, W] -> [N, D, H*W], a constant target in the
    torch.export ViT, Shape/Slice/Concat in the TorchScript DeiT) and Transpose, concatenated
    with class (and distillation) tokens broadcast by Expand, plus position embeddings; the
    head reads the class token (Gather along the tokens). Refused before ("Concat writes into
    the residual stream"); now the Conv's output channels, the tokens and the position table
    rotate with the stream, and the random rotation is exact."""
    proto = zoo.load(name)
    feeds = [_zoo_feeds(name, proto, seed=0)]
    model = ir.serde.deserialize_model(proto)
    run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random", seed=1)])
    assert _relative_error(proto, model, feeds) < TOLERANCE
    sliced = ir.serde.deserialize_model(proto)
    records = run_passes(sliced, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, rotation="random", seed=1)])
    assert records[1].statistics["hidden_after"] == 144
    conv = next(node for node in sliced.graph if node.op_type == "Conv")
    assert conv.inputs[1].const_value is not None and conv.inputs[1].const_value.shape[0] == 144
    out = run_model(ir.serde.serialize_model(sliced).SerializeToString(), feeds[0])
    assert all(np.isfinite(array).all() for array in out.values())


HEAD_NORM_TEXT = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (int64[1, {SEQ}] ids) => (float[1, {SEQ}, {VOCAB}] y) {{
  x = Gather(table, ids)
  n1 = LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)
  q = MatMul(n1, wq)
  heads = Reshape(q, per_head)
  qn = LayerNormalization<axis=-1, epsilon=1e-5>(heads, gh, bh)
  flat = Reshape(qn, back)
  o = MatMul(flat, wo)
  r = Add(x, o)
  n2 = LayerNormalization<axis=-1, epsilon=1e-5>(r, g2, b2)
  y = MatMul(n2, head)
}}
"""


def test_a_per_head_norm_behind_the_first_block_is_no_stream_norm() -> None:
    """Qwen3's q/k norms normalise each head of a projection that reads the first block's
    norm of the embedding. Counting every MatMul behind a norm of the embedding as a stream's
    start (meant for the MatMul an embedding norm's scale becomes) made such a head norm a
    stream norm: 'Transpose reads the output of decomposed ...' on Qwen3 by torch.export."""
    rng = np.random.default_rng(0)
    constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "head": rng.standard_normal((HIDDEN, VOCAB)),
                 "wq": rng.standard_normal((HIDDEN, HIDDEN)) * 0.3, "wo": rng.standard_normal((HIDDEN, HIDDEN)) * 0.3,
                 "gh": 1.0 + 0.3 * rng.standard_normal(4), "bh": 0.1 * rng.standard_normal(4)}  # fmt: skip
    for name in ("g1", "g2"):
        constants[name] = 1.0 + 0.3 * rng.standard_normal(HIDDEN)
    for name in ("b1", "b2"):
        constants[name] = 0.1 * rng.standard_normal(HIDDEN)
    arrays = {k: v.astype(np.float32) for k, v in constants.items()}
    arrays["per_head"] = np.array([1, SEQ, 4, 4], np.int64)
    arrays["back"] = np.array([1, SEQ, HIDDEN], np.int64)
    proto = _model(HEAD_NORM_TEXT, arrays)
    stream = find_residual_stream(ir.serde.deserialize_model(proto))
    assert stream.reason is None and len(stream.norms) == 2, stream.reason
    model = ir.serde.deserialize_model(proto)
    run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random")])
    assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE


LAYER_SCALE_TEXT = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (int64[1, {SEQ}] ids) => (float[1, {VOCAB}] y) {{
  x = Gather(table, ids)
  n1 = LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)
  h = MatMul(n1, w1)
  hb = Add(h, c1)
  scaled = Mul(gamma, hb)
  r = Add(x, scaled)
  pooled = ReduceMean<axes=[1], keepdims=0>(r)
  n2 = LayerNormalization<axis=-1, epsilon=1e-5>(pooled, g2, b2)
  y = MatMul(n2, head)
}}
"""


def test_layer_scale_and_a_norm_after_mean_pooling_rotate_and_slice() -> None:
    """DeiT-III, CaiT and DINOv2 scale each branch by a learned vector before the add
    (LayerScale: x + gamma * proj(h)), and many ViTs pool the stream over its tokens before
    their last norm (fc_norm). gamma folds into the projection; the pooling is a stream step
    (linear over tokens, the hidden axis untouched). Both were refused: 'Mul writes into the
    residual stream', 'ReduceMean writes into the residual stream at LayerNormalization'."""
    rng = np.random.default_rng(0)
    constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "head": rng.standard_normal((HIDDEN, VOCAB)),
                 "w1": rng.standard_normal((HIDDEN, HIDDEN)) * 0.3, "c1": 0.1 * rng.standard_normal(HIDDEN),
                 "gamma": 0.1 + rng.random(HIDDEN)}  # fmt: skip
    proto = _model(LAYER_SCALE_TEXT, _with_norms(rng, constants))
    for bases in ("shared", "per-norm"):
        model = ir.serde.deserialize_model(proto)
        records = run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random", bases=bases)])
        assert records[0].statistics["layer_scales_folded"] == 1
        assert not [node for node in model.graph if node.op_type == "Mul" and node.outputs[0].name == "scaled"]
        assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE
    sliced = ir.serde.deserialize_model(proto)
    records = run_passes(sliced, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, round_to=4, rotation="random")])
    assert records[1].statistics["hidden_after"] == 12
    out = run_model(ir.serde.serialize_model(sliced).SerializeToString(), _feeds(proto, 1)[0])
    assert out["y"].shape == (1, VOCAB) and np.isfinite(out["y"]).all()


OUTPUT_NORM_TEXT = f"""
<ir_version: 9, opset_import: ["" : 18]>
vit (int64[1, 9] ids) => (float[1, 9, {HIDDEN}] last, float[1, {HIDDEN}] pooled) {{
  tok = Gather(table, ids)
  grid = Reshape(ptable, gshape)
  chw = Transpose<perm=[0, 3, 1, 2]>(grid)
  shp = Shape(chw)
  lead = Slice(shp, zero, two, zero)
  sizes = Concat<axis=0>(lead, hw)
  big = Resize<mode="cubic", coordinate_transformation_mode="half_pixel">(chw, , , sizes)
  hwc = Transpose<perm=[0, 2, 3, 1]>(big)
  pos = Reshape(hwc, pshape)
  x = Add(tok, pos)
  n1 = LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)
  h = MatMul(n1, w1)
  a = Relu(h)
  o = MatMul(a, w2)
  r = Add(x, o)
  last = LayerNormalization<axis=-1, epsilon=1e-5>(r, g2, b2)
  pooled = Gather<axis=1>(last, zero_scalar)
}}
"""


def test_interpolated_position_table_and_a_norm_returned_as_a_graph_output() -> None:
    """HF's DINOv2 interpolates its position table (Reshape to the grid, Transpose, Resize
    of the spatial axes only, back) and HF encoders without a head (DeiT, DINOv2, T5's
    encoder) return their last norm's output as a graph output. Refused before: 'Resize
    writes into the residual stream with its hidden axis at 1', 'the output of
    LayerNormalization is a graph output; no reader to fold into'. The Resize interpolates
    every hidden channel alike (a rotation of that axis commutes with it); the graph output
    gets a reader, MatMul(I), that becomes Q^T diag(g): its shape and basis stay the model's
    (also where the graph returns only the class token's row of it)."""
    rng = np.random.default_rng(0)
    constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "ptable": rng.standard_normal((1, 4, HIDDEN)),
                 "w1": rng.standard_normal((HIDDEN, MLP)) * 0.3, "w2": rng.standard_normal((MLP, HIDDEN)) * 0.3}  # fmt: skip
    constants = _with_norms(rng, constants)
    constants |= {"gshape": np.array([1, 2, 2, HIDDEN], np.int64), "pshape": np.array([1, -1, HIDDEN], np.int64),
                  "zero": np.array([0], np.int64), "two": np.array([2], np.int64), "hw": np.array([3, 3], np.int64),
                  "zero_scalar": np.array(0, np.int64)}  # fmt: skip
    # only the class token's row returned (pooler_output): the same reader
    pooled_only = OUTPUT_NORM_TEXT.replace(f"(float[1, 9, {HIDDEN}] last, float[1, {HIDDEN}] pooled)",
                                           f"(float[1, {HIDDEN}] pooled)")  # fmt: skip
    proto = _model(pooled_only, constants)
    model = ir.serde.deserialize_model(proto)
    records = run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random")])
    assert records[0].statistics["output_norms_read"] == 1
    assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE
    proto = _model(OUTPUT_NORM_TEXT, constants)
    for bases in ("shared", "per-norm"):
        model = ir.serde.deserialize_model(proto)
        records = run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random", bases=bases)])
        assert records[0].statistics["output_norms_read"] == 1
        assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE
    sliced = ir.serde.deserialize_model(proto)
    records = run_passes(sliced, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, round_to=4, rotation="random")])
    assert records[1].statistics["hidden_after"] == 12 and records[1].statistics["reshapes_fixed"] == 2
    out = run_model(ir.serde.serialize_model(sliced).SerializeToString(), _feeds(proto, 1)[0])
    assert out["last"].shape == (1, 9, HIDDEN) and out["pooled"].shape == (1, HIDDEN)
    assert [v.name for v in sliced.graph.outputs] == ["last", "pooled"]
    # T5's encoder (decomposed RMSNorm, its output the graph output): the same reader
    t5 = zoo.load("hf-t5-encoder")
    model = ir.serde.deserialize_model(t5)
    records = run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random")])
    assert records[0].statistics["output_norms_read"] == 1
    assert _relative_error(t5, model, [_zoo_feeds("hf-t5-encoder", t5, seed=0)]) < TOLERANCE


GRID_TEXT = f"""
<ir_version: 9, opset_import: ["" : 18]>
grid (int64[1, 9] ids) => (float[1, 9, {HIDDEN}] last) <float[1, {HIDDEN}, 3, 3] big> {{
  tok = Gather(table, ids)
  big = Resize<mode="linear">(grid, , , sizes)
  shp = Shape(big)
  lead = Slice(shp, zero, two, zero)
  target = Concat<axis=0>(lead, minus_one)
  flat = Reshape(big, target)
  pos = Transpose<perm=[0, 2, 1]>(flat)
  x = Add(tok, pos)
  n1 = LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)
  h = MatMul(n1, w1)
  a = Relu(h)
  o = MatMul(a, w2)
  r = Add(x, o)
  last = LayerNormalization<axis=-1, epsilon=1e-5>(r, g2, b2)
}}
"""


def test_a_position_grid_resized_to_constant_sizes_slices_through_the_workflow(tmp_path) -> None:
    """YOLOS exports its position table as a [1, D, h, w] grid resized to constant sizes
    [1, D, h', w'] (here its own) and flattened by a target computed from Shape(resized):
    the constant is rotated along axis 1 and, sliced, the sizes' D is rewritten. spa slice
    folds that Resize of constants first (a weight computed from constants): the Shape
    reading the folded table must then follow the rotated copy."""
    from spa.workflows.slice import slice_model

    rng = np.random.default_rng(1)
    constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "grid": rng.standard_normal((1, HIDDEN, 3, 3)),
                 "w1": rng.standard_normal((HIDDEN, MLP)) * 0.3, "w2": rng.standard_normal((MLP, HIDDEN)) * 0.3}  # fmt: skip
    constants = _with_norms(rng, constants)
    constants |= {"sizes": np.array([1, HIDDEN, 3, 3], np.int64), "zero": np.array([0], np.int64),
                  "two": np.array([2], np.int64), "minus_one": np.array([-1], np.int64)}  # fmt: skip
    proto = _model(GRID_TEXT, constants)
    sliced = ir.serde.deserialize_model(proto)  # in place, the Resize kept: its sizes are rewritten
    records = run_passes(sliced, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, round_to=4, rotation="random")])
    assert records[1].statistics["hidden_after"] == 12
    resize = next(node for node in sliced.graph if node.op_type == "Resize")
    assert list(resize.inputs[3].const_value.numpy()) == [1, 12, 3, 3]
    out = run_model(ir.serde.serialize_model(sliced).SerializeToString(), _feeds(proto, 1)[0])
    assert out["last"].shape == (1, 9, HIDDEN)
    source = tmp_path / "grid.onnx"
    onnx.save(proto, str(source))
    result = slice_model(source, tmp_path / "out.onnx", ratio=0.25, round_to=4, rotation="random")
    assert result.exactness is not None and result.exactness.passed
    assert (result.hidden_before, result.hidden_after) == (HIDDEN, 12)
    out = run_model((tmp_path / "out.onnx").read_bytes(), _feeds(proto, 1)[0])
    assert out["last"].shape == (1, 9, HIDDEN) and np.isfinite(out["last"]).all()


FRONT_END_TEXT = f"""
<ir_version: 9, opset_import: ["" : 18]>
audio (float[1, {HIDDEN}, 9] features) => (float[1, 9, {HIDDEN}] last) {{
  act = Relu(features)
  tokens = Transpose<perm=[0, 2, 1]>(act)
  x = Add(tokens, pos)
  n1 = LayerNormalization<axis=-1, epsilon=1e-5>(x, g1, b1)
  h = MatMul(n1, w1)
  a = Relu(h)
  o = MatMul(a, w2)
  r = Add(x, o)
  last = LayerNormalization<axis=-1, epsilon=1e-5>(r, g2, b2)
}}
"""


def test_a_stream_that_starts_after_a_non_linear_front_end_gets_a_first_writer() -> None:
    """Whisper's encoder adds its position table to the output of convolutions and GELU
    (channels first, then a Transpose): the stream has no linear first writer and was
    refused ('Mul writes into the residual stream with its hidden axis at 1'). The value
    added there now gets MatMul(I), which the rotation makes I Q (D x D' once sliced). A
    non-linear term added to a running stream (a norm on a branch) stays refused."""
    rng = np.random.default_rng(2)
    constants = {"pos": rng.standard_normal((9, HIDDEN)), "w1": rng.standard_normal((HIDDEN, MLP)) * 0.3,
                 "w2": rng.standard_normal((MLP, HIDDEN)) * 0.3}  # fmt: skip
    constants = _with_norms(rng, constants)
    proto = _model(FRONT_END_TEXT, constants)
    assert find_residual_stream(ir.serde.deserialize_model(proto)).entry is not None
    model = ir.serde.deserialize_model(proto)
    records = run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random")])
    assert records[0].statistics["stream_entries"] == 1
    assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE
    sliced = ir.serde.deserialize_model(proto)
    records = run_passes(sliced, [RotationInvariantPass(), RotateSlicePass(ratio=0.25, round_to=4, rotation="random")])
    assert records[1].statistics["hidden_after"] == 12
    entry = next(node for node in sliced.graph if node.name.endswith(".spa_stream_entry"))
    assert entry.inputs[1].const_value.shape == (HIDDEN, 12)
    out = run_model(ir.serde.serialize_model(sliced).SerializeToString(), _feeds(proto, 1)[0])
    assert out["last"].shape == (1, 9, HIDDEN)
    branch_text = BRANCH_NORM.replace("hn = LayerNormalization<axis=-1>(h, g1, b1)", "hn = Relu(h)")
    branch_constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "w1": rng.standard_normal((HIDDEN, HIDDEN)),
                        "g1": constants["g1"], "b1": constants["b1"], "head": rng.standard_normal((HIDDEN, VOCAB))}  # fmt: skip
    branch = find_residual_stream(ir.serde.deserialize_model(
        _model(branch_text, {k: v.astype(np.float32) for k, v in branch_constants.items()})))  # fmt: skip
    assert branch.reason is not None and "Relu 'hn' writes into the residual stream" in branch.reason
    assert branch.entry is None


DECOMPOSED_LN = """
<ir_version: 8, opset_import: ["" : 13]>
dln (int64[1, {seq}] ids) => (float[1, {seq}, {vocab}] y) {{
  x = Gather(table, ids)
  m1 = ReduceMean<axes=[-1]>(x)
  d1 = Sub(x, m1)
  q1 = Pow(d1, two)
  v1 = ReduceMean<axes=[-1]>(q1)
  e1 = Add(v1, eps)
  s1 = Sqrt(e1)
  k1 = Div(d1, s1)
  t1 = Mul(k1, g1)
  n1 = Add(t1, b1)
  h = MatMul(n1, w1)
  r = Add(x, h)
  m2 = ReduceMean<axes=[-1]>(r)
  d2 = Sub(r, m2)
  q2 = Mul(d2, d2)
  v2 = ReduceMean<axes=[-1]>(q2)
  e2 = Add(eps, v2)
  s2 = Sqrt(e2)
  i2 = Reciprocal(s2)
  k2 = Mul(d2, i2)
  t2 = Mul(g2, k2)
  n2 = Add(t2, b2)
  y = MatMul(n2, head)
}}
"""


def test_decomposed_layernorm_at_opset_13_rotates_and_slices() -> None:
    rng = np.random.default_rng(0)
    constants = {"table": rng.standard_normal((VOCAB, HIDDEN)), "head": rng.standard_normal((HIDDEN, VOCAB)),
                 "w1": rng.standard_normal((HIDDEN, HIDDEN)), "two": np.array(2.0), "eps": np.array(1e-5)}  # fmt: skip
    for name in ("g1", "g2", "b1", "b2"):
        constants[name] = (1.0 if name[0] == "g" else 0.0) + 0.3 * rng.standard_normal(HIDDEN)
    proto = _model(
        DECOMPOSED_LN.format(seq=SEQ, vocab=VOCAB),
        {k: np.asarray(v, np.float32) for k, v in constants.items()},
    )
    stream = find_residual_stream(ir.serde.deserialize_model(proto))
    assert stream.reason is None and stream.kind == "layer" and len(stream.norms) == 2
    assert all(norm.scale is not None and norm.bias is not None for norm in stream.norms)
    model = ir.serde.deserialize_model(proto)
    run_passes(model, [RotationInvariantPass(), RotateSlicePass(ratio=0.0, rotation="random")])
    assert _relative_error(proto, model, _feeds(proto, 2)) < TOLERANCE
    sliced = ir.serde.deserialize_model(proto)
    run_passes(
        sliced,
        [RotationInvariantPass(), RotateSlicePass(ratio=0.25, rotation="random", round_to=4)],
    )
    assert run_model(ir.serde.serialize_model(sliced).SerializeToString(), _feeds(proto, 1)[0])[
        "y"
    ].shape == (1, SEQ, VOCAB)


@pytest.mark.slow
@pytest.mark.parametrize("name", DECODERS)
def test_zoo_decoder_slices_to_three_quarters_and_runs(name: str) -> None:
    """PCA slicing 128 -> 96 on seeded inputs: constant and computed Reshape targets follow."""
    proto = zoo.load(name)
    feeds = [_zoo_feeds(name, proto, seed=seed) for seed in range(3)]
    model = ir.serde.deserialize_model(proto)
    records = run_passes(
        model,
        [RotationInvariantPass(), RotateSlicePass(ratio=0.25)],
        calibrator=feeds_calibrator(feeds[1:]),
    )
    assert records[1].statistics["hidden_after"] == 96
    expected = run_model(proto.SerializeToString(), feeds[0])
    got = run_model(ir.serde.serialize_model(model).SerializeToString(), feeds[0])
    for output, array in expected.items():
        assert got[output].shape == array.shape and np.isfinite(got[output]).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", KV_DECODERS)
def test_zoo_kv_decoder_sliced_decodes_with_its_cache(name: str) -> None:
    """A 25% slice of a decoder step exported with its KV cache: the cache keeps its
    layout, and the sliced step decodes two more tokens in ORT, each fed the
    ``present.*`` of the step before as ``past_key_values.*``."""
    proto = zoo.load(name)
    feeds = [_zoo_feeds(name, proto, seed=seed) for seed in range(3)]
    model = ir.serde.deserialize_model(proto)
    run_passes(
        model,
        [RotationInvariantPass(), RotateSlicePass(ratio=0.25)],
        calibrator=feeds_calibrator(feeds[1:]),
    )
    sliced = ir.serde.serialize_model(model).SerializeToString()
    step = feeds[0]
    for _ in range(3):
        expected, got = run_model(proto.SerializeToString(), step), run_model(sliced, step)
        for output, array in expected.items():
            assert got[output].shape == array.shape and np.isfinite(got[output]).all()
        total = step["attention_mask"].shape[1] + 1
        step = {
            "input_ids": got["logits"][:, -1:].argmax(-1).astype(np.int64),
            "attention_mask": np.ones((1, total), np.int64),
            **{out.replace("present", "past_key_values"): value
               for out, value in got.items() if out.startswith("present")},
        }  # fmt: skip
    # the cache was fed back: it grew by a token a step (or stays at a sliding window)
    assert step["past_key_values.0.key"].shape[2] >= feeds[0]["past_key_values.0.key"].shape[2] or (
        "sliding-window" in zoo.entry(name).tags
    )
