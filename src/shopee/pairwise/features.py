"""Candidate pairs and their features, vectorized over pairs (no Python loop over pairs).

**Candidates** of a set of rows: the union over the rule's members of each query row's
neighbour list (``member_candidates``: embedding kNN with k = 51 after the member's blending,
TF-IDF, phash) above loose floors (each member's tuned threshold minus ``EMBEDDING_MARGIN`` /
``TFIDF_MARGIN``, phash ``PHASH_EXTRA_BITS`` more bits), plus the query's ``ALWAYS_NEAREST``
nearest neighbours of every embedding member whatever their similarity. A pair is **directed**,
``a -> b`` from query row ``a`` to its candidate ``b``: each row decides its own matches, as each
row's F1 is its own.

**Features**, all seen from the query end (``feature_names`` lists them; ``<m>`` is each member).
Nothing describes the candidate end on its own: in a dense CV set the candidate is often a row
the fold model was trained on (sitting unusually tight in its group, and always of another group
than a validation query), which a test row never is; its own rank list, gap or density would let
the model recognize a training row, a shortcut the test does not offer.

- ``<m>_sim``: the member's similarity of the pair, computed exactly (embedding cosine after its
  blending, TF-IDF cosine, phash 1 - bits/64; NaN where a phash is missing);
- ``<m>_rank``: the candidate's rank in the query's neighbour list (1 = nearest; NaN when not in
  it);
- ``<m>_gap``: the query's best similarity minus the pair's;
- ``<m>_over_k5`` / ``_over_k20``: the pair's similarity minus the query's 5th / 20th nearest's:
  in a denser set the k-th neighbour comes closer, so the same similarity stands out less;
- ``<m>_top<k>_mean`` / ``_std``: the mean and spread of the query's top-5/10/20 similarities
  (its neighbourhood's density), standardized over the rows of the set scored, since a
  70,000-row test is denser than any CV set;
- of the two titles and images: ``len_diff`` (characters), ``len_ratio``, ``token_jaccard`` (word
  sets), ``char_cosine`` (cosine of character 3-gram sets; scikit-learn, as rapidfuzz is not in
  Kaggle's image), ``units_agree`` / ``units_conflict`` (a quantity of one dimension stated alike
  / only differently, ``units``), ``same_phash``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer

from shopee.constants import K
from shopee.errors import ShopeeError
from shopee.match import Pairs, member_candidates, member_space, tfidf_matrix, unit_relations
from shopee.match.phash import parse_phashes

EMBEDDING_MARGIN = 0.3
TFIDF_MARGIN = 0.3
ALWAYS_NEAREST = 5
PHASH_EXTRA_BITS = 4
DENSITY_TOPS = (5, 10, 20)
RELATIVE_TO = (5, 20)  # the pair's similarity less the query's k-th nearest's: it follows density
CHUNK = 65536  # pairs per chunk when gathering rows


@dataclass
class Candidates:
    """Directed candidate pairs ``a[i] -> b[i]`` (query, candidate) of ``n`` rows, sorted by
    query, with what the features need."""

    n: int
    a: np.ndarray
    b: np.ndarray
    lists: dict[str, Pairs]  # member name -> its neighbour list (top k - 1, best first)

    def __len__(self) -> int:
        return len(self.a)


def floors_of(params: Mapping[str, Any]) -> dict[str, float]:
    """Each member's candidate floor: loose, so that true pairs stay among the candidates."""
    floors = {}
    for m in params["members"]:
        if m["type"] == "embedding":
            floors[m["name"]] = round(m["threshold"] - EMBEDDING_MARGIN, 4)
        elif m["type"] == "tfidf":
            floors[m["name"]] = round(m["threshold"] - TFIDF_MARGIN, 4)
        else:
            floors[m["name"]] = int(min(64, m["max_distance"] + PHASH_EXTRA_BITS))
    return floors


def _loose(member: Mapping[str, Any], floor: float) -> dict[str, Any]:
    """The member with its floor as threshold (phash: as distance; TF-IDF lists stop there)."""
    if member["type"] == "phash":
        return {**member, "max_distance": int(floor)}
    if member["type"] == "tfidf":
        return {**member, "threshold": floor, "min_sim": max(0.0, min(floor, member.get("min_sim", 0.2)))}
    return {**member, "threshold": floor}


