"""Torch-Pruning 1.6.1 on all-MiniLM-L6-v2 (sentence-transformers weights), no fine-tuning.

Run by ``models/compare_minilm.py`` with the torch environment's Python; it writes one ONNX
encoder per importance criterion plus ``tp_minilm.json`` (params and pruning settings) into
``--out``. The spa side evaluates those files with ``spa.testbeds.minilm.evaluate``, exactly as
it evaluates spa's own outputs.

What is pruned: whole attention heads (``prune_num_heads=True``, head size kept) and MLP
intermediate channels, the same uniform ratio in every layer, the hidden (residual) width left
alone (the ``BertSelfOutput`` / ``BertOutput`` projections are ignored layers, as in
Torch-Pruning's own ``examples/transformers/prune_hf_bert.py``). The ratio is the smallest one
that removes at least ``--target`` of the encoder's parameters (embeddings included in the
count, as spa counts an ONNX file's parameters). Importances:

* ``l1``, ``l2``: ``MagnitudeImportance(p=1|2)`` (data-free);
* ``taylor``: ``TaylorImportance`` (first-order, |w * dL/dw|) and ``hessian``:
  ``HessianImportance`` (OBD, diagonal empirical Fisher from per-sample gradients), both with a
  self-supervised loss on the calibration documents because the model ships without a head or
  labels: each document is cut in two halves, and the loss is the symmetric in-batch InfoNCE of
  the halves' sentence embeddings (mean pooling, unit norm, temperature 0.05; the contrastive
  objective all-MiniLM-L6-v2 was trained with, on pairs a user can make without labels);
* ``random``: ``RandomImportance`` (reference).

    /work/torchenv/bin/python models/tp_minilm.py --model-dir DIR --calib docs.json --out DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from export_minilm_torch import Encoder  # the same keyword wrapper the ONNX export uses
from tokenizers import Tokenizer
from transformers import AutoModel
from transformers.models.bert.modeling_bert import BertOutput, BertSelfAttention, BertSelfOutput

CRITERIA = ("l1", "l2", "taylor", "hessian", "random")
NAMES = ("input_ids", "attention_mask", "token_type_ids")


def tokenizer(model_dir: Path) -> Tokenizer:
    found = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    found.enable_truncation(max_length=256)
    found.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")
    return found


def feed(tok: Tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    encodings = tok.encode_batch(texts)
    return {
        "input_ids": torch.tensor([e.ids for e in encodings]),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
        "token_type_ids": torch.tensor([e.type_ids for e in encodings]),
    }


def embed(model: Encoder, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = model(**inputs)
    mask = inputs["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def contrastive_losses(model: Encoder, tok: Tokenizer, documents: list[str]) -> torch.Tensor:
    """Per-document symmetric InfoNCE between the two halves of each document."""
    halves = [document.split() for document in documents]
    first = [" ".join(words[: len(words) // 2]) for words in halves]
    second = [" ".join(words[len(words) // 2 :]) for words in halves]
    a, b = embed(model, feed(tok, first)), embed(model, feed(tok, second))
    logits = a @ b.T / 0.05
    target = torch.arange(len(documents))
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logits, target, reduction="none") + ce(logits.T, target, reduction="none"))


def build(model_dir: Path) -> Encoder:
    bert = AutoModel.from_pretrained(str(model_dir), add_pooling_layer=False)
    return Encoder(bert).eval()


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune(model: Encoder, criterion: str, ratio: float, example: dict[str, torch.Tensor],
          tok: Tokenizer | None = None, documents: list[str] | None = None) -> Encoder:
    """Prune ``model`` in place with one Torch-Pruning importance; returns it."""
    importance: Any = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": tp.importance.TaylorImportance,
        "hessian": tp.importance.HessianImportance,
        "random": tp.importance.RandomImportance,
    }[criterion]()
    num_heads, ignored = {}, []
    for module in model.modules():
        if isinstance(module, BertSelfAttention):
            for linear in (module.query, module.key, module.value):
                num_heads[linear] = module.num_attention_heads
        if isinstance(module, BertSelfOutput | BertOutput):
            ignored.append(module.dense)
    ignored.append(model.bert.embeddings)
    pruner = tp.pruner.MetaPruner(
        model, tuple(example[name] for name in NAMES), importance=importance,
        pruning_ratio=ratio, ignored_layers=ignored, num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
        global_pruning=False,
    )
    if criterion in ("taylor", "hessian"):
        assert tok is not None and documents is not None
        losses = contrastive_losses(model, tok, documents)
        if criterion == "taylor":
            model.zero_grad()
            losses.mean().backward()
        else:
            importance.zero_grad()
            for loss in losses:
                model.zero_grad()
                loss.backward(retain_graph=True)
                importance.accumulate_grad(model)
    pruner.step()
    for module in model.modules():
        if isinstance(module, BertSelfAttention):
            module.num_attention_heads = pruner.num_heads[module.query]
            module.all_head_size = module.query.out_features
    model.zero_grad()
    return model


def export(model: Encoder, example: dict[str, torch.Tensor], out: Path) -> None:
    axes = {0: "batch_size", 1: "sequence_length"}
    with torch.no_grad():
        torch.onnx.export(
            model, tuple(example[name] for name in NAMES), str(out), input_names=list(NAMES),
            output_names=["last_hidden_state"], opset_version=17, dynamo=False,
            dynamic_axes={**{name: axes for name in NAMES}, "last_hidden_state": axes},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True, help="JSON list of documents")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    args = parser.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(args.model_dir)
    documents = json.loads(args.calib.read_text())
    example = feed(tok, ["a short example sentence", "and another, a little longer one"])
    dense = build(args.model_dir)
    dense_params = count(dense)
    # uniform ratio: the removed share depends on the ratio only, so search it with l2 (fast)
    low, high = 0.0, 0.95
    for _ in range(12):
        middle = (low + high) / 2
        removed = 1 - count(prune(copy.deepcopy(dense), "l2", middle, example)) / dense_params
        low, high = (low, middle) if removed >= args.target else (middle, high)
    ratio = high
    rows = []
    for criterion in args.criteria:
        began = time.perf_counter()
        model = prune(copy.deepcopy(dense), criterion, ratio, example, tok, documents)
        path = args.out / f"tp_{criterion}.onnx"
        export(model, example, path)
        rows.append({
            "criterion": criterion, "ratio": ratio, "params": count(model),
            "dense_params": dense_params, "path": str(path),
            "heads": [m.num_attention_heads for m in model.modules()
                      if isinstance(m, BertSelfAttention)],
            "mlp": [m.dense.out_features for m in model.modules()
                    if type(m).__name__ == "BertIntermediate"],
            "seconds": round(time.perf_counter() - began, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    summary = args.out / "tp_minilm.json"  # rows of criteria not rerun are kept
    if summary.exists():
        done = {row["criterion"] for row in rows}
        rows = [r for r in json.loads(summary.read_text())["rows"] if r["criterion"] not in done] + rows
    summary.write_text(json.dumps(
        {"target": args.target, "calibration_documents": len(documents), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
