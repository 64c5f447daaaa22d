"""Candidate pair lists (TF-IDF, phash, top-k) and the threshold sweep, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from shopee.constants import MAX_OTHERS
from shopee.match import (
    Pairs,
    f1_by_threshold,
    phash_exact_pairs,
    sparse_cosine_pairs,
    tfidf_matrix,
    tfidf_pairs,
    top_k_pairs,
)
from shopee.metrics import score_pairs

VOCAB = ["Red", "blue", "shirt", "cotton", "phone", "case", "samsung", "iphone", "kids", "bag"] + [
    f"w{i}" for i in range(30)
]
TOL = 1e-5  # float32 sparse products against float64 dense ones


def random_titles(rng: np.random.Generator, n: int, vocab_size: int = 10) -> list[str]:
    return [" ".join(rng.choice(VOCAB[:vocab_size], size=rng.integers(1, 5))) for _ in range(n)]


def row_slices(pairs: Pairs) -> list[slice]:
    bounds = np.searchsorted(pairs.rows, np.arange(pairs.n + 1))
    return [slice(bounds[i], bounds[i + 1]) for i in range(pairs.n)]


def assert_well_formed(pairs: Pairs, k: int) -> None:
    assert len(pairs.rows) == len(pairs.cols) == len(pairs.sims) == len(pairs)
    assert not np.any(pairs.rows == pairs.cols), "a row is paired with itself"
    assert np.all(np.diff(pairs.rows) >= 0), "pairs not sorted by row"
    assert np.all((pairs.cols >= 0) & (pairs.cols < pairs.n))
    for i, part in enumerate(row_slices(pairs)):
        cols, sims = pairs.cols[part], pairs.sims[part]
        assert len(cols) <= k, f"row {i} has {len(cols)} > {k} pairs"
        assert len(set(cols.tolist())) == len(cols), f"row {i} repeats a column"
        assert np.all(np.diff(sims) <= 0), f"row {i} not sorted best first"


def dense_cosine(x) -> np.ndarray:
    dense = cosine_similarity(x.astype(np.float64))
    np.fill_diagonal(dense, -np.inf)
    return dense


def threshold_between_levels(x, target: float) -> float:
    """A threshold near ``target`` halfway between two similarity values that occur in ``x``.

    With a small vocabulary similarities take few distinct values; keeping the threshold away
    from all of them makes float32 rounding irrelevant to which pairs pass.
    """
    dense = dense_cosine(x)
    levels = np.unique(np.round(dense[np.isfinite(dense)], 6))
    lo, hi = np.searchsorted(levels, [target - 0.05, target + 0.05])
    near = levels[max(lo - 1, 0) : hi + 1]
    widest = int(np.argmax(np.diff(near)))
    assert near[widest + 1] - near[widest] > 4 * TOL
    return float((near[widest] + near[widest + 1]) / 2)


def check_against_dense(pairs: Pairs, x, min_sim: float, k: int) -> int:
    """Compare per-row neighbours with a dense cosine oracle; returns rows checked as sets."""
    dense = dense_cosine(x)
    assert not np.any(np.abs(dense - min_sim) < TOL), "similarity on the threshold: choose other data"
    exact_rows = 0
    for i, part in enumerate(row_slices(pairs)):
        cols, sims = pairs.cols[part], pairs.sims[part]
        candidates = np.flatnonzero(dense[i] >= min_sim)
        expected = np.sort(dense[i, candidates])[::-1]
        top = expected[:k]
        np.testing.assert_allclose(sims, top, atol=TOL, err_msg=f"row {i}")
        # Every kept neighbour is a real candidate with the similarity the oracle gives it.
        assert set(cols.tolist()) <= set(candidates.tolist())
        np.testing.assert_allclose(sims, dense[i, cols], atol=TOL, err_msg=f"row {i}")
        # Without a tie at the cut the kept set is determined.
        if len(expected) <= k or expected[k - 1] - expected[k] > TOL:
            assert set(cols.tolist()) == set(candidates[np.argsort(-dense[i, candidates])[:k]].tolist())
            exact_rows += 1
    return exact_rows


# --------------------------------------------------------------------------------------------
# TF-IDF
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "vocab_size", "target", "k"),
    [(0, 10, 0.3, 5), (1, 10, 0.5, 5), (2, 10, 0.05, 3), (3, 10, 0.3, 500), (4, 40, 0.3, 5), (5, 40, 0.5, 3)],
)
def test_tfidf_pairs_match_dense_cosine(seed: int, vocab_size: int, target: float, k: int) -> None:
    rng = np.random.default_rng(seed)
    titles = random_titles(rng, 300, vocab_size)
    x = tfidf_matrix(titles)
    assert x.shape[0] == 300
    min_sim = threshold_between_levels(x, target)
    pairs = tfidf_pairs(titles, min_sim=min_sim, k=k)
    assert pairs.n == 300
    assert_well_formed(pairs, k)
    exact_rows = check_against_dense(pairs, x, min_sim, k)
    assert exact_rows >= 30  # the set comparison is not vacuous
    assert np.all(pairs.sims >= min_sim)


def test_tfidf_rows_are_unit_length_and_case_insensitive() -> None:
    x = tfidf_matrix(["Red shirt", "red SHIRT", "blue bag kids"])
    np.testing.assert_allclose(np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel(), 1.0, rtol=1e-6)
    pairs = tfidf_pairs(["Red shirt", "red SHIRT", "blue bag kids"], min_sim=0.5)
    assert list(zip(pairs.rows.tolist(), pairs.cols.tolist(), strict=True)) == [(0, 1), (1, 0)]
    np.testing.assert_allclose(pairs.sims, [1.0, 1.0], atol=TOL)


def test_tfidf_pairs_without_words_are_empty() -> None:
    pairs = tfidf_pairs(["", "!!", ""], min_sim=0.0)
    assert pairs.n == 3
    assert len(pairs) == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_cosine_pairs_chunking_does_not_change_result(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = tfidf_matrix(random_titles(rng, 300))
    whole = sparse_cosine_pairs(x, min_sim=0.2, k=5, rows_per_chunk=10_000)
    for chunk in (7, 1, 299):
        chunked = sparse_cosine_pairs(x, min_sim=0.2, k=5, rows_per_chunk=chunk)
        assert chunked.n == whole.n
        np.testing.assert_array_equal(chunked.rows, whole.rows)
        np.testing.assert_array_equal(chunked.cols, whole.cols)
        np.testing.assert_allclose(chunked.sims, whole.sims, atol=1e-6)
    default = sparse_cosine_pairs(x, min_sim=0.2, k=5)
    np.testing.assert_array_equal(default.rows, whole.rows)
    np.testing.assert_array_equal(default.cols, whole.cols)


def test_sparse_cosine_pairs_small_chunks_against_dense() -> None:
    rng = np.random.default_rng(7)
    x = tfidf_matrix(random_titles(rng, 300))
    min_sim = threshold_between_levels(x, 0.3)
    pairs = sparse_cosine_pairs(x, min_sim=min_sim, k=5, rows_per_chunk=7)
    assert_well_formed(pairs, 5)
    assert check_against_dense(pairs, x, min_sim, 5) >= 30


def test_sparse_cosine_pairs_default_k_is_max_others() -> None:
    # 60 identical titles: each row has 59 perfect matches but keeps only MAX_OTHERS of them.
    pairs = tfidf_pairs(["red shirt"] * 60 + ["blue bag"], min_sim=0.5)
    counts = np.bincount(pairs.rows, minlength=61)
    np.testing.assert_array_equal(counts, [MAX_OTHERS] * 60 + [0])
    assert not np.any(pairs.rows == pairs.cols)
    assert np.all(pairs.cols < 60)


# --------------------------------------------------------------------------------------------
# phash
# --------------------------------------------------------------------------------------------


def random_phashes(rng: np.random.Generator, n: int, n_distinct: int) -> list[str]:
    pool = [f"{v:016x}" for v in rng.integers(0, 2**63, size=n_distinct)]
    weights = rng.random(n_distinct) ** 2 + 0.01
    return [pool[j] for j in rng.choice(n_distinct, size=n, p=weights / weights.sum())]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phash_exact_pairs_are_all_identical_phashes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    phashes = random_phashes(rng, 300, n_distinct=40)
    assert max(phashes.count(p) for p in set(phashes)) <= MAX_OTHERS + 1
    pairs = phash_exact_pairs(phashes)
    assert pairs.n == 300
    assert_well_formed(pairs, MAX_OTHERS)
    np.testing.assert_array_equal(pairs.sims, 1.0)
    for i, part in enumerate(row_slices(pairs)):
        expected = {j for j in range(300) if j != i and phashes[j] == phashes[i]}
        assert set(pairs.cols[part].tolist()) == expected, f"row {i}"


@pytest.mark.parametrize("k", [1, 3, 10])
def test_phash_exact_pairs_small_k(k: int) -> None:
    rng = np.random.default_rng(5)
    phashes = random_phashes(rng, 200, n_distinct=25)
    pairs = phash_exact_pairs(phashes, k=k)
    assert_well_formed(pairs, k)
    for i, part in enumerate(row_slices(pairs)):
        cols = pairs.cols[part].tolist()
        group = sum(1 for p in phashes if p == phashes[i])
        assert len(cols) == min(k, group - 1), f"row {i}"
        assert all(phashes[j] == phashes[i] for j in cols)


def test_phash_group_larger_than_k() -> None:
    rng = np.random.default_rng(11)
    phashes = ["ffff0000ffff0000"] * 60 + random_phashes(rng, 90, n_distinct=30)
    order = rng.permutation(len(phashes))  # the big group spread over the whole table
    phashes = [phashes[j] for j in order]
    big = {i for i, p in enumerate(phashes) if p == "ffff0000ffff0000"}
    assert len(big) == 60
    pairs = phash_exact_pairs(phashes, k=50)
    assert_well_formed(pairs, 50)
    for i, part in enumerate(row_slices(pairs)):
        cols = set(pairs.cols[part].tolist())
        if i in big:
            assert len(cols) == 50, f"row {i}"
            assert i not in cols
            assert cols <= big
        else:
            assert cols == {j for j in range(len(phashes)) if j != i and phashes[j] == phashes[i]}


def test_phash_unique_values_give_no_pairs() -> None:
    pairs = phash_exact_pairs(["a", "b", "c"])
    assert pairs.n == 3
    assert len(pairs) == 0


# --------------------------------------------------------------------------------------------
# f1_by_threshold
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_by_threshold_equals_score_pairs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.integers(0, 60, size=n)
    # Titles share a word with their group so that high similarities are often true matches.
    titles = [f"{t} grp{labels[i]}" for i, t in enumerate(random_titles(rng, n))]
    pairs = tfidf_pairs(titles, min_sim=0.1, k=10)
    thresholds = np.concatenate([np.linspace(0.0, 1.0, 21), [1.1], np.quantile(pairs.sims, [0.3, 0.7])])
    scores = f1_by_threshold(pairs, labels, thresholds)
    assert scores.shape == thresholds.shape
    expected = [score_pairs(*pairs.above(t).with_self(), labels).mean().f1 for t in thresholds]
    np.testing.assert_allclose(scores, expected, atol=1e-12)
    # Above every similarity only self is predicted: mean of 2 / (1 + group size).
    sizes = np.bincount(labels)[labels]
    assert scores[thresholds == 1.1][0] == pytest.approx(np.mean(2 / (1 + sizes)))
    assert len(set(np.round(scores, 9))) > 3  # the thresholds do make a difference


def test_pairs_above_and_with_self() -> None:
    pairs = Pairs(np.array([0, 0, 2]), np.array([1, 2, 0]), np.array([0.9, 0.4, 0.6]), 3)
    above = pairs.above(0.6)
    assert (above.rows.tolist(), above.cols.tolist(), above.n) == ([0, 2], [1, 0], 3)
    rows, cols = above.with_self()
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 1), (2, 0), (2, 2)]


# --------------------------------------------------------------------------------------------
# top_k_pairs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "k"), [(0, 1), (1, 3), (2, 6), (3, 100)])
def test_top_k_pairs_keeps_best_k_per_row(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n = 25
    # Distinct (row, col) pairs, self pairs included, distinct similarities, in random order.
    keys = rng.choice(n * n, size=250, replace=False)
    rows, cols = (keys // n).astype(np.int32), (keys % n).astype(np.int32)  # output is int64 anyway
    assert np.any(rows == cols)
    sims = rng.permutation(len(keys)).astype(np.float32) / len(keys)
    pairs = top_k_pairs(rows, cols, sims, n, k)
    assert pairs.n == n
    assert pairs.rows.dtype == np.int64 and pairs.cols.dtype == np.int64
    assert_well_formed(pairs, k)

    expected_rows, expected_cols, expected_sims = [], [], []
    for i in range(n):
        mine = sorted(
            ((float(s), int(c)) for r, c, s in zip(rows, cols, sims, strict=True) if r == i and c != i),
            reverse=True,
        )[:k]
        expected_rows += [i] * len(mine)
        expected_cols += [c for _, c in mine]
        expected_sims += [s for s, _ in mine]
    np.testing.assert_array_equal(pairs.rows, expected_rows)
    np.testing.assert_array_equal(pairs.cols, expected_cols)
    np.testing.assert_allclose(pairs.sims, expected_sims)


def test_top_k_pairs_with_ties_keeps_k_best_values() -> None:
    rows = np.array([0, 0, 0, 0, 0, 1, 1])
    cols = np.array([0, 3, 1, 2, 4, 1, 0])
    sims = np.array([1.0, 0.5, 0.5, 0.9, 0.1, 1.0, 0.2])
    pairs = top_k_pairs(rows, cols, sims, 5, 2)
    assert pairs.rows.tolist() == [0, 0, 1]
    assert pairs.cols[0] == 2 and pairs.cols[1] in (1, 3) and pairs.cols[2] == 0
    np.testing.assert_allclose(pairs.sims, [0.9, 0.5, 0.2])


# --------------------------------------------------------------------------------------------
# TF-IDF with character n-grams
# --------------------------------------------------------------------------------------------


def dense_tfidf(titles: list[str], analyzer: str, ngram_range: tuple[int, int]) -> np.ndarray:
    """An independent dense TF-IDF: sklearn's vectorizer, rows L2-normalized with numpy."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(binary=True, analyzer=analyzer, ngram_range=ngram_range, norm=None).fit_transform(
        titles
    )
    x = x.toarray().astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)