def candidates(
    params: Mapping[str, Any],
    floors: Mapping[str, float],
    n: int,
    *,
    embeddings: Mapping[str, np.ndarray] | None = None,
    titles: Sequence[str] | np.ndarray | None = None,
    phashes: Sequence[str] | np.ndarray | None = None,
    backend: str = "torch",
    device: str = "cpu",
    timings: dict[str, float] | None = None,
    queries: np.ndarray | None = None,
) -> Candidates:
    """The candidate pairs of ``n`` rows under the rule's members and ``floors``, from the rows
    ``queries`` (sorted indices; all rows when None). ``timings`` (if given) gets the seconds of
    the members' neighbour lists (``pairs:neighbours``: the same work the thresholds' rule does)
    and of their union (``pairs:candidates``)."""
    lists, rows, cols = {}, [], []
    neighbours = 0.0
    for m in params["members"]:
        loose = _loose(m, floors[m["name"]])
        started = time.perf_counter()
        found = member_candidates(
            loose,
            n,
            embeddings=embeddings,
            titles=titles,
            phashes=phashes,
            k=K,
            backend=backend,
            device=device,
            queries=queries,
            blend_candidates=params.get("blend_candidates"),
        )
        neighbours += time.perf_counter() - started
        lists[m["name"]] = found
        keep = found.sims >= loose["threshold"] if m["type"] != "phash" else np.ones(len(found), bool)
        if m["type"] == "embedding":  # each row's nearest few stay candidates (min2, low recall)
            keep |= found.positions() < ALWAYS_NEAREST
        rows.append(found.rows[keep])
        cols.append(found.cols[keep])
    started = time.perf_counter()
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    keys = np.unique(r[r != c] * max(n, 1) + c[r != c])
    if timings is not None:
        timings["pairs:neighbours"] = round(neighbours, 3)
        timings["pairs:candidates"] = round(time.perf_counter() - started, 3)
    return Candidates(n, keys // max(n, 1), keys % max(n, 1), lists)


def feature_names(params: Mapping[str, Any]) -> list[str]:
    names = []
    for m in params["members"]:
        p = m["name"]
        names += [f"{p}_sim", f"{p}_rank", f"{p}_gap"]
        names += [f"{p}_over_k{k}" for k in RELATIVE_TO]
        for top in DENSITY_TOPS:
            names += [f"{p}_top{top}_mean", f"{p}_top{top}_std"]
    return names + [
        "len_diff",
        "len_ratio",
        "token_jaccard",
        "char_cosine",
        "units_agree",
        "units_conflict",
        "same_phash",
    ]


def _rowwise_dot(x: np.ndarray | sparse.csr_matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), CHUNK):
        xa, xb = x[a[s : s + CHUNK]], x[b[s : s + CHUNK]]
        if sparse.issparse(x):
            out[s : s + CHUNK] = np.asarray(xa.multiply(xb).sum(axis=1)).ravel()
        else:
            out[s : s + CHUNK] = np.einsum("ij,ij->i", xa, xb)
    return out


def _ranks(lists: Pairs, n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rank of ``b`` in ``a``'s neighbour list (1-based), NaN when absent."""
    if not len(lists):
        return np.full(len(a), np.nan, dtype=np.float32)
    position = lists.positions() + 1
    keys = lists.rows * n + lists.cols
    order = np.argsort(keys)
    keys, position = keys[order], position[order]
    wanted = a * n + b
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, position[at], np.nan).astype(np.float32)


def _row_table(lists: Pairs, n: int, width: int) -> np.ndarray:
    """``n x width`` similarities of each row's list, best first, NaN-padded."""
    table = np.full((n, width), np.nan, dtype=np.float32)
    if len(lists):
        position = lists.positions()
        inside = position < width
        table[lists.rows[inside], position[inside]] = lists.sims[inside]
    return table


def _standardized(values: np.ndarray, scored: np.ndarray | None) -> np.ndarray:
    """z-scores over the rows scored (all rows when None): the set's own density is the zero."""
    basis = values if scored is None else values[scored]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN: no neighbours at all
        mean, std = np.nanmean(basis), np.nanstd(basis)
    if not np.isfinite(mean):
        return np.full_like(values, np.nan)
    return (values - mean) / (std if std > 0 else 1.0)


