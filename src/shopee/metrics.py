"""The competition metric (row-wise F1) with precision and recall, and Recall@K for retrieval.

For each row the truth is every posting of its ``label_group``, itself included; the prediction
is a set (duplicates removed). The score is the mean over rows of ``2|P∩T| / (|P| + |T|)``.
Precision and recall are averaged the same way (an empty prediction has precision 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class MatchScore:
    f1: float
    precision: float
    recall: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class RowScores:
    """Per-row F1, precision and recall; ``mean()`` gives the competition score."""

    f1: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    def mean(self) -> MatchScore:
        return MatchScore(float(self.f1.mean()), float(self.precision.mean()), float(self.recall.mean()))


def group_sizes(labels: np.ndarray) -> np.ndarray:
    """Size of each row's label group within ``labels`` (row-aligned)."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse]


def score_sets(predictions: Sequence[Iterable[str]], truths: Sequence[Iterable[str]]) -> MatchScore:
    """Competition F1 of predicted posting-id sets against true sets (any hashable ids)."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} rows")
    if not truths:
        raise ValueError("no rows to score")
    f1 = np.empty(len(truths))
    precision = np.empty(len(truths))
    recall = np.empty(len(truths))
    for i, (pred, true) in enumerate(zip(predictions, truths, strict=True)):
        pred, true = set(pred), set(true)
        tp = len(pred & true)
        f1[i] = 2 * tp / (len(pred) + len(true)) if pred or true else 1.0
        precision[i] = tp / len(pred) if pred else 0.0
        recall[i] = tp / len(true) if true else 0.0
    return RowScores(f1, precision, recall).mean()


def score_pairs(rows: np.ndarray, cols: np.ndarray, labels: np.ndarray) -> RowScores:
    """Per-row scores of predicted pairs ``(rows[i], cols[i])`` over ``len(labels)`` postings.

    The fast path for matching code: predictions are index pairs into ``labels``; a row predicts
    itself only if the pair ``(i, i)`` is given. Repeated pairs count once.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.shape != cols.shape:
        raise ValueError("rows and cols differ in length")
    if rows.size and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= n):
        raise ValueError(f"pair index outside 0..{n - 1}")
    keys = np.unique(rows * n + cols)
    return score_distinct_pairs(keys // n, keys % n, labels)


def score_distinct_pairs(
    rows: np.ndarray, cols: np.ndarray, labels: np.ndarray, true: np.ndarray | None = None
) -> RowScores:
    """``score_pairs`` of pairs already known to be distinct and in range (no checks, no
    de-duplication: the hot path of the threshold search); ``true``: each row's group size, when
    the caller keeps it."""
    n = len(labels)
    predicted = np.bincount(rows, minlength=n)
    hits = np.bincount(rows[labels[rows] == labels[cols]], minlength=n)
    true = group_sizes(labels) if true is None else true
    f1 = 2 * hits / (predicted + true)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / np.maximum(predicted, 1), 0.0)
    return RowScores(f1, precision, hits / true)


def others_per_row(labels: np.ndarray) -> float:
    """The true matches a row has on average (its group's other rows, counted per row)."""
    return float((group_sizes(np.asarray(labels)) - 1).mean()) if len(labels) else 0.0


def self_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n, dtype=np.int64)
    return idx, idx


def recall_at_k(
    neighbours: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Share of queries with at least one true match among their first K neighbours.

    ``neighbours`` is ``n x K_max`` (row-aligned with ``labels``), ordered best first, without the
    query itself; entries ``-1`` are padding. Queries whose group has no other posting are left
    out, since nothing can be retrieved for them.
    """
    neighbours = np.asarray(neighbours)
    labels = np.asarray(labels)
    if neighbours.ndim != 2 or len(neighbours) != len(labels):
        raise ValueError("neighbours must be an n x K array row-aligned with labels")
    valid = neighbours >= 0
    same = valid & (labels[np.where(valid, neighbours, 0)] == labels[:, None])
    has_match = group_sizes(labels) > 1
    if not has_match.any():
        return {f"recall@{k}": float("nan") for k in ks}
    hit_rank = np.where(same.any(axis=1), same.argmax(axis=1), np.iinfo(np.int64).max)
    return {f"recall@{k}": float((hit_rank[has_match] < k).mean()) for k in ks}


def score_submission(submission: pd.DataFrame, labels: pd.DataFrame) -> MatchScore:
    """Competition F1 of a ``posting_id, matches`` submission against ``posting_id, label_group``.

    Every labelled posting must appear exactly once; the truth of a row is every posting of its
    label group (itself included).
    """
    if submission["posting_id"].duplicated().any():
        raise ValueError(
            f"posting_id {submission['posting_id'][submission['posting_id'].duplicated()].iloc[0]!r} "
            "appears twice in the submission"
        )
    missing = set(labels["posting_id"]) - set(submission["posting_id"])
    if missing:
        raise ValueError(
            f"{len(missing)} labelled postings have no row in the submission, e.g. {min(missing)!r}"
        )
    groups = labels.groupby("label_group")["posting_id"].apply(set)
    truth = labels["label_group"].map(groups)
    predicted = submission.set_index("posting_id")["matches"].reindex(labels["posting_id"]).fillna("")
    return score_sets([m.split() for m in predicted], list(truth))


def score_files(submission: Path, labels: Path) -> tuple[MatchScore, int]:
    """``score_submission`` of two CSV files: (the score, the number of labelled rows).

    A submission that misses or repeats a labelled posting is a ``ShopeeError`` naming the file.
    """
    from shopee.data import read_csv_checked
    from shopee.errors import ShopeeError

    rows, _ = read_csv_checked(submission, ["posting_id", "matches"])
    truth, _ = read_csv_checked(labels, ["posting_id", "label_group"])
    try:
        return score_submission(rows, truth.astype({"label_group": str})), len(truth)
    except ValueError as exc:
        raise ShopeeError(f"{submission}: {exc}") from None
