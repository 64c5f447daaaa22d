"""Sparse candidate pair lists: ``Pairs`` and the helpers that build, merge and cut them.

A ``Pairs`` holds candidate matches ``rows[i] -> cols[i]`` with similarity ``sims[i]``, sorted by
row and, within a row, by similarity (best first); self pairs are never stored (every posting
matches itself implicitly) and a row holds at most ``MAX_OTHERS`` others unless said otherwise.
Nothing here is dense in n x n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shopee.constants import MAX_OTHERS


@dataclass(frozen=True)
class Pairs:
    """Candidate matches ``rows[i] -> cols[i]`` with similarity ``sims[i]`` among ``n`` postings."""

    rows: np.ndarray
    cols: np.ndarray
    sims: np.ndarray
    n: int

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls, n: int) -> Pairs:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none.copy(), np.zeros(0, dtype=np.float32), n)

    def select(self, keep: np.ndarray) -> Pairs:
        """The pairs where the boolean mask (or index array) ``keep`` selects them, order kept."""
        return Pairs(self.rows[keep], self.cols[keep], self.sims[keep], self.n)

    def of_rows(self, rows: np.ndarray) -> Pairs:
        """The pairs from the given rows (indices) only, order kept."""
        asked = np.zeros(self.n, dtype=bool)
        asked[np.asarray(rows, dtype=np.int64)] = True
        return self.select(asked[self.rows])

    def above(self, threshold: float) -> Pairs:
        """Pairs with ``sims >= threshold``."""
        return self.select(self.sims >= threshold)

    def counts(self) -> np.ndarray:
        """Number of pairs (others matched) of each row, length ``n``."""
        return np.bincount(self.rows, minlength=self.n)

    def positions(self) -> np.ndarray:
        """Each pair's place in its row's list, 0 for the row's first (pairs sorted by row)."""
        return places_in_rows(self.rows, self.n)

    def row_bounds(self) -> np.ndarray:
        """``n + 1`` offsets: row ``i``'s pairs are ``[bounds[i], bounds[i + 1])`` (pairs sorted by row)."""
        return np.searchsorted(self.rows, np.arange(self.n + 1))

    def with_self(self) -> tuple[np.ndarray, np.ndarray]:
        """Predicted ``(rows, cols)`` including each row's match with itself."""
        idx = np.arange(self.n, dtype=np.int64)
        return np.concatenate([idx, self.rows]), np.concatenate([idx, self.cols])


def places_in_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """Each entry's place among the entries of its row (``rows`` sorted, values in 0..n-1): one
    pass, where a binary search per entry costs a log factor on millions of pairs."""
    counts = np.bincount(rows, minlength=n)
    starts = np.cumsum(counts) - counts
    return np.arange(len(rows)) - starts[rows]


def top_k_pairs(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, n: int, k: int) -> Pairs:
    """Keep the ``k`` most similar candidates per row (self excluded), sorted best first.

    Equal similarities keep their input order (ties aside, any backend gives the same pairs).
    """
    rows, cols, sims = np.asarray(rows), np.asarray(cols), np.asarray(sims)
    not_self = rows != cols
    rows, cols, sims = rows[not_self], cols[not_self], sims[not_self]
    if sims.size and sims.min() >= -1.5 and sims.max() < 2.5:
        # One float64 key sorts by row, then similarity descending: far faster than lexsort.
        order = np.argsort(rows * 4.0 + (1.5 - sims.astype(np.float64)), kind="stable")
    else:
        order = np.lexsort((-sims, rows))
    rows, cols, sims = rows[order], cols[order], sims[order]
    keep = places_in_rows(rows, n) < k
    return Pairs(rows[keep].astype(np.int64), cols[keep].astype(np.int64), sims[keep], n)


def concat_pairs(parts: Sequence[Pairs], n: int) -> Pairs:
    """The pairs of ``parts`` one after the other (no sorting, no deduplication)."""
    for p in parts:
        if p.n != n:
            raise ValueError(f"pair list over {p.n} rows, expected {n}")
    if not parts:
        return Pairs.empty(n)
    return Pairs(
        np.concatenate([p.rows for p in parts]).astype(np.int64, copy=False),
        np.concatenate([p.cols for p in parts]).astype(np.int64, copy=False),
        np.concatenate([np.asarray(p.sims, dtype=np.float32) for p in parts]),
        n,
    )


def union_pairs(parts: Sequence[Pairs], n: int, k: int = MAX_OTHERS) -> Pairs:
    """Union of pair lists: each ``(row, col)`` once with the highest similarity any list gives it,
    then the ``k`` best per row, sorted like ``top_k_pairs`` (ties: lower column first)."""
    pairs = concat_pairs(parts, n)
    if not len(pairs):
        return pairs
    keys = pairs.rows * np.int64(n) + pairs.cols
    if np.isnan(pairs.sims).any():
        order = np.lexsort((-pairs.sims.astype(np.float64), keys))
        keys = keys[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        pick = order[first]  # key ascending: row, then column
    else:
        # One (unstable, fast) sort by key; among a key's copies keep one with the highest
        # similarity (copies with equal key and similarity are the same pair).
        order = np.argsort(keys)
        keys = keys[order]
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        if len(starts) == len(keys):
            pick = order  # no pair twice
        else:
            sims = pairs.sims[order]
            segment = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(keys))))
            best = np.flatnonzero(sims == np.maximum.reduceat(sims, starts)[segment])
            first = np.ones(len(best), dtype=bool)
            first[1:] = segment[best[1:]] != segment[best[:-1]]
            pick = order[best[first]]  # key ascending: row, then column
    return top_k_pairs(pairs.rows[pick], pairs.cols[pick], pairs.sims[pick], n, k)


def best_per_row(pairs: Pairs) -> Pairs:
    """Each row's most similar pair (the first on equal similarity)."""
    if not len(pairs):
        return pairs
    rows, sims = pairs.rows, pairs.sims
    if np.all(rows[1:] >= rows[:-1]) and not np.isnan(sims).any():
        # Sorted by row, as pair lists are: one pass over the row segments instead of a sort.
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        segment = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(rows))))
        best = np.flatnonzero(sims == np.maximum.reduceat(sims, starts)[segment])
        first = np.ones(len(best), dtype=bool)
        first[1:] = segment[best[1:]] != segment[best[:-1]]
        return pairs.select(best[first])
    order = np.lexsort((-pairs.sims.astype(np.float64), pairs.rows))
    rows = pairs.rows[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return pairs.select(order[first])


def neighbour_matrix(pairs: Pairs, k: int) -> np.ndarray:
    """``n x k`` neighbour indices, best first, padded with -1 (for Recall@K)."""
    out = np.full((pairs.n, k), -1, dtype=np.int64)
    rank = pairs.positions()
    keep = rank < k
    out[pairs.rows[keep], rank[keep]] = pairs.cols[keep]
    return out
