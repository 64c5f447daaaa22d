"""Model-free baselines on a train split: only itself, identical phash, TF-IDF with its best threshold.

Each is scored two ways: matching within each fold's rows (mean over folds; a fold is about the
density of the public test) and matching across the whole split at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shopee.constants import TFIDF_GRID
from shopee.match import Pairs, f1_by_threshold, phash_exact_pairs, tfidf_pairs
from shopee.metrics import score_pairs, self_pairs


def _f1(pairs: Pairs, labels: np.ndarray) -> float:
    rows, cols = pairs.with_self()
    return score_pairs(rows, cols, labels).mean().f1


def _subset_scores(df: pd.DataFrame) -> dict[str, object]:
    labels = df["label_group"].to_numpy()
    return {
        "self": score_pairs(*self_pairs(len(df)), labels).mean().f1,
        "phash": _f1(phash_exact_pairs(df["image_phash"]), labels),
        "tfidf_curve": f1_by_threshold(tfidf_pairs(df["title"]), labels, TFIDF_GRID),
    }


def run_baselines(train: pd.DataFrame, folds: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Baseline F1s: ``{"self"|"phash"|"tfidf": {"fold", "all", "threshold", ...}}``.

    ``fold`` is the mean over folds of F1 matching within the fold; for TF-IDF one threshold is
    chosen for all folds (the best mean), and ``threshold_all`` is the best one for the whole set.
    """
    per_fold = [_subset_scores(train.loc[folds == f]) for f in np.unique(folds)]
    whole = _subset_scores(train)
    fold_curve = np.mean([s["tfidf_curve"] for s in per_fold], axis=0)
    best_fold = int(np.argmax(fold_curve))
    best_all = int(np.argmax(whole["tfidf_curve"]))
    return {
        "self": {
            "fold": float(np.mean([s["self"] for s in per_fold])),
            "all": whole["self"],
            "threshold": None,
        },
        "phash": {
            "fold": float(np.mean([s["phash"] for s in per_fold])),
            "all": whole["phash"],
            "threshold": 0,
        },
        "tfidf": {
            "fold": float(fold_curve[best_fold]),
            "all": float(whole["tfidf_curve"][best_all]),
            "threshold": float(TFIDF_GRID[best_fold]),
            "threshold_all": float(TFIDF_GRID[best_all]),
        },
    }


def format_baselines(result: dict[str, dict[str, float | None]], n_rows: int, n_folds: int) -> str:
    """A small table a person reads in the terminal."""
    names = {
        "self": "only itself",
        "phash": "identical image_phash",
        "tfidf": "TF-IDF cosine, best threshold",
    }
    lines = [
        f"{'predictor':<32}{'F1 per fold':>12}{'F1 all':>10}   threshold",
        f"{'':<32}{f'({n_folds} folds)':>12}{f'({n_rows})':>10}",
    ]
    for key, label in names.items():
        r = result[key]
        if key == "tfidf":
            thr = f"{r['threshold']:.2f} per fold, {r['threshold_all']:.2f} all"
        elif key == "phash":
            thr = "identical"
        else:
            thr = "-"
        lines.append(f"{label:<32}{r['fold']:>12.3f}{r['all']:>10.3f}   {thr}")
    return "\n".join(lines)
