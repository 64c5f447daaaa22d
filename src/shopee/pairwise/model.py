"""The second stage: a gradient-boosted classifier of candidate pairs (LightGBM).

**Training without leakage.** Pairs come from the dense CV sets only (``shopee.scoring``: fold k's
validation rows matched among fold k's training rows too, all embedded by fold k's model), and
only pairs from a validation row to its candidates, described from the validation row's side
(``shopee.pairwise.features``: nothing of the candidate end alone, which may be a training row of
the fold model, a kind of row no test has). The classifier's own CV follows the outer folds
(themselves GroupKFold over label groups): the model that scores set k's pairs is trained on the
other sets' pairs, minus every pair touching a group of fold k's validation rows, so no CV
probability comes from a model that saw its group. Early stopping holds out a fifth of the
training pairs by group.

**Matching from probabilities.** Each row decides its own matches: a pair from it is matched
when its probability reaches ``threshold``; a row left with no match gets its most probable pair
when that reaches ``min2``; at most 50 matches per row, most probable first. Both thresholds are
tuned on the dense sets' CV probabilities; the held-out estimate tunes them on all sets but one
and scores that one. They do not follow the number of rows (the rule's thresholds do): the pair
model's size curve says what its F1 is expected to be at the test's size.

The model shipped is refitted on every set's pairs with the mean number of rounds early stopping
chose; it is saved as LightGBM's text model beside the ensemble file.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shopee.constants import MAX_OTHERS
from shopee.errors import ShopeeError
from shopee.match import Pairs, top_k_pairs, union_pairs
from shopee.metrics import group_sizes, score_distinct_pairs
from shopee.pairwise.features import Candidates, candidates, feature_names, features, floors_of
from shopee.scoring import Universe
from shopee.size_curve import fit, optimism

THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.01), 2)
MIN2_GRID = (None, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
LIGHTGBM = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "seed": 0,
    "verbosity": -1,
}
MAX_ROUNDS = 1000
LOGIT_MARGIN = 1.0  # how far past the fitted logits a threshold may move when extrapolating
EARLY_STOPPING = 50


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise ShopeeError(
            "the pair model needs LightGBM: pip install lightgbm (Kaggle's image has it)"
        ) from None
    return lightgbm


@dataclass
class PairSet:
    """One CV set's candidate pairs that touch a scored row, their features and truth."""

    universe: Universe
    cands: Candidates
    features: pd.DataFrame
    truth: np.ndarray  # the two ends are one product
    group: np.ndarray  # the label group a pair belongs to for splitting (its scored end's)

    @property
    def fold(self) -> int | None:
        return self.universe.fold


def pair_set(
    universe: Universe,
    params: Mapping[str, Any],
    floors: Mapping[str, float],
    backend: str = "torch",
    device: str = "cpu",
) -> PairSet:
    inputs = dict(embeddings=universe.embeddings, titles=universe.titles, phashes=universe.phashes)
    found = candidates(
        params, floors, universe.n, backend=backend, device=device, queries=universe.scored, **inputs
    )
    table = features(params, found, scored=universe.scored, backend=backend, device=device, **inputs)
    labels = universe.labels
    truth = labels[found.a] == labels[found.b]
    return PairSet(universe, found, table, truth, labels[found.a])


def candidate_recall(sets: Sequence[PairSet]) -> dict[str, float]:
    """How many true pairs of the scored rows are candidates, and how many candidates are true."""
    true_total = true_found = candidates_total = 0
    for s in sets:
        u = s.universe
        others = group_sizes(u.labels) - 1  # each scored row's true pairs
        true_total += int(others.sum() if u.scored is None else others[u.scored].sum())
        true_found += int(s.truth.sum())
        candidates_total += len(s.truth)
    return {
        "true_pairs": true_total,
        "candidates": candidates_total,
        "recall": true_found / max(true_total, 1),  # share of true pairs that are candidates
        "precision": true_found / max(candidates_total, 1),  # share of candidates that are true
    }


def match_from_probabilities(
    n: int, a: np.ndarray, b: np.ndarray, p: np.ndarray, threshold: float, min2: float | None
) -> Pairs:
    """Matches of ``n`` rows from directed candidate pairs ``a -> b`` and their probabilities
    (module doc)."""
    p = np.asarray(p, dtype=np.float32)
    keep = p >= threshold
    matched = top_k_pairs(a[keep], b[keep], p[keep], n, MAX_OTHERS)
    if min2 is None or not len(a):
        return matched
    nearest = top_k_pairs(a, b, p, n, 1)  # each row's most probable pair
    add = nearest.select((matched.counts() == 0)[nearest.rows] & (nearest.sims >= min2))
    return union_pairs([matched, add], n, MAX_OTHERS) if len(add) else matched