def features(
    params: Mapping[str, Any],
    cands: Candidates,
    *,
    embeddings: Mapping[str, np.ndarray] | None = None,
    titles: Sequence[str] | np.ndarray | None = None,
    phashes: Sequence[str] | np.ndarray | None = None,
    scored: np.ndarray | None = None,
    backend: str = "torch",
    device: str = "cpu",
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The features of every candidate pair (columns ``names``, by default
    ``feature_names(params)``; a model trained before a feature was added asks for its own list),
    float32."""
    n, a, b = cands.n, cands.a, cands.b
    out: dict[str, np.ndarray] = {}
    hashes, present = parse_phashes(phashes) if phashes is not None else (None, None)
    for m in params["members"]:
        p, lists = m["name"], cands.lists[m["name"]]
        if m["type"] == "embedding":
            x = member_space(
                m, n, embeddings, K, backend, device, blend_candidates=params.get("blend_candidates")
            )
            sims = _rowwise_dot(x, a, b)
        elif m["type"] == "tfidf":
            x = tfidf_matrix(titles, m.get("analyzer", "word"), m.get("ngram_range"))
            sims = _rowwise_dot(x, a, b)
        else:
            assert hashes is not None, "a phash member's candidates needed the phashes"
            sims = 1.0 - np.bitwise_count(hashes[a] ^ hashes[b]).astype(np.float32) / 64.0
            sims[~(present[a] & present[b])] = np.nan
        out[f"{p}_sim"] = sims.astype(np.float32)
        out[f"{p}_rank"] = _ranks(lists, n, a, b)
        table = _row_table(lists, n, max(DENSITY_TOPS))
        out[f"{p}_gap"] = table[:, 0][a] - sims
        for k in RELATIVE_TO:  # NaN when the query has fewer than k neighbours listed
            out[f"{p}_over_k{k}"] = sims - table[:, k - 1][a]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rows with no neighbour: NaN, as meant
            for top in DENSITY_TOPS:
                for stat, reduce in (("mean", np.nanmean), ("std", np.nanstd)):
                    out[f"{p}_top{top}_{stat}"] = _standardized(reduce(table[:, :top], axis=1), scored)[a]
    texts = pd.Series(list(titles) if titles is not None else [""] * n, dtype=object).fillna("").astype(str)
    lengths = texts.str.len().to_numpy(dtype=np.float32)
    out["len_diff"] = np.abs(lengths[a] - lengths[b])
    with np.errstate(invalid="ignore", divide="ignore"):
        out["len_ratio"] = np.fmin(lengths[a], lengths[b]) / np.fmax(np.fmax(lengths[a], lengths[b]), 1.0)
    words = _binary(texts, "word", (1, 1))
    inter = _rowwise_dot(words, a, b)
    sizes = np.asarray(words.sum(axis=1)).ravel().astype(np.float32)
    union = sizes[a] + sizes[b] - inter
    out["token_jaccard"] = np.where(union > 0, inter / np.maximum(union, 1), np.nan).astype(np.float32)
    chars = _binary(texts, "char_wb", (3, 3))
    char_sizes = np.sqrt(np.asarray(chars.sum(axis=1)).ravel().astype(np.float32))
    denominator = char_sizes[a] * char_sizes[b]
    out["char_cosine"] = np.where(
        denominator > 0, _rowwise_dot(chars, a, b) / np.maximum(denominator, 1e-9), np.nan
    )
    agree, conflict = unit_relations(Pairs(a, b, np.zeros(len(a), np.float32), n), texts.to_numpy())
    out["units_agree"], out["units_conflict"] = agree.astype(np.float32), conflict.astype(np.float32)
    if hashes is not None:
        out["same_phash"] = ((hashes[a] == hashes[b]) & present[a] & present[b]).astype(np.float32)
    else:
        out["same_phash"] = np.full(len(a), np.nan, dtype=np.float32)
    names = feature_names(params) if names is None else list(names)
    unknown = [name for name in names if name not in out]
    if unknown:
        raise ShopeeError(
            f"the pair model wants features this code does not compute ({', '.join(unknown[:3])}); "
            "run optimize-ensemble again"
        )
    return pd.DataFrame({name: np.asarray(out[name], dtype=np.float32) for name in names})


def _binary(texts: pd.Series, analyzer: str, ngrams: tuple[int, int]) -> sparse.csr_matrix:
    vectorizer = CountVectorizer(
        binary=True, lowercase=True, analyzer=analyzer, ngram_range=ngrams, dtype=np.float32
    )
    try:
        return vectorizer.fit_transform(texts.tolist()).tocsr()
    except ValueError:  # no token at all
        return sparse.csr_matrix((len(texts), 1), dtype=np.float32)