@pytest.mark.parametrize(
    ("analyzer", "ngram_range", "seed"),
    [("char_wb", None, 0), ("char_wb", (2, 3), 1), ("both", None, 2), ("both", (3, 3), 3)],
)
def test_tfidf_char_and_both_match_dense(analyzer: str, ngram_range, seed: int) -> None:
    rng = np.random.default_rng(seed)
    titles = random_titles(rng, 200, vocab_size=40)
    chars = (3, 5) if ngram_range is None else ngram_range
    if analyzer == "char_wb":
        dense = dense_tfidf(titles, "char_wb", chars)
    else:
        parts = np.hstack([dense_tfidf(titles, "word", (1, 1)), dense_tfidf(titles, "char_wb", chars)])
        dense = parts / np.linalg.norm(parts, axis=1, keepdims=True)
    x = tfidf_matrix(titles, analyzer=analyzer, ngram_range=ngram_range)
    np.testing.assert_allclose(
        np.sort(dense_cosine(x.toarray()).ravel()), np.sort(dense_cosine(dense).ravel()), atol=TOL
    )
    min_sim = threshold_between_levels(dense, 0.4)
    pairs = tfidf_pairs(titles, min_sim=min_sim, k=5, analyzer=analyzer, ngram_range=ngram_range)
    assert_well_formed(pairs, 5)
    assert check_against_dense(pairs, dense, min_sim, 5) >= 30