def _row_f1(s: PairSet, p: np.ndarray, threshold: float, min2: float | None) -> np.ndarray:
    u = s.universe
    pairs = match_from_probabilities(u.n, s.cands.a, s.cands.b, p, threshold, min2)
    f1 = score_distinct_pairs(*pairs.with_self(), u.labels).f1  # matches are distinct pairs
    return f1 if u.scored is None else f1[u.scored]


def f1_by_threshold(s: PairSet, p: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each scored row's F1 at every threshold of ``grid`` (ascending) without min2, in one pass:
    what ``_row_f1`` gives one threshold at a time. A row's matches are its pairs at or above the
    threshold, at most ``MAX_OTHERS`` of them, most probable first, so its ``MAX_OTHERS`` most
    probable pairs hold every match it can have; each of those counts for every threshold it
    reaches (compared in float32, as the matcher compares)."""
    u = s.universe
    top = top_k_pairs(s.cands.a, s.cands.b, np.asarray(p, dtype=np.float32), u.n, MAX_OTHERS)
    rows = np.arange(u.n) if u.scored is None else np.asarray(u.scored)
    position = np.full(u.n, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    inside = position[top.rows] >= 0
    at, sims = position[top.rows[inside]], top.sims[inside]
    true = u.labels[top.rows[inside]] == u.labels[top.cols[inside]]
    width = len(grid) + 1
    reached = np.searchsorted(np.asarray(grid, dtype=np.float32), sims, side="right")

    def at_least(keep: np.ndarray) -> np.ndarray:  # per row and threshold: pairs reaching it
        counts = np.bincount(at[keep] * width + reached[keep], minlength=len(rows) * width)
        counts = counts.reshape(len(rows), width)
        return np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]

    matched, hits = at_least(np.ones(len(at), bool)), at_least(true)
    sizes = group_sizes(u.labels)[rows][:, None]
    return 2.0 * (1 + hits) / (1 + matched + sizes)


def tune_thresholds(
    sets: Sequence[PairSet], probs: Sequence[np.ndarray]
) -> tuple[float, float | None, float]:
    """(threshold, min2, F1): the best on the sets' scored rows (mean over rows): the threshold
    first (``f1_by_threshold``), then min2 at that threshold."""

    def f1(threshold: float, min2: float | None) -> float:
        return float(
            np.concatenate([_row_f1(s, p, threshold, min2) for s, p in zip(sets, probs, strict=True)]).mean()
        )

    by_threshold = np.concatenate(
        [f1_by_threshold(s, p, THRESHOLD_GRID) for s, p in zip(sets, probs, strict=True)]
    ).mean(axis=0)
    best_f1, threshold = max(zip(by_threshold.tolist(), THRESHOLD_GRID.tolist(), strict=True))
    best_min2 = None
    for min2 in MIN2_GRID[1:]:
        value = f1(threshold, min2)
        if value > best_f1 + 1e-9:
            best_f1, best_min2 = value, min2
    return float(threshold), best_min2, best_f1


def _fit(lgb, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, rounds: int | None = None):
    """A booster; with ``rounds`` None, early stopping on a fifth of the groups held out."""
    params = dict(LIGHTGBM)
    if rounds is not None:
        return lgb.train(params, lgb.Dataset(X, y.astype(np.float32)), num_boost_round=max(rounds, 1))
    unique = np.unique(groups)
    held = np.random.default_rng(0).permutation(unique)[: max(1, len(unique) // 5)]
    valid = np.isin(groups, held)
    train_set = lgb.Dataset(X[~valid], y[~valid].astype(np.float32))
    valid_set = lgb.Dataset(X[valid], y[valid].astype(np.float32), reference=train_set)
    return lgb.train(
        params,
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)],
    )


def cross_validate(
    sets: Sequence[PairSet], log: Callable[[str], None], boosters: list | None = None
) -> tuple[list[np.ndarray], list[int]]:
    """Out-of-fold probabilities for every set's pairs (see the module doc) and the rounds early
    stopping chose per model; each set's model is appended to ``boosters`` when given."""
    lgb = _lightgbm()
    if len(sets) < 2:
        raise ShopeeError("the pair model needs two folds or more with dense embeddings")
    probs, rounds = [], []
    for s in sets:
        held_groups = np.unique(
            s.universe.labels if s.universe.scored is None else s.universe.labels[s.universe.scored]
        )
        parts, ys, groups = [], [], []
        for other in sets:
            if other is s:
                continue
            labels = other.universe.labels
            clean = ~(
                np.isin(labels[other.cands.a], held_groups) | np.isin(labels[other.cands.b], held_groups)
            )
            parts.append(other.features[clean])
            ys.append(other.truth[clean])
            groups.append(other.group[clean])
        X = pd.concat(parts, ignore_index=True)
        y, g = np.concatenate(ys), np.concatenate(groups)
        if y.all() or not y.any():
            raise ShopeeError(
                f"pair model: the pairs for fold {s.fold} are all of one class; more data is needed"
            )
        started = time.perf_counter()
        booster = _fit(lgb, X, y, g)
        rounds.append(booster.best_iteration or booster.current_iteration())
        if boosters is not None:
            boosters.append(booster)
        probs.append(booster.predict(s.features, num_iteration=rounds[-1]))
        log(
            f"  pair model for fold {s.fold}: {len(X)} training pairs, {rounds[-1]} rounds, "
            f"{len(s.truth)} pairs scored ({time.perf_counter() - started:.1f} s)"
        )
    return probs, rounds


def _heldout_rows(sets: Sequence[PairSet], probs: Sequence[np.ndarray], i: int) -> np.ndarray:
    """Set ``i``'s row F1 with the thresholds tuned on the other sets."""
    others = [x for j, x in enumerate(sets) if j != i]
    threshold, min2, _ = tune_thresholds(others, [x for j, x in enumerate(probs) if j != i])
    return _row_f1(sets[i], probs[i], threshold, min2)


def heldout_f1(sets: Sequence[PairSet], probs: Sequence[np.ndarray]) -> tuple[float, list[float]]:
    """Thresholds tuned on all sets but one, scored on that one: (the mean over the scored rows,
    each set's mean)."""
    rows = [_heldout_rows(sets, probs, i) for i in range(len(sets))]
    return float(np.concatenate(rows).mean()), [float(r.mean()) for r in rows]


def heldout_retuned(
    universes: Sequence[Universe],
    tuned: Mapping[str, Mapping[str, Any]],
    full: tuple[Sequence[PairSet], Sequence[np.ndarray]],
    params: Mapping[str, Any],
    log: Callable[[str], None],
    backend: str = "torch",
    device: str = "cpu",
) -> tuple[float, list[float]]:
    """The held-out estimate with the first stage re-tuned too: for each left-out set, the rule
    the threshold search tuned without its fold (``tuned``, by fold) decides every set's
    candidates and features; the boosters are cross-validated on those, the probability
    thresholds tuned on the other sets and the left-out one scored (``full``: the sets and
    out-of-fold probabilities of ``params``, reused where a fold's rule is the same)."""
    rows = []
    for i, u in enumerate(universes):
        rule = tuned.get(str(u.fold))
        if rule is None or rule == params:
            rows.append(_heldout_rows(full[0], full[1], i))
            continue
        floors = floors_of(rule)
        sets = [pair_set(v, rule, floors, backend, device) for v in universes]
        probs, _ = cross_validate(sets, lambda _: None)
        rows.append(_heldout_rows(sets, probs, i))
        log(f"  pair model, fold {u.fold} held out with its own first stage: F1 {rows[-1].mean():.4f}")
    return float(np.concatenate(rows).mean()), [float(r.mean()) for r in rows]


def pair_size_curve(
    subsets_by_size: Sequence[Sequence[Universe]],
    full: tuple[Sequence[PairSet], Sequence[np.ndarray]],
    boosters: Sequence[Any],
    rounds: Sequence[int],
    params: Mapping[str, Any],
    floors: Mapping[str, float],
    log: Callable[[str], None],
    backend: str = "torch",
    device: str = "cpu",
    held: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The pair model by size, on nested subsets of the dense sets (each subset aligned with the
    set whose out-of-fold model scores it) and on the whole sets (``full``: their pair sets and
    out-of-fold probabilities):

    - its F1 at each size **out of sample**: each set scored with the probability thresholds
      tuned on the other sets of that size (``f1``, ``f1_folds``: what ``size_curve.f1_at``
      fits against the rows, as it does the rule's);
    - the thresholds tuned on every set of each size (``thresholds``, ``min2s``), fitted in logit
      against ln(rows) (``threshold_fit``; ``pair_thresholds_at``): a denser set holds more false
      candidates for each true one, so the same probability means less;
    - with ``held`` (each set's held-out F1 with the first stage re-tuned too, in ``full``'s
      order), what re-tuning the first stage costs at the full size, as ``optimism``."""
    rows, f1s, thresholds, min2s = [], [], [], []
    rows_folds: dict[str, list[int]] = {}
    f1_folds: dict[str, list[float]] = {}

    def scored(subsets: Sequence[Universe]) -> tuple[list[PairSet], list[np.ndarray]]:
        sets = [pair_set(u, params, floors, backend, device) for u in subsets]
        probs = [
            b.predict(s.features, num_iteration=r) if len(s.truth) else np.zeros(0)
            for s, b, r in zip(sets, boosters, rounds, strict=True)
        ]
        return sets, probs

    for subsets in [*subsets_by_size, None]:
        if subsets is not None and not any(u.n_scored for u in subsets):
            continue
        sets, probs = scored(subsets) if subsets is not None else (list(full[0]), list(full[1]))
        threshold, min2, _ = tune_thresholds(sets, probs)
        outside = {i: _heldout_rows(sets, probs, i) for i, s in enumerate(sets) if s.universe.n_scored}
        rows.append(int(round(np.mean([s.universe.n for s in sets]))))
        f1s.append(float(np.concatenate(list(outside.values())).mean()))
        thresholds.append(threshold)
        min2s.append(min2)
        for i, row_f1 in outside.items():
            if sets[i].fold is not None:
                rows_folds.setdefault(str(sets[i].fold), []).append(sets[i].universe.n)
                f1_folds.setdefault(str(sets[i].fold), []).append(float(row_f1.mean()))
        log(f"  pair model on {rows[-1]} rows: F1 {f1s[-1]:.4f} out of sample, probability >= {threshold}")
    curve = {
        "rows": rows,
        "f1": f1s,
        "rows_folds": rows_folds,
        "f1_folds": f1_folds,
        "f1_scored": "out of sample (thresholds tuned on the other sets)",
        "thresholds": thresholds,
        "min2s": min2s,
        "threshold_fit": fit_thresholds(rows, thresholds, min2s),
    }
    if held is not None:
        pairs = [(s, h) for s, h in zip(full[0], held, strict=True) if str(s.fold) in f1_folds]
        gaps = [f1_folds[str(s.fold)][-1] - h for s, h in pairs]
        curve["optimism"] = optimism(gaps, [float(s.universe.n_scored) for s, _ in pairs])
    return curve


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def fit_thresholds(
    rows: Sequence[int], thresholds: Sequence[float], min2s: Sequence[float | None]
) -> dict[str, Any] | None:
    """The probability threshold (and min2, when every size used one) as ``a + b ln(rows)`` in
    logit, with the range seen; None with fewer than two sizes."""
    if len(rows) < 2:
        return None
    logits = {
        name: [_logit(v) for v in values]
        for name, values in (("threshold", thresholds), ("min2", min2s))
        if not any(v is None for v in values)
    }
    return fit(rows, logits)["fit"]


def threshold_fits(info: Mapping[str, Any]) -> dict[str, Any]:
    """The pair model's logit fits of its thresholds against rows ({} for a model without)."""
    return (info.get("size_curve") or {}).get("threshold_fit") or {}


def pair_thresholds_at(info: Mapping[str, Any], n: int, by_size: bool = True) -> tuple[float, float | None]:
    """The pair model's (threshold, min2) for a set of ``n`` rows: its size curve's logit fits
    evaluated at ``n`` within the logits seen widened by ``LOGIT_MARGIN``; as tuned where there
    is no fit (a model tuned before the fit existed, or a min2 some size went without) or when
    not ``by_size``."""
    fits = threshold_fits(info) if by_size else {}
    out = {"threshold": info["threshold"], "min2": info["min2"]}
    for name, c in fits.items():
        if out.get(name) is None:
            continue
        value = c["a"] + c["b"] * math.log(max(n, 2))
        value = min(max(value, c["min"] - LOGIT_MARGIN), c["max"] + LOGIT_MARGIN)
        out[name] = round(1.0 / (1.0 + math.exp(-value)), 4)
    return float(out["threshold"]), out["min2"]


def train_pair_model(
    universes: Sequence[Universe],
    params: Mapping[str, Any],
    path: Path,
    log: Callable[[str], None],
    backend: str = "torch",
    device: str = "cpu",
    size_subsets: Sequence[Sequence[Universe]] = (),
    heldout_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train, cross-validate and save the pair model; returns what the ensemble records of it.
    ``size_subsets``: per size, subsets of ``universes`` (aligned with them) for its size curve;
    ``heldout_params``: the threshold search's rule per left-out fold, for a held-out estimate
    that re-tunes the first stage too (``heldout_retuned``; else only the probability thresholds
    are re-tuned)."""
    lgb = _lightgbm()
    started = time.perf_counter()
    floors = floors_of(params)
    sets = [pair_set(u, params, floors, backend, device) for u in universes]
    recall = candidate_recall(sets)
    log(
        f"  candidates: {recall['candidates']} pairs from validation rows; "
        f"{100 * recall['recall']:.1f} % of the true pairs are among them, "
        f"{100 * recall['precision']:.1f} % of them are true"
    )
    boosters: list[Any] = []
    probs, rounds = cross_validate(sets, log, boosters)
    threshold, min2, cv_f1 = tune_thresholds(sets, probs)
    if heldout_params:
        full = (sets, probs)
        held, held_sets = heldout_retuned(universes, heldout_params, full, params, log, backend, device)
    else:
        held, held_sets = heldout_f1(sets, probs)
    curve = None
    if size_subsets:
        log("  pair model by size (nested subsets of the dense sets, thresholds re-tuned on each):")
        curve = pair_size_curve(
            size_subsets,
            (sets, probs),
            boosters,
            rounds,
            params,
            floors,
            log,
            backend,
            device,
            held=held_sets,
        )
    final = _fit(
        lgb,
        pd.concat([s.features for s in sets], ignore_index=True),
        np.concatenate([s.truth for s in sets]),
        np.concatenate([s.group for s in sets]),
        rounds=int(round(np.mean(rounds))),
    )
    from shopee.atomic import atomic_path

    with atomic_path(path) as tmp:
        final.save_model(str(tmp))
    gain = final.feature_importance(importance_type="gain")
    names = final.feature_name()
    importance = sorted(zip(names, gain.tolist(), strict=True), key=lambda kv: -kv[1])
    return {
        "file": path.name,
        "lightgbm": lgb.__version__,
        "features": feature_names(params),
        "params": copy.deepcopy(dict(params)),
        "floors": floors,
        "threshold": threshold,
        "min2": min2,
        "rounds": int(final.current_iteration()),
        "cv_f1": cv_f1,
        "cv_f1_heldout": held,
        "heldout": "first stage and thresholds re-tuned" if heldout_params else "thresholds re-tuned",
        "size_curve": curve,
        "candidates": recall,
        "importance": {name: round(value, 2) for name, value in importance},
        "seconds": round(time.perf_counter() - started, 1),
    }


def load_booster(path: Path):
    lgb = _lightgbm()
    if not Path(path).is_file():
        raise ShopeeError(f"{path}: the ensemble's pair model is missing")
    return lgb.Booster(model_file=str(path))


def predict_pairs(
    info: Mapping[str, Any],
    booster,
    n: int,
    *,
    embeddings: Mapping[str, np.ndarray] | None,
    titles: Sequence[str] | np.ndarray | None,
    phashes: Sequence[str] | np.ndarray | None,
    backend: str = "torch",
    device: str = "cpu",
    timings: dict[str, float] | None = None,
    by_size: bool = True,
) -> Pairs:
    """The second stage on ``n`` rows: candidates, features, probabilities, matches at the
    probability thresholds for ``n`` rows (``pair_thresholds_at``; as tuned when not ``by_size``)."""
    timings = timings if timings is not None else {}
    inputs = dict(embeddings=embeddings, titles=titles, phashes=phashes)
    found = candidates(
        info["params"], info["floors"], n, backend=backend, device=device, timings=timings, **inputs
    )
    started = time.perf_counter()
    table = features(info["params"], found, backend=backend, device=device, names=info["features"], **inputs)
    timings["pairs:features"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    p = booster.predict(table) if len(table) else np.zeros(0)
    threshold, min2 = pair_thresholds_at(info, n, by_size)
    pairs = match_from_probabilities(n, found.a, found.b, p, threshold, min2)
    timings["pairs:predict"] = round(time.perf_counter() - started, 3)
    return pairs
