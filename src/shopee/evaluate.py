"""Score embeddings on a validation fold: kNN within the fold, F1 at the best threshold, Recall@K."""

from __future__ import annotations

import numpy as np

from shopee.constants import EMBEDDING_GRID, K
from shopee.match import f1_by_threshold, knn_pairs, neighbour_matrix
from shopee.metrics import recall_at_k


def evaluate_embeddings(
    embeddings: np.ndarray, labels: np.ndarray, k: int = K, device: str = "cpu"
) -> dict[str, float]:
    """``{"f1", "threshold", "recall@1", "recall@5", "recall@10"}`` matching rows among themselves.

    ``k`` counts the row itself, as the competition's k=51 does.
    """
    pairs = knn_pairs(embeddings, k=k - 1, device=device)
    curve = f1_by_threshold(pairs, labels, EMBEDDING_GRID)
    best = int(np.argmax(curve))
    result = {"f1": float(curve[best]), "threshold": float(EMBEDDING_GRID[best])}
    result.update(recall_at_k(neighbour_matrix(pairs, 10), labels))
    return result
