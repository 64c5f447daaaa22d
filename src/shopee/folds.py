"""GroupKFold on ``label_group``, computed once per dataset and saved beside it.

Every experiment on the same data reads the same ``folds-<n>.csv`` so their out-of-fold
predictions can be compared and ensembled. When the data directory is read-only (a Kaggle input
mount), the file goes to ``$SHOPEE_CACHE`` (default ``~/.cache/shopee``) instead.

``DataFingerprint`` identifies the data a model was trained on by content, not by path: a hash of
train.csv's posting ids and label groups and one of the fold of each posting. A moved data
directory keeps its fingerprint; another train.csv or another split does not.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from shopee.atomic import write_csv
from shopee.errors import DataError

CACHE_ENV = "SHOPEE_CACHE"


def folds_filename(n_folds: int) -> str:
    return f"folds-{n_folds}.csv"


def _cache_path(data_dir: Path, n_folds: int) -> Path:
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "shopee"))
    key = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return root / "folds" / f"{data_dir.name}-{key}" / folds_filename(n_folds)


def make_folds(labels: np.ndarray, n_folds: int = 5) -> np.ndarray:
    """Fold number per row; every posting of a ``label_group`` lands in the same fold."""
    n_groups = len(np.unique(labels))
    if n_folds < 2:
        raise DataError(f"n_folds must be at least 2, not {n_folds}")
    if n_groups < n_folds:
        raise DataError(f"cannot make {n_folds} folds from {n_groups} label groups")
    folds = np.empty(len(labels), dtype=np.int64)
    splitter = GroupKFold(n_splits=n_folds)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(len(labels)), groups=labels)):
        folds[valid] = fold
    return folds


def _read_folds(path: Path, train: pd.DataFrame, n_folds: int) -> np.ndarray:
    try:
        stored = pd.read_csv(path, dtype={"posting_id": str, "fold": "int64"})
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: unreadable folds file ({reason}); delete it to recompute") from None
    if list(stored.columns[:2]) != ["posting_id", "fold"]:
        raise DataError(f"{path}: expected columns posting_id, fold; delete it to recompute")
    if stored["posting_id"].duplicated().any():
        raise DataError(f"{path}: duplicate posting_id; delete it to recompute")
    by_id = pd.Series(stored["fold"].to_numpy(), index=stored["posting_id"])
    folds = by_id.reindex(train["posting_id"])
    unknown = int(folds.isna().sum())
    if unknown or len(stored) != len(train):
        raise DataError(
            f"{path}: made for a different train.csv ({unknown} of {len(train)} posting_ids not in it, "
            f"{len(stored)} stored); delete it to recompute the folds"
        )
    values = folds.to_numpy(dtype=np.int64)
    if values.min() < 0 or values.max() >= n_folds:
        raise DataError(f"{path}: fold numbers outside 0..{n_folds - 1}; delete it to recompute")
    return values


def load_folds(data_dir: str | Path, train: pd.DataFrame, n_folds: int = 5) -> np.ndarray:
    """Fold per row of ``train`` (row-aligned), read from disk or computed and saved once."""
    data_dir = Path(data_dir)
    local = data_dir / folds_filename(n_folds)
    cached = _cache_path(data_dir, n_folds)
    for path in (local, cached):
        if path.is_file():
            return _read_folds(path, train, n_folds)
    folds = make_folds(train["label_group"].to_numpy(), n_folds)
    _save_folds(data_dir, train, folds, n_folds)
    return folds


def write_folds(path: str | Path, train: pd.DataFrame, folds: np.ndarray) -> None:
    """A folds file: ``posting_id,fold`` for every row of ``train``."""
    write_csv(path, pd.DataFrame({"posting_id": train["posting_id"], "fold": folds}))


def _save_folds(data_dir: Path, train: pd.DataFrame, folds: np.ndarray, n_folds: int) -> Path:
    """Beside the data, or in the cache when the data directory is read-only; where it went."""
    local = data_dir / folds_filename(n_folds)
    try:
        write_folds(local, train, folds)
        return local
    except OSError:
        cached = _cache_path(data_dir, n_folds)
        write_folds(cached, train, folds)
        return cached


def install_folds(data_dir: str | Path, train: pd.DataFrame, source: str | Path, n_folds: int = 5) -> Path:
    """Make ``source``, a folds file made on another machine (the training kernel ships the user's),
    the split ``load_folds`` reads for ``data_dir``: checked against ``train``, then written where
    ``load_folds`` looks first that is writable. Another scikit-learn could split differently, and
    folds must be the same everywhere the models of one ensemble are trained."""
    data_dir = Path(data_dir)
    folds = _read_folds(Path(source), train, n_folds)
    local = data_dir / folds_filename(n_folds)
    if local.is_file():
        if not np.array_equal(_read_folds(local, train, n_folds), folds):
            raise DataError(f"{local}: another split than {source}; delete one of them")
        return local
    return _save_folds(data_dir, train, folds, n_folds)


def _rows_sha256(keys: pd.Series, values: np.ndarray) -> str:
    """sha256 of ``key<TAB>value`` lines sorted by key: the same whatever the row order."""
    order = np.argsort(keys.to_numpy(dtype=str), kind="stable")
    lines = [f"{k}\t{v}" for k, v in zip(keys.to_numpy()[order], np.asarray(values)[order], strict=True)]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DataFingerprint:
    """What a fold model was trained on: train.csv's content and its split into folds."""

    train_sha256: str  # posting ids and label groups of train.csv
    folds_sha256: str  # the fold of each posting
    rows: int
    n_folds: int

    @classmethod
    def of(cls, train: pd.DataFrame, folds: np.ndarray, n_folds: int) -> DataFingerprint:
        return cls(
            train_sha256=train_sha256(train),
            folds_sha256=_rows_sha256(train["posting_id"], folds),
            rows=len(train),
            n_folds=int(n_folds),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataFingerprint:
        return cls(
            str(data["train_sha256"]), str(data["folds_sha256"]), int(data["rows"]), int(data["n_folds"])
        )

    def short(self) -> str:
        return (
            f"{self.rows} rows, train {self.train_sha256[:10]}, {self.n_folds} folds {self.folds_sha256[:10]}"
        )


def train_sha256(train: pd.DataFrame) -> str:
    """The train part of a ``DataFingerprint`` (``read_split``'s posting_id and label_group)."""
    return _rows_sha256(train["posting_id"], train["label_group"].to_numpy())


@functools.lru_cache(maxsize=8)
def _fingerprint_cached(data_dir: str, n_folds: int, mtime_ns: int) -> DataFingerprint:
    from shopee.data import read_split

    train = read_split(data_dir, "train", check_images=False)
    return DataFingerprint.of(train, load_folds(data_dir, train, n_folds), n_folds)


def fingerprint_of_dir(data_dir: str | Path, n_folds: int) -> DataFingerprint:
    """The fingerprint of the train split in ``data_dir`` with its ``n_folds`` folds."""
    path = Path(data_dir).resolve()
    return _fingerprint_cached(str(path), int(n_folds), (path / "train.csv").stat().st_mtime_ns)
