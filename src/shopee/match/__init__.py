"""From embeddings, titles and phashes to predicted matches.

Candidates are kept as sparse *pair lists* (``Pairs``), never a dense n x n matrix. Modules:

- ``pairs``: ``Pairs``, top-k per row, union, ``MAX_OTHERS``.
- ``knn``: exact cosine kNN on embeddings (torch, faiss, cuml backends), memory bounded.
- ``text``: TF-IDF of titles (word, character, both) and sparse cosine neighbours.
- ``phash``: identical or near (Hamming distance) image phashes.
- ``units``: quantities stated in titles and the unit-conflict filter.
- ``rules``: the matching params (members, thresholds, min2, blending) and the rule itself.
- ``thresholds``: F1 against a threshold from one pass over a pair list.
"""

from shopee.match.knn import BACKENDS, knn_pairs, normalize_rows, resolve_backend
from shopee.match.pairs import (
    Pairs,
    best_per_row,
    concat_pairs,
    neighbour_matrix,
    top_k_pairs,
    union_pairs,
)
from shopee.match.phash import hamming_pairs, parse_phashes, phash_exact_pairs, phash_pairs, phash_to_uint64
from shopee.match.rules import (
    MEMBER_TYPES,
    PARAMS_VERSION,
    combine,
    match,
    matches_to_strings,
    member_candidates,
    member_space,
    validate_params,
)
from shopee.match.text import ANALYZERS, sparse_cosine_pairs, tfidf_matrix, tfidf_pairs
from shopee.match.thresholds import f1_by_threshold
from shopee.match.units import DIMENSIONS, parse_quantities, unit_conflict_mask, unit_relations

__all__ = [
    "ANALYZERS",
    "BACKENDS",
    "DIMENSIONS",
    "MEMBER_TYPES",
    "PARAMS_VERSION",
    "Pairs",
    "best_per_row",
    "combine",
    "concat_pairs",
    "f1_by_threshold",
    "hamming_pairs",
    "knn_pairs",
    "match",
    "matches_to_strings",
    "member_candidates",
    "member_space",
    "neighbour_matrix",
    "normalize_rows",
    "parse_phashes",
    "parse_quantities",
    "phash_exact_pairs",
    "phash_pairs",
    "phash_to_uint64",
    "resolve_backend",
    "sparse_cosine_pairs",
    "tfidf_matrix",
    "tfidf_pairs",
    "top_k_pairs",
    "unit_conflict_mask",
    "unit_relations",
    "union_pairs",
    "validate_params",
]