def test_tfidf_both_is_the_mean_of_word_and_char_cosines() -> None:
    titles = ["red cotton shirt", "red shirt kids", "blue phone case", "samsung phone case"]
    word = dense_cosine(tfidf_matrix(titles, "word").toarray())
    char = dense_cosine(tfidf_matrix(titles, "char_wb").toarray())
    both = dense_cosine(tfidf_matrix(titles, "both").toarray())
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(both[off], (word[off] + char[off]) / 2, atol=TOL)
    # Character n-grams see a typo that words miss.
    typo = tfidf_pairs(["samsung galaxy", "samsnug galaxy"], min_sim=0.0, analyzer="char_wb")
    words = tfidf_pairs(["samsung galaxy", "samsnug galaxy"], min_sim=0.0, analyzer="word")
    assert typo.sims[0] > words.sims[0]


def test_tfidf_bad_analyzer_and_missing_titles() -> None:
    from shopee.errors import ShopeeError

    with pytest.raises(ShopeeError, match="analyzer 'chars'"):
        tfidf_matrix(["a b"], analyzer="chars")
    with pytest.raises(ShopeeError, match="ngram_range"):
        tfidf_matrix(["a b"], analyzer="char_wb", ngram_range=(3, 2))
    pairs = tfidf_pairs(["red shirt", None, float("nan"), "red shirt"], min_sim=0.5, analyzer="both")
    assert list(zip(pairs.rows.tolist(), pairs.cols.tolist(), strict=True)) == [(0, 3), (3, 0)]
