"""Exact cosine kNN (``knn_pairs``) against scikit-learn's brute-force NearestNeighbors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from shopee.constants import MAX_OTHERS
from shopee.errors import ShopeeError
from shopee.match import Pairs, knn_pairs, normalize_rows, resolve_backend

GAP = 1e-5  # float32 products: closer similarities count as a tie


def clustered(rng: np.random.Generator, n: int = 400, d: int = 24, n_clusters: int = 40) -> np.ndarray:
    centers = rng.normal(size=(n_clusters, d))
    x = centers[rng.integers(0, n_clusters, size=n)] + 0.6 * rng.normal(size=(n, d))
    return (x * rng.uniform(0.1, 10, size=(n, 1))).astype(np.float32)  # norms differ: normalized anyway


def sklearn_oracle(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``n x k`` neighbour indices and cosine similarities, self removed, from sklearn brute force."""
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x.astype(np.float64))
    dist, idx = nn.kneighbors(x.astype(np.float64))
    cols, sims = [], []
    for i in range(len(x)):
        keep = [j for j in range(k + 1) if idx[i, j] != i][:k]
        cols.append(idx[i, keep])
        sims.append(1.0 - dist[i, keep])
    return np.array(cols), np.array(sims)


def per_row(pairs: Pairs) -> list[tuple[np.ndarray, np.ndarray]]:
    bounds = pairs.row_bounds()
    return [
        (pairs.cols[bounds[i] : bounds[i + 1]], pairs.sims[bounds[i] : bounds[i + 1]]) for i in range(pairs.n)
    ]


def assert_sorted_no_self(pairs: Pairs) -> None:
    assert np.all(np.diff(pairs.rows) >= 0)
    assert not np.any(pairs.rows == pairs.cols)
    for i, (cols, sims) in enumerate(per_row(pairs)):
        assert np.all(np.diff(sims) <= 0), f"row {i} not best first"
        assert len(set(cols.tolist())) == len(cols), f"row {i} repeats a column"


def assert_same_neighbours(a: Pairs, b: Pairs, atol: float = GAP) -> int:
    """Same similarities per row; same sets where no tie sits at the cut. Returns rows compared as sets."""
    assert a.n == b.n
    np.testing.assert_array_equal(a.counts(), b.counts())
    exact = 0
    for i, ((ca, sa), (cb, sb)) in enumerate(zip(per_row(a), per_row(b), strict=True)):
        np.testing.assert_allclose(sa, sb, atol=atol, err_msg=f"row {i}")
        ordered = np.sort(sa)[::-1]
        gaps = -np.diff(ordered)
        if len(ordered) and (len(gaps) == 0 or gaps.min() > atol):
            assert ca.tolist() == cb.tolist(), f"row {i}"
            exact += 1
    return exact


