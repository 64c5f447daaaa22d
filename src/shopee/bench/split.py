"""What the density and unseen-groups benchmarks share: a labelled train set split by group into a
tuning part, written as a competition folder of its own, and the rest; F1 of a rule on rows."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shopee.atomic import write_csv
from shopee.match import match
from shopee.metrics import score_pairs
from shopee.scoring import Scorer, Universe


def whole_groups(df: pd.DataFrame, rows: int, order: np.ndarray) -> np.ndarray:
    """Row positions of the first groups in ``order`` that fit in ``rows`` rows."""
    sizes = df.groupby("label_group").size()
    cumulative = sizes.loc[order].cumsum()
    keep = cumulative.index[cumulative <= rows]
    return np.flatnonzero(df["label_group"].isin(keep).to_numpy())


def split_by_group(train: pd.DataFrame, tune_rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the tuning part: whole groups, about ``tune_rows`` rows; the other groups' rows)."""
    order = np.random.default_rng(seed).permutation(train["label_group"].unique())
    tune_pos = whole_groups(train, tune_rows, order)
    rest = train.drop(index=train.index[tune_pos]).reset_index(drop=True)
    return train.iloc[tune_pos], rest


def write_subset(data_dir: Path, rows: pd.DataFrame, folder: Path) -> Path:
    """``rows`` of ``data_dir``'s train.csv as a competition folder of its own (the raw lines as
    they are; its images are the same files, linked)."""
    raw = pd.read_csv(data_dir / "train.csv", dtype=str, keep_default_na=False)
    write_csv(folder / "train.csv", raw[raw["posting_id"].isin(rows["posting_id"])])
    if (data_dir / "train_images").is_dir() and not (folder / "train_images").exists():
        (folder / "train_images").symlink_to((data_dir / "train_images").resolve(), target_is_directory=True)
    return folder


def rule_result(
    params: dict[str, Any], rows: pd.DataFrame, embeddings: dict[str, np.ndarray]
) -> tuple[float, float]:
    """(the mean F1 of matching ``rows`` (with labels) by ``params``, the matches a row found)."""
    pairs = match(
        params,
        len(rows),
        embeddings=embeddings,
        titles=rows["title"].to_numpy(),
        phashes=rows["image_phash"].to_numpy(),
    )
    f1 = score_pairs(*pairs.with_self(), rows["label_group"].to_numpy()).mean().f1
    return f1, len(pairs) / max(len(rows), 1)


def rule_f1(params: dict[str, Any], rows: pd.DataFrame, embeddings: dict[str, np.ndarray]) -> float:
    """The mean F1 of matching ``rows`` (with labels) by ``params``."""
    return rule_result(params, rows, embeddings)[0]


def main_threshold(params: dict[str, Any]) -> float | None:
    """The threshold of the rule's first embedding member (else of its first thresholded one)."""
    ranked = sorted(params["members"], key=lambda m: m["type"] != "embedding")
    return next((m["threshold"] for m in ranked if "threshold" in m), None)


def labelled_universe(rows: pd.DataFrame, embeddings: dict[str, np.ndarray], name: str) -> Universe:
    """``rows`` (with labels, titles, phashes) as one set matched among itself, every row scored."""
    return Universe(
        name,
        "all",
        embeddings,
        rows["label_group"].to_numpy(),
        rows["title"].to_numpy(),
        rows["image_phash"].to_numpy(),
    )


def best_on(universe: Universe, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The rule's thresholds re-tuned on the universe itself (coordinate refinement) and the F1
    they reach there: an upper bound no rule tuned elsewhere reaches."""
    from shopee.ensemble import refine

    best, scores = refine(Scorer([universe]), copy.deepcopy(params), "all")
    return best, scores.value("all")
