"""Text data bundled in the ``gensim`` wheel (``gensim/test/test_data``, LGPL-2.1 package).

- ``lee.cor`` and ``similarities0-1.txt``: the 50 news documents of Lee, Pincombe and Welsh
  (2005) and their 50 x 50 mean human similarity judgments;
- ``lee_background.cor``: 300 further documents from the same news source (Australian
  Broadcasting Corporation), disjoint from the 50;
- ``wordsim353.tsv`` (Finkelstein et al. 2002) and ``simlex999.txt`` (Hill, Reichart and
  Korhonen 2015): word pairs with mean human similarity scores.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from spa.errors import UserError
from spa.testbeds.packages import package_file

__all__ = ["data_file", "lee_background", "lee_documents", "read_lines", "word_pairs"]

GENSIM_INSTALL = "pip install 'spa[testbeds]' (gensim ships the test data)"


def data_file(name: str) -> Path:
    """A file of gensim's bundled test data."""
    return package_file("gensim", f"gensim/test/test_data/{name}", GENSIM_INSTALL)


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of ``path``, stripped."""
    # lee.cor has Latin-1 pound signs (0xa3); the other files are ASCII
    return [line.strip() for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]


@functools.cache
def lee_documents() -> tuple[tuple[str, ...], np.ndarray]:
    """The 50 evaluation documents and their 50 x 50 human similarity matrix."""
    documents = tuple(read_lines(data_file("lee.cor")))
    matrix = np.loadtxt(data_file("similarities0-1.txt"))
    if len(documents) != 50 or matrix.shape != (50, 50):
        raise UserError(f"gensim's lee.cor / similarities0-1.txt have {len(documents)} documents "
                        f"and a {matrix.shape} matrix, not 50 and 50 x 50; {GENSIM_INSTALL}")
    return documents, matrix


@functools.cache
def lee_background() -> tuple[str, ...]:
    """The 300 background documents (calibration only; disjoint from :func:`lee_documents`)."""
    return tuple(read_lines(data_file("lee_background.cor")))


@functools.cache
def word_pairs(benchmark: str) -> tuple[tuple[tuple[str, str], ...], np.ndarray]:
    """((word, word), ...) and human scores of ``"wordsim353"`` or ``"simlex999"``."""
    files = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
    if benchmark not in files:
        raise UserError(f"unknown word benchmark {benchmark!r}; use one of {sorted(files)}")
    pairs, scores = [], []
    for line in read_lines(data_file(files[benchmark])):
        if line.startswith("#"):
            continue
        first, second, score = line.split("\t")
        pairs.append((first, second))
        scores.append(float(score))
    return tuple(pairs), np.array(scores)
