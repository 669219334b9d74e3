"""PyTorch sequence models of the zoo: transformers (reduced configs), LSTM, GRU, ORT-fused BERT.

Transformers models are built from a config (random init, no hub access):
2 layers, hidden 64-128, 4 heads, vocabulary 1000, sequence 16.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo_common import Input, Spec, torch_export

TORCH = "torch 2.14.1"
VOCAB, SEQ, HIDDEN, HEADS = 1000, 16, 128, 4


def _ids(name: str = "input_ids") -> Input:
    return Input(name, (1, SEQ), "int64", 0, VOCAB)


def _mask(name: str = "attention_mask") -> Input:
    return Input(name, (1, SEQ), "int64", 1, 2)


class _Logits:
    """Wraps a transformers model so the exported graph returns one tensor."""

    @staticmethod
    def wrap(model: Any, names: list[str], field: str) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, *args: torch.Tensor) -> torch.Tensor:
                out = self.inner(**dict(zip(names, args, strict=True)))
                return getattr(out, field)

        return Wrapped().eval()


def _hf_builder(
    make: Callable[[], Any], inputs: list[Input], field: str, dynamo: bool, opset: int
) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import torch

        torch.manual_seed(0)
        model = make().eval()
        wrapped = _Logits.wrap(model, [i.name for i in inputs], field)
        batch = 2 if dynamo else 1
        gen = torch.Generator().manual_seed(0)
        args = []
        for spec in inputs:
            low, high = spec.low or 0, spec.high or 2
            args.append(torch.randint(low, high, (batch, *spec.shape[1:]), generator=gen))
        torch_export(wrapped, tuple(args), path, [i.name for i in inputs], dynamo=dynamo,
                     opset=opset)

    return build


def hf_spec(
    name: str, make: Callable[[], Any], config_text: str, inputs: list[Input], tags: list[str],
    *, field: str = "last_hidden_state", dynamo: bool = False, opset: int = 17,
) -> Spec:
    exporter = "dynamo" if dynamo else "torchscript"
    return Spec(
        name=name,
        build=_hf_builder(make, inputs, field, dynamo, opset),
        inputs=inputs,
        exporter=exporter,
        framework="pytorch",
        provenance=f"transformers {config_text}, random init, seq {SEQ}, {TORCH}, {exporter} "
                   f"exporter, opset {opset}, output {field}",
        tags=["transformer", *tags, exporter],
    )


def _hf(model_cls: str, config_cls: str, **config: Any) -> Callable[[], Any]:
    def make() -> Any:
        import transformers

        cfg = getattr(transformers, config_cls)(**config)
        cfg._attn_implementation = "eager"
        return getattr(transformers, model_cls)(cfg)

    return make


_SMALL = {"num_hidden_layers": 2, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
          "intermediate_size": 4 * HIDDEN, "vocab_size": VOCAB, "max_position_embeddings": 64}
_BERT = dict(_SMALL, type_vocab_size=2)
_LLAMA = {"num_hidden_layers": 2, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
          "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": VOCAB,
          "max_position_embeddings": 64, "use_cache": False}
_GPT2 = {"n_layer": 2, "n_embd": HIDDEN, "n_head": HEADS, "vocab_size": VOCAB, "n_positions": 64,
         "use_cache": False}
_PHI = {"num_hidden_layers": 2, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
        "intermediate_size": 4 * HIDDEN, "vocab_size": VOCAB, "max_position_embeddings": 64,
        "partial_rotary_factor": 0.5, "use_cache": False}


class _KVCache:
    """A causal LM exported as one decoding step with its KV cache.

    Inputs: ``input_ids`` [batch, seq], ``attention_mask`` [batch, total] and
    ``past_key_values.{i}.key/value`` [batch, kv_heads, past, head_dim];
    outputs: ``logits`` and ``present.{i}.key/value`` [batch, kv_heads, total,
    head_dim], with total = past + seq (dims ``batch``, ``seq``, ``past`` and
    ``total`` dynamic). The wrapper rebuilds a ``DynamicCache`` from the flat
    tensors, so the exported graph reads and writes plain tensors.
    """

    PAST, STEP = 8, 4

    @staticmethod
    def names(layers: int) -> tuple[list[str], list[str]]:
        past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
        present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
        return ["input_ids", "attention_mask", *past], ["logits", *present]

    @staticmethod
    def inputs(layers: int, kv_heads: int, head_dim: int) -> list[Input]:
        names = _KVCache.names(layers)[0]
        total = _KVCache.PAST + _KVCache.STEP
        cache = [Input(name, (1, kv_heads, _KVCache.PAST, head_dim)) for name in names[2:]]
        return [Input("input_ids", (1, _KVCache.STEP), "int64", 0, VOCAB),
                Input("attention_mask", (1, total), "int64", 1, 2), *cache]

    @staticmethod
    def builder(make: Callable[[], Any], layers: int, kv_heads: int, head_dim: int,
                dynamo: bool, opset: int) -> Callable[[Path], None]:
        def build(path: Path) -> None:
            import torch
            from transformers import DynamicCache

            torch.manual_seed(0)
            model = make().eval()

            class Step(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.inner = model

                def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
                    cache = DynamicCache(config=model.config)
                    for layer in range(layers):
                        cache.update(past[2 * layer], past[2 * layer + 1], layer)
                    out = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                     past_key_values=cache, use_cache=True)
                    present = [t for layer in out.past_key_values.layers
                               for t in (layer.keys, layer.values)]
                    return (out.logits, *present)

            batch = 2 if dynamo else 1  # torch.export specialises a size of 1
            gen = torch.Generator().manual_seed(0)
            past = _KVCache.PAST
            args = (torch.randint(0, VOCAB, (batch, _KVCache.STEP), generator=gen),
                    torch.ones(batch, past + _KVCache.STEP, dtype=torch.int64),
                    *(torch.randn(batch, kv_heads, past, head_dim, generator=gen)
                      for _ in range(2 * layers)))
            inputs, outputs = _KVCache.names(layers)
            step = Step().eval()
            with torch.no_grad():
                if dynamo:
                    b = torch.export.Dim("batch", min=1, max=64)
                    s = torch.export.Dim("seq", min=1, max=32)
                    p = torch.export.Dim("past", min=1, max=32)
                    t = torch.export.Dim("total", min=2, max=64)
                    shapes = ({0: b, 1: s}, {0: b, 1: t}, tuple({0: b, 2: p} for _ in args[2:]))
                    program = torch.onnx.export(
                        step, args, dynamo=True, opset_version=opset, input_names=inputs,
                        output_names=outputs, dynamic_shapes=shapes, external_data=False)
                    program.save(str(path))
                else:
                    axes = {"input_ids": {0: "batch", 1: "seq"},
                            "attention_mask": {0: "batch", 1: "total"}}
                    axes.update({name: {0: "batch", 2: "past"} for name in inputs[2:]})
                    axes.update({name: {0: "batch", 2: "total"} for name in outputs[1:]})
                    torch.onnx.export(step, args, str(path), dynamo=False, opset_version=opset,
                                      input_names=inputs, output_names=outputs,
                                      dynamic_axes=axes, do_constant_folding=True)

        return build

    @staticmethod
    def spec(name: str, make: Callable[[], Any], config_text: str, tags: list[str], *,
             kv_heads: int, head_dim: int, layers: int = 2, dynamo: bool = True,
             opset: int = 18) -> Spec:
        exporter = "dynamo" if dynamo else "torchscript"
        return Spec(
            name=name,
            build=_KVCache.builder(make, layers, kv_heads, head_dim, dynamo, opset),
            inputs=_KVCache.inputs(layers, kv_heads, head_dim),
            exporter=exporter,
            framework="pytorch",
            provenance=f"transformers {config_text}, random init, one decoding step with its KV "
                       f"cache (past {_KVCache.PAST}, step {_KVCache.STEP}; dims batch, seq, past, "
                       f"total dynamic), {TORCH}, {exporter} exporter, opset {opset}, outputs "
                       "logits and present.*",
            tags=["transformer", "decoder", "kv-cache", *tags, exporter],
        )


def _gpt2_ort_fused_builder(path: Path) -> None:
    """Export GPT-2 (TorchScript), then fuse it with ORT's transformer optimizer."""
    from onnxruntime.transformers.optimizer import optimize_model

    raw = path.with_name("gpt2-raw.onnx")
    _hf_builder(_hf("GPT2LMHeadModel", "GPT2Config", **_GPT2), [_ids(), _mask()], "logits",
                False, 17)(raw)
    optimized = optimize_model(str(raw), model_type="gpt2", num_heads=HEADS, hidden_size=HIDDEN,
                               opt_level=1)
    optimized.save_model_to_file(str(path))


