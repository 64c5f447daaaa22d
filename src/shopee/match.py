"""From titles, phashes and similarities to predicted matches.

Candidates are kept as sparse *pair lists*: ``Pairs(rows, cols, sims)`` sorted by row and, within
a row, by similarity (best first), never a dense n x n matrix. A posting always matches itself;
pair lists hold only the other postings, at most ``MAX_OTHERS`` per row (Shopee groups have at
most 50 postings besides the row itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from shopee.metrics import group_sizes

MAX_OTHERS = 50


@dataclass(frozen=True)
class Pairs:
    """Candidate matches ``rows[i] -> cols[i]`` with similarity ``sims[i]`` among ``n`` postings."""

    rows: np.ndarray
    cols: np.ndarray
    sims: np.ndarray
    n: int

    def __len__(self) -> int:
        return len(self.rows)

    def above(self, threshold: float) -> Pairs:
        keep = self.sims >= threshold
        return Pairs(self.rows[keep], self.cols[keep], self.sims[keep], self.n)

    def with_self(self) -> tuple[np.ndarray, np.ndarray]:
        """Predicted ``(rows, cols)`` including each row's match with itself."""
        idx = np.arange(self.n, dtype=np.int64)
        return np.concatenate([idx, self.rows]), np.concatenate([idx, self.cols])


def top_k_pairs(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, n: int, k: int) -> Pairs:
    """Keep the ``k`` most similar candidates per row (self excluded), sorted best first.

    Equal similarities keep their input order (ties aside, any backend gives the same pairs).
    """
    not_self = rows != cols
    rows, cols, sims = rows[not_self], cols[not_self], sims[not_self]
    if sims.size and sims.min() >= -1.5 and sims.max() < 2.5:
        # One float64 key sorts by row, then similarity descending: far faster than lexsort.
        order = np.argsort(rows * 4.0 + (1.5 - sims.astype(np.float64)), kind="stable")
    else:
        order = np.lexsort((-sims, rows))
    rows, cols, sims = rows[order], cols[order], sims[order]
    starts = np.searchsorted(rows, rows, side="left")
    keep = (np.arange(len(rows)) - starts) < k
    return Pairs(rows[keep].astype(np.int64), cols[keep].astype(np.int64), sims[keep], n)


# --------------------------------------------------------------------------------------------
# kNN on embeddings
# --------------------------------------------------------------------------------------------


def knn_pairs(
    embeddings: np.ndarray | torch.Tensor,
    k: int = MAX_OTHERS,
    rows_per_chunk: int = 1024,
    device: str = "cpu",
) -> Pairs:
    """The ``k`` nearest other rows of each row by cosine (embeddings L2-normalized first).

    Chunked matrix products with top-k on ``device`` (CPU or CUDA): memory ``rows_per_chunk x n``.
    """
    x = torch.as_tensor(embeddings, dtype=torch.float32, device=device)
    x = torch.nn.functional.normalize(x, dim=1)
    n = len(x)
    k = min(k, n - 1)
    if k <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty, np.zeros(0, dtype=np.float32), n)
    rows, cols, sims = [], [], []
    for start in range(0, n, rows_per_chunk):
        block = x[start : start + rows_per_chunk] @ x.T
        local = torch.arange(len(block), device=block.device)
        block[local, local + start] = -float("inf")  # not itself
        values, index = block.topk(k, dim=1)
        rows.append(np.repeat(np.arange(start, start + len(block)), k))
        cols.append(index.cpu().numpy().ravel())
        sims.append(values.cpu().numpy().ravel())
    return Pairs(
        np.concatenate(rows).astype(np.int64),
        np.concatenate(cols).astype(np.int64),
        np.concatenate(sims).astype(np.float32),
        n,
    )


def neighbour_matrix(pairs: Pairs, k: int) -> np.ndarray:
    """``n x k`` neighbour indices, best first, padded with -1 (for Recall@K)."""
    out = np.full((pairs.n, k), -1, dtype=np.int64)
    starts = np.searchsorted(pairs.rows, pairs.rows, side="left")
    rank = np.arange(len(pairs.rows)) - starts
    keep = rank < k
    out[pairs.rows[keep], rank[keep]] = pairs.cols[keep]
    return out


# --------------------------------------------------------------------------------------------
# TF-IDF
# --------------------------------------------------------------------------------------------


def tfidf_matrix(titles: pd.Series | list[str]) -> sparse.csr_matrix:
    """L2-normalized binary TF-IDF of lower-cased word tokens (sparse, n x vocabulary)."""
    vectorizer = TfidfVectorizer(binary=True, lowercase=True, dtype=np.float32)
    try:
        return vectorizer.fit_transform(list(titles)).tocsr()
    except ValueError:  # every title empty or without a word token
        return sparse.csr_matrix((len(titles), 1), dtype=np.float32)


def sparse_cosine_pairs(
    x: sparse.csr_matrix, min_sim: float = 0.2, k: int = MAX_OTHERS, rows_per_chunk: int | None = None
) -> Pairs:
    """Top-``k`` cosine neighbours with similarity >= ``min_sim`` of L2-normalized sparse rows.

    Products of row chunks with the whole matrix stay sparse, so memory grows with the number of
    overlapping pairs, never with n x n or n x vocabulary.
    """
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
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty, np.zeros(0, dtype=np.float32), n)
    return Pairs(
        np.concatenate([p.rows for p in parts]),
        np.concatenate([p.cols for p in parts]),
        np.concatenate([p.sims for p in parts]),
        n,
    )


def tfidf_pairs(titles: pd.Series | list[str], min_sim: float = 0.2, k: int = MAX_OTHERS) -> Pairs:
    return sparse_cosine_pairs(tfidf_matrix(titles), min_sim=min_sim, k=k)


# --------------------------------------------------------------------------------------------
# phash
# --------------------------------------------------------------------------------------------


def phash_exact_pairs(phashes: pd.Series | list[str], k: int = MAX_OTHERS) -> Pairs:
    """Pairs of postings whose ``image_phash`` is identical (similarity 1), at most ``k`` per row.

    A missing or empty phash matches nothing.
    """
    values = pd.Series(phashes, dtype=object)
    missing = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    codes, _ = pd.factorize(values.where(~missing, None))  # missing -> -1
    n = len(codes)
    codes = np.where(missing, -1 - np.arange(n), codes)  # each missing row its own group
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    group_start = np.searchsorted(sorted_codes, codes, side="left")
    group_size = np.searchsorted(sorted_codes, codes, side="right") - group_start
    take = np.minimum(group_size, k + 1)  # room for self, dropped below
    rows = np.repeat(np.arange(n, dtype=np.int64), take)
    offsets = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
    cols = order[np.repeat(group_start, take) + offsets].astype(np.int64)
    return top_k_pairs(rows, cols, np.ones(len(rows), dtype=np.float32), n, k)


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------


def f1_by_threshold(pairs: Pairs, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Mean competition F1 when each row predicts itself plus its candidates >= each threshold.

    One pass per threshold over the pair list; nothing dense in n.
    """
    labels = np.asarray(labels)
    true = group_sizes(labels)
    hit = labels[pairs.rows] == labels[pairs.cols]
    scores = np.empty(len(thresholds))
    for i, threshold in enumerate(thresholds):
        keep = pairs.sims >= threshold
        predicted = 1 + np.bincount(pairs.rows[keep], minlength=pairs.n)
        hits = 1 + np.bincount(pairs.rows[keep & hit], minlength=pairs.n)
        scores[i] = float(np.mean(2 * hits / (predicted + true)))
    return scores
