"""Search the matching parameters that maximize CV F1 on out-of-fold embeddings.

The search: each member alone at its best threshold; members added to the union greedily while
they help; min2; neighbourhood blending stages; then coordinate refinement of every threshold.
Each candidate rule is scored two ways: matching within each fold's validation rows (mean over
folds) and matching across all OOF rows at once (denser, closer to the ~70k hidden test).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopee.constants import EMBEDDING_GRID, PHASH_DISTANCES, TFIDF_GRID, K
from shopee.data import read_split
from shopee.ensemble_file import COMBINED_PREFIX, write_ensemble
from shopee.errors import ShopeeError
from shopee.match import PARAMS_VERSION, Pairs, combine, f1_by_threshold, member_candidates, validate_params
from shopee.metrics import MatchScore, RowScores, score_pairs
from shopee.oof import OOFSet, combined_embedding
from shopee.progress import Progress

BLEND_GRID = (0.5, 0.6, 0.7, 0.8)
MIN2_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
REFINE_STEPS = (0.05, 0.02, 0.01)
FLOOR_MARGIN = 0.25


@dataclass
class Scores:
    fold: MatchScore
    all: MatchScore
    rows_all: RowScores

    def value(self, objective: str) -> float:
        return self.fold.f1 if objective == "fold" else self.all.f1


class Scorer:
    """Scores params on the OOF rows, caching each member's candidates per subset."""

    def __init__(
        self,
        oof: OOFSet,
        embeddings: dict[str, np.ndarray],
        titles: np.ndarray | None,
        phashes: np.ndarray | None,
        backend: str = "torch",
        device: str = "cpu",
    ) -> None:
        self.embeddings = embeddings
        self.titles = titles
        self.phashes = phashes
        self.labels = oof.labels
        self.backend = backend
        self.device = device
        fold_of_row = oof.index["fold"].to_numpy()
        self.subsets: dict[str, np.ndarray] = {"all": np.arange(len(oof.index))}
        for fold in oof.folds:
            self.subsets[f"fold{fold}"] = np.flatnonzero(fold_of_row == fold)
        self._cache: dict[tuple[str, str], Pairs] = {}
        self._pruned: dict[tuple[str, str, float], Pairs] = {}
        self.floors: dict[str, float] = {}  # member name -> lowest threshold the search will try
        self.evaluations = 0

    def candidates(self, member: dict[str, Any], subset: str) -> Pairs:
        """The member's candidates on ``subset``; once a floor is set for the member, only pairs at
        or above it (and each row's nearest, for min2): scoring then touches far fewer pairs."""
        key = {k: v for k, v in member.items() if k not in ("threshold", "name")}
        cache_key = (json.dumps(key, sort_keys=True), subset)
        floor = self.floors.get(member["name"])
        if floor is None:
            return self._full(member, cache_key, subset)
        pruned_key = (*cache_key, floor)
        if pruned_key not in self._pruned:
            full = self._full(member, cache_key, subset)
            nearest = np.arange(len(full.rows)) == np.searchsorted(full.rows, full.rows, side="left")
            self._pruned[pruned_key] = full.select((full.sims >= floor) | nearest)
        return self._pruned[pruned_key]

    def _full(self, member: dict[str, Any], cache_key: tuple[str, str], subset: str) -> Pairs:
        if cache_key not in self._cache:
            rows = self.subsets[subset]
            source = member.get("source")
            self._cache[cache_key] = member_candidates(
                member,
                len(rows),
                embeddings={source: self.embeddings[source][rows]} if source else None,
                titles=None if self.titles is None else self.titles[rows],
                phashes=None if self.phashes is None else self.phashes[rows],
                k=K,
                backend=self.backend,
                device=self.device,
            )
        return self._cache[cache_key]

    def score(self, params: dict[str, Any]) -> Scores:
        self.evaluations += 1
        per_subset: dict[str, RowScores] = {}
        for subset, rows in self.subsets.items():
            candidates = {m["name"]: self.candidates(m, subset) for m in params["members"]}
            titles = None if self.titles is None else self.titles[rows]
            pairs = combine(params, candidates, len(rows), titles=titles)
            per_subset[subset] = score_pairs(*pairs.with_self(), self.labels[rows])
        folds = [s.mean() for name, s in per_subset.items() if name != "all"]
        fold = MatchScore(
            *(float(np.mean([getattr(s, f) for s in folds])) for f in ("f1", "precision", "recall"))
        )
        return Scores(fold, per_subset["all"].mean(), per_subset["all"])

    def curve(self, member: dict[str, Any], grid: np.ndarray, subset: str) -> np.ndarray:
        """F1 of one member alone against its threshold (fast: one pass over its candidates)."""
        rows = self.subsets[subset]
        return f1_by_threshold(self.candidates(member, subset), self.labels[rows], grid)


