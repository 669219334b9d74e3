"""The zoo registry: every entry loads, passes onnx.checker and runs in ONNX Runtime.

Runs without torch, TensorFlow or JAX: only the light files and the registry.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from spa import zoo

ENTRIES = zoo.entries()

#: Architecture and exporter categories the zoo must cover (registry ``tags``).
REQUIRED_TAGS = {
    "residual",
    "dense-concat",
    "group-conv",
    "depthwise",
    "se",
    "channel-shuffle",
    "pixel-shuffle",
    "inverted-residual",
    "vit",
    "swin",
    "convnext",
    "bert",
    "gpt2",
    "llama-gqa",
    "t5-encoder",
    "lstm",
    "gru",
    "contrib-ops",
    "dynamo",
    "torchscript",
    "tf2onnx",
    "jax2onnx",
    "onnx-wheel",
}

ONNX_WHEEL_FILES = {
    "light_bvlc_alexnet.onnx",
    "light_densenet121.onnx",
    "light_inception_v1.onnx",
    "light_inception_v2.onnx",
    "light_resnet50.onnx",
    "light_shufflenet.onnx",
    "light_squeezenet.onnx",
    "light_vgg19.onnx",
    "light_zfnet512.onnx",
}


def _feeds(entry: zoo.ZooEntry) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in entry.inputs:
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.integer):
            low = 0 if spec.low is None else spec.low
            high = 2 if spec.high is None else spec.high
            feeds[spec.name] = rng.integers(low, high, size=spec.shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = np.ones(spec.shape, dtype=bool)
        else:
            feeds[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
    return feeds


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_entry_loads_checks_and_runs(entry: zoo.ZooEntry) -> None:
    model = zoo.load(entry)
    assert not any(zoo.is_light(t) for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=False)
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in initializers]
    assert graph_inputs == [spec.name for spec in entry.inputs]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    outputs = session.run(None, _feeds(entry))
    assert outputs
    for output in outputs:
        if output.dtype.kind == "f":
            assert np.isfinite(output).all()


def test_registry_rows_are_complete_and_unique() -> None:
    names = [e.name for e in ENTRIES]
    assert len(names) == len(set(names))
    for entry in ENTRIES:
        assert entry.provenance and entry.exporter and entry.framework and entry.tags, entry.name
        assert entry.inputs, entry.name
        for spec in entry.inputs:
            if np.issubdtype(np.dtype(spec.dtype), np.integer):
                assert spec.low is not None and spec.high is not None and spec.low < spec.high
        if not entry.from_onnx_wheel:
            assert (zoo.zoo_folder() / entry.file).is_file(), entry.file
    wheel = {e.file.split(":", 1)[1] for e in ENTRIES if e.from_onnx_wheel}
    assert wheel == ONNX_WHEEL_FILES


def test_registry_covers_required_categories() -> None:
    tags = {tag for entry in ENTRIES for tag in entry.tags}
    assert tags >= REQUIRED_TAGS, sorted(REQUIRED_TAGS - tags)
    assert sum(not e.from_onnx_wheel for e in ENTRIES) >= 40
    contrib = [e for e in ENTRIES if "contrib-ops" in e.tags]
    for entry in contrib:
        model = onnx.load(str(zoo.zoo_folder() / entry.file), load_external_data=False)
        assert any(node.domain == "com.microsoft" for node in model.graph.node), entry.name


def test_light_files_are_small() -> None:
    folder = zoo.zoo_folder()
    sizes = {path.name: path.stat().st_size for path in folder.glob("*.onnx")}
    assert all(size < 1_500_000 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 30_000_000
    registered = {e.file for e in ENTRIES if not e.from_onnx_wheel}
    assert set(sizes) == registered, "every light file is registered and vice versa"
    json.loads((folder / "registry.json").read_text(encoding="utf-8"))