def _bert_optimized_builder(path: Path) -> None:
    """Export BERT (TorchScript), then fuse it with ORT's transformer optimizer."""
    from onnxruntime.transformers.optimizer import optimize_model

    raw = path.with_name("bert-raw.onnx")
    _hf_builder(_hf("BertModel", "BertConfig", **_BERT), _BERT_INPUTS, "last_hidden_state",
                False, 17)(raw)
    optimized = optimize_model(str(raw), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN,
                               opt_level=1)
    optimized.save_model_to_file(str(path))


_BERT_INPUTS = [_ids(), _mask(), Input("token_type_ids", (1, SEQ), "int64", 0, 2)]


class _RNN:
    """Token embedding -> recurrent layers -> linear head (one tensor out)."""

    @staticmethod
    def make(kind: str) -> Callable[[], Any]:
        def factory() -> Any:
            import torch
            from torch import nn

            class Model(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.embed = nn.Embedding(VOCAB, 64)
                    cell = nn.LSTM if kind == "lstm" else nn.GRU
                    self.rnn = cell(64, 96, num_layers=2, batch_first=True,
                                    bidirectional=kind == "lstm")
                    self.head = nn.Linear(192 if kind == "lstm" else 96, 10)

                def forward(self, ids: torch.Tensor) -> torch.Tensor:
                    out, _ = self.rnn(self.embed(ids))
                    return self.head(out[:, -1])

            return Model()

        return factory


class _LSTMLanguageModel:
    """Token embedding -> 2-layer LSTM -> vocabulary logits at every position."""

    @staticmethod
    def factory() -> Any:
        import torch
        from torch import nn

        class Model(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(VOCAB, 64)
                self.rnn = nn.LSTM(64, 128, num_layers=2, batch_first=True)
                self.head = nn.Linear(128, VOCAB)

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                out, _ = self.rnn(self.embed(ids))
                return self.head(out)

        return Model()


def _lstm_lm_spec() -> Spec:
    def build(path: Path) -> None:
        import torch

        torch.manual_seed(0)
        model = _LSTMLanguageModel.factory().eval()
        ids = torch.randint(0, VOCAB, (1, SEQ))
        torch_export(model, (ids,), path, ["ids"], dynamo=False, opset=17)

    return Spec(
        name="lstm-lm", build=build, inputs=[Input("ids", (1, SEQ), "int64", 0, VOCAB)],
        exporter="torchscript", framework="pytorch",
        provenance="nn.Embedding(1000,64) -> nn.LSTM(64,128,num_layers=2) -> Linear(128,1000) "
                   f"(logits per token), written in models/torch_text.py, {TORCH}, torchscript "
                   "exporter, opset 17", tags=["rnn", "lstm", "language-model", "torchscript"],
    )


def _rnn_spec(kind: str) -> Spec:
    text = ("nn.Embedding(1000,64) -> nn.LSTM(64,96,num_layers=2,bidirectional) -> Linear"
            if kind == "lstm" else "nn.Embedding(1000,64) -> nn.GRU(64,96,num_layers=2) -> Linear")

    def build(path: Path) -> None:
        import torch

        torch.manual_seed(0)
        model = _RNN.make(kind)().eval()
        ids = torch.randint(0, VOCAB, (1, SEQ))
        torch_export(model, (ids,), path, ["ids"], dynamo=False, opset=17)

    return Spec(
        name=f"{kind}-classifier", build=build, inputs=[Input("ids", (1, SEQ), "int64", 0, VOCAB)],
        exporter="torchscript", framework="pytorch",
        provenance=f"{text}, written in models/torch_text.py, {TORCH}, torchscript exporter, "
                   "opset 17", tags=["rnn", kind, "torchscript"],
    )


SPECS: list[Spec] = [
    hf_spec("hf-bert", _hf("BertModel", "BertConfig", **_BERT),
            "BertModel(BertConfig(2 layers, hidden 128, 4 heads, vocab 1000))", _BERT_INPUTS,
            ["bert", "encoder", "gelu"]),
    Spec(name="hf-bert-ort-fused", build=_bert_optimized_builder, inputs=_BERT_INPUTS,
         exporter="torchscript+ort-optimizer", framework="pytorch",
         provenance="hf-bert exported with the torchscript exporter (opset 17), then "
                    "onnxruntime.transformers.optimizer.optimize_model(model_type='bert', "
                    "num_heads=4, hidden_size=128, opt_level=1)",
         tags=["transformer", "bert", "contrib-ops", "torchscript"]),
    hf_spec("hf-bert-dynamo", _hf("BertModel", "BertConfig", **_BERT),
            "BertModel(BertConfig(2 layers, hidden 128, 4 heads, vocab 1000))", _BERT_INPUTS,
            ["bert", "encoder", "gelu"], dynamo=True, opset=18),
    hf_spec("hf-distilbert", _hf("DistilBertModel", "DistilBertConfig", n_layers=2, dim=HIDDEN,
            n_heads=HEADS, hidden_dim=4 * HIDDEN, vocab_size=VOCAB, max_position_embeddings=64),
            "DistilBertModel(2 layers, dim 128, 4 heads, vocab 1000)", [_ids(), _mask()],
            ["bert", "encoder"]),
    hf_spec("hf-albert", _hf("AlbertModel", "AlbertConfig", embedding_size=64, **_BERT),
            "AlbertModel(2 layers, embedding 64, hidden 128, 4 heads, vocab 1000)",
            [_ids(), _mask()], ["bert", "encoder", "shared-weights"]),
    hf_spec("hf-roberta", _hf("RobertaModel", "RobertaConfig", pad_token_id=1,
            **dict(_BERT, max_position_embeddings=66)),
            "RobertaModel(2 layers, hidden 128, 4 heads, vocab 1000)", [_ids(), _mask()],
            ["bert", "encoder"], dynamo=True, opset=18),
    hf_spec("hf-gpt2", _hf("GPT2LMHeadModel", "GPT2Config", n_layer=2, n_embd=HIDDEN,
            n_head=HEADS, vocab_size=VOCAB, n_positions=64, use_cache=False),
            "GPT2LMHeadModel(GPT2Config(2 layers, n_embd 128, 4 heads, vocab 1000))", [_ids(), _mask()],
            ["gpt2", "decoder", "causal", "conv1d-linear"], field="logits"),
    hf_spec("hf-gpt2-dynamo", _hf("GPT2LMHeadModel", "GPT2Config", n_layer=2, n_embd=HIDDEN,
            n_head=HEADS, vocab_size=VOCAB, n_positions=64, use_cache=False),
            "GPT2LMHeadModel(GPT2Config(2 layers, n_embd 128, 4 heads, vocab 1000))", [_ids(), _mask()],
            ["gpt2", "decoder", "causal"], field="logits", dynamo=True, opset=18),
    hf_spec("hf-llama-gqa", _hf("LlamaForCausalLM", "LlamaConfig", **_LLAMA),
            "LlamaForCausalLM(LlamaConfig(2 layers, hidden 128, 4 heads, 2 kv heads, vocab 1000))",
            [_ids(), _mask()], ["llama", "llama-gqa", "gqa", "rope", "rmsnorm", "swiglu", "decoder"],
            field="logits", dynamo=True, opset=18),
    hf_spec("hf-llama-gqa-ts", _hf("LlamaForCausalLM", "LlamaConfig", **_LLAMA),
            "LlamaForCausalLM(LlamaConfig(2 layers, hidden 128, 4 heads, 2 kv heads, vocab 1000))",
            [_ids(), _mask()], ["llama", "llama-gqa", "gqa", "rope", "rmsnorm", "swiglu", "decoder"],
            field="logits"),
    hf_spec("hf-qwen2-gqa", _hf("Qwen2ForCausalLM", "Qwen2Config", **_LLAMA),
            "Qwen2ForCausalLM(2 layers, hidden 128, 4 heads, 2 kv heads, vocab 1000)", [_ids(), _mask()],
            ["llama-gqa", "gqa", "rope", "qkv-bias", "decoder"], field="logits", dynamo=True),
    hf_spec("hf-mistral-gqa", _hf("MistralForCausalLM", "MistralConfig", sliding_window=8,
            **_LLAMA), "MistralForCausalLM(2 layers, hidden 128, 4 heads, 2 kv heads, window 8)",
            [_ids(), _mask()], ["llama-gqa", "gqa", "rope", "sliding-window", "decoder"], field="logits"),
    hf_spec("hf-gpt-neox", _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", rotary_pct=0.5,
            use_parallel_residual=True, use_cache=False, **_SMALL),
            "GPTNeoXForCausalLM(2 layers, hidden 128, 4 heads, rotary_pct 0.5, parallel residual)",
            [_ids(), _mask()], ["decoder", "rope", "partial-rotary", "parallel-residual"], field="logits"),
    hf_spec("hf-opt", _hf("OPTForCausalLM", "OPTConfig", num_hidden_layers=2, hidden_size=HIDDEN,
            num_attention_heads=HEADS, ffn_dim=4 * HIDDEN, vocab_size=VOCAB,
            word_embed_proj_dim=HIDDEN, max_position_embeddings=64, use_cache=False),
            "OPTForCausalLM(2 layers, hidden 128, 4 heads, vocab 1000)", [_ids(), _mask()],
            ["decoder", "causal", "learned-positions"], field="logits"),
    hf_spec("hf-t5-encoder", _hf("T5EncoderModel", "T5Config", num_layers=2, d_model=HIDDEN,
            num_heads=HEADS, d_kv=32, d_ff=256, vocab_size=VOCAB, feed_forward_proj="gated-gelu"),
            "T5EncoderModel(T5Config(2 layers, d_model 128, 4 heads, d_kv 32, gated-gelu))",
            [_ids(), _mask()], ["t5-encoder", "encoder", "relative-position-bias", "rmsnorm"]),
    _rnn_spec("lstm"),
    _rnn_spec("gru"),
    hf_spec("hf-phi", _hf("PhiForCausalLM", "PhiConfig", **_PHI),
            "PhiForCausalLM(PhiConfig(2 layers, hidden 128, 4 heads, partial_rotary_factor 0.5))",
            [_ids(), _mask()], ["phi", "decoder", "rope", "partial-rotary", "parallel-residual"],
            field="logits", dynamo=True, opset=18),
    _KVCache.spec("hf-llama-kv", _hf("LlamaForCausalLM", "LlamaConfig", **dict(_LLAMA, use_cache=True)),
                  "LlamaForCausalLM(LlamaConfig(2 layers, hidden 128, 4 heads, 2 kv heads))",
                  ["llama", "llama-gqa", "gqa", "rope", "rmsnorm", "swiglu"], kv_heads=2,
                  head_dim=HIDDEN // HEADS),
    _KVCache.spec("hf-gpt2-kv-ts", _hf("GPT2LMHeadModel", "GPT2Config", **dict(_GPT2, use_cache=True)),
                  "GPT2LMHeadModel(GPT2Config(2 layers, n_embd 128, 4 heads))",
                  ["gpt2", "causal", "conv1d-linear"], kv_heads=HEADS, head_dim=HIDDEN // HEADS,
                  dynamo=False, opset=17),
    _KVCache.spec("hf-phi-kv", _hf("PhiForCausalLM", "PhiConfig", **dict(_PHI, use_cache=True)),
                  "PhiForCausalLM(PhiConfig(2 layers, hidden 128, 4 heads, partial_rotary_factor 0.5))",
                  ["phi", "rope", "partial-rotary", "parallel-residual"], kv_heads=HEADS,
                  head_dim=HIDDEN // HEADS),
    _KVCache.spec("hf-qwen2-kv", _hf("Qwen2ForCausalLM", "Qwen2Config", **dict(_LLAMA, use_cache=True)),
                  "Qwen2ForCausalLM(2 layers, hidden 128, 4 heads, 2 kv heads)",
                  ["llama-gqa", "gqa", "rope", "qkv-bias"], kv_heads=2, head_dim=HIDDEN // HEADS),
    _KVCache.spec("hf-mistral-kv-ts", _hf("MistralForCausalLM", "MistralConfig", sliding_window=8,
                  **dict(_LLAMA, use_cache=True)),
                  "MistralForCausalLM(2 layers, hidden 128, 4 heads, 2 kv heads, window 8)",
                  ["llama-gqa", "gqa", "rope", "sliding-window"], kv_heads=2,
                  head_dim=HIDDEN // HEADS, dynamo=False, opset=17),
    _KVCache.spec("hf-opt-kv", _hf("OPTForCausalLM", "OPTConfig", num_hidden_layers=2,
                  hidden_size=HIDDEN, num_attention_heads=HEADS, ffn_dim=4 * HIDDEN, vocab_size=VOCAB,
                  word_embed_proj_dim=HIDDEN, max_position_embeddings=64, use_cache=True),
                  "OPTForCausalLM(2 layers, hidden 128, 4 heads)", ["causal", "learned-positions"],
                  kv_heads=HEADS, head_dim=HIDDEN // HEADS),
    Spec(name="hf-gpt2-ort-fused", build=_gpt2_ort_fused_builder, inputs=[_ids(), _mask()],
         exporter="torchscript+ort-optimizer", framework="pytorch",
         provenance="hf-gpt2 exported with the torchscript exporter (opset 17), then "
                    "onnxruntime.transformers.optimizer.optimize_model(model_type='gpt2', "
                    "num_heads=4, hidden_size=128, opt_level=1)",
         tags=["transformer", "gpt2", "decoder", "contrib-ops", "torchscript"]),
    _lstm_lm_spec(),
    hf_spec("hf-mamba", _hf("MambaForCausalLM", "MambaConfig", num_hidden_layers=2,
            hidden_size=64, state_size=8, expand=2, conv_kernel=4, vocab_size=VOCAB,
            use_cache=False),
            "MambaForCausalLM(2 layers, hidden 64, state 8, expand 2, vocab 1000)", [_ids()],
            ["state-space", "mamba", "decoder"], field="logits", dynamo=True, opset=18),
]
