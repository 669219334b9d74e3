"""Export the TensorFlow/Keras part of the spa model zoo with tf2onnx (light ONNX files).

Usage (in the TF/JAX venv, see models/README.md)::

    python models/export_tf.py [--only NAME ...] [--out models/zoo]

Keras models are built with ``weights=None`` (random init, seeded) and
converted through a ``tf.function`` with ``tf2onnx.convert.from_function``;
their inputs stay NHWC, so the graphs carry tf2onnx's layout Transposes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo_common import Input, Spec, main


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{pkg} {version(pkg)}" for pkg in ("tensorflow-cpu", "keras", "tf2onnx"))


def _app(name: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        import keras

        return getattr(keras.applications, name)(weights=None, **kwargs)

    return make


def _text_lstm() -> Any:
    import keras

    ids = keras.Input((16,), dtype="int32", name="ids")
    x = keras.layers.Embedding(1000, 32)(ids)
    x = keras.layers.Conv1D(48, 3, padding="same", activation="relu")(x)
    x = keras.layers.LSTM(64)(x)
    return keras.Model(ids, keras.layers.Dense(5)(x))


def _builder(make: Callable[[], Any], input_: Input, opset: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import keras
        import tensorflow as tf
        import tf2onnx

        keras.utils.set_random_seed(0)
        model = make()
        dtype = tf.as_dtype(input_.dtype)
        signature = [tf.TensorSpec((None, *input_.shape[1:]), dtype, name=input_.name)]

        @tf.function(input_signature=signature)
        def forward(x: Any) -> Any:
            return model(x, training=False)

        tf2onnx.convert.from_function(forward, input_signature=signature, opset=opset,
                                      output_path=str(path))

    return build


def _spec(name: str, make: Callable[[], Any], input_: Input, text: str, tags: list[str],
          opset: int = 17) -> Spec:
    return Spec(
        name=name, build=_builder(make, input_, opset), inputs=[input_], exporter="tf2onnx",
        framework="tensorflow",
        provenance=f"{text}, random init (keras.utils.set_random_seed(0)), converted from a "
                   f"tf.function, {_versions()}, opset {opset}",
        tags=["tf2onnx", *tags],
    )


def specs() -> list[Spec]:
    image = Input("image", (1, 64, 64, 3))
    return [
        _spec("tf-mobilenet-v2", _app("MobileNetV2", input_shape=(64, 64, 3), alpha=0.35),
              image, "keras.applications.MobileNetV2(weights=None, alpha=0.35, 64x64x3)",
              ["cnn", "nhwc", "depthwise", "inverted-residual"]),
        _spec("tf-efficientnetv2-b0", _app("EfficientNetV2B0", input_shape=(64, 64, 3),
              include_preprocessing=False), image,
              "keras.applications.EfficientNetV2B0(weights=None, include_preprocessing=False, 64x64x3)",
              ["cnn", "nhwc", "depthwise", "se"], opset=15),
        _spec("tf-densenet121", _app("DenseNet121", input_shape=(64, 64, 3)), image,
              "keras.applications.DenseNet121(weights=None, 64x64x3)", ["cnn", "nhwc", "dense-concat"]),
        _spec("tf-text-lstm", _text_lstm, Input("ids", (1, 16), "int32", 0, 1000),
              "Keras Embedding -> Conv1D -> LSTM(64) -> Dense written in models/export_tf.py",
              ["rnn", "lstm"]),
    ]


if __name__ == "__main__":
    sys.exit(main(specs()))
