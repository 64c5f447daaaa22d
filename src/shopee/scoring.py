"""How a matching rule is scored on cross-validation data: row sets ("universes") and the Scorer.

A universe is a set of rows matched among themselves, all embedded in one space, of which some are
scored:

- ``fold<k>``: fold k's validation rows alone (objective ``fold``: the mean over folds of their
  mean F1; a fifth of train's density);
- ``dense<k>``: fold k's validation rows *and* its training rows, embedded by fold k's model
  (``dense_<kind>.npy``), TF-IDF and phash over the same rows; only the validation rows are
  scored, so every query meets the density of the whole train set in its own model's space
  (objective ``dense``: the mean F1 over all scored rows);
- ``all``: every OOF row at once (objective ``all``; rows of different folds were embedded by
  different fold models, so their cross-fold similarities are not what a test query meets).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from shopee.constants import OBJECTIVES, K
from shopee.match import Pairs, combine, f1_by_threshold, member_candidates
from shopee.metrics import MatchScore, RowScores, group_sizes, score_distinct_pairs
from shopee.oof import OOFSet, combined_embedding


@dataclass
class Universe:
    name: str
    objective: str
    embeddings: dict[str, np.ndarray]
    labels: np.ndarray
    titles: np.ndarray | None = None
    phashes: np.ndarray | None = None
    scored: np.ndarray | None = None  # indices of the rows whose F1 counts (None: all rows)
    fold: int | None = None

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def n_scored(self) -> int:
        return self.n if self.scored is None else len(self.scored)

    def subset(self, rows: np.ndarray, name: str) -> Universe:
        """The universe restricted to ``rows`` (sorted indices), scored rows kept where they are."""
        position = np.full(self.n, -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        scored = None
        if self.scored is not None:
            kept = position[self.scored]
            scored = kept[kept >= 0]
        return replace(
            self,
            name=name,
            embeddings={k: v[rows] for k, v in self.embeddings.items()},
            labels=self.labels[rows],
            titles=None if self.titles is None else self.titles[rows],
            phashes=None if self.phashes is None else self.phashes[rows],
            scored=scored,
        )


def _with_combined(
    embeddings: dict[str, np.ndarray], combined: dict[str, list[str]], projections: Mapping[str, Any] | None
) -> dict[str, np.ndarray]:
    out = dict(embeddings)
    for source, parts in combined.items():
        out[source] = combined_embedding([embeddings[p] for p in parts], [1.0] * len(parts))
    for source, projection in (projections or {}).items():
        out[source] = projection(embeddings)
    return out


def build_universes(
    oof: OOFSet,
    objectives: Iterable[str],
    combined: dict[str, list[str]],
    text: pd.DataFrame | None = None,
    projections: Mapping[str, Any] | None = None,
) -> list[Universe]:
    """The universes the objectives need. ``combined`` maps a ``cat:<kind>`` source to the
    ``<exp>:<kind>`` sources it concatenates, ``projections`` a ``pca...`` source to its fitted
    ``projection.Projection``; ``text`` (train rows indexed by posting_id, with ``title`` and
    ``image_phash``) feeds TF-IDF and phash members."""

    def text_of(ids: np.ndarray, column: str) -> np.ndarray | None:
        return None if text is None else text.loc[ids, column].to_numpy()

    objectives = set(objectives)
    universes = []
    ids = oof.index["posting_id"].to_numpy()
    fold_of_row = oof.index["fold"].to_numpy()
    base = {k: v for k, v in oof.embeddings.items()}
    if "all" in objectives:
        universes.append(
            Universe(
                "all",
                "all",
                _with_combined(base, combined, projections),
                oof.labels,
                text_of(ids, "title"),
                text_of(ids, "image_phash"),
            )
        )
    for fold in oof.folds:
        rows = np.flatnonzero(fold_of_row == fold)
        fold_ids = ids[rows]
        if "fold" in objectives:
            universes.append(
                Universe(
                    f"fold{fold}",
                    "fold",
                    _with_combined({k: v[rows] for k, v in base.items()}, combined, projections),
                    oof.labels[rows],
                    text_of(fold_ids, "title"),
                    text_of(fold_ids, "image_phash"),
                    fold=fold,
                )
            )
        if "dense" in objectives:
            dense = oof.dense[fold]
            all_ids = np.concatenate([fold_ids, dense.index["posting_id"].to_numpy()])
            embeddings = {k: np.concatenate([v[rows], dense.embeddings[k]]) for k, v in base.items()}
            universes.append(
                Universe(
                    f"dense{fold}",
                    "dense",
                    _with_combined(embeddings, combined, projections),
                    np.concatenate([oof.labels[rows], dense.index["label_group"].to_numpy()]),
                    text_of(all_ids, "title"),
                    text_of(all_ids, "image_phash"),
                    scored=np.arange(len(rows)),
                    fold=fold,
                )
            )
    return universes


@dataclass
class Scores:
    """A rule's score per objective, and its per-row scores (OOF rows in index order)."""

    by_objective: dict[str, MatchScore]
    rows: dict[str, RowScores] = field(default_factory=dict)

    def value(self, objective: str) -> float:
        return self.by_objective[objective].f1

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {objective: score.as_dict() for objective, score in self.by_objective.items()}


