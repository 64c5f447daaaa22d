"""TF-IDF of titles and their sparse cosine neighbours (never dense in n x n or n x vocabulary).

Analyzers (binary term frequency, lower-cased, smooth idf, rows L2-normalized):

- ``"word"``: word n-grams of scikit-learn's default tokens (two or more word characters);
  ``ngram_range`` defaults to ``(1, 1)``.
- ``"char_wb"``: character n-grams inside word boundaries (robust to typos and glued words);
  ``ngram_range`` defaults to ``(3, 5)``. Slower: titles share many character n-grams.
- ``"both"``: the word unigram block and the ``char_wb`` block (``ngram_range`` is the character
  range, default ``(3, 5)``) side by side, each L2-normalized, then the row re-normalized. When a
  title has both parts, its cosine with another such title is the mean of the word and the
  character cosines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from shopee.constants import MAX_OTHERS
from shopee.errors import ShopeeError
from shopee.match.pairs import Pairs, top_k_pairs

ANALYZERS = ("word", "char_wb", "both")
DEFAULT_NGRAMS = {"word": (1, 1), "char_wb": (3, 5), "both": (3, 5)}


def _texts(titles: pd.Series | Sequence[str] | np.ndarray) -> list[str]:
    values = pd.Series(list(titles), dtype=object)
    return values.where(values.notna(), "").astype(str).tolist()


def _fit(texts: list[str], analyzer: str, ngram_range: tuple[int, int]) -> sparse.csr_matrix:
    vectorizer = TfidfVectorizer(
        binary=True, lowercase=True, dtype=np.float32, analyzer=analyzer, ngram_range=tuple(ngram_range)
    )
    try:
        return vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # every title empty or without a token
        return sparse.csr_matrix((len(texts), 1), dtype=np.float32)


def tfidf_matrix(
    titles: pd.Series | Sequence[str] | np.ndarray,
    analyzer: str = "word",
    ngram_range: tuple[int, int] | None = None,
) -> sparse.csr_matrix:
    """L2-normalized binary TF-IDF of the titles (sparse CSR, n x features); see the module doc."""
    if analyzer not in ANALYZERS:
        raise ShopeeError(f"tfidf analyzer {analyzer!r}: use one of {', '.join(ANALYZERS)}")
    if ngram_range is None:
        ngram_range = DEFAULT_NGRAMS[analyzer]
    lo, hi = (int(v) for v in ngram_range)
    if not 1 <= lo <= hi:
        raise ShopeeError(f"tfidf ngram_range {tuple(ngram_range)}: need 1 <= low <= high")
    texts = _texts(titles)
    if analyzer != "both":
        return _fit(texts, analyzer, (lo, hi))
    words = _fit(texts, "word", (1, 1))
    chars = _fit(texts, "char_wb", (lo, hi))
    both = sparse.hstack([words, chars], format="csr", dtype=np.float32)
    return normalize(both, norm="l2", copy=False).astype(np.float32).tocsr()


def sparse_cosine_pairs(
    x: sparse.csr_matrix, min_sim: float = 0.2, k: int = MAX_OTHERS, rows_per_chunk: int | None = None
) -> Pairs:
    """Top-``k`` cosine neighbours with similarity >= ``min_sim`` of L2-normalized sparse rows.

    Products of row chunks with the whole matrix stay sparse, so memory grows with the number of
    overlapping pairs of one chunk, never with n x n or n x vocabulary.
    """
    x = sparse.csr_matrix(x)
    n = x.shape[0]
    if rows_per_chunk is None:
        rows_per_chunk = max(256, min(4096, 20_000_000 // max(n, 1)))
    xt = x.T.tocsr()
    parts = []
    for start in range(0, n, rows_per_chunk):
        block = (x[start : start + rows_per_chunk] @ xt).tocsr()
        kept = np.flatnonzero(block.data >= min_sim)
        rows = np.searchsorted(block.indptr, kept, side="right").astype(np.int64) - 1 + start
        cols = block.indices[kept].astype(np.int64)
        parts.append(top_k_pairs(rows, cols, block.data[kept].astype(np.float32), n, k))
    if not parts:
        return Pairs.empty(n)
    return Pairs(
        np.concatenate([p.rows for p in parts]),
        np.concatenate([p.cols for p in parts]),
        np.concatenate([p.sims for p in parts]),
        n,
    )


def tfidf_pairs(
    titles: pd.Series | Sequence[str] | np.ndarray,
    min_sim: float = 0.2,
    k: int = MAX_OTHERS,
    analyzer: str = "word",
    ngram_range: tuple[int, int] | None = None,
) -> Pairs:
    """Top-``k`` TF-IDF cosine neighbours of each title with similarity >= ``min_sim``."""
    return sparse_cosine_pairs(tfidf_matrix(titles, analyzer, ngram_range), min_sim=min_sim, k=k)
