"""Score embeddings on a validation fold: kNN within the fold, F1 at the best threshold, Recall@K."""

from __future__ import annotations

import numpy as np

from shopee.match import MAX_OTHERS, f1_by_threshold, knn_pairs, neighbour_matrix
from shopee.metrics import recall_at_k

EMBEDDING_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.01), 2)


def evaluate_embeddings(
    embeddings: np.ndarray, labels: np.ndarray, k: int = MAX_OTHERS + 1, device: str = "cpu"
) -> dict[str, float]:
    """``{"f1", "threshold", "recall@1", "recall@5", "recall@10"}`` matching rows among themselves.

    ``k`` counts the row itself, as the competition's k=51 does.
    """
    pairs = knn_pairs(embeddings, k=k - 1, device=device)
    curve = f1_by_threshold(pairs, labels, EMBEDDING_THRESHOLDS)
    best = int(np.argmax(curve))
    result = {"f1": float(curve[best]), "threshold": float(EMBEDDING_THRESHOLDS[best])}
    result.update(recall_at_k(neighbour_matrix(pairs, 10), labels))
    return result
