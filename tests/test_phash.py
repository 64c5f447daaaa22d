"""Near-duplicate phashes: our popcount Hamming distances against imagehash's, and the pair lists."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from shopee.constants import MAX_OTHERS
from shopee.errors import ShopeeError
from shopee.match import (
    Pairs,
    hamming_pairs,
    parse_phashes,
    phash_exact_pairs,
    phash_pairs,
    phash_to_uint64,
)
from shopee.match.phash import hamming_distances


def clustered_hashes(rng: np.random.Generator, n: int = 200, n_bases: int = 25) -> list[imagehash.ImageHash]:
    """Hashes near a few base hashes (0..6 flipped bits), so that small distances are common."""
    bases = rng.random((n_bases, 8, 8)) < 0.5
    out = []
    for b in rng.integers(0, n_bases, size=n):
        bits = bases[b].copy().ravel()
        bits[rng.choice(64, size=rng.integers(0, 7), replace=False)] ^= True
        out.append(imagehash.ImageHash(bits.reshape(8, 8)))
    return out


def imagehash_distances(hashes: list[imagehash.ImageHash]) -> np.ndarray:
    return np.array([[h1 - h2 for h2 in hashes] for h1 in hashes])


def oracle_pairs(distances: np.ndarray, present: np.ndarray, max_distance: int, k: int) -> list[list[int]]:
    """Per row: others within the distance, nearest first, lower index first on equal distance."""
    out = []
    for i in range(len(distances)):
        if not present[i]:
            out.append([])
            continue
        near = [j for j in range(len(distances)) if j != i and present[j] and distances[i, j] <= max_distance]
        out.append(sorted(near, key=lambda j: (distances[i, j], j))[:k])
    return out


def as_lists(pairs: Pairs) -> list[list[int]]:
    bounds = pairs.row_bounds()
    return [pairs.cols[bounds[i] : bounds[i + 1]].tolist() for i in range(pairs.n)]


def test_hamming_distances_equal_imagehash() -> None:
    rng = np.random.default_rng(0)
    hashes = clustered_hashes(rng)
    hexes = [str(h) for h in hashes]
    assert all(len(h) == 16 for h in hexes)
    values = phash_to_uint64(hexes)
    assert values.dtype == np.uint64
    expected = imagehash_distances(hashes)
    np.testing.assert_array_equal(hamming_distances(values, values), expected)
    assert 0 < np.mean(expected <= 4) < 0.5  # small distances occur, without being everything
    # The phashes of real (small) images parse and compare the same way.
    images = [Image.fromarray(rng.integers(0, 256, size=(32, 32), dtype=np.uint8)) for _ in range(6)]
    real = [imagehash.phash(im) for im in images]
    np.testing.assert_array_equal(
        hamming_distances(*[phash_to_uint64([str(h) for h in real])] * 2), imagehash_distances(real)
    )


@pytest.mark.parametrize(("max_distance", "k"), [(1, MAX_OTHERS), (4, MAX_OTHERS), (4, 3), (10, 5), (64, 7)])
def test_phash_pairs_match_imagehash_oracle(max_distance: int, k: int) -> None:
    rng = np.random.default_rng(max_distance * 10 + k)
    hashes = clustered_hashes(rng)
    hexes = [str(h) for h in hashes]
    pairs = phash_pairs(hexes, max_distance=max_distance, k=k)
    distances = imagehash_distances(hashes)
    expected = oracle_pairs(distances, np.ones(len(hashes), dtype=bool), max_distance, k)
    assert as_lists(pairs) == expected
    assert sum(map(len, expected)) > 20  # not vacuous
    np.testing.assert_allclose(pairs.sims, 1 - distances[pairs.rows, pairs.cols] / 64)
    assert pairs.sims.dtype == np.float32


def test_chunked_equals_unchunked() -> None:
    rng = np.random.default_rng(1)
    hexes = [str(h) for h in clustered_hashes(rng, n=150)]
    whole = phash_pairs(hexes, max_distance=5, max_chunk_bytes=2**30)
    for chunk_bytes in (1, 10 * 150 * 7, 10 * 150 * 149):
        chunked = phash_pairs(hexes, max_distance=5, max_chunk_bytes=chunk_bytes)
        np.testing.assert_array_equal(chunked.rows, whole.rows)
        np.testing.assert_array_equal(chunked.cols, whole.cols)
        np.testing.assert_array_equal(chunked.sims, whole.sims)


def test_max_distance_zero_equals_exact_grouping() -> None:
    rng = np.random.default_rng(2)
    pool = [str(h) for h in clustered_hashes(rng, n=40, n_bases=10)]
    hexes = [pool[j] for j in rng.integers(0, 40, size=300)]  # many identical hashes
    hexes[5] = hexes[5].upper()  # same hash, other spelling
    hexes[7] = ""
    hexes[9] = None
    fast = phash_pairs(hexes, max_distance=0)
    values, present = parse_phashes(hexes)
    general = hamming_pairs(values, present, 0)
    np.testing.assert_array_equal(fast.rows, general.rows)
    np.testing.assert_array_equal(fast.cols, general.cols)
    np.testing.assert_array_equal(fast.sims, general.sims)
    lower = [h.lower() if isinstance(h, str) else h for h in hexes]
    exact = phash_exact_pairs(lower)
    assert as_lists(fast) == [sorted(c) for c in as_lists(exact)]
    assert len(fast) > 300 and np.all(fast.sims == 1.0)


def test_missing_phashes_match_nothing() -> None:
    h = "ffff0000ffff0000"
    near = "ffff0000ffff0001"
    phashes = [h, None, "", "  ", float("nan"), near, h]
    for max_distance in (0, 3):
        pairs = phash_pairs(phashes, max_distance=max_distance)
        assert not np.isin(pairs.rows, [1, 2, 3, 4]).any() and not np.isin(pairs.cols, [1, 2, 3, 4]).any()
    assert as_lists(phash_pairs(phashes, max_distance=3)) == [[6, 5], [], [], [], [], [0, 6], [0, 5]]
    assert len(phash_pairs([None, None, ""], max_distance=3)) == 0


def test_group_larger_than_k_keeps_the_nearest() -> None:
    base = 0x0123456789ABCDEF
    hexes = [f"{base:016x}"] * 60 + [f"{base ^ 1:016x}"] * 5  # 60 identical, 5 at distance 1
    pairs = phash_pairs(hexes, max_distance=2, k=MAX_OTHERS)
    lists = as_lists(pairs)
    assert lists[0] == list(range(1, 51))
    assert lists[60] == [61, 62, 63, 64] + list(range(46))
    np.testing.assert_array_equal(pairs.counts(), MAX_OTHERS)


def test_bad_phashes_are_errors() -> None:
    with pytest.raises(ShopeeError, match=r"image_phash row 2: 'xyz' is not 16 hexadecimal digits"):
        phash_pairs(["0" * 16, "f" * 16, "xyz", "abc"], max_distance=2)
    with pytest.raises(ShopeeError, match=r"row 1: '0123' is not"):
        phash_to_uint64(["0" * 16, "0123"])
    with pytest.raises(ShopeeError, match=r"row 1: missing"):
        phash_to_uint64(["0" * 16, None])
    with pytest.raises(ShopeeError, match="max_distance"):
        phash_pairs(["0" * 16], max_distance=65)
    with pytest.raises(ShopeeError, match="max_distance"):
        phash_pairs(["0" * 16], max_distance=1.5)
    assert phash_to_uint64(["FFFFFFFFFFFFFFFF", "0000000000000001"]).tolist() == [2**64 - 1, 1]
