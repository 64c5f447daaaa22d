"""Out-of-fold predictions of finished experiments, aligned row by row across experiments."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shopee.errors import ShopeeError
from shopee.outputs import fold_dir, is_finished


@dataclass
class OOFSet:
    """OOF rows of the folds every experiment finished, with each experiment's embeddings.

    ``embeddings`` is keyed ``"<exp>:<kind>"`` (``exp001:fused``); arrays are row-aligned with
    ``index`` (posting_id, label_group, fold), L2-normalized float32.
    """

    index: pd.DataFrame
    embeddings: dict[str, np.ndarray]
    folds: list[int]
    experiments: dict[str, list[int]]  # folds each experiment has finished
    data_dir: str
    skipped: list[str] = field(default_factory=list)  # "exp003 fold 2: not finished" ...

    @property
    def labels(self) -> np.ndarray:
        return self.index["label_group"].to_numpy()

    def kinds(self) -> list[str]:
        """Embedding kinds present, in a stable order."""
        order = {"fused": 0, "img": 1, "txt": 2}
        kinds = {key.split(":", 1)[1] for key in self.embeddings}
        return sorted(kinds, key=lambda k: (order.get(k, 9), k))


def _finished_folds(output: Path, exp: str) -> tuple[list[int], list[str]]:
    exp_dir = output / exp
    if not exp_dir.is_dir():
        raise ShopeeError(
            f"{exp_dir}: no such experiment output (train it first: python exp/{exp}.py --fold 0)"
        )
    folds, skipped = [], []
    for path in sorted(exp_dir.glob("fold*")):
        name = path.name[4:]
        if not path.is_dir() or not name.isdigit():
            if path.name.endswith(".partial"):
                skipped.append(f"{exp} {path.name[:-8]}: unfinished (a .partial run)")
            continue
        if is_finished(path):
            folds.append(int(name))
        else:
            skipped.append(f"{exp} {path.name}: incomplete outputs")
    return folds, skipped


def load_oof(output: str | Path, experiments: list[str]) -> OOFSet:
    """Load every finished fold of ``experiments``; folds missing in one are skipped for all."""
    output = Path(output)
    if not experiments:
        raise ShopeeError("no experiments given")
    if len(set(experiments)) != len(experiments):
        raise ShopeeError(f"an experiment is named twice: {' '.join(experiments)}")
    finished: dict[str, list[int]] = {}
    skipped: list[str] = []
    for exp in experiments:
        finished[exp], notes = _finished_folds(output, exp)
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

    indexes: list[pd.DataFrame] = []
    arrays: dict[str, list[np.ndarray]] = {}
    data_dirs: set[str] = set()
    for fold in common:
        reference: pd.DataFrame | None = None
        for exp in experiments:
            path = fold_dir(output, exp, fold)
            index = pd.read_parquet(path / "oof_index.parquet")
            config = json.loads((path / "config.json").read_text())
            data_dirs.add(str(Path(config["data"]).resolve()))
            if reference is None:
                reference = index
                indexes.append(index)
            elif not index["posting_id"].equals(reference["posting_id"]):
                raise ShopeeError(
                    f"{path}: its validation rows differ from {experiments[0]}'s fold {fold}; "
                    "were they trained on other data or other folds?"
                )
            metrics = json.loads((path / "metrics.json").read_text())
            for kind in metrics["kinds"]:
                array = np.load(path / f"oof_{kind}.npy").astype(np.float32, copy=False)
                if len(array) != len(index):
                    raise ShopeeError(
                        f"{path / f'oof_{kind}.npy'}: {len(array)} rows for {len(index)} in the index"
                    )
                if not np.isfinite(array).all():
                    raise ShopeeError(f"{path / f'oof_{kind}.npy'}: holds NaN or inf")
                arrays.setdefault(f"{exp}:{kind}", []).append(array)
    if len(data_dirs) > 1:
        raise ShopeeError(f"the experiments were trained on different data: {', '.join(sorted(data_dirs))}")
    index = pd.concat(indexes, ignore_index=True)
    if index["posting_id"].duplicated().any():
        raise ShopeeError("a posting_id appears in two folds' OOF rows: the folds overlap")
    embeddings = {key: np.concatenate(parts) for key, parts in arrays.items() if len(parts) == len(common)}
    return OOFSet(index, embeddings, common, finished, data_dirs.pop(), skipped)


def combined_embedding(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Concatenate L2-normalized embeddings scaled by ``weights`` and normalize the result.

    The cosine of the result is the weight-squared average of the members' cosines.
    """
    parts = [np.asarray(a, dtype=np.float32) * np.float32(w) for a, w in zip(arrays, weights, strict=True)]
    out = np.concatenate(parts, axis=1)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)
