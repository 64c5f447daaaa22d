"""Mean competition F1 of a pair list against a similarity threshold, in one pass per threshold."""

from __future__ import annotations

import numpy as np

from shopee.match.pairs import Pairs
from shopee.metrics import group_sizes


def f1_by_threshold(pairs: Pairs, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Mean competition F1 when each row predicts itself plus its candidates >= each threshold.

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
        scores[i] = float(np.mean(2 * hits / (predicted + true)))
    return scores
