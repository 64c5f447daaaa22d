"""The matching rule: members, thresholds, union, min2, neighbourhood blending, unit filter.

Params are a JSON-serializable dict (``PARAMS_VERSION`` 1)::

    {"version": 1, "k": 51,
     "members": [
        {"name": "fused", "type": "embedding", "source": "fused", "threshold": 0.45, "blend": [0.6, 0.5]},
        {"name": "txt", "type": "embedding", "source": "txt", "threshold": 0.6, "blend": []},
        {"name": "tfidf", "type": "tfidf", "threshold": 0.6, "analyzer": "word"},
        {"name": "phash", "type": "phash", "max_distance": 0}],
     "min2": {"member": "fused", "threshold": 0.3},
     "unit_filter": false,
     "blend_candidates": 100}

``k`` counts the posting itself (at most 51: a Shopee group has at most 51 postings), so a row
matches at most ``k - 1`` others. The rule, for ``n`` postings:

1. Candidates of each member (``member_candidates``), which never depend on the member's
   ``threshold`` or ``name`` (callers may cache them while tuning thresholds):

   - ``embedding``: the rows of ``embeddings[source]``, L2-normalized. Each ``blend`` stage
     threshold ``t`` in turn replaces every embedding by the similarity-weighted sum of itself
     (weight 1) and its ``k - 1`` nearest neighbours with similarity ``>= t`` (weights: the
     similarities), re-normalized. Then the ``k - 1`` nearest neighbours by cosine. With
     ``blend_candidates`` N (optional; absent: every row), the neighbours of a blended embedding
     are searched among each row's N nearest in the member's plain space (``rerank_pairs``):
     blending pulls a row towards rows it was already near, so its new neighbours are found there,
     and a blended space costs no search over every row (what makes the threshold search practical
     at train's size; ``bench match --search`` measures what it changes).
   - ``tfidf``: TF-IDF cosine neighbours of the titles (``analyzer`` "word", "char_wb" or "both",
     optional ``ngram_range``) with similarity ``>= min_sim`` (default 0.2; a ``threshold`` below
     ``min_sim`` acts as ``min_sim``), ``k - 1`` best.
   - ``phash``: postings whose phashes differ in at most ``max_distance`` bits (similarity
     ``1 - distance / 64``), ``k - 1`` best.

2. ``combine``: each embedding/tfidf member keeps its candidates with similarity ``>= threshold``
   (phash candidates are already filtered); the union over members, where a pair's similarity is
   the highest any member gives it; **min2**: a row left with no other match gets the nearest
   candidate of the ``min2`` member anyway when its similarity is ``>= min2.threshold``; the
   **unit filter** (when on) drops pairs whose titles state different quantities of one unit
   dimension (``units``); finally each row keeps its ``k - 1`` most similar matches.

Every posting always matches itself; ``Pairs`` never hold the self pair.
"""

from __future__ import annotations

import copy
import hashlib
import math
import numbers
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy import sparse

from shopee.constants import K as K_MAX
from shopee.errors import ShopeeError
from shopee.match.knn import knn_pairs, normalize_rows, rerank_pairs
from shopee.match.pairs import Pairs, best_per_row, top_k_pairs, union_pairs
from shopee.match.phash import phash_pairs
from shopee.match.text import ANALYZERS, tfidf_pairs
from shopee.match.units import unit_conflict_mask

PARAMS_VERSION = 1
MEMBER_TYPES = ("embedding", "tfidf", "phash")
TFIDF_MIN_SIM = 0.2
MAX_NGRAM = 10


