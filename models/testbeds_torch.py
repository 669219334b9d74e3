"""PyTorch definitions of the two offline test beds, and a loader for their committed ONNX weights.

``ByteLlama`` is the byte-level Llama-style language model of
``models/testbeds/shakespeare_lm.onnx`` (RMSNorm, rotary position embeddings, grouped-query
attention, SwiGLU MLP); ``FashionCNN`` is the classifier of ``models/testbeds/fashion_cnn.onnx``.
``load_from_onnx(module, path)`` copies the committed initializers back into a freshly built
module, so a PyTorch tool (e.g. Torch-Pruning) prunes exactly the weights spa prunes, and checks
that the module's output equals ONNX Runtime's within 1e-4.

Exported with the dynamo exporter, ``ByteLlama``'s graph shows spa's analyzer its KV-head groups
(heads split by ``reshape`` over explicit head counts, the KV repeat an ``expand`` + ``reshape``
by a fixed factor, RoPE in rotate-half form on the last axis); the TorchScript exporter's
``Expand`` of the same repeat freezes them. ``FashionCNN`` is exported with TorchScript so its
BatchNormalization nodes stay (see docs/testbeds.md).

Used by ``models/train_shakespeare_lm.py`` and ``models/train_fashion_cnn.py``; needs torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

__all__ = [
    "ByteLlama",
    "FashionCNN",
    "LMConfig",
    "build_from_facts",
    "export_torchscript",
    "load_from_onnx",
    "name_initializers",
]

REPO = Path(__file__).resolve().parent.parent
TESTBEDS = REPO / "models" / "testbeds"


@dataclass(frozen=True)
class LMConfig:
    """Shape of ``ByteLlama``; stored in ``shakespeare_lm.json`` so the module can be rebuilt."""

    vocab: int = 256
    hidden: int = 192
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    mlp: int = 512
    context: int = 128
    rope_base: float = 10000.0
    eps: float = 1e-5


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * scale * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.kv_heads = config.kv_heads
        self.head_dim = config.hidden // config.heads
        self.q_proj = nn.Linear(config.hidden, config.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden, config.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden, config.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.heads * self.head_dim, config.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).reshape(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).reshape(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).reshape(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        k = k[:, :, None].expand(batch, self.kv_heads, groups, seq, self.head_dim)
        v = v[:, :, None].expand(batch, self.kv_heads, groups, seq, self.head_dim)
        k = k.reshape(batch, self.heads, seq, self.head_dim)
        v = v.reshape(batch, self.heads, seq, self.head_dim)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden, config.mlp, bias=False)
        self.up_proj = nn.Linear(config.hidden, config.mlp, bias=False)
        self.down_proj = nn.Linear(config.mlp, config.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden, config.eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden, config.eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class ByteLlama(nn.Module):
    """Byte-level decoder: ``input_ids`` int64 [batch, seq] -> ``logits`` [batch, seq, 256]."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.hidden)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.hidden, config.eps)
        self.lm_head = nn.Linear(config.hidden, config.vocab, bias=False)
        head_dim = config.hidden // config.heads
        inv_freq = 1.0 / config.rope_base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(config.context).float(), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))


class FashionCNN(nn.Module):
    """Three conv blocks (Conv 3x3 - BatchNorm - ReLU - MaxPool 2) and two Linear layers.

    Input ``images`` float32 [batch, 1, 28, 28] scaled to [0, 1]; output ``logits`` [batch, 10].
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        side = 28 // 2 ** len(widths)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(),
            nn.Linear(hidden, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path,
                       input_name: str) -> None:
    """TorchScript export (opset 17) with a dynamic batch, BatchNormalization kept as a node
    (``TrainingMode.PRESERVE`` on an eval-mode module: running statistics, no Conv folding)."""
    module.eval()
    torch.onnx.export(
        module, (example,), str(path), dynamo=False, opset_version=17,
        input_names=[input_name], output_names=["logits"],
        dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
    )


def build_from_facts(facts_path: Path) -> nn.Module:
    """The untrained module described by a test bed's JSON facts file."""
    facts = json.loads(Path(facts_path).read_text())
    if facts["model"] == "shakespeare_lm":
        return ByteLlama(LMConfig(**facts["config"]))
    return FashionCNN(tuple(facts["config"]["widths"]), facts["config"]["hidden"])


def _transposed_inputs(graph: Any) -> set[str]:
    """Initializers that hold a torch Linear weight transposed ([in, out]): MatMul's B, or Gemm's
    B without ``transB``."""
    names = set()
    for node in graph.node:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b):
            names.add(node.input[1])
    return names


def name_initializers(proto: Any, module: nn.Module) -> None:
    """Rename ``proto``'s initializers after the ``module`` tensors they hold (exporters name
    folded ones ``val_26`` or ``onnx::MatMul_1002``); values are matched exactly, as stored or
    transposed per :func:`_transposed_inputs`. Every parameter must be found."""
    from onnx import numpy_helper

    transposed = _transposed_inputs(proto.graph)
    by_bytes: dict[bytes, list[Any]] = {}
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if init.name in transposed and array.ndim == 2:
            array = array.T
        by_bytes.setdefault(np.ascontiguousarray(array).tobytes() + bytes(str(array.shape), "ascii"),
                            []).append(init)
    renames: dict[str, str] = {}
    for name, tensor in module.state_dict().items():
        if name.endswith("num_batches_tracked") or name.startswith("rope_"):
            continue
        array = tensor.detach().cpu().numpy()
        candidates = by_bytes.get(np.ascontiguousarray(array).tobytes() + bytes(str(array.shape), "ascii"))
        if not candidates:
            raise ValueError(f"no initializer holds {name}")
        renames[candidates.pop(0).name] = name
    for init in proto.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(value, value) for value in node.input]


def config_dict(config: LMConfig) -> dict[str, Any]:
    return asdict(config)


def load_from_onnx(module: nn.Module, onnx_path: Path, *, check: bool = True) -> nn.Module:
    """Copy the ONNX initializers of ``onnx_path`` into ``module`` (matched by parameter name).

    Every parameter and BatchNorm buffer must be found; with ``check`` the module (eval mode)
    and ONNX Runtime are run on seeded inputs and must agree within 1e-4 (max |diff|).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    transposed = _transposed_inputs(model.graph)
    weights = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        weights[init.name] = array.T if init.name in transposed and array.ndim == 2 else array
    state = module.state_dict()
    missing = []
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name not in weights:
            missing.append(name)
            continue
        value = torch.from_numpy(np.array(weights[name]))
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(f"{name}: ONNX shape {tuple(value.shape)} != module {tuple(tensor.shape)}")
        state[name] = value.to(tensor.dtype)
    if missing:
        raise ValueError(f"{onnx_path} lacks initializers for {missing[:5]} ({len(missing)} in all)")
    module.load_state_dict(state)
    module.eval()
    if check:
        _check_against_ort(module, model)
    return module


def _check_against_ort(module: nn.Module, model: Any) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    if isinstance(module, ByteLlama):
        feed = rng.integers(0, 256, size=(2, 64), dtype=np.int64)
    else:
        feed = rng.random((4, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(feed)).numpy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {model.graph.input[0].name: feed})
    diff = float(np.abs(got - expected).max())
    if diff > 1e-4:
        raise AssertionError(f"torch and ONNX Runtime differ by {diff:.3g} (> 1e-4)")
