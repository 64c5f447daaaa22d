"""Perceptual-hash (``image_phash``) candidates: identical hashes, or within a Hamming distance.

An ``image_phash`` is 16 hexadecimal digits (64 bits). The similarity of two hashes at Hamming
distance ``d`` is ``1 - d / 64``. A missing or empty phash matches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from shopee.constants import MAX_OTHERS
from shopee.errors import ShopeeError
from shopee.match.pairs import Pairs, top_k_pairs

DEFAULT_CHUNK_BYTES = 128 * 2**20


def _strings(phashes) -> pd.Series:
    values = pd.Series(list(phashes), dtype=object)
    present = values.notna()
    return values.where(present, "").astype(str).str.strip()


def parse_phashes(phashes: pd.Series | Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, present)``: each phash as ``uint64`` (0 where missing) and whether it is given.

    Missing (None, NaN) or blank values are not present; any other value that is not 16
    hexadecimal digits is a ShopeeError naming the first such row and value.
    """
    text = _strings(phashes)
    present = (text != "").to_numpy()
    ok = text.str.fullmatch(r"[0-9a-fA-F]{16}").to_numpy(dtype=bool) | ~present
    if not ok.all():
        row = int(np.argmin(ok))
        raise ShopeeError(
            f"image_phash row {row}: {text.iloc[row]!r} is not 16 hexadecimal digits "
            f"({int((~ok).sum())} such rows)"
        )
    values = np.zeros(len(text), dtype=np.uint64)
    if present.any():
        raw = bytes.fromhex("".join(text[present].tolist()))
        values[present] = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
    return values, present


def phash_to_uint64(hexes: pd.Series | Sequence[str] | np.ndarray) -> np.ndarray:
    """The 64-bit integers of 16-digit hexadecimal phashes; a bad or missing one is a ShopeeError."""
    values, present = parse_phashes(hexes)
    if not present.all():
        row = int(np.argmin(present))
        raise ShopeeError(f"image_phash row {row}: missing, expected 16 hexadecimal digits")
    return values


def phash_exact_pairs(phashes: pd.Series | Sequence[str], k: int = MAX_OTHERS) -> Pairs:
    """Pairs of postings whose ``image_phash`` is identical (similarity 1), at most ``k`` per row.

    Compares the strings as given (any text); a missing or empty phash matches nothing.
    """
    values = pd.Series(list(phashes), dtype=object)
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


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``len(a) x len(b)`` Hamming distances (uint8) between two uint64 arrays (dense: small inputs)."""
    return np.bitwise_count(np.bitwise_xor(a[:, None], b[None, :]))


def phash_pairs(
    phashes: pd.Series | Sequence[str] | np.ndarray,
    max_distance: int = 0,
    k: int = MAX_OTHERS,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Pairs:
    """Pairs of postings whose phashes differ in at most ``max_distance`` bits, ``k`` best per row.

    ``sims = 1 - distance / 64``; among equal distances the lower row index comes first.
    ``max_distance=0`` groups identical hashes (fast). Otherwise distances are computed by
    popcount in row chunks of about ``max_chunk_bytes`` (10 bytes per compared pair), so memory
    stays bounded; time grows with n squared (about 16 s for 70,000 hashes on one CPU core).
    """
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)):
        raise ShopeeError(f"phash max_distance must be an integer, got {max_distance!r}")
    if not 0 <= max_distance <= 64:
        raise ShopeeError(f"phash max_distance must be within 0..64, got {max_distance}")
    values, present = parse_phashes(phashes)
    if max_distance == 0:
        canonical = pd.Series([f"{v:016x}" for v in values.tolist()], dtype=object).where(present, None)
        return phash_exact_pairs(canonical, k=k)
    return hamming_pairs(values, present, max_distance, k=k, max_chunk_bytes=max_chunk_bytes)


def hamming_pairs(
    values: np.ndarray,
    present: np.ndarray,
    max_distance: int,
    k: int = MAX_OTHERS,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Pairs:
    """Pairs of present uint64 hashes within ``max_distance`` bits, by popcount in row chunks
    (the general path of ``phash_pairs``, any distance, 0 included)."""
    n = len(values)
    ids = np.flatnonzero(present).astype(np.int64)
    base = values[ids]
    m = len(base)
    if m < 2 or k <= 0:
        return Pairs.empty(n)
    rows_per_chunk = int(max(1, min(m, max_chunk_bytes // (10 * m))))
    xor = np.empty((rows_per_chunk, m), dtype=np.uint64)
    count = np.empty((rows_per_chunk, m), dtype=np.uint8)
    close = np.empty((rows_per_chunk, m), dtype=bool)
    parts = []
    for start in range(0, m, rows_per_chunk):
        r = min(rows_per_chunk, m - start)
        np.bitwise_xor(base[start : start + r, None], base[None, :], out=xor[:r])
        np.bitwise_count(xor[:r], out=count[:r])
        np.less_equal(count[:r], max_distance, out=close[:r])
        local_rows, cols = np.nonzero(close[:r])
        distance = count[:r][local_rows, cols].astype(np.float32)
        rows = ids[local_rows + start]
        parts.append(top_k_pairs(rows, ids[cols], 1.0 - distance / 64.0, n, k))
    return Pairs(
        np.concatenate([p.rows for p in parts]),
        np.concatenate([p.cols for p in parts]),
        np.concatenate([p.sims for p in parts]).astype(np.float32),
        n,
    )