# Embedding neighbours are remembered across calls, keyed by the content of the (normalized,
# blended) embeddings: the threshold search asks again and again for the same ones (every
# blending variant of a member starts from its plain neighbours, a second stage from the first
# stage's). Least recently used entries go first; 0 turns the memory off. A search over five
# 34,250-row sets keeps about a hundred such lists (34 MB each): up to 4 GiB, a sixth of the
# machine's memory at most.
def _knn_cache_budget() -> int:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        memory = 8 * 2**30
    return int(min(4 * 2**30, max(512 * 2**20, memory // 6)))


KNN_CACHE_BYTES = _knn_cache_budget()

_TOP_FIELDS = ("version", "k", "members", "min2", "unit_filter", "blend_candidates")
MAX_BLEND_CANDIDATES = 1000
_MEMBER_FIELDS = {
    "embedding": ("name", "type", "source", "threshold", "blend"),
    "tfidf": ("name", "type", "threshold", "analyzer", "ngram_range", "min_sim"),
    "phash": ("name", "type", "max_distance"),
}


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _fail(field: str, message: str) -> None:
    raise ShopeeError(f"matching params: {field}: {message}")


def _number(value: Any, field: str, lo: float = -1.0, hi: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        _fail(field, f"expected a number, got {value!r}")
    if not lo <= float(value) <= hi:
        _fail(field, f"{value} is outside [{lo:g}, {hi:g}]")
    return float(value)


def _integer(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(field, f"expected an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        _fail(field, f"{value} is outside {lo}..{hi}")
    return int(value)


def _validate_member(member: Any, field: str) -> dict[str, Any]:
    if not isinstance(member, Mapping):
        _fail(field, f"expected an object, got {type(member).__name__}")
    name = member.get("name")
    if not isinstance(name, str) or not name:
        _fail(f"{field}.name", f"expected a non-empty string, got {name!r}")
    kind = member.get("type")
    if kind not in MEMBER_TYPES:
        _fail(f"{field}.type", f"unknown member type {kind!r}; use one of {', '.join(MEMBER_TYPES)}")
    for key in member:
        if key not in _MEMBER_FIELDS[kind]:
            _fail(
                f"{field}.{key}",
                f"unknown field for a {kind} member (fields: {', '.join(_MEMBER_FIELDS[kind])})",
            )
    out: dict[str, Any] = {"name": name, "type": kind}
    if kind == "embedding":
        source = member.get("source")
        if not isinstance(source, str) or not source:
            _fail(f"{field}.source", f"missing or not a string ({source!r}): name the embeddings to use")
        out["source"] = source
    if kind in ("embedding", "tfidf"):
        if "threshold" not in member:
            _fail(f"{field}.threshold", "missing")
        out["threshold"] = _number(member["threshold"], f"{field}.threshold")
    if kind == "embedding":
        blend = member.get("blend", [])
        if not isinstance(blend, (list, tuple)):
            _fail(f"{field}.blend", f"expected a list of stage thresholds, got {blend!r}")
        out["blend"] = [_number(t, f"{field}.blend[{j}]") for j, t in enumerate(blend)]
    elif kind == "tfidf":
        analyzer = member.get("analyzer", "word")
        if analyzer not in ANALYZERS:
            _fail(f"{field}.analyzer", f"{analyzer!r}: use one of {', '.join(ANALYZERS)}")
        out["analyzer"] = analyzer
        if member.get("ngram_range") is not None:
            ngrams = member["ngram_range"]
            if not isinstance(ngrams, (list, tuple)) or len(ngrams) != 2:
                _fail(f"{field}.ngram_range", f"expected [low, high], got {ngrams!r}")
            lo = _integer(ngrams[0], f"{field}.ngram_range[0]", 1, MAX_NGRAM)
            hi = _integer(ngrams[1], f"{field}.ngram_range[1]", lo, MAX_NGRAM)
            out["ngram_range"] = [lo, hi]
        out["min_sim"] = _number(member.get("min_sim", TFIDF_MIN_SIM), f"{field}.min_sim", 0.0, 1.0)
    else:
        out["max_distance"] = _integer(member.get("max_distance", 0), f"{field}.max_distance", 0, 64)
    return out


def validate_params(params: Any) -> dict[str, Any]:
    """A checked, normalized copy of ``params`` (defaults filled in: ``k`` 51, ``blend`` [],
    ``analyzer`` "word", ``min_sim`` 0.2, ``max_distance`` 0, ``min2`` None, ``unit_filter``
    False). A problem is a ShopeeError naming the field, e.g. ``members[1].threshold``."""
    if not isinstance(params, Mapping):
        _fail("params", f"expected an object, got {type(params).__name__}")
    for key in params:
        if key not in _TOP_FIELDS:
            _fail(str(key), f"unknown field (fields: {', '.join(_TOP_FIELDS)})")
    if "version" not in params:
        _fail("version", f"missing (this code reads version {PARAMS_VERSION})")
    version = params["version"]
    if isinstance(version, bool) or version != PARAMS_VERSION:
        _fail("version", f"{version!r} is not supported (this code reads version {PARAMS_VERSION})")
    k = _integer(params.get("k", K_MAX), "k", 2, K_MAX)
    members = params.get("members")
    if not isinstance(members, (list, tuple)) or not members:
        _fail("members", f"expected a non-empty list of members, got {members!r}")
    checked = []
    seen: set[str] = set()
    for i, member in enumerate(members):
        m = _validate_member(member, f"members[{i}]")
        if m["name"] in seen:
            _fail(f"members[{i}].name", f"duplicate member name {m['name']!r}")
        seen.add(m["name"])
        checked.append(m)
    min2 = params.get("min2")
    if min2 is not None:
        if not isinstance(min2, Mapping):
            _fail("min2", f"expected null or an object with member and threshold, got {min2!r}")
        for key in min2:
            if key not in ("member", "threshold"):
                _fail(f"min2.{key}", "unknown field (fields: member, threshold)")
        embedding_names = [m["name"] for m in checked if m["type"] == "embedding"]
        if min2.get("member") not in embedding_names:
            _fail(
                "min2.member",
                f"{min2.get('member')!r} is not an embedding member (embedding members: "
                f"{', '.join(embedding_names) or 'none'})",
            )
        if "threshold" not in min2:
            _fail("min2.threshold", "missing")
        min2 = {"member": min2["member"], "threshold": _number(min2["threshold"], "min2.threshold")}
    unit_filter = params.get("unit_filter", False)
    if not isinstance(unit_filter, bool):
        _fail("unit_filter", f"expected true or false, got {unit_filter!r}")
    out = {"version": PARAMS_VERSION, "k": k, "members": checked, "min2": min2, "unit_filter": unit_filter}
    if params.get("blend_candidates") is not None:
        out["blend_candidates"] = _integer(
            params["blend_candidates"], "blend_candidates", k, MAX_BLEND_CANDIDATES
        )
    return copy.deepcopy(out)


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float] | None, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def _check_rows(values: Any, n: int, what: str, member: dict[str, Any]) -> None:
    if values is None:
        raise ShopeeError(f"member {member['name']!r} ({member['type']}) needs {what}; none given")
    if len(values) != n:
        raise ShopeeError(f"member {member['name']!r}: {len(values)} {what} for {n} rows")


def _embedding(member: dict[str, Any], n: int, embeddings: Mapping[str, Any] | None) -> Any:
    source = member["source"]
    if embeddings is None or source not in embeddings:
        have = ", ".join(sorted(map(str, embeddings or {}))) or "none"
        raise ShopeeError(f"member {member['name']!r}: embeddings {source!r} are missing (given: {have})")
    x = embeddings[source]
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != n:
        raise ShopeeError(
            f"member {member['name']!r}: embeddings {source!r} have shape {shape}, expected ({n}, dimensions)"
        )
    return x


_knn_cache: OrderedDict[tuple, Pairs] = OrderedDict()


def clear_knn_cache() -> None:
    """Forget the remembered embedding neighbours (see ``KNN_CACHE_BYTES``)."""
    _knn_cache.clear()


def _pairs_bytes(pairs: Pairs) -> int:
    return pairs.rows.nbytes + pairs.cols.nbytes + pairs.sims.nbytes


def _knn(x: np.ndarray, k: int, backend: str, device: str, queries: np.ndarray | None = None) -> Pairs:
    """``knn_pairs(x, k, queries=queries)``; a search from every row is remembered by the content
    of ``x`` (read-only arrays when kept). A search from some rows only is the final one of a
    scorer, which keeps its own results: not remembered."""
    if KNN_CACHE_BYTES <= 0 or queries is not None:
        return knn_pairs(x, k, backend=backend, device=device, queries=queries)
    x = np.ascontiguousarray(x)
    digest = hashlib.sha256(memoryview(x).cast("B")).hexdigest()
    key = (x.shape, str(x.dtype), digest, int(k), backend, str(device))
    found = _knn_cache.get(key)
    if found is not None:
        _knn_cache.move_to_end(key)
        return found
    pairs = knn_pairs(x, k, backend=backend, device=device, queries=queries)
    if _pairs_bytes(pairs) <= KNN_CACHE_BYTES:
        for array in (pairs.rows, pairs.cols, pairs.sims):
            array.flags.writeable = False
        _knn_cache[key] = pairs
        total = sum(_pairs_bytes(p) for p in _knn_cache.values())
        while total > KNN_CACHE_BYTES:
            _, dropped = _knn_cache.popitem(last=False)
            total -= _pairs_bytes(dropped)
    return pairs


def blend_embeddings(x: np.ndarray, neighbours: Pairs) -> np.ndarray:
    """Each row replaced by ``normalize(x[i] + sum_j sim_ij * x[j])`` over its pairs ``(i, j)``
    (``x`` L2-normalized rows; one sparse CSR product)."""
    n = len(x)
    weights = sparse.csr_matrix(
        (neighbours.sims.astype(np.float32), (neighbours.rows, neighbours.cols)), shape=(n, n)
    ) + sparse.identity(n, dtype=np.float32, format="csr")
    return normalize_rows(np.asarray(weights @ x, dtype=np.float32), what="blended embeddings")


def member_space(
    member: Mapping[str, Any],
    n: int,
    embeddings: Mapping[str, Any] | None,
    k: int = K_MAX,
    backend: str = "torch",
    device: str = "cpu",
    timings: dict[str, float] | None = None,
    blend_candidates: int | None = None,
) -> np.ndarray:
    """An embedding member's rows as it matches them: L2-normalized, after its blending stages."""
    return _blended(member, n, embeddings, k, backend, device, timings, blend_candidates)[0]


def _blended(
    member: Mapping[str, Any],
    n: int,
    embeddings: Mapping[str, Any] | None,
    k: int,
    backend: str,
    device: str,
    timings: dict[str, float] | None,
    blend_candidates: int | None,
) -> tuple[np.ndarray, Pairs | None]:
    """``member_space`` and, with ``blend_candidates`` and blending, the plain space's candidate
    neighbours every blended space is searched among."""
    m = _validate_member(member, f"member {member.get('name', '?')!r}")
    name = m["name"]
    x = normalize_rows(_embedding(m, n, embeddings), what=f"member {name!r}: embeddings {m['source']!r}")
    base = None
    if blend_candidates and m["blend"]:
        with _timed(timings, f"knn:{name}:candidates"):
            base = _knn(x, blend_candidates, backend, device)
    for stage, threshold in enumerate(m["blend"], start=1):
        with _timed(timings, f"knn:{name}:blend{stage}"):
            if base is None:
                neighbours = _knn(x, k - 1, backend, device)
            elif stage == 1:  # the plain space: its k - 1 nearest lead the candidates
                neighbours = base.select(base.positions() < k - 1)
            else:
                neighbours = rerank_pairs(x, base, k - 1, normalized=True)
            neighbours = neighbours.above(threshold)
        with _timed(timings, f"blend:{name}:{stage}"):
            x = blend_embeddings(x, neighbours)
    return x, base


def member_candidates(
    member: Mapping[str, Any],
    n: int,
    *,
    embeddings: Mapping[str, Any] | None = None,
    titles: Sequence[str] | np.ndarray | None = None,
    phashes: Sequence[str] | np.ndarray | None = None,
    k: int = K_MAX,
    backend: str = "torch",
    device: str = "cpu",
    timings: dict[str, float] | None = None,
    queries: np.ndarray | None = None,
    blend_candidates: int | None = None,
) -> Pairs:
    """Candidates of one member before its final threshold, ``k - 1`` at most per row (``k``
    counts the row itself, as params' ``k``); see the module doc. ``queries`` (sorted row
    indices): only these rows' candidates, the same as without it (blending still uses every row;
    the final neighbour search runs from these rows only). ``blend_candidates``: as the params'
    field. ``timings`` (if given) gets seconds under ``knn:<name>:blend<stage>`` (a blending
    stage's search), ``knn:<name>:candidates`` (the plain space's ``blend_candidates`` nearest),
    ``blend:<name>:<stage>`` (its weighted sums), ``knn:<name>``, ``tfidf:<name>`` or
    ``phash:<name>``."""
    m = _validate_member(
        member, f"member {member.get('name', '?')!r}" if isinstance(member, Mapping) else "member"
    )
    k = _integer(k, "k", 2, K_MAX)
    others = k - 1
    name = m["name"]
    if m["type"] == "embedding":
        x, base = _blended(m, n, embeddings, k, backend, device, timings, blend_candidates)
        with _timed(timings, f"knn:{name}"):
            if base is not None:
                return rerank_pairs(x, base, others, queries, normalized=True)
            return _knn(x, others, backend, device, queries)
    if m["type"] == "tfidf":
        _check_rows(titles, n, "titles", m)
        with _timed(timings, f"tfidf:{name}"):
            found = tfidf_pairs(
                titles,
                min_sim=m["min_sim"],
                k=others,
                analyzer=m["analyzer"],
                ngram_range=m.get("ngram_range"),
            )
    else:
        _check_rows(phashes, n, "phashes", m)
        with _timed(timings, f"phash:{name}"):
            found = phash_pairs(phashes, max_distance=m["max_distance"], k=others)
    return found if queries is None else found.of_rows(queries)


# --------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------


def combine(
    params: Mapping[str, Any],
    candidates: Mapping[str, Pairs],
    n: int,
    titles: Sequence[str] | np.ndarray | None = None,
) -> Pairs:
    """Thresholds, union, min2, unit filter and the ``k - 1`` cap (see the module doc), from each
    member's candidates (``member_candidates``) keyed by member name. Sorted like ``top_k_pairs``."""
    params = validate_params(params)
    parts = []
    for m in params["members"]:
        pairs = candidates.get(m["name"])
        if pairs is None:
            raise ShopeeError(f"no candidates for member {m['name']!r}")
        if pairs.n != n:
            raise ShopeeError(f"member {m['name']!r}: candidates over {pairs.n} rows, expected {n}")
        parts.append(pairs.above(m["threshold"]) if m["type"] in ("embedding", "tfidf") else pairs)
    union = union_pairs(parts, n, k=max(n, 1))
    min2 = params["min2"]
    if min2 is not None:
        nearest = best_per_row(candidates[min2["member"]])
        lonely = union.counts() == 0
        add = nearest.select(lonely[nearest.rows] & (nearest.sims >= min2["threshold"]))
        if len(add):
            union = union_pairs([union, add], n, k=max(n, 1))
    if params["unit_filter"]:
        if titles is None:
            raise ShopeeError("matching params: unit_filter: needs titles; none given")
        union = union.select(~unit_conflict_mask(union, titles))
    return top_k_pairs(union.rows, union.cols, union.sims, n, params["k"] - 1)


def match(
    params: Mapping[str, Any],
    n: int,
    *,
    embeddings: Mapping[str, Any] | None = None,
    titles: Sequence[str] | np.ndarray | None = None,
    phashes: Sequence[str] | np.ndarray | None = None,
    backend: str = "torch",
    device: str = "cpu",
    timings: dict[str, float] | None = None,
    candidates: dict[str, Pairs] | None = None,
) -> Pairs:
    """Predicted matches of ``n`` postings under ``params`` (self pairs implicit, not stored).

    Inputs are checked before any work: each embedding member's ``source`` must be a key of
    ``embeddings`` with ``n`` rows; titles (tfidf members, unit filter) and phashes (phash
    members) must be given with ``n`` values. ``timings`` (if given) gets seconds per stage (see
    ``member_candidates``) and ``combine``; ``candidates`` (if given) each member's candidates,
    by member name (for inspection and benchmarks).
    """
    params = validate_params(params)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ShopeeError(f"match: n must be a non-negative integer, got {n!r}")
    for m in params["members"]:
        if m["type"] == "embedding":
            _embedding(m, n, embeddings)
        elif m["type"] == "tfidf":
            _check_rows(titles, n, "titles", m)
        else:
            _check_rows(phashes, n, "phashes", m)
    if params["unit_filter"]:
        if titles is None:
            raise ShopeeError("matching params: unit_filter: needs titles; none given")
        if len(titles) != n:
            raise ShopeeError(f"unit filter: {len(titles)} titles for {n} rows")
    found = {
        m["name"]: member_candidates(
            m,
            n,
            embeddings=embeddings,
            titles=titles,
            phashes=phashes,
            k=params["k"],
            backend=backend,
            device=device,
            timings=timings,
            blend_candidates=params.get("blend_candidates"),
        )
        for m in params["members"]
    }
    if candidates is not None:
        candidates.update(found)
    with _timed(timings, "combine"):
        return combine(params, found, n, titles=titles)


def matches_to_strings(pairs: Pairs, posting_ids: Sequence[str] | np.ndarray) -> list[str]:
    """Per row, the space-separated posting ids it matches: itself first, then its pairs in order
    (a repeated or self pair is written once)."""
    ids = np.asarray(list(posting_ids), dtype=object)
    n = pairs.n
    if len(ids) != n:
        raise ShopeeError(f"{len(ids)} posting ids for {n} rows")
    rows = np.concatenate([np.arange(n, dtype=np.int64), np.asarray(pairs.rows, dtype=np.int64)])
    cols = np.concatenate([np.arange(n, dtype=np.int64), np.asarray(pairs.cols, dtype=np.int64)])
    keys = rows * max(n, 1) + cols
    _, first = np.unique(keys, return_index=True)  # self (listed first) wins over a self pair
    keep = np.sort(first)
    rows, cols = rows[keep], cols[keep]
    order = np.argsort(rows, kind="stable")  # self first, then pairs in their order
    rows, cols = rows[order], cols[order]
    tokens = ids[cols].astype(str).tolist()
    bounds = np.searchsorted(rows, np.arange(n + 1)).tolist()
    return [" ".join(tokens[bounds[i] : bounds[i + 1]]) for i in range(n)]
