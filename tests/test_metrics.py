"""The competition metric (row-wise F1, precision, recall) and Recall@K.

Random cases are checked against scikit-learn's sample-averaged scores, which implement the same
definition independently; small cases are worked out by hand in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score
from sklearn.preprocessing import MultiLabelBinarizer

from shopee.metrics import group_sizes, recall_at_k, score_pairs, score_sets, self_pairs


def random_labels(rng: np.random.Generator, n: int, n_groups: int) -> np.ndarray:
    return rng.integers(0, n_groups, size=n)


def truth_sets(ids: list[str], labels: np.ndarray) -> list[set[str]]:
    return [{ids[j] for j in np.flatnonzero(labels == label)} for label in labels]


def random_prediction_lists(rng: np.random.Generator, ids: list[str], labels: np.ndarray) -> list[list[str]]:
    """Lists with duplicates, some empty, some mostly right (own group plus noise)."""
    n = len(ids)
    predictions = []
    for i in range(n):
        kind = rng.integers(0, 4)
        if kind == 0:
            pred: list[str] = []
        elif kind == 1:  # random postings, drawn with replacement so ids repeat
            pred = [ids[j] for j in rng.integers(0, n, size=rng.integers(1, 8))]
        else:  # part of its own group (repeated) plus a few random ones
            group = np.flatnonzero(labels == labels[i])
            own = rng.choice(group, size=rng.integers(1, 2 * len(group) + 1), replace=True)
            noise = rng.integers(0, n, size=rng.integers(0, 3))
            pred = [ids[j] for j in np.concatenate([own, noise])]
        predictions.append(pred)
    return predictions


def sklearn_scores(predictions: list[list[str]], truths: list[set[str]], ids: list[str]) -> tuple:
    mlb = MultiLabelBinarizer(classes=ids)
    y_true = mlb.fit_transform(truths)
    y_pred = mlb.transform([set(p) for p in predictions])
    return (
        f1_score(y_true, y_pred, average="samples", zero_division=0),
        precision_score(y_true, y_pred, average="samples", zero_division=0),
        recall_score(y_true, y_pred, average="samples", zero_division=0),
    )


# --------------------------------------------------------------------------------------------
# score_sets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_score_sets_matches_sklearn_sample_average(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 80))
    labels = random_labels(rng, n, n_groups=max(2, n // 4))
    ids = [f"train_{i}" for i in range(n)]
    truths = truth_sets(ids, labels)
    predictions = random_prediction_lists(rng, ids, labels)
    assert any(len(p) == 0 for p in predictions)
    assert any(len(p) != len(set(p)) for p in predictions)

    score = score_sets(predictions, truths)
    f1, precision, recall = sklearn_scores(predictions, truths, ids)
    assert score.f1 == pytest.approx(f1, abs=1e-12)
    assert score.precision == pytest.approx(precision, abs=1e-12)
    assert score.recall == pytest.approx(recall, abs=1e-12)
    assert score.as_dict() == {"f1": score.f1, "precision": score.precision, "recall": score.recall}


def test_only_itself_in_group_of_two() -> None:
    # P = {a}, T = {a, b}: |P∩T| = 1, F1 = 2*1 / (1 + 2) = 2/3, precision 1/1, recall 1/2.
    score = score_sets([["a"]], [{"a", "b"}])
    assert score.f1 == pytest.approx(2 / 3)
    assert score.precision == pytest.approx(1.0)
    assert score.recall == pytest.approx(0.5)


def test_perfect_prediction_scores_one() -> None:
    truths = [{"a", "b"}, {"a", "b"}, {"c"}]
    score = score_sets([["b", "a"], ["a", "b"], ["c"]], truths)
    assert (score.f1, score.precision, score.recall) == (1.0, 1.0, 1.0)


def test_duplicates_in_prediction_count_once() -> None:
    # ["a", "a", "a"] is the set {a}: same 2/3 as predicting "a" once, not 2*3 / (3 + 2).
    once = score_sets([["a"]], [{"a", "b"}])
    repeated = score_sets([["a", "a", "a"]], [{"a", "b"}])
    assert repeated == once
    assert repeated.f1 == pytest.approx(2 / 3)
    # {a, b} predicted as a, b, b, a is perfect.
    assert score_sets([["a", "b", "b", "a"]], [{"a", "b"}]).f1 == 1.0


def test_wrong_posting_in_group_of_two() -> None:
    # T = {a, b}, P = {a, c} (self plus a wrong one): |P∩T| = 1, F1 = 2*1 / (2 + 2) = 0.5,
    # precision 1/2, recall 1/2.
    score = score_sets([["a", "c"]], [{"a", "b"}])
    assert score.f1 == pytest.approx(0.5)
    assert score.precision == pytest.approx(0.5)
    assert score.recall == pytest.approx(0.5)


def test_empty_prediction_scores_zero_and_rows_are_averaged() -> None:
    # Row 1: P = {} against T = {a, b}: F1 0, precision 0 (by convention), recall 0.
    # Row 2: P = {a, b} against T = {a, b}: all 1.  Means: 0.5 each.
    score = score_sets([[], ["a", "b"]], [{"a", "b"}, {"a", "b"}])
    assert (score.f1, score.precision, score.recall) == (0.5, 0.5, 0.5)


def test_score_sets_rejects_misaligned_or_empty_input() -> None:
    with pytest.raises(ValueError):
        score_sets([["a"]], [{"a"}, {"b"}])
    with pytest.raises(ValueError):
        score_sets([], [])


# --------------------------------------------------------------------------------------------
# score_pairs
# --------------------------------------------------------------------------------------------


def test_group_sizes() -> None:
    labels = np.array([7, 3, 7, 7, 5, 3])
    np.testing.assert_array_equal(group_sizes(labels), [3, 2, 3, 3, 1, 2])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_score_pairs_equals_score_sets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(15, 60))
    labels = random_labels(rng, n, n_groups=max(2, n // 3))
    ids = [f"p{i}" for i in range(n)]
    truths = truth_sets(ids, labels)
    predictions = random_prediction_lists(rng, ids, labels)

    # The same predictions as index pairs, in shuffled order; repeated ids become repeated pairs.
    index = {pid: i for i, pid in enumerate(ids)}
    rows = np.array([i for i, pred in enumerate(predictions) for _ in pred], dtype=np.int64)
    cols = np.array([index[pid] for pred in predictions for pid in pred], dtype=np.int64)
    order = rng.permutation(len(rows))
    rows, cols = rows[order], cols[order]
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) < len(rows)

    per_row = score_pairs(rows, cols, labels)
    for i in range(n):
        expected = score_sets([predictions[i]], [truths[i]])
        assert per_row.f1[i] == pytest.approx(expected.f1, abs=1e-12), i
        assert per_row.precision[i] == pytest.approx(expected.precision, abs=1e-12), i
        assert per_row.recall[i] == pytest.approx(expected.recall, abs=1e-12), i
    mean, expected = per_row.mean(), score_sets(predictions, truths)
    assert mean.f1 == pytest.approx(expected.f1, abs=1e-12)
    assert mean.precision == pytest.approx(expected.precision, abs=1e-12)
    assert mean.recall == pytest.approx(expected.recall, abs=1e-12)


def test_score_pairs_self_only_baseline() -> None:
    # Groups {0, 1} and {2}: predicting only self gives 2/3 for rows 0 and 1, 1 for row 2.
    labels = np.array(["x", "x", "y"])
    scores = score_pairs(*self_pairs(3), labels)
    np.testing.assert_allclose(scores.f1, [2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(scores.precision, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(scores.recall, [0.5, 0.5, 1.0])


def test_score_pairs_without_any_pair_scores_zero() -> None:
    empty = np.zeros(0, dtype=np.int64)
    scores = score_pairs(empty, empty, np.array([0, 0, 1]))
    np.testing.assert_array_equal(scores.f1, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(scores.precision, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(scores.recall, [0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("rows", "cols"),
    [([0, 1], [1, 3]), ([0, 3], [1, 0]), ([0, -1], [1, 0]), ([1, 1], [-1, 0])],
)
def test_score_pairs_index_out_of_range(rows: list[int], cols: list[int]) -> None:
    with pytest.raises(ValueError):
        score_pairs(np.array(rows), np.array(cols), np.array([0, 0, 1]))


def test_score_pairs_length_mismatch() -> None:
    with pytest.raises(ValueError):
        score_pairs(np.array([0, 1]), np.array([1]), np.array([0, 0, 1]))


# --------------------------------------------------------------------------------------------
# recall_at_k
# --------------------------------------------------------------------------------------------


def test_recall_at_k_hand_worked() -> None:
    # Groups: 0 -> {0, 1}; 1 -> {2, 3, 5}; 9 -> {4} (alone, so query 4 is left out).
    # labels[-1] is 1: a -1 padding entry read as an index would wrongly "hit" for rows 2, 3 and 5.
    labels = np.array([0, 0, 1, 1, 9, 1])
    neighbours = np.array(
        [
            [2, 1, -1],  # labels 1, 0     -> first hit at rank 1
            [0, -1, -1],  # label 0         -> hit at rank 0
            [4, 0, 5],  # labels 9, 0, 1  -> first hit at rank 2
            [-1, -1, -1],  # nothing        -> never
            [0, 1, 2],  # singleton group -> left out
            [4, 1, 0],  # labels 9, 0, 0  -> never
        ]
    )
    # 5 queries count: @1 {1} -> 1/5; @2 {0, 1} -> 2/5; @3 and beyond {0, 1, 2} -> 3/5.
    result = recall_at_k(neighbours, labels, ks=(1, 2, 3, 10))
    assert result == pytest.approx({"recall@1": 0.2, "recall@2": 0.4, "recall@3": 0.6, "recall@10": 0.6})


def test_recall_at_k_all_singletons_is_nan() -> None:
    result = recall_at_k(np.array([[1], [0]]), np.array([1, 2]), ks=(1, 5))
    assert set(result) == {"recall@1", "recall@5"}
    assert all(math.isnan(v) for v in result.values())


def test_recall_at_k_rejects_misaligned_neighbours() -> None:
    with pytest.raises(ValueError):
        recall_at_k(np.array([[1], [0]]), np.array([0, 0, 1]))
    with pytest.raises(ValueError):
        recall_at_k(np.array([1, 0]), np.array([0, 0]))


def brute_recall_at_k(neighbours: np.ndarray, labels: np.ndarray, k: int) -> float:
    hits, queries = 0, 0
    for i in range(len(labels)):
        if sum(1 for j in range(len(labels)) if j != i and labels[j] == labels[i]) == 0:
            continue
        queries += 1
        for j in neighbours[i][:k]:
            if j >= 0 and labels[j] == labels[i]:
                hits += 1
                break
    return hits / queries


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_recall_at_k_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, width = 80, 8
    labels = random_labels(rng, n, n_groups=30)
    neighbours = np.full((n, width), -1, dtype=np.int64)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        count = int(rng.integers(0, width + 1))  # some rows fully or partly padded
        neighbours[i, :count] = rng.choice(others, size=count, replace=False)
    ks = (1, 2, 5, 8)
    result = recall_at_k(neighbours, labels, ks=ks)
    assert set(result) == {f"recall@{k}" for k in ks}
    for k in ks:
        assert result[f"recall@{k}"] == pytest.approx(brute_recall_at_k(neighbours, labels, k), abs=1e-12)
