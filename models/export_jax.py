"""Export the JAX/Flax part of the spa model zoo with jax2onnx (light ONNX files).

Usage (in the TF/JAX venv, see models/README.md)::

    python models/export_jax.py [--only NAME ...] [--out models/zoo]

Both models are written here with ``flax.nnx`` and randomly initialised
(``nnx.Rngs(0)``); jax2onnx traces them to ONNX with a dynamic batch axis.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo_common import Input, Spec, main


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{pkg} {version(pkg)}" for pkg in ("jax", "flax", "jax2onnx"))


def _cnn() -> Any:
    """NHWC ResNet-style CNN: conv-BN-relu stem, two residual blocks, pooled head."""
    import jax.numpy as jnp
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> None:
            self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
            self.bn1 = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
            self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, rngs=rngs)
            self.bn2 = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
            self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            y = nnx.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return nnx.relu(y + self.proj(x))

    class CNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.stem = nnx.Conv(3, 16, (3, 3), rngs=rngs)
            self.block1 = Block(16, 32, 2, rngs)
            self.block2 = Block(32, 64, 2, rngs)
            self.head = nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            x = nnx.relu(self.stem(x))
            x = self.block2(self.block1(x))
            return self.head(jnp.mean(x, axis=(1, 2)))

    return CNN(nnx.Rngs(0))


def _encoder() -> Any:
    """Pre-norm transformer encoder over token embeddings (2 blocks, 4 heads, dim 64)."""
    import jax.numpy as jnp
    from flax import nnx

    dim, heads, vocab, seq = 64, 4, 1000, 16

    class Layer(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False,
                                               rngs=rngs)
            self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
            self.fc1 = nnx.Linear(dim, 4 * dim, rngs=rngs)
            self.fc2 = nnx.Linear(4 * dim, dim, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            x = x + self.attn(self.norm1(x))
            return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))

    class Encoder(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.embed = nnx.Embed(vocab, dim, rngs=rngs)
            self.pos = nnx.Param(jnp.zeros((1, seq, dim)) + 0.02)
            self.layers = nnx.List([Layer(rngs) for _ in range(2)])
            self.norm = nnx.LayerNorm(dim, rngs=rngs)
            self.head = nnx.Linear(dim, 10, rngs=rngs)

        def __call__(self, ids: Any) -> Any:
            x = self.embed(ids) + self.pos[...]
            for layer in self.layers:
                x = layer(x)
            return self.head(self.norm(x).mean(axis=1))

    return Encoder(nnx.Rngs(0))


def _builder(make: Any, shape: tuple[int | str, ...], dtype: str, name: str,
             opset: int) -> Any:
    def build(path: Path) -> None:
        import jax
        import jax.numpy as jnp
        import onnx
        from jax2onnx import to_onnx

        model = make()
        spec = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
        proto = to_onnx(model, [spec], model_name=path.stem, opset=opset, input_names=[name])
        # jax2onnx records pre-layout (NHWC) shapes for some values it transposed to NCHW;
        # drop its intermediate value_info rather than ship shapes that contradict the graph.
        del proto.graph.value_info[:]
        onnx.save(onnx.shape_inference.infer_shapes(proto, strict_mode=True), str(path))

    return build


def _spec(name: str, make: Any, input_: Input, text: str, tags: list[str], opset: int) -> Spec:
    shape = ("B", *input_.shape[1:])
    return Spec(
        name=name, build=_builder(make, shape, input_.dtype, input_.name, opset), inputs=[input_],
        exporter="jax2onnx", framework="jax",
        provenance=f"{text} written in models/export_jax.py, nnx.Rngs(0) init, {_versions()}, "
                   f"opset {opset}",
        tags=["jax2onnx", *tags],
    )


def specs() -> list[Spec]:
    return [
        _spec("jax-resnet-nhwc", _cnn, Input("image", (1, 32, 32, 3)),
              "flax.nnx residual CNN (NHWC, conv-BN-relu, 2 blocks)",
              ["cnn", "residual", "nhwc"], 21),
        _spec("jax-encoder", _encoder, Input("ids", (1, 16), "int32", 0, 1000),
              "flax.nnx transformer encoder (2 pre-norm blocks, MultiHeadAttention 4x16)",
              ["transformer", "encoder", "attention"], 21),
    ]


if __name__ == "__main__":
    sys.exit(main(specs()))