@pytest.mark.parametrize(("seed", "k"), [(0, 5), (1, 12), (2, MAX_OTHERS)])
def test_torch_knn_matches_sklearn_brute_force(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    x = clustered(rng)
    pairs = knn_pairs(x, k)
    assert pairs.n == len(x) and len(pairs) == len(x) * k
    assert pairs.rows.dtype == np.int64 and pairs.cols.dtype == np.int64 and pairs.sims.dtype == np.float32
    assert_sorted_no_self(pairs)
    cols, sims = sklearn_oracle(x, k)
    exact = 0
    for i, (c, s) in enumerate(per_row(pairs)):
        np.testing.assert_allclose(s, sims[i], atol=GAP, err_msg=f"row {i}")
        # Our similarities are the true cosines of the pairs we return.
        xi = x[i].astype(np.float64)
        true = (
            x[c].astype(np.float64)
            @ xi
            / np.linalg.norm(x[c].astype(np.float64), axis=1)
            / np.linalg.norm(xi)
        )
        np.testing.assert_allclose(s, true, atol=GAP)
        gaps = -np.diff(sims[i])
        if gaps.min() > GAP:
            assert set(c.tolist()) == set(cols[i].tolist()), f"row {i}"
            exact += 1
    assert exact > len(x) // 2


def test_many_small_chunks_equal_one_chunk() -> None:
    rng = np.random.default_rng(3)
    x = clustered(rng, n=300)
    whole = knn_pairs(x, 10, max_chunk_bytes=2**30)
    tiny = knn_pairs(x, 10, max_chunk_bytes=4 * 300 * 7)  # 7 rows per chunk: 43 chunks
    one_row = knn_pairs(x, 10, max_chunk_bytes=1)  # at least one row per chunk
    by_rows = knn_pairs(x, 10, rows_per_chunk=13)
    by_position = knn_pairs(x, 10, 13)  # the old signature: rows_per_chunk third
    for other in (tiny, one_row, by_rows, by_position):
        np.testing.assert_array_equal(other.rows, whole.rows)
        assert assert_same_neighbours(other, whole) > 250


def test_faiss_backend_equals_torch() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    x = clustered(rng, n=350)
    for k in (1, 7, MAX_OTHERS):
        torch_pairs = knn_pairs(x, k, backend="torch")
        faiss_pairs = knn_pairs(x, k, backend="faiss", max_chunk_bytes=4 * 350 * 50)
        assert_sorted_no_self(faiss_pairs)
        assert assert_same_neighbours(faiss_pairs, torch_pairs) > 300
    assert resolve_backend("auto", "cpu") == "faiss"


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_duplicate_rows_never_pair_with_themselves(backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    x = np.concatenate([np.tile(rng.normal(size=(1, 8)), (30, 1)), rng.normal(size=(20, 8))]).astype(
        np.float32
    )
    pairs = knn_pairs(x, 10, backend=backend)
    assert_sorted_no_self(pairs)
    np.testing.assert_array_equal(pairs.counts(), 10)
    for i, (cols, sims) in enumerate(per_row(pairs)[:30]):
        assert set(cols.tolist()) <= set(range(30)) - {i}
        np.testing.assert_allclose(sims, 1.0, atol=1e-5)


def test_cuml_backend_missing_is_a_clear_error() -> None:
    if importlib.util.find_spec("cuml") is not None:
        pytest.skip("cuml is installed here")
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ShopeeError, match=r"knn backend 'cuml' is not available.*install"):
        knn_pairs(x, 2, backend="cuml")
    assert resolve_backend("auto", "cuda") in ("faiss", "torch")


def test_unknown_backend_and_unavailable_device() -> None:
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ShopeeError, match="knn backend 'annoy'"):
        knn_pairs(x, 2, backend="annoy")
    if not torch.cuda.is_available():
        with pytest.raises(ShopeeError, match="CUDA is not available"):
            knn_pairs(x, 2, device="cuda")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_an_error(bad: float) -> None:
    x = np.ones((6, 3), dtype=np.float32)
    x[4, 1] = bad
    with pytest.raises(ShopeeError, match="row 4 holds NaN or infinite"):
        knn_pairs(x, 2)


def test_zero_rows_match_nothing() -> None:
    rng = np.random.default_rng(6)
    x = clustered(rng, n=60, d=8)
    zero = [0, 17, 59]
    x[zero] = 0.0
    pairs = knn_pairs(x, 56)  # 57 non-zero rows: 56 others each
    assert np.isfinite(pairs.sims).all()
    assert not np.isin(pairs.rows, zero).any() and not np.isin(pairs.cols, zero).any()
    counts = pairs.counts()
    np.testing.assert_array_equal(counts[zero], 0)
    np.testing.assert_array_equal(np.delete(counts, zero), 56)
    # The other rows' neighbours are those of the table without the zero rows.
    keep = np.setdiff1d(np.arange(60), zero)
    sub = knn_pairs(x[keep], 56)
    np.testing.assert_array_equal(keep[sub.rows], pairs.rows)
    assert assert_same_neighbours(Pairs(keep[sub.rows], keep[sub.cols], sub.sims, 60), pairs) > 10
    assert len(knn_pairs(np.zeros((5, 3), dtype=np.float32), 4)) == 0


