"""``bench match``: how fast the matching rule runs on synthetic data (figures, not tests).

Parts, each runnable alone (``run_bench``):

- ``rule`` (the default): the full rule on ``n`` synthetic postings (three embedding members,
  TF-IDF, phash, union, min2) through ``match``, with the wall time of each stage, against the
  *bare* chunked matrix-product top-k calls its embedding members need (the arithmetic bound);
  then the post-processing alone (thresholds, union, min2, blending sums, output strings).
- ``naive``: the same rule done the way public notebooks do it (scikit-learn ``NearestNeighbors``,
  per-row Python loops with pandas look-ups), its time against ours and the agreement of the two.
- ``search``: the ``optimize-ensemble`` threshold search on synthetic OOF rows in five folds.

Synthetic data: group sizes drawn from the real train set; products (and their families, whose
siblings are the hard negatives) and seller titles from the demo catalog; for each embedding
member a category, a family and a group centre plus per-row noise of the member's own level (so
that thresholds around 0.5-0.7 matter); phashes shared, nearly shared (a few bits flipped) or
unrelated within a group.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch

from shopee.demo import sample_group_sizes
from shopee.demo.catalog import TitleStyle, make_products, make_title
from shopee.errors import ShopeeError
from shopee.match import (
    PARAMS_VERSION,
    combine,
    match,
    matches_to_strings,
    normalize_rows,
    validate_params,
)
from shopee.match import rules as match_rules
from shopee.match.knn import DEFAULT_CHUNK_BYTES
from shopee.match.rules import clear_knn_cache
from shopee.metrics import score_pairs

# name -> (category, family, noise) variances; the group centre has variance 1 - category - family.
# Two postings of one group: cosine about 1 / (1 + noise) on average; siblings (same family, other
# group): (category + family) / (1 + noise); same category only: category / (1 + noise).
MEMBER_NOISE: dict[str, tuple[float, float, float]] = {
    "img": (0.25, 0.45, 0.5),
    "txt": (0.3, 0.45, 0.6),
    "fused": (0.25, 0.45, 0.4),
}
ROW_NOISE_SPREAD = 0.3  # each row's noise scaled by lognormal(0, this): some postings are poor
P_PHASH_SAME = 0.35  # a posting reuses its group's photo (same phash)
P_PHASH_NEAR = 0.15  # ... or a re-encoded copy (1 to 4 bits differ)
P_PHASH_OTHER_GROUP = 0.005  # ... or another group's photo
PHASH_MAX_DISTANCE = 4
SEARCH_FOLDS = 5


def default_params() -> dict[str, Any]:
    """The benchmarked rule: two blending stages on ``fused`` only; phash within 4 bits."""
    return validate_params(
        {
            "version": PARAMS_VERSION,
            "k": 51,
            "members": [
                {
                    "name": "fused",
                    "type": "embedding",
                    "source": "fused",
                    "threshold": 0.7,
                    "blend": [0.8, 0.8],
                },
                {"name": "img", "type": "embedding", "source": "img", "threshold": 0.7, "blend": []},
                {"name": "txt", "type": "embedding", "source": "txt", "threshold": 0.7, "blend": []},
                {"name": "tfidf", "type": "tfidf", "threshold": 0.8, "analyzer": "word"},
                {"name": "phash", "type": "phash", "max_distance": PHASH_MAX_DISTANCE},
            ],
            "min2": {"member": "fused", "threshold": 0.3},
            "unit_filter": False,
        }
    )


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


@dataclass
class Synthetic:
    labels: np.ndarray  # group of each row (int64)
    embeddings: dict[str, np.ndarray]  # member source -> n x dim float32 (not normalized)
    titles: np.ndarray | None  # object array of str
    phashes: np.ndarray | None  # object array of 16-hex-digit str
    posting_ids: np.ndarray  # object array of unique str

    def __len__(self) -> int:
        return len(self.labels)


def make_synthetic(n: int, dim: int, seed: int, *, text: bool = True) -> Synthetic:
    """``n`` synthetic postings (rows shuffled); ``text=False`` skips titles and phashes."""
    if n < 2:
        raise ShopeeError(f"bench match: --n must be at least 2, got {n}")
    if dim < 2:
        raise ShopeeError(f"bench match: --dim must be at least 2, got {dim}")
    rng = np.random.default_rng(seed)
    sizes = np.array(sample_group_sizes(n, rng))
    n_groups = len(sizes)
    products = make_products(n_groups, rng)
    family_of_group = np.array([p.family.family_id for p in products], dtype=np.int64)
    group = np.repeat(np.arange(n_groups, dtype=np.int64), sizes)

    category_of_group = pd.factorize(pd.Series([p.family.category.key for p in products]))[0]
    embeddings = {}
    for name, (category_var, family_var, noise_var) in MEMBER_NOISE.items():
        categories = rng.standard_normal((int(category_of_group.max()) + 1, dim), dtype=np.float32)
        families = rng.standard_normal((int(family_of_group.max()) + 1, dim), dtype=np.float32)
        centres = rng.standard_normal((n_groups, dim), dtype=np.float32)
        centres *= np.float32(np.sqrt(1.0 - category_var - family_var))
        centres += np.float32(np.sqrt(family_var)) * families[family_of_group]
        centres += np.float32(np.sqrt(category_var)) * categories[category_of_group]
        scale = (np.sqrt(noise_var) * rng.lognormal(0.0, ROW_NOISE_SPREAD, size=n)).astype(np.float32)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x *= scale[:, None]
        x += centres[group]
        embeddings[name] = x

    titles = phashes = None
    if text:
        style = TitleStyle()
        titles_list: list[str] = []
        for g, size in enumerate(sizes.tolist()):
            core_seed = int(rng.integers(2**63))  # the wording sellers of this product copy
            for j in range(size):
                copied = j == 0 or rng.random() < style.p_copy
                titles_list.append(make_title(products[g], rng, style, core_seed if copied else None))
        titles = np.array(titles_list, dtype=object)
        phashes = _phashes(group, n_groups, rng)

    ids = (np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(rng.integers(2**32))) % (
        np.uint64(2**32)
    )  # odd multiplier: a bijection mod 2^32, so unique
    order = rng.permutation(n)
    return Synthetic(
        labels=group[order],
        embeddings={k: np.ascontiguousarray(v[order]) for k, v in embeddings.items()},
        titles=None if titles is None else titles[order],
        phashes=None if phashes is None else phashes[order],
        posting_ids=np.array([f"train_{v}" for v in ids.tolist()], dtype=object),
    )


def _random_u64(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(8 * size), dtype=np.uint64).copy()


def _phashes(group: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    n = len(group)
    photo = _random_u64(rng, n_groups)
    values = _random_u64(rng, n)  # unrelated photos by default
    u = rng.random(n)
    same = u < P_PHASH_SAME
    near = (u >= P_PHASH_SAME) & (u < P_PHASH_SAME + P_PHASH_NEAR)
    other = (u >= P_PHASH_SAME + P_PHASH_NEAR) & (u < P_PHASH_SAME + P_PHASH_NEAR + P_PHASH_OTHER_GROUP)
    values[same] = photo[group[same]]
    flips = np.zeros(int(near.sum()), dtype=np.uint64)
    n_bits = rng.integers(1, 5, size=len(flips))
    for b in range(4):
        bit = rng.integers(0, 64, size=len(flips)).astype(np.uint64)
        flips ^= np.where(b < n_bits, np.uint64(1) << bit, np.uint64(0))
    values[near] = photo[group[near]] ^ flips
    values[other] = photo[rng.integers(0, n_groups, size=int(other.sum()))]
    return np.array([f"{v:016x}" for v in values.tolist()], dtype=object)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (ru_maxrss), in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _f1(pairs, labels: np.ndarray) -> float:
    return round(score_pairs(*pairs.with_self(), labels).mean().f1, 4)


def bare_topk_seconds(x: np.ndarray, k: int, device: str = "cpu") -> float:
    """Seconds of a plain loop of ``torch.topk(chunk @ x.T, k)`` over row chunks of the
    normalized ``x`` (chunk height as ``knn_pairs`` picks it): the arithmetic bound of a kNN call."""
    base = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    n = len(base)
    rows = int(max(1, min(n, DEFAULT_CHUNK_BYTES // (4 * max(n, 1)))))
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, rows):
            torch.topk(base[start : start + rows] @ base.T, min(k, n), dim=1)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _embedding_calls(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, label) of each kNN call the embedding members make: per blending stage, then final."""
    calls = []
    for m in params["members"]:
        if m["type"] == "embedding":
            calls += [(m["source"], f"{m['name']}:blend{s}") for s in range(1, len(m["blend"]) + 1)]
            calls.append((m["source"], f"{m['name']}:final"))
    return calls


