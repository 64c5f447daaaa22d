"""Mean competition F1 of a pair list against a similarity threshold, in one pass per threshold."""

from __future__ import annotations

import numpy as np

from shopee.match.pairs import Pairs
from shopee.metrics import group_sizes


def f1_by_threshold(
    pairs: Pairs, labels: np.ndarray, thresholds: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """Mean competition F1 when each row predicts itself plus its candidates >= each threshold
    (over ``rows`` only, when given: the rows that are scored).

    One pass per threshold over the pair list; nothing dense in n.
    """
    labels = np.asarray(labels)
    true = group_sizes(labels)
    hit = labels[pairs.rows] == labels[pairs.cols]
    scores = np.empty(len(thresholds))
    for i, threshold in enumerate(thresholds):
        keep = pairs.sims >= threshold
        predicted = 1 + np.bincount(pairs.rows[keep], minlength=pairs.n)
        hits = 1 + np.bincount(pairs.rows[keep & hit], minlength=pairs.n)
        f1 = 2 * hits / (predicted + true)
        scores[i] = float(np.mean(f1 if rows is None else f1[rows]))
    return scores