def _concat(parts: Sequence[RowScores]) -> RowScores:
    return RowScores(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("f1", "precision", "recall")))


def aggregate(objective: str, parts: Sequence[RowScores]) -> MatchScore:
    """``fold``: the mean over folds of their mean (as before); others: the mean over rows. Sets
    without a scored row (a small subset may keep none of a fold's validation rows) count for none."""
    parts = [p for p in parts if len(p.f1)] or parts
    if objective == "fold":
        means = [p.mean() for p in parts]
        return MatchScore(
            *(float(np.mean([getattr(m, f) for m in means])) for f in ("f1", "precision", "recall"))
        )
    return _concat(parts).mean()


class Scorer:
    """Scores params on its universes, caching each member's candidates per universe."""

    def __init__(self, universes: Sequence[Universe], backend: str = "torch", device: str = "cpu") -> None:
        self.universes = list(universes)
        self.objectives = [o for o in OBJECTIVES if any(u.objective == o for u in self.universes)]
        self.backend = backend
        self.device = device
        self._cache: dict[tuple[str, str], Pairs] = {}
        self._pruned: dict[tuple[str, str, float], Pairs] = {}
        self._sizes: dict[str, np.ndarray] = {}  # universe name -> each row's group size
        self.floors: dict[str, float] = {}  # member name -> lowest threshold the search will try
        self.evaluations = 0

    def restricted(self, keep: Iterable[Universe]) -> Scorer:
        """A scorer over some of these universes, sharing the candidates computed so far."""
        other = Scorer(list(keep), self.backend, self.device)
        other._cache, other._pruned, other._sizes = self._cache, self._pruned, self._sizes
        return other

    def of(self, objective: str) -> list[Universe]:
        return [u for u in self.universes if u.objective == objective]

    def candidates(
        self, member: dict[str, Any], universe: Universe, blend_candidates: int | None = None
    ) -> Pairs:
        """The member's candidates on ``universe`` (``blend_candidates`` as the params' field); once
        a floor is set for the member, only pairs at or above it (and each row's nearest, for min2):
        scoring then touches far fewer pairs."""
        key = {k: v for k, v in member.items() if k not in ("threshold", "name")}
        if blend_candidates and member.get("blend"):
            key["blend_candidates"] = blend_candidates
        cache_key = (json.dumps(key, sort_keys=True), universe.name)
        floor = self.floors.get(member["name"])
        if floor is None:
            return self._full(member, cache_key, universe, blend_candidates)
        pruned_key = (*cache_key, floor)
        if pruned_key not in self._pruned:
            full = self._full(member, cache_key, universe, blend_candidates)
            self._pruned[pruned_key] = full.select((full.sims >= floor) | (full.positions() == 0))
        return self._pruned[pruned_key]

    def _full(
        self,
        member: dict[str, Any],
        cache_key: tuple[str, str],
        universe: Universe,
        blend_candidates: int | None,
    ) -> Pairs:
        if cache_key not in self._cache:
            source = member.get("source")
            self._cache[cache_key] = member_candidates(
                member,
                universe.n,
                embeddings={source: universe.embeddings[source]} if source else None,
                titles=universe.titles,
                phashes=universe.phashes,
                k=K,
                backend=self.backend,
                device=self.device,
                queries=universe.scored,  # only scored rows' matches count: search from them alone
                blend_candidates=blend_candidates,
            )
        return self._cache[cache_key]

    def row_scores(self, params: dict[str, Any], universe: Universe) -> RowScores:
        blend = params.get("blend_candidates")
        candidates = {m["name"]: self.candidates(m, universe, blend) for m in params["members"]}
        pairs = combine(params, candidates, universe.n, titles=universe.titles)
        if universe.name not in self._sizes:
            self._sizes[universe.name] = group_sizes(universe.labels)
        # combine's pairs are distinct and never a row with itself (``Pairs``)
        scores = score_distinct_pairs(*pairs.with_self(), universe.labels, self._sizes[universe.name])
        if universe.scored is None:
            return scores
        return RowScores(*(getattr(scores, f)[universe.scored] for f in ("f1", "precision", "recall")))

    def score(self, params: dict[str, Any]) -> Scores:
        self.evaluations += 1
        by_objective, rows = {}, {}
        for objective in self.objectives:
            parts = [self.row_scores(params, u) for u in self.of(objective)]
            by_objective[objective] = aggregate(objective, parts)
            rows[objective] = _concat(parts)
        return Scores(by_objective, rows)

    def curve(self, member: dict[str, Any], grid: np.ndarray, objective: str) -> np.ndarray:
        """F1 of one member alone against its threshold for ``objective`` (one pass per universe)."""
        curves, weights = [], []
        for u in self.of(objective):
            if u.n_scored == 0:
                continue
            curves.append(f1_by_threshold(self.candidates(member, u), u.labels, grid, rows=u.scored))
            weights.append(u.n_scored)
        if objective == "fold":
            return np.mean(curves, axis=0)
        return np.average(curves, axis=0, weights=weights)
