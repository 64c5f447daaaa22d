"""Out-of-fold predictions of finished experiments, aligned row by row across experiments."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shopee.codedigest import check_records
from shopee.constants import EMBEDDING_KINDS
from shopee.errors import ShopeeError
from shopee.folds import DataFingerprint
from shopee.outputs import FoldRecord, finished_folds, fold_dir


@dataclass
class DenseFold:
    """A fold's training rows as its own model embedded them (keys ``<exp>:<kind>``, float32)."""

    index: pd.DataFrame  # posting_id, label_group
    embeddings: dict[str, np.ndarray]


@dataclass
class OOFSet:
    """OOF rows of the folds every experiment finished, with each experiment's embeddings.

    ``embeddings`` is keyed ``"<exp>:<kind>"`` (``exp001:fused``); arrays are row-aligned with
    ``index`` (posting_id, label_group, fold), L2-normalized float32. ``data`` is the data every
    fold was trained on (by content); ``data_dir`` where it was, for messages.
    """

    index: pd.DataFrame
    embeddings: dict[str, np.ndarray]
    folds: list[int]
    experiments: dict[str, list[int]]  # folds each experiment has finished
    data: DataFingerprint
    data_dir: str
    skipped: list[str] = field(default_factory=list)  # "exp003 fold 2: not finished" ...
    dense: dict[int, DenseFold] = field(default_factory=dict)  # fold -> its training rows
    dense_missing: list[str] = field(default_factory=list)  # folds without dense embeddings
    code_changes: dict[str, list[str]] = field(default_factory=dict)  # folds other code trained

    @property
    def has_dense(self) -> bool:
        return bool(self.folds) and set(self.dense) == set(self.folds)

    @property
    def labels(self) -> np.ndarray:
        return self.index["label_group"].to_numpy()

    def kinds(self) -> list[str]:
        """Embedding kinds present, in a stable order."""
        order = {kind: i for i, kind in enumerate(EMBEDDING_KINDS)}
        kinds = {key.split(":", 1)[1] for key in self.embeddings}
        return sorted(kinds, key=lambda k: (order.get(k, 9), k))


def load_oof(
    output: str | Path, experiments: list[str], log=print, allow_code_change: bool = False
) -> OOFSet:
    """Load every finished fold of ``experiments``; folds missing in one are skipped for all.

    Every fold must have been trained on the same data (same train.csv content, same folds), and
    by this checkout's embedding-shaping code (``check_records``, before anything is read or
    written) unless ``allow_code_change``. Folds trained before data fingerprints were recorded
    get theirs written (``log`` says so).
    """
    output = Path(output)
    if not experiments:
        raise ShopeeError("no experiments given")
    if len(set(experiments)) != len(experiments):
        raise ShopeeError(f"an experiment is named twice: {' '.join(experiments)}")
    finished: dict[str, list[int]] = {}
    skipped: list[str] = []
    for exp in experiments:
        finished[exp], notes = finished_folds(output, exp)
        skipped += notes
        if not finished[exp]:
            raise ShopeeError(f"{output / exp}: no finished fold (train one: python exp/{exp}.py --fold 0)")
    common = sorted(set.intersection(*(set(f) for f in finished.values())))
    for exp, folds in finished.items():
        for fold in sorted(set(folds) - set(common)):
            skipped.append(f"{exp} fold{fold}: not finished by every experiment, left out")
    if not common:
        raise ShopeeError(
            "the experiments share no finished fold: "
            + ", ".join(f"{exp} has {sorted(folds)}" for exp, folds in finished.items())
        )
    code_changes = check_records(
        (FoldRecord.open(fold_dir(output, exp, fold)) for fold in common for exp in experiments),
        allow_code_change,
    )

    indexes: list[pd.DataFrame] = []
    arrays: dict[str, list[np.ndarray]] = {}
    first: FoldRecord | None = None
    dense: dict[int, DenseFold] = {}
    dense_missing: list[str] = []
    for fold in common:
        reference: pd.DataFrame | None = None
        records = []
        for exp in experiments:
            record = FoldRecord.open(fold_dir(output, exp, fold))
            if record.upgrade():
                log(f"{record.path}: recorded the fingerprint of its data ({record.data.short()})")
            if first is None:
                first = record
            elif record.data != first.data:
                raise ShopeeError(
                    f"{record.path}: trained on other data than {first.path} "
                    f"({record.data.short()} against {first.data.short()})"
                )
            index = record.oof_index()
            if reference is None:
                reference = index
                indexes.append(index)
            elif not index["posting_id"].equals(reference["posting_id"]):
                raise ShopeeError(
                    f"{record.path}: its validation rows differ from {experiments[0]}'s fold {fold}; "
                    "were they trained on other data or other folds?"
                )
            for kind in record.kinds:
                arrays.setdefault(f"{exp}:{kind}", []).append(record.oof(kind, rows=len(index)))
            records.append(record)
        lacking = [r.name for r in records if not r.has_dense]
        if lacking:
            dense_missing += lacking
        else:
            dense[fold] = _dense_fold(records)
    index = pd.concat(indexes, ignore_index=True)
    if index["posting_id"].duplicated().any():
        raise ShopeeError("a posting_id appears in two folds' OOF rows: the folds overlap")
    embeddings = {key: np.concatenate(parts) for key, parts in arrays.items() if len(parts) == len(common)}
    assert first is not None
    for fold_set in dense.values():
        fold_set.embeddings = {k: v for k, v in fold_set.embeddings.items() if k in embeddings}
    return OOFSet(
        index,
        embeddings,
        common,
        finished,
        first.data,
        first.data_dir,
        skipped,
        dense,
        dense_missing,
        code_changes,
    )


def _dense_fold(records: list[FoldRecord]) -> DenseFold:
    """One fold's dense sets of several experiments, checked to hold the same rows."""
    index = records[0].dense_index()
    embeddings = {}
    for record in records:
        if record is not records[0] and not record.dense_index()["posting_id"].equals(index["posting_id"]):
            raise ShopeeError(f"{record.path}: its dense rows differ from {records[0].path}'s")
        for kind in record.kinds:
            embeddings[f"{record.exp}:{kind}"] = record.dense(kind, rows=len(index))
    return DenseFold(index, embeddings)


def combined_embedding(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Concatenate L2-normalized embeddings scaled by ``weights`` and normalize the result.

    The cosine of the result is the weight-squared average of the members' cosines.
    """
    parts = [np.asarray(a, dtype=np.float32) * np.float32(w) for a, w in zip(arrays, weights, strict=True)]
    out = np.concatenate(parts, axis=1)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)