def test_small_inputs_and_k() -> None:
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    pairs = knn_pairs(x, 10)  # k above n - 1: every other row
    assert pairs.rows.tolist() == [0, 0, 1, 1, 2, 2]
    # cosines: (0, 1) 0.6, (0, 2) 0.0, (1, 2) 0.8
    assert pairs.cols.tolist() == [1, 2, 2, 0, 1, 0]
    np.testing.assert_allclose(pairs.sims, [0.6, 0.0, 0.8, 0.6, 0.8, 0.0], atol=1e-6)
    assert len(knn_pairs(x, 0)) == 0
    assert len(knn_pairs(x[:1], 5)) == 0 and knn_pairs(x[:1], 5).n == 1
    tensor_pairs = knn_pairs(torch.from_numpy(x), 1)
    assert tensor_pairs.cols.tolist() == [1, 2, 1]


def test_normalize_rows_keeps_zero_rows_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]])
    out = normalize_rows(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ShopeeError, match="2-D"):
        normalize_rows(np.ones(3))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_queries_search_only_from_those_rows(backend: str) -> None:
    """Neighbours of some rows among all rows: the oracle's rows, nothing from the others."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    x = clustered(rng, n=300)
    x[[5, 17]] = 0.0  # rows of norm zero: no pairs from them, asked or not
    queries = np.array([250, 3, 17, 5, 99, 3, 120, 121, 299, 0])  # unsorted, repeated
    pairs = knn_pairs(x, 9, backend=backend, rows_per_chunk=3, queries=queries)
    assert_sorted_no_self(pairs)
    asked = sorted(set(queries.tolist()) - {5, 17})
    assert sorted(set(pairs.rows.tolist())) == asked
    assert not np.isin(pairs.cols, [5, 17]).any()
    valid = np.flatnonzero(np.any(x != 0, axis=1))
    cols, sims = sklearn_oracle(x[valid], 9)
    position = {row: i for i, row in enumerate(valid)}
    got = per_row(pairs)
    for row in asked:
        c, s = got[row]
        np.testing.assert_allclose(s, sims[position[row]], atol=GAP)
        if (-np.diff(sims[position[row]])).min() > GAP:
            assert set(c.tolist()) == set(valid[cols[position[row]]].tolist())
    with pytest.raises(ShopeeError, match="outside 0..299"):
        knn_pairs(x, 9, backend=backend, queries=np.array([300]))
    assert len(knn_pairs(x, 9, backend=backend, queries=np.array([], dtype=np.int64))) == 0


def test_rerank_among_every_row_is_the_exact_search() -> None:
    """rerank_pairs restricted to candidates holding every other row equals knn_pairs (the
    independent oracle above: sklearn's brute force agrees with it)."""
    from shopee.match.knn import rerank_pairs

    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    everyone = knn_pairs(rng.normal(size=(120, 16)), k=119)  # another space: only the candidate set counts
    for queries in (None, np.array([3, 17, 64, 119])):
        exact = knn_pairs(x, k=10, queries=queries)
        reranked = rerank_pairs(x, everyone, 10, queries=queries)
        np.testing.assert_array_equal(reranked.rows, exact.rows)
        np.testing.assert_array_equal(reranked.cols, exact.cols)
        np.testing.assert_allclose(reranked.sims, exact.sims, atol=1e-5)
    # a row's neighbours can only be its candidates
    few = knn_pairs(x, k=5)
    reranked = rerank_pairs(rng.normal(size=(120, 16)), few, 3)
    allowed = set(zip(few.rows.tolist(), few.cols.tolist(), strict=True))
    assert set(zip(reranked.rows.tolist(), reranked.cols.tolist(), strict=True)) <= allowed
    assert reranked.counts().max() == 3
