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
    _lstm_lm_spec(),
    hf_spec("hf-mamba", _hf("MambaForCausalLM", "MambaConfig", num_hidden_layers=2,
            hidden_size=64, state_size=8, expand=2, conv_kernel=4, vocab_size=VOCAB,
            use_cache=False),
            "MambaForCausalLM(2 layers, hidden 64, state 8, expand 2, vocab 1000)", [_ids()],
            ["state-space", "mamba", "decoder"], field="logits", dynamo=True, opset=18),
]
