"""Architectures outside the zoo: export transformers models and prune each with ``spa prune --verify``.

A sweep (not a test) of how general the analyzer is on transformer families it
was not built against: encoders with relative or convolutional attention,
decoders with ALiBi, multi-query attention, sliding windows and mixtures of
experts, encoder-decoders, vision transformers and hierarchical vision models,
speech encoders that start with a convolutional feature extractor. Each model
is built from its transformers config, shrunk (2 layers, hidden 64, where the
config has those fields; random weights, nothing downloaded), exported by the
``--torch-python`` interpreter (torch + transformers, the ``models`` extra)
with the TorchScript exporter at opset 17 (mixtures of experts with transformers'
eager loop over experts), or with ``--dynamo`` by torch.export (torch's default
exporter, at its own opset), batch and sequence dynamic for text;
then this interpreter runs

    spa prune MODEL -o OUT --ratio 0.25 --verify

and records the exit code, the verdict (PASSED: mask equivalence holds), the
share of parameters and MACs removed, the pruned/total group counts and, where
nothing was prunable, the first reasons. ``--commands`` also runs every command
``check_wheel_models.py`` runs (inspect, optimize, prune, quantize, sparsify, with
their defaults) and records any that exits non-zero or with a traceback.

    python models/sweep_hf.py [--torch-python /path/to/python] [--keep FOLDER] [--commands] [--dynamo] [NAME ...]

Writes ``models/results/sweep_hf.md`` and ``.json`` (``sweep_hf_dynamo.*`` with ``--dynamo``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_wheel_models
from sweep_common import RESULTS, Row, export_failed, prune_row, search_row, slice_verdict, write_results

# name: (model_type, head, input kind, config overrides beyond the shared shrink)
SPECS: dict[str, tuple[str, str, str, dict[str, object]]] = {
    # text encoders
    "electra": ("electra", "base", "text", {"embedding_size": 32}),
    "deberta-v2": ("deberta-v2", "base", "text", {}),
    "xlm-roberta": ("xlm-roberta", "base", "text", {}),
    "mpnet": ("mpnet", "base", "text", {}),
    "convbert": ("convbert", "base", "text", {"embedding_size": 64}),
    "squeezebert": ("squeezebert", "base", "text", {"embedding_size": 64}),
    "mobilebert": ("mobilebert", "base", "text", {"embedding_size": 64, "intra_bottleneck_size": 32,
                                                  "num_feedforward_networks": 2}),
    "roformer": ("roformer", "base", "text", {"embedding_size": 64}),
    "ernie": ("ernie", "base", "text", {}),
    "rembert": ("rembert", "base", "text", {"input_embedding_size": 32, "output_embedding_size": 32}),
    "modernbert": ("modernbert", "base", "text", {"global_attn_every_n_layers": 2, "local_attention": 8}),
    # decoders (causal LM head)
    "bloom": ("bloom", "causal", "text", {"n_layer": 2, "n_head": 4}),
    "falcon": ("falcon", "causal", "text", {"num_kv_heads": 1, "new_decoder_architecture": False,
                                           "multi_query": True}),
    "gemma": ("gemma", "causal", "text", {"head_dim": 16}),
    "gemma2": ("gemma2", "causal", "text", {"head_dim": 16, "sliding_window": 8}),
    "gptj": ("gptj", "causal", "text", {"n_embd": 64, "n_layer": 2, "n_head": 4, "rotary_dim": 8}),
    "codegen": ("codegen", "causal", "text", {"n_embd": 64, "n_layer": 2, "n_head": 4, "rotary_dim": 8}),
    "gpt-bigcode": ("gpt_bigcode", "causal", "text", {"n_embd": 64, "n_layer": 2, "n_head": 4,
                                                     "multi_query": True}),
    "gpt-neo": ("gpt_neo", "causal", "text", {"attention_types": [[["global", "local"], 1]], "window_size": 8}),
    "stablelm": ("stablelm", "causal", "text", {}),
    "phi3": ("phi3", "causal", "text", {}),
    "qwen2-moe": ("qwen2_moe", "causal", "text", {"num_experts": 4, "num_experts_per_tok": 2,
                                                 "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64}),
    "mixtral": ("mixtral", "causal", "text", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "olmo": ("olmo", "causal", "text", {}),
    "starcoder2": ("starcoder2", "causal", "text", {}),
    "cohere": ("cohere", "causal", "text", {}),
    "granite": ("granite", "causal", "text", {}),
    "xglm": ("xglm", "causal", "text", {}),
    "biogpt": ("biogpt", "causal", "text", {}),
    "qwen3": ("qwen3", "causal", "text", {"head_dim": 16}),
    # encoder-decoders
    "bart": ("bart", "base", "seq2seq", {}),
    "marian": ("marian", "base", "seq2seq", {"decoder_vocab_size": 1000}),
    "pegasus": ("pegasus", "base", "seq2seq", {}),
    "t5": ("t5", "base", "seq2seq", {"d_kv": 16, "num_layers": 2, "num_decoder_layers": 2}),
    "m2m-100": ("m2m_100", "base", "seq2seq", {}),
    # vision
    "dinov2": ("dinov2", "base", "image", {"image_size": 56, "patch_size": 14}),
    "beit": ("beit", "base", "image", {"image_size": 64, "patch_size": 16, "use_relative_position_bias": True}),
    "deit": ("deit", "base", "image", {"image_size": 64}),
    "swinv2": ("swinv2", "base", "image", {"image_size": 64, "embed_dim": 32, "depths": [1, 1],
                                          "num_heads": [2, 4], "window_size": 4}),
    "levit": ("levit", "base", "image", {"image_size": 64}),
    "cvt": ("cvt", "base", "image", {"image_size": 64}),
    "pvt-v2": ("pvt_v2", "base", "image", {"depths": [1, 1, 1, 1]}),
    "yolos": ("yolos", "base", "image", {"image_size": [64, 64], "num_detection_tokens": 10}),
    "dpt": ("dpt", "depth", "image", {"image_size": 64, "backbone_out_indices": [0, 1], "neck_hidden_sizes": [16, 32],
                                     "reassemble_factors": [4, 2], "fusion_hidden_size": 32}),
    "focalnet": ("focalnet", "base", "image", {"depths": [1, 1, 1, 1], "embed_dim": 32}),
    "efficientnet": ("efficientnet", "base", "image", {"image_size": 64, "depth_coefficient": 0.2}),
    "regnet": ("regnet", "base", "image", {"depths": [1, 1, 1, 1]}),
    "bit": ("bit", "base", "image", {"depths": [1, 1, 1, 1]}),
    "hiera": ("hiera", "base", "image", {"depths": [1, 1, 1, 1], "embed_dim": 32, "image_size": [64, 64]}),
    # speech
    "wav2vec2": ("wav2vec2", "base", "audio", {"conv_dim": [32] * 3, "conv_stride": [5, 2, 2],
                                              "conv_kernel": [10, 3, 3], "num_conv_pos_embeddings": 16}),
    "hubert": ("hubert", "base", "audio", {"conv_dim": [32] * 3, "conv_stride": [5, 2, 2],
                                          "conv_kernel": [10, 3, 3], "num_conv_pos_embeddings": 16}),
    "wavlm": ("wavlm", "base", "audio", {"conv_dim": [32] * 3, "conv_stride": [5, 2, 2],
                                        "conv_kernel": [10, 3, 3], "num_conv_pos_embeddings": 16}),
    "whisper-encoder": ("whisper", "encoder", "mel", {"num_mel_bins": 80, "max_source_positions": 1500}),
    "ast": ("audio-spectrogram-transformer", "base", "spectrogram", {"max_length": 128, "num_mel_bins": 64}),
    # text + image
    "clip": ("clip", "base", "text-image", {}),
    "siglip": ("siglip", "base", "text-image", {}),
}

EXPORT = r'''
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch, transformers
torch.set_num_threads(1)
torch.manual_seed(0)
model_type, head, kind, overrides, out = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
dynamo = overrides.pop("__dynamo__", False)
kv = overrides.pop("__kv__", False)  # one decoding step with its KV cache (causal heads)
opset = overrides.pop("__opset__", None if dynamo else 17)  # torch.export: the exporter's own opset
SHRINK = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 128, "vocab_size": 1000, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
          "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128,
          "decoder_ffn_dim": 128, "d_ff": 128, "num_heads": 4, "n_embd": 64, "n_layer": 2, "n_head": 4,
          "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}
def shrunk(cfg, extra):
    """Keyword arguments that shrink a config (the fields it has), so that __init__ derives the rest."""
    kwargs = {key: value for key, value in SHRINK.items()
              if hasattr(cfg, key) and (isinstance(getattr(cfg, key), int) or key.endswith("token_id"))}
    return {**kwargs, **extra, "use_cache": kv}
default = transformers.AutoConfig.for_model(model_type)
kwargs = shrunk(default, overrides)
if kind == "text-image":
    kwargs["text_config"] = shrunk(default.text_config, {})
    kwargs["vision_config"] = shrunk(default.vision_config, {"image_size": 64, "patch_size": 16})
config = transformers.AutoConfig.for_model(model_type, **kwargs)
config._attn_implementation = "eager"
config._experts_implementation = "eager"  # a loop over experts: what exporters can trace
Auto = {"base": transformers.AutoModel, "causal": transformers.AutoModelForCausalLM,
        "depth": transformers.AutoModelForDepthEstimation, "encoder": transformers.AutoModel}[head]
model = Auto.from_config(config).eval()
if head == "encoder":
    model = model.get_encoder()
seq = 16
ids = torch.randint(3, 1000, (1, seq))
mask = torch.ones(1, seq, dtype=torch.int64)
size = getattr(config, "image_size", 64)
size = size if isinstance(size, (list, tuple)) else [size, size]
if kind == "text":
    names, args = ["input_ids", "attention_mask"], (ids, mask)
elif kind == "seq2seq":
    names, args = ["input_ids", "attention_mask", "decoder_input_ids"], (ids, mask, ids[:, :8])
elif kind == "image":
    names, args = ["pixel_values"], (torch.randn(1, 3, *size),)
elif kind == "audio":
    names, args = ["input_values"], (torch.randn(1, 8000),)
elif kind == "mel":
    names, args = ["input_features"], (torch.randn(1, 80, 3000),)
elif kind == "spectrogram":
    names, args = ["input_values"], (torch.randn(1, 128, 64),)
else:  # text-image
    names, args = ["input_ids", "pixel_values", "attention_mask"], (ids, torch.randn(1, 3, 64, 64), mask)

if kv:  # the cache a prefix of 8 tokens leaves, whatever its layout; then a step of 4 tokens on it
    past_len, step, batch = 8, 4, 2 if dynamo else 1  # torch.export specialises a size of 1
    ids = torch.randint(3, 1000, (batch, past_len + step))
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :past_len], use_cache=True).past_key_values
    layers = len(prefix.layers)
    past_names = [f"past_key_values.{i}.{part}" for i in range(layers) for part in ("key", "value")]
    names = ["input_ids", "attention_mask", *past_names]
    args = (ids[:, past_len:], torch.ones(batch, past_len + step, dtype=torch.int64),
            *(t for layer in prefix.layers for t in (layer.keys, layer.values)))

class Step(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = model
    def forward(self, input_ids, attention_mask, *past):
        cache = transformers.DynamicCache(config=model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        return (out.logits, *(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)))

class First(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = model
    def forward(self, *tensors):
        output = self.model(**dict(zip(names, tensors)), return_dict=True)
        for key in ("logits", "predicted_depth", "last_hidden_state", "logits_per_image"):
            if output.get(key) is not None:
                return output[key]
        return output[0]

dynamic = {name: {0: "batch", 1: "sequence"} for name in names if name in ("input_ids", "attention_mask")}
if "decoder_input_ids" in names:
    dynamic["decoder_input_ids"] = {0: "batch", 1: "target"}
outputs = ["y"]
if kv:
    dynamic["attention_mask"] = {0: "batch", 1: "total"}
    dynamic.update({name: {0: "batch", 2: "past"} for name in names[2:]})
    outputs += [name.replace("past_key_values", "present") for name in names[2:]]
    dynamic.update({name: {0: "batch", 2: "total"} for name in outputs[1:]})
with torch.no_grad():
    wrapper = Step() if kv else First()
    wrapper(*args)
    if dynamo and kv:
        b, s, p, t = (torch.export.Dim(n, min=lo, max=64) for n, lo in (("batch", 1), ("seq", 1), ("past", 1), ("total", 2)))
        shapes = ({0: b, 1: s}, {0: b, 1: t}, tuple({0: b, 2: p} for _ in names[2:]))
    else:
        shapes = tuple({axis: torch.export.Dim.DYNAMIC for axis in dynamic[n]} if n in dynamic else None for n in names)
        shapes = (shapes,)  # forward(*tensors): one tuple
    torch.onnx.export(wrapper, args, out, opset_version=opset, dynamo=dynamo, input_names=names, output_names=outputs,
                      dynamic_axes=None if dynamo else dynamic or None,
                      dynamic_shapes=shapes if dynamo and dynamic else None)
import onnxruntime  # an export that ONNX Runtime cannot run is the exporter's failure, not spa's
session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
try:
    # the traced inputs, then three other draws of the same shapes: a trace that baked data-dependent
    # sizes (a mixture of experts' routing under TorchScript) runs only on what it saw
    session.run(None, {name: arg.numpy() for name, arg in zip(names, args)})
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        session.run(None, {name: (torch.randint(3, 1000, arg.shape, generator=gen) if name.endswith("input_ids")
                                  else torch.randn(arg.shape, generator=gen) if arg.is_floating_point() else arg).numpy()
                           for name, arg in zip(names, args)})
except Exception as error:
    raise SystemExit(f"RuntimeError: the exported model does not run in ONNX Runtime: {str(error)[:100]}")
'''


def sweep_one(name: str, torch_python: str, folder: Path, keep: bool = False, commands: bool = False,
              dynamo: bool = False, kv: bool = False, search: bool = False) -> Row:  # fmt: skip
    model_type, head, kind, overrides = SPECS[name]
    overrides = {**overrides, "__dynamo__": True} if dynamo else overrides
    overrides = {**overrides, "__kv__": True} if kv else overrides
    model, pruned = folder / f"{name}.onnx", folder / f"{name}.pruned.onnx"
    exported = subprocess.run([torch_python, "-c", EXPORT, model_type, head, kind, json.dumps(overrides), str(model)],
                              capture_output=True, text=True, timeout=900)  # fmt: skip
    if exported.returncode != 0:
        return export_failed(name, exported.stderr)
    row = prune_row(name, model, pruned, keep or commands or search, type=model_type)
    if search:
        row["search"] = search_row(model, folder)
    if commands:  # every command check_wheel_models.py runs, with its defaults
        runs = check_wheel_models.run(model, folder)
        odd = [f"{command} exit {code}: {last[:60]}" for command, code, last, _ in runs
               if code != 0 or last.startswith("TRACEBACK")]  # fmt: skip
        row["commands"] = "; ".join(odd) or f"{len(runs)} commands exit 0"
        # SliceGPT on every family: its verdict, or its refusal (BERT-style encoders are post-norm)
        row["slice"] = slice_verdict(model, folder / f"{name}.sliced.onnx", keep)
    for path in (model, pruned) if (commands or search) and not keep else ():
        path.unlink(missing_ok=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--torch-python", default="/work/torchenv/bin/python")
    parser.add_argument("--keep", type=Path, help="keep the exported and pruned models in this folder")
    parser.add_argument("--commands", action="store_true",
                        help="also run inspect, optimize, prune, quantize and sparsify with their defaults, "
                             "and spa slice")
    parser.add_argument("--dynamo", action="store_true",
                        help="export with torch.export (torch.onnx.export(dynamo=True), its default opset; "
                             "torch's default exporter) instead of TorchScript; writes sweep_hf_dynamo.*")
    parser.add_argument("--kv", action="store_true",
                        help="the causal LMs only, each exported as one decoding step with its KV cache "
                             "(past_key_values.* in, present.* out); writes sweep_hf_kv[_dynamo].*")
    parser.add_argument("--search", action="store_true",
                        help="also run the search, spa optimize --calib (16 seeded samples) --max-drop 5%%")
    args = parser.parse_args()
    everything = [name for name in SPECS if not args.kv or SPECS[name][1] == "causal"]
    args.names = args.names or everything
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="spa-sweep-") as folder:
        for name in args.names:
            rows.append(sweep_one(name, args.torch_python, args.keep or Path(folder), args.keep is not None,
                                  args.commands, args.dynamo, args.kv, args.search))  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    stem = "sweep_hf" + ("_kv" if args.kv else "")
    torchscript = RESULTS / f"{stem}.json"
    if args.dynamo and torchscript.exists():  # the same families through TorchScript, side by side
        groups = {row["name"]: row.get("groups", row["status"]) for row in json.loads(torchscript.read_text())}
        for row in rows:
            row["torchscript"] = groups.get(row["name"], "")
    exporter = ("torch.export (`--dynamo`: torch.onnx.export(dynamo=True), the exporter's default opset)"
                if args.dynamo else "TorchScript export at opset 17")
    flags = (" --kv" if args.kv else "") + (" --dynamo" if args.dynamo else "")
    what = ("causal LMs exported as one decoding step of 4 tokens on the 8-token KV cache a prefix left "
            "(past_key_values.* in, present.* out; batch, sequence, past and total dynamic)" if args.kv
            else "dynamic batch and sequence for text")
    intro = (f"Written by `python models/sweep_hf.py{flags}` (transformers configs "
             f"shrunk to 2 layers and hidden 64, random weights, {exporter} with {what}, "
             "`spa prune --ratio 0.25 --verify`, l1 criterion; mask equivalence against the input).")
    columns = [("model", "name"), ("transformers type", "type"), ("result", "status"), ("params", "params"),
               ("MACs", "macs"), ("groups pruned", "groups"), ("detail", "detail"),
               ("TorchScript's groups pruned (sweep_hf.md)", "torchscript"), ("other commands (--commands)", "commands"),
               ("spa slice --ratio 0.25 (--commands)", "slice"),
               ("spa optimize --max-drop 5% on 16 seeded samples (--search)", "search")]  # fmt: skip
    # a --search run writes its own table, as sweep_timm.py's
    stem += ("_dynamo" if args.dynamo else "") + ("_search" if args.search else "")
    return write_results(stem, rows, args.names != everything,
                         "spa prune on transformers architectures outside the zoo", intro, columns)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
