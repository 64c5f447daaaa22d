"""PCA of concatenated embeddings: an ensemble member that sees several kinds at once, in fewer
dimensions (a Google Universal Image Embedding habit).

The parts (``<exp>:<kind>`` sources, each L2-normalized) are concatenated, reduced by a PCA
fitted on the tuning rows (the OOF rows), optionally whitened (each component divided by its
standard deviation), and L2-normalized. The fitted mean and components travel in a ``.npz`` file
beside the ensemble file, so ``predict`` and the notebook apply the very same projection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from shopee.atomic import atomic_path
from shopee.errors import ShopeeError
from shopee.match import normalize_rows

PREFIX = "pca"


def source_name(dim: int, whiten: bool) -> str:
    """``pca128:all`` (``pca128w:all`` whitened): the source a projection member matches on."""
    return f"{PREFIX}{dim}{'w' if whiten else ''}:all"


def is_projection(source: str) -> bool:
    return source.startswith(PREFIX) and source.endswith(":all")


@dataclass
class Projection:
    parts: list[str]
    mean: np.ndarray  # (sum of the parts' widths,)
    components: np.ndarray  # (dim, sum of widths), rows scaled by 1/std when whitened
    whiten: bool

    @property
    def dim(self) -> int:
        return len(self.components)

    def __call__(self, embeddings: Mapping[str, np.ndarray]) -> np.ndarray:
        x = concatenated(embeddings, self.parts)
        return normalize_rows((x - self.mean) @ self.components.T, what=f"{self.dim}-dimensional projection")

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f, mean=self.mean, components=self.components, parts=np.array(self.parts), whiten=self.whiten
            )

    @classmethod
    def load(cls, path: Path) -> Projection:
        try:
            with np.load(path) as z:
                return cls([str(p) for p in z["parts"]], z["mean"], z["components"], bool(z["whiten"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ShopeeError(f"{path}: cannot read the ensemble's projection ({exc})") from None


def concatenated(embeddings: Mapping[str, np.ndarray], parts: Sequence[str]) -> np.ndarray:
    missing = [p for p in parts if p not in embeddings]
    if missing:
        raise ShopeeError(f"the projection needs {', '.join(missing)}, which no fold produces")
    return np.concatenate([normalize_rows(embeddings[p]) for p in parts], axis=1).astype(np.float32)


def fit_projection(
    embeddings: Mapping[str, np.ndarray], parts: Sequence[str], dim: int, whiten: bool
) -> Projection:
    """A PCA to ``dim`` dimensions of the parts' concatenation, fitted on these rows."""
    x = concatenated(embeddings, parts)
    dim = min(dim, x.shape[1], len(x) - 1)
    pca = PCA(
        n_components=dim, svd_solver="full" if x.shape[1] <= 4096 else "randomized", random_state=0
    ).fit(x)
    components = pca.components_.astype(np.float32)
    if whiten:
        components = components / np.sqrt(np.maximum(pca.explained_variance_, 1e-12))[:, None].astype(
            np.float32
        )
    return Projection(list(parts), pca.mean_.astype(np.float32), components, whiten)
