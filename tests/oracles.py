"""Independent oracles the tests check the library against (slow, simple, no shared code path).

``naive_match``: the matching rule written the way public Shopee notebooks write it: scikit-learn
``NearestNeighbors`` per member and blending stage, ``TfidfVectorizer`` with dense chunked cosine,
phash by a pandas comparison per row, then per-row Python loops with string joins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from shopee.match import validate_params


def naive_match(
    params: Mapping[str, Any],
    df: pd.DataFrame,
    embeddings: Mapping[str, np.ndarray],
) -> list[str]:
    """The rule as public notebooks write it: scikit-learn ``NearestNeighbors`` (brute cosine) per
    member and blending stage, ``TfidfVectorizer`` with dense chunked cosine, phash by a pandas
    comparison per row, then per-row Python loops with pandas look-ups and string joins.
    ``df`` has ``posting_id``, ``title`` and ``image_phash``. Returns one string per row."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    params = validate_params(params)
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
    return out