# --------------------------------------------------------------------------------------------
# Part 1 and 2: the rule against the bare top-k, then the post-processing alone
# --------------------------------------------------------------------------------------------


def run_rule(data: Synthetic, params: Mapping[str, Any], backend: str = "torch", device: str = "cpu") -> dict:
    """The full rule through ``match`` (stage timings), the bare top-k calls and the post-processing."""
    params = validate_params(params)
    n = len(data)
    candidates: dict[str, Any] = {}
    blend_seconds: list[float] = []
    member_candidates = match_rules.member_candidates
    blend_embeddings = match_rules.blend_embeddings

    def recording_candidates(member, n_rows, **kwargs):  # keeps each member's candidates
        out = member_candidates(member, n_rows, **kwargs)
        candidates[member["name"]] = out
        return out

    def timed_blend(x, neighbours):  # the weighted sums of a blending stage
        started = time.perf_counter()
        out = blend_embeddings(x, neighbours)
        blend_seconds.append(time.perf_counter() - started)
        return out

    timings: dict[str, float] = {}
    clear_knn_cache()  # nothing remembered from an earlier run in this process
    _log(f"rule: match() on {n} rows ...")
    with (
        mock.patch.object(match_rules, "member_candidates", recording_candidates),
        mock.patch.object(match_rules, "blend_embeddings", timed_blend),
    ):
        started = time.perf_counter()
        pairs = match(
            params,
            n,
            embeddings=data.embeddings,
            titles=data.titles,
            phashes=data.phashes,
            backend=backend,
            device=device,
            timings=timings,
        )
        match_s = time.perf_counter() - started
    stages = {key: round(v, 3) for key, v in timings.items()}
    stages["other"] = round(match_s - sum(timings.values()), 3)  # checks, input normalization
    text_s = sum(v for key, v in timings.items() if key.startswith(("tfidf:", "phash:")))
    embedding_s = match_s - text_s  # kNN, blending, all of combine, checks and normalization

    _log("rule: bare top-k calls ...")
    normalized = {source: normalize_rows(data.embeddings[source]) for source, _ in _embedding_calls(params)}
    bare = {
        label: round(bare_topk_seconds(normalized[source], params["k"], device), 3)
        for source, label in _embedding_calls(params)
    }
    del normalized
    bare_total = sum(bare.values())

    _log("rule: post-processing ...")
    started = time.perf_counter()
    again = combine(params, candidates, n, titles=data.titles)
    combine_s = time.perf_counter() - started
    started = time.perf_counter()
    strings = matches_to_strings(pairs, data.posting_ids)
    strings_s = time.perf_counter() - started
    if not (np.array_equal(again.rows, pairs.rows) and np.array_equal(again.cols, pairs.cols)):
        raise ShopeeError("bench match: combine on the recorded candidates differs from match()")
    post = {
        "combine": round(combine_s, 3),
        "blend_sums": round(sum(blend_seconds), 3),
        "matches_to_strings": round(strings_s, 3),
    }
    return {
        "n": n,
        "match_s": round(match_s, 3),
        "stages_s": stages,
        "embedding_s": round(embedding_s, 3),
        "tfidf_s": round(sum(v for key, v in timings.items() if key.startswith("tfidf:")), 3),
        "phash_s": round(sum(v for key, v in timings.items() if key.startswith("phash:")), 3),
        "bare_topk_s": bare,
        "bare_topk_total_s": round(bare_total, 3),
        "embedding_over_bare": round(embedding_s / bare_total, 3) if bare_total > 0 else None,
        "postprocess_s": post,
        "postprocess_total_s": round(sum(post.values()), 3),
        "pairs": len(pairs),
        "mean_matches": round(1 + len(pairs) / max(n, 1), 3),
        "f1": _f1(pairs, data.labels),
        "output_chars": sum(map(len, strings)),
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------------------------
# Part 3: the naive way (public notebooks)
# --------------------------------------------------------------------------------------------


def naive_match(
    params: Mapping[str, Any],
    df: pd.DataFrame,
    embeddings: Mapping[str, np.ndarray],
    timings: dict[str, float] | None = None,
) -> list[str]:
    """The rule as public notebooks write it: scikit-learn ``NearestNeighbors`` (brute cosine) per
    member and blending stage, ``TfidfVectorizer`` with dense chunked cosine, phash by a pandas
    comparison per row, then per-row Python loops with pandas look-ups and string joins.
    ``df`` has ``posting_id``, ``title`` and ``image_phash``. Returns one string per row."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    params = validate_params(params)
    timings = {} if timings is None else timings
    k = params["k"]
    n = len(df)
    ids = df["posting_id"]
    found: list[dict[str, float]] = [{} for _ in range(n)]  # posting_id -> best similarity
    nearest: dict[str, list[tuple[str, float] | None]] = {}  # min2: each row's nearest other

    def add(i: int, matched: np.ndarray, sims: np.ndarray) -> None:
        row = found[i]
        for pid, sim in zip(matched, sims, strict=True):
            if sim > row.get(pid, -np.inf):
                row[pid] = float(sim)

    def neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = NearestNeighbors(n_neighbors=min(k, n), metric="cosine", algorithm="brute").fit(x)
        distances, index = model.kneighbors(x)
        return 1.0 - distances, index

    for m in params["members"]:
        started = time.perf_counter()
        name = m["name"]
        if m["type"] == "embedding":
            x = np.asarray(embeddings[m["source"]], dtype=np.float32)
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            for threshold in m["blend"]:
                sims, index = neighbours(x)
                blended = np.empty_like(x)
                for i in range(n):
                    keep = (sims[i] >= threshold) & (index[i] != i)
                    weights = sims[i][keep].astype(np.float32)
                    blended[i] = x[i] + (weights[:, None] * x[index[i][keep]]).sum(axis=0)
                x = blended / np.linalg.norm(blended, axis=1, keepdims=True)
            sims, index = neighbours(x)
            firsts: list[tuple[str, float] | None] = []
            for i in range(n):
                others = np.where(index[i] != i)[0]
                firsts.append(
                    (ids.iloc[index[i][others[0]]], float(sims[i][others[0]])) if len(others) else None
                )
                keep = np.where((sims[i] >= m["threshold"]) & (index[i] != i))[0]
                add(i, ids.iloc[index[i][keep]].values, sims[i][keep])
            nearest[name] = firsts
        elif m["type"] == "tfidf":
            vectorizer = TfidfVectorizer(
                binary=True,
                lowercase=True,
                dtype=np.float32,
                analyzer=m["analyzer"],
                ngram_range=tuple(m.get("ngram_range") or ((1, 1) if m["analyzer"] == "word" else (3, 5))),
            )
            matrix = vectorizer.fit_transform(df["title"].fillna("").astype(str))
            threshold = max(m["threshold"], m["min_sim"])
            chunk = 1024
            for start in range(0, n, chunk):
                dense = (matrix[start : start + chunk] @ matrix.T).toarray()
                for r in range(len(dense)):
                    i = start + r
                    keep = np.where(dense[r] >= threshold)[0]
                    keep = keep[keep != i]
                    keep = keep[np.argsort(-dense[r][keep], kind="stable")][: k - 1]
                    add(i, ids.iloc[keep].values, dense[r][keep])
        else:
            ints = df["image_phash"].apply(lambda s: int(s, 16)).astype(np.uint64)
            frame = pd.DataFrame({"posting_id": ids, "phash": ints})
            values = frame["phash"].to_numpy()
            for i in range(n):
                frame["distance"] = np.bitwise_count(values ^ values[i])
                hits = frame[(frame["distance"] <= m["max_distance"]) & (frame.index != frame.index[i])]
                hits = hits.sort_values("distance", kind="stable").head(k - 1)
                add(i, hits["posting_id"].values, 1.0 - hits["distance"].to_numpy() / 64.0)
        timings[f"{m['type']}:{name}"] = time.perf_counter() - started

    started = time.perf_counter()
    min2 = params["min2"]
    out = []
    for i in range(n):
        own = ids.iloc[i]
        row = found[i]
        row.pop(own, None)
        if not row and min2 is not None:
            first = nearest[min2["member"]][i]
            if first is not None and first[1] >= min2["threshold"]:
                row[first[0]] = first[1]
        best = sorted(row.items(), key=lambda item: -item[1])[: k - 1]
        out.append(" ".join([own] + [pid for pid, _ in best]))
    timings["union_min2_strings"] = time.perf_counter() - started
    return out


def agreement(ours: Sequence[str], theirs: Sequence[str]) -> float:
    """Fraction of rows whose predicted posting-id sets are identical."""
    same = sum(set(a.split()) == set(b.split()) for a, b in zip(ours, theirs, strict=True))
    return same / max(len(ours), 1)


def run_naive(
    data: Synthetic, params: Mapping[str, Any], backend: str = "torch", device: str = "cpu"
) -> dict:
    """Ours (``match`` + ``matches_to_strings``) against ``naive_match`` on the same rows."""
    params = validate_params(params)
    n = len(data)
    _log(f"naive: ours on {n} rows ...")
    timings: dict[str, float] = {}
    clear_knn_cache()
    started = time.perf_counter()
    pairs = match(
        params,
        n,
        embeddings=data.embeddings,
        titles=data.titles,
        phashes=data.phashes,
        backend=backend,
        device=device,
        timings=timings,
    )
    ours = matches_to_strings(pairs, data.posting_ids)
    ours_s = time.perf_counter() - started
    _log(f"naive: the notebook way on {n} rows ...")
    df = pd.DataFrame({"posting_id": data.posting_ids, "title": data.titles, "image_phash": data.phashes})
    naive_timings: dict[str, float] = {}
    started = time.perf_counter()
    theirs = naive_match(params, df, data.embeddings, naive_timings)
    naive_s = time.perf_counter() - started
    return {
        "n": n,
        "ours_s": round(ours_s, 3),
        "ours_stages_s": {key: round(v, 3) for key, v in timings.items()},
        "naive_s": round(naive_s, 3),
        "naive_stages_s": {key: round(v, 3) for key, v in naive_timings.items()},
        "naive_over_ours": round(naive_s / ours_s, 3) if ours_s > 0 else None,
        "agreement": round(agreement(ours, theirs), 6),
        "f1_ours": _f1(pairs, data.labels),
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------------------------
# Part 4: the threshold search
# --------------------------------------------------------------------------------------------


def run_search(
    rows: int,
    dim: int,
    seed: int,
    backend: str = "torch",
    device: str = "cpu",
    blend_stages: int | None = None,
) -> dict:
    """``ensemble.search`` with a ``Scorer`` over three embedding members on synthetic OOF rows
    (``blend_stages``: passed to the search when given, else its default)."""
    from shopee.ensemble import Scorer, embedding_members, search
    from shopee.oof import OOFSet

    data = make_synthetic(rows, dim, seed, text=False)
    groups = np.unique(data.labels)
    fold_of_group = np.random.default_rng(seed + 1).permutation(len(groups)) % SEARCH_FOLDS
    fold = fold_of_group[np.searchsorted(groups, data.labels)]
    index = pd.DataFrame({"posting_id": data.posting_ids, "label_group": data.labels, "fold": fold})
    folds = sorted(int(f) for f in np.unique(fold))
    oof = OOFSet(
        index=index,
        embeddings={f"synthetic:{name}": normalize_rows(x) for name, x in data.embeddings.items()},
        folds=folds,
        experiments={"synthetic": folds},
        data_dir="synthetic",
    )
    embeddings = dict(oof.embeddings)
    pool = embedding_members(oof, embeddings)
    scorer = Scorer(oof, embeddings, None, None, backend=backend, device=device)
    _log(f"search: {rows} OOF rows, {len(folds)} folds, members {', '.join(m['name'] for m in pool)} ...")
    clear_knn_cache()
    started = time.perf_counter()
    options = {} if blend_stages is None else {"blend_stages": blend_stages}
    result = search(scorer, pool, "all", progress=_log, **options)
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "folds": len(folds),
        "blend_stages": "default" if blend_stages is None else blend_stages,
        "members": [m["name"] for m in pool],
        "search_s": round(seconds, 3),
        "evaluations": scorer.evaluations,
        "cached_candidate_sets": len(getattr(scorer, "_cache", {})),
        "f1_all": round(result.scores.all.f1, 4),
        "f1_fold": round(result.scores.fold.f1, 4),
        "params": result.params,
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{width}}  {b}" for a, b in rows)


def _print_rule(r: dict, params: Mapping[str, Any]) -> None:
    rows = [(f"match() stage {key}", f"{v:9.2f} s") for key, v in r["stages_s"].items()]
    rows += [
        ("match() total", f"{r['match_s']:9.2f} s"),
        ("  embedding part (all but tfidf/phash)", f"{r['embedding_s']:9.2f} s"),
        ("  tfidf", f"{r['tfidf_s']:9.2f} s"),
        ("  phash", f"{r['phash_s']:9.2f} s"),
    ]
    rows += [(f"bare top-k {label}", f"{v:9.2f} s") for label, v in r["bare_topk_s"].items()]
    rows += [
        ("bare top-k total", f"{r['bare_topk_total_s']:9.2f} s"),
        ("embedding part / bare top-k", f"{r['embedding_over_bare']:9.3f}   (target <= 1.5)"),
    ]
    rows += [(f"post-processing {key}", f"{v:9.2f} s") for key, v in r["postprocess_s"].items()]
    rows += [
        ("post-processing total", f"{r['postprocess_total_s']:9.2f} s   (target < 10 s)"),
        ("matches per row (self included)", f"{r['mean_matches']:9.3f}"),
        ("F1 against the synthetic groups", f"{r['f1']:9.4f}"),
        ("peak resident memory (process)", f"{r['peak_rss_mb']:9.0f} MB"),
    ]
    members = ", ".join(
        f"{m['name']}>={m['threshold']}" + (f" blend {m['blend']}" if m.get("blend") else "")
        if m["type"] != "phash"
        else f"{m['name']}<={m['max_distance']} bits"
        for m in params["members"]
    )
    min2 = params["min2"]
    print(f"rule on {r['n']} rows: {members}, union, min2 {min2['member']}>={min2['threshold']}")
    print(_table(rows))


def _print_naive(r: dict) -> None:
    rows = [(f"ours stage {key}", f"{v:9.2f} s") for key, v in r["ours_stages_s"].items()]
    rows.append(("ours total (match + strings)", f"{r['ours_s']:9.2f} s"))
    rows += [(f"naive stage {key}", f"{v:9.2f} s") for key, v in r["naive_stages_s"].items()]
    rows += [
        ("naive total", f"{r['naive_s']:9.2f} s"),
        ("naive / ours", f"{r['naive_over_ours']:9.2f}   (target >= 3)"),
        ("rows with identical predictions", f"{100 * r['agreement']:9.3f} %"),
        ("peak resident memory (process)", f"{r['peak_rss_mb']:9.0f} MB"),
    ]
    print(f"naive (notebook way) against ours on {r['n']} rows:")
    print(_table(rows))


def _print_search(r: dict) -> None:
    rows = [
        ("search time", f"{r['search_s']:9.2f} s   (target < 60 s)"),
        ("evaluations", f"{r['evaluations']:9d}"),
        ("candidate sets computed", f"{r['cached_candidate_sets']:9d}"),
        ("CV F1 all / fold", f"{r['f1_all']:.4f} / {r['f1_fold']:.4f}"),
        ("peak resident memory (process)", f"{r['peak_rss_mb']:9.0f} MB"),
    ]
    print(
        f"threshold search on {r['rows']} OOF rows, {r['folds']} folds, blending stages "
        f"{r['blend_stages']}, members {', '.join(r['members'])}:"
    )
    print(_table(rows))


def run_bench(
    n: int = 70000,
    dim: int = 512,
    *,
    naive: bool = False,
    search: bool = False,
    search_rows: int = 34000,
    blend_stages: int | None = None,
    seed: int = 0,
    backend: str = "torch",
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the parts asked for (``rule`` unless ``naive`` or ``search``), print a table per part,
    then one JSON line; returns that JSON object."""
    if search and search_rows < 2 * SEARCH_FOLDS:
        raise ShopeeError(
            f"bench match: --search-rows must be at least {2 * SEARCH_FOLDS}, got {search_rows}"
        )
    load_start = os.getloadavg()
    result: dict[str, Any] = {
        "bench": "match",
        "n": n,
        "dim": dim,
        "seed": seed,
        "backend": backend,
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    params = default_params()
    if not (naive or search):
        _log(f"generating {n} synthetic rows (dim {dim}) ...")
        started = time.perf_counter()
        data = make_synthetic(n, dim, seed)
        result["generate_s"] = round(time.perf_counter() - started, 3)
        result["rule"] = run_rule(data, params, backend, device)
        del data
        _print_rule(result["rule"], params)
    if naive:
        _log(f"generating {n} synthetic rows (dim {dim}) ...")
        data = make_synthetic(n, dim, seed)
        result["naive"] = run_naive(data, params, backend, device)
        del data
        _print_naive(result["naive"])
    if search:
        result["search"] = run_search(search_rows, dim, seed, backend, device, blend_stages)
        _print_search(result["search"])
    load_end = os.getloadavg()
    result["loadavg_start"] = [round(v, 2) for v in load_start]
    result["loadavg_end"] = [round(v, 2) for v in load_end]
    result["peak_rss_mb"] = peak_rss_mb()
    print(
        f"load average (1, 5, 15 min) at start {', '.join(f'{v:.2f}' for v in load_start)}, "
        f"at end {', '.join(f'{v:.2f}' for v in load_end)} on {os.cpu_count()} cores; "
        f"process peak memory {result['peak_rss_mb']:.0f} MB"
    )
    print(json.dumps(result), flush=True)
    return result