@dataclass
class SearchResult:
    params: dict[str, Any]
    scores: Scores
    alone: dict[str, dict[str, Any]]  # member name -> {"member", "fold", "all", "threshold"}
    steps: list[dict[str, Any]] = field(default_factory=list)  # each rule added in turn
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def embedding_members(oof: OOFSet, scorer_embeddings: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One member per experiment and kind; plus, for a kind several experiments share, their
    concatenation (``cat:<kind>``, weights searched later)."""
    members = []
    for key in oof.embeddings:
        members.append(
            {"name": key.replace(":", "_"), "type": "embedding", "source": key, "threshold": 0.5, "blend": []}
        )
    if len(oof.experiments) > 1:
        for kind in oof.kinds():
            keys = [f"{exp}:{kind}" for exp in oof.experiments if f"{exp}:{kind}" in oof.embeddings]
            if len(keys) > 1:
                source = f"{COMBINED_PREFIX}{kind}"
                scorer_embeddings[source] = combined_embedding(
                    [oof.embeddings[k] for k in keys], [1.0] * len(keys)
                )
                members.append(
                    {
                        "name": f"cat_{kind}",
                        "type": "embedding",
                        "source": source,
                        "threshold": 0.5,
                        "blend": [],
                    }
                )
    return members


def _best_alone(scorer: Scorer, member: dict[str, Any], objective: str) -> dict[str, Any]:
    if member["type"] == "phash":
        best = None
        for distance in PHASH_DISTANCES:
            m = {**member, "max_distance": distance}
            s = scorer.score(_params([m]))
            if best is None or s.value(objective) > best[1].value(objective):
                best = (m, s)
        m, s = best
        return {"member": m, "fold": s.fold.f1, "all": s.all.f1, "threshold": m["max_distance"]}
    grid = TFIDF_GRID if member["type"] == "tfidf" else EMBEDDING_GRID
    curves = {name: scorer.curve(member, grid, name) for name in scorer.subsets}
    fold_curve = np.mean([c for name, c in curves.items() if name != "all"], axis=0)
    target = fold_curve if objective == "fold" else curves["all"]
    best = int(np.argmax(target))
    m = {**member, "threshold": float(grid[best])}
    return {
        "member": m,
        "fold": float(fold_curve[best]),
        "all": float(curves["all"][best]),
        "threshold": m["threshold"],
        "curve": {"threshold": grid.tolist(), "fold": fold_curve.tolist(), "all": curves["all"].tolist()},
    }


def _params(members: list[dict[str, Any]], min2: dict | None = None) -> dict[str, Any]:
    return {"version": PARAMS_VERSION, "k": K, "members": members, "min2": min2, "unit_filter": False}


def search(
    scorer: Scorer,
    pool: list[dict[str, Any]],
    objective: str = "all",
    progress: Callable[[str], None] = print,
    blend_stages: int = 2,
) -> SearchResult:
    """Coarse search then coordinate refinement; see the module docstring.

    Blending is the costly step (each tried stage threshold is one more kNN search per subset);
    ``blend_stages=0`` skips it.
    """
    ticks = Progress(None, "optimize-ensemble", unit="rules scored")

    def evaluate(params: dict[str, Any]) -> Scores:
        ticks.update()
        return scorer.score(params)

    alone = {}
    for member in pool:
        alone[member["name"]] = _best_alone(scorer, member, objective)
        ticks.update()
    ranked = sorted(pool, key=lambda m: alone[m["name"]][objective], reverse=True)
    for m in pool:  # no later step moves a threshold more than FLOOR_MARGIN below its best alone
        if m["type"] != "phash":
            scorer.floors[m["name"]] = round(alone[m["name"]]["threshold"] - FLOOR_MARGIN, 2)
    for m in ranked:
        a = alone[m["name"]]
        progress(f"  {m['name']:<24} alone: F1 fold {a['fold']:.4f}  all {a['all']:.4f}  at {a['threshold']}")

    steps: list[dict[str, Any]] = []
    members = [copy.deepcopy(alone[ranked[0]["name"]]["member"])]
    best = evaluate(_params(members))
    steps.append(_step(f"{members[0]['name']} alone", _params(members), best))

    # Union: add members while they help; a union wants each member stricter than alone.
    for m in ranked[1:]:
        base = alone[m["name"]]["member"]
        tried = []
        offsets = (0, 2, 4, 6) if m["type"] == "phash" else (0.0, 0.05, 0.1, 0.15)
        for offset in offsets:
            cand = copy.deepcopy(base)
            if m["type"] == "phash":
                cand["max_distance"] = max(0, base["max_distance"] - offset)
            else:
                cand["threshold"] = round(min(0.99, base["threshold"] + offset), 2)
            params = _params(members + [cand])
            tried.append((evaluate(params), cand))
        scores, cand = max(tried, key=lambda t: t[0].value(objective))
        if scores.value(objective) > best.value(objective) + 1e-6:
            members.append(cand)
            best = scores
            steps.append(_step(f"+ {cand['name']}", _params(members), best))

    # min2 on the best embedding member of the union.
    min2 = None
    embedding_names = [m["name"] for m in members if m["type"] == "embedding"]
    if embedding_names:
        tried = []
        for threshold in MIN2_GRID:
            cand = {"member": embedding_names[0], "threshold": threshold}
            tried.append((evaluate(_params(members, cand)), cand))
        scores, cand = max(tried, key=lambda t: t[0].value(objective))
        if scores.value(objective) > best.value(objective) + 1e-6:
            min2, best = cand, scores
            steps.append(
                _step(f"+ min2 ({cand['member']} >= {cand['threshold']})", _params(members, min2), best)
            )

    # Neighbourhood blending: up to two stages per embedding member, each with its threshold.
    for i, m in enumerate(members):
        if m["type"] != "embedding":
            continue
        for _stage in range(blend_stages):
            tried = []
            for t in BLEND_GRID:
                cand = copy.deepcopy(m)
                cand["blend"] = [*m["blend"], t]
                for final in (
                    m["threshold"],
                    round(m["threshold"] + 0.05, 2),
                    round(m["threshold"] + 0.1, 2),
                ):
                    cand = {**cand, "threshold": min(0.99, final)}
                    trial = members[:i] + [cand] + members[i + 1 :]
                    tried.append((evaluate(_params(trial, min2)), cand))
            scores, cand = max(tried, key=lambda t: t[0].value(objective))
            if scores.value(objective) <= best.value(objective) + 1e-6:
                break
            members[i] = m = cand
            best = scores
            steps.append(_step(f"+ blend {m['name']} {m['blend']}", _params(members, min2), best))

    # Coordinate refinement of every threshold.
    improved = True
    rounds = 0
    while improved and rounds < 3:
        improved, rounds = False, rounds + 1
        for step in REFINE_STEPS:
            for path in _tunables(members, min2):
                for direction in (-1, 1):
                    trial_members, trial_min2 = copy.deepcopy(members), copy.deepcopy(min2)
                    if not _nudge(trial_members, trial_min2, path, direction * step, scorer.floors):
                        continue
                    scores = evaluate(_params(trial_members, trial_min2))
                    if scores.value(objective) > best.value(objective) + 1e-6:
                        members, min2, best, improved = trial_members, trial_min2, scores, True
    steps.append(_step("refined thresholds", _params(members, min2), best))
    ticks.close()
    params = validate_params(_params(members, min2))
    return SearchResult(params, best, alone, steps)


def _tunables(members: list[dict[str, Any]], min2: dict | None) -> list[tuple]:
    paths: list[tuple] = []
    for i, m in enumerate(members):
        if m["type"] == "phash":
            paths.append((i, "max_distance"))
            continue
        paths.append((i, "threshold"))
        paths.extend((i, "blend", j) for j in range(len(m.get("blend", []))))
    if min2 is not None:
        paths.append(("min2",))
    return paths


def _nudge(
    members: list[dict[str, Any]], min2: dict | None, path: tuple, delta: float, floors: dict[str, float]
) -> bool:
    """Change one tunable by ``delta``; False when the move leaves the valid range (a threshold
    may not go below its member's floor, where the candidates were pruned)."""
    if path[0] == "min2":
        value = round(min2["threshold"] + delta, 2)
        if not 0.0 <= value <= 1.0:
            return False
        min2["threshold"] = value
        return True
    i, key, *rest = path
    if key == "max_distance":
        value = members[i][key] + (1 if delta > 0 else -1)
        if not 0 <= value <= 16 or abs(delta) < 0.05:  # integer steps, once per round
            return False
        members[i][key] = value
        return True
    if key == "blend":
        value = round(members[i]["blend"][rest[0]] + delta, 2)
        if not 0.0 < value < 1.0:
            return False
        members[i]["blend"][rest[0]] = value
        return True
    value = round(members[i][key] + delta, 2)
    if not max(-1.0, floors.get(members[i]["name"], -1.0)) <= value <= 1.0:
        return False
    members[i][key] = value
    return True


def _step(label: str, params: dict[str, Any], scores: Scores) -> dict[str, Any]:
    return {
        "step": label,
        "params": copy.deepcopy(params),
        "fold": scores.fold.as_dict(),
        "all": scores.all.as_dict(),
    }


def optimize_ensemble(
    experiments: list[str],
    data_dir: Path,
    name: str,
    output: Path,
    *,
    use_tfidf: bool = False,
    use_phash: bool = False,
    objective: str = "all",
    backend: str = "torch",
    device: str = "cpu",
    blend_stages: int = 2,
) -> dict[str, Any]:
    """Load the experiments' OOF, search the params, write ``<output>/ensembles/NAME.json`` and
    the report folder; returns the summary printed as the last line."""
    from shopee.oof import load_oof
    from shopee.report import write_report

    started = time.perf_counter()
    if objective not in ("all", "fold"):
        raise ShopeeError(f"--objective {objective!r}: use all or fold")
    oof = load_oof(output, experiments)
    for note in oof.skipped:
        print(f"skipped: {note}", flush=True)
    titles = phashes = None
    if use_tfidf or use_phash:
        train = read_split(data_dir, "train", check_images=False).set_index("posting_id")
        missing = ~oof.index["posting_id"].isin(train.index)
        if missing.any():
            raise ShopeeError(
                f"{data_dir / 'train.csv'}: {int(missing.sum())} OOF posting_ids not in it "
                f"(first {oof.index['posting_id'][missing.idxmax()]!r}); the experiments used other data"
            )
        rows = train.loc[oof.index["posting_id"]]
        titles = rows["title"].to_numpy()
        phashes = rows["image_phash"].to_numpy()
    embeddings = dict(oof.embeddings)
    pool = embedding_members(oof, embeddings)
    if use_tfidf:
        pool.append({"name": "tfidf", "type": "tfidf", "threshold": 0.6, "analyzer": "word"})
    if use_phash:
        pool.append({"name": "phash", "type": "phash", "max_distance": 0})
    scorer = Scorer(oof, embeddings, titles, phashes, backend=backend, device=device)
    print(
        f"optimizing {name}: {len(oof.index)} OOF rows, folds {oof.folds}, {len(pool)} candidate members",
        flush=True,
    )
    result = search(scorer, pool, objective, blend_stages=blend_stages)

    ensemble = {
        "name": name,
        "params": result.params,
        "cv_f1_fold": result.scores.fold.f1,
        "cv_f1_all": result.scores.all.f1,
        "scores": {"fold": result.scores.fold.as_dict(), "all": result.scores.all.as_dict()},
        "objective": objective,
        "members": {n: {k: a[k] for k in ("fold", "all", "threshold")} for n, a in result.alone.items()},
        "combined_sources": _combined_sources(oof, result.params),
        "experiments": {exp: oof.folds for exp in experiments},
        "skipped": oof.skipped,
        "data": {"dir": oof.data_dir, "oof_rows": len(oof.index), **oof.data.to_dict()},
        "steps": result.steps,
        "evaluations": scorer.evaluations,
        "seconds": round(time.perf_counter() - started, 1),
    }
    ensembles = output / "ensembles"
    write_report(ensembles / name, ensemble, result, scorer, oof)
    write_ensemble(ensembles / f"{name}.json", ensemble)
    return {
        "name": name,
        "cv_f1_fold": ensemble["cv_f1_fold"],
        "cv_f1_all": ensemble["cv_f1_all"],
        "members": {n: a[objective] for n, a in result.alone.items()},
    }


def _combined_sources(oof: OOFSet, params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """How each ``cat:<kind>`` source used by the params is built, for predict and the kernel."""
    out = {}
    for member in params["members"]:
        source = member.get("source", "")
        if source.startswith(COMBINED_PREFIX):
            kind = source[len(COMBINED_PREFIX) :]
            out[source] = [
                {"source": f"{exp}:{kind}", "weight": 1.0}
                for exp in oof.experiments
                if f"{exp}:{kind}" in oof.embeddings
            ]
    return out
