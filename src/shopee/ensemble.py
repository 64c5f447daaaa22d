"""``optimize-ensemble``: search the matching parameters that maximize CV F1 on OOF embeddings.

The search: each member alone at its best threshold; members added to the union greedily while
they help; min2; neighbourhood blending stages; then coordinate refinement of every threshold.
Every candidate rule is scored on the CV sets of ``shopee.scoring`` (``dense`` by default: each
fold's validation rows matched among its training rows too, at the density of the whole train
set; ``fold``; ``all``) and the one of ``objective`` is maximized. Then:

- **held-out estimate**: the same search run with one fold left out, its rule scored on that fold;
  the mean over folds says what the search's best CV F1 is worth on data it did not tune on;
- **thresholds by size**: the tuned thresholds re-tuned on nested subsets of the dense sets and
  fitted against the number of rows (``shopee.size_curve``), for ``predict`` to evaluate at the
  test's row count.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shopee.constants import (
    BLEND_CANDIDATES,
    EMBEDDING_GRID,
    FOLD_COMBINATIONS,
    OBJECTIVES,
    PHASH_DISTANCES,
    TEST_ROWS,
    TFIDF_GRID,
    K,
)
from shopee.data import read_split
from shopee.ensemble_file import COMBINED_PREFIX, write_ensemble
from shopee.errors import ShopeeError
from shopee.match import PARAMS_VERSION, validate_params
from shopee.metrics import RowScores, others_per_row
from shopee.oof import OOFSet
from shopee.progress import Progress
from shopee.projection import fit_projection, source_name
from shopee.scoring import Scorer, Scores, Universe, aggregate, build_universes
from shopee.size_curve import describe_f1_at, f1_at, fit, get_value, optimism, set_value, tunables

BLEND_GRID = (0.5, 0.6, 0.7, 0.8)
MIN2_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
REFINE_STEPS = (0.05, 0.02, 0.01)
# A blending stage followed by another moves in coarse steps only: each new value is one more
# neighbour search over every row of every set for the next stage (the costly part of the search
# at train's size). The last stage moves in every step: it only changes the final search, which
# runs from the scored rows alone.
BLEND_STEP = 0.05
FLOOR_MARGIN = 0.25
SIZE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # nested shares of the dense sets' groups


@dataclass
class SearchResult:
    params: dict[str, Any]
    scores: Scores
    alone: dict[str, dict[str, Any]]  # member name -> {"member", "threshold", <objective>: F1 ...}
    steps: list[dict[str, Any]] = field(default_factory=list)  # each rule added in turn


def embedding_members(oof: OOFSet) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """One member per experiment and kind; plus, for a kind several experiments share, their
    concatenation (``cat:<kind>``). Returns the members and how each ``cat:`` source is built."""
    members = []
    combined: dict[str, list[str]] = {}
    for key in oof.embeddings:
        members.append(
            {"name": key.replace(":", "_"), "type": "embedding", "source": key, "threshold": 0.5, "blend": []}
        )
    if len(oof.experiments) > 1:
        for kind in oof.kinds():
            keys = [f"{exp}:{kind}" for exp in oof.experiments if f"{exp}:{kind}" in oof.embeddings]
            if len(keys) > 1:
                source = f"{COMBINED_PREFIX}{kind}"
                combined[source] = keys
                members.append(
                    {
                        "name": f"cat_{kind}",
                        "type": "embedding",
                        "source": source,
                        "threshold": 0.5,
                        "blend": [],
                    }
                )
    return members, combined


def _params(
    members: list[dict[str, Any]], min2: dict | None = None, blend_candidates: int | None = BLEND_CANDIDATES
) -> dict[str, Any]:
    params = {"version": PARAMS_VERSION, "k": K, "members": members, "min2": min2, "unit_filter": False}
    return {**params, "blend_candidates": blend_candidates} if blend_candidates else params


def _best_alone(
    scorer: Scorer, member: dict[str, Any], objective: str, tick: Callable[[], None]
) -> dict[str, Any]:
    if member["type"] == "phash":
        tried = []
        for distance in PHASH_DISTANCES:
            m = {**member, "max_distance": distance}
            tick()
            tried.append((scorer.score(_params([m])), m))
        scores, m = max(tried, key=lambda t: t[0].value(objective))
        return {
            "member": m,
            "threshold": m["max_distance"],
            **{o: scores.value(o) for o in scorer.objectives},
        }
    grid = TFIDF_GRID if member["type"] == "tfidf" else EMBEDDING_GRID
    curves = {o: scorer.curve(member, grid, o) for o in scorer.objectives}
    tick()
    best = int(np.argmax(curves[objective]))
    m = {**member, "threshold": float(grid[best])}
    return {
        "member": m,
        "threshold": m["threshold"],
        **{o: float(c[best]) for o, c in curves.items()},
        "curve": {"threshold": grid.tolist(), **{o: c.tolist() for o, c in curves.items()}},
    }


def _nudged(
    params: dict[str, Any], path: str, delta: float, floors: dict[str, float]
) -> dict[str, Any] | None:
    """``params`` with one tunable moved by ``delta``; None when the move leaves its valid range
    (a threshold may not go below its member's floor, where the candidates were pruned)."""
    value = get_value(params, path)
    if ".blend." in path and abs(delta) < BLEND_STEP - 1e-9:
        member, stage = path.split(".")[1], int(path.split(".")[3])
        if stage < len(next(m for m in params["members"] if m["name"] == member)["blend"]) - 1:
            return None
    if path.endswith(".max_distance"):
        if abs(delta) < 0.05:  # integer steps, once per round
            return None
        new = value + (1 if delta > 0 else -1)
        ok = 0 <= new <= 16
    else:
        new = round(value + delta, 2)
        if path == "min2.threshold":
            ok = 0.0 <= new <= 1.0
        elif ".blend." in path:
            ok = 0.0 < new < 1.0
        else:
            ok = max(-1.0, floors.get(path.split(".")[1], -1.0)) <= new <= 1.0
    if not ok:
        return None
    out = copy.deepcopy(params)
    set_value(out, path, new)
    return out


def refine(
    scorer: Scorer, params: dict[str, Any], objective: str, best: Scores | None = None, tick=None
) -> tuple[dict[str, Any], Scores]:
    """Coordinate refinement of every threshold of ``params`` (up to three rounds)."""
    tick = tick or (lambda: None)
    best = best or scorer.score(params)
    improved, rounds = True, 0
    while improved and rounds < 3:
        improved, rounds = False, rounds + 1
        for step in REFINE_STEPS:
            for path in tunables(params):
                for direction in (-1, 1):
                    trial = _nudged(params, path, direction * step, scorer.floors)
                    if trial is None:
                        continue
                    tick()
                    scores = scorer.score(trial)
                    if scores.value(objective) > best.value(objective) + 1e-6:
                        params, best, improved = trial, scores, True
    return params, best


def search(
    scorer: Scorer,
    pool: list[dict[str, Any]],
    objective: str = "dense",
    progress: Callable[[str], None] = print,
    blend_stages: int = 2,
    desc: str = "optimize-ensemble",
    blend_candidates: int | None = BLEND_CANDIDATES,
) -> SearchResult:
    """Coarse search then coordinate refinement; see the module docstring.

    Blending is the costly step (each tried stage threshold is one more kNN search per universe);
    ``blend_stages=0`` skips it. ``blend_candidates``: the rule's field (None: blended spaces
    searched over every row).
    """
    ticks = Progress(None, desc, unit="rules scored")

    def rule(members: list[dict[str, Any]], min2: dict | None = None) -> dict[str, Any]:
        return _params(members, min2, blend_candidates)

    def evaluate(params: dict[str, Any]) -> Scores:
        ticks.update()
        return scorer.score(params)

    alone = {m["name"]: _best_alone(scorer, m, objective, ticks.update) for m in pool}
    ranked = sorted(pool, key=lambda m: alone[m["name"]][objective], reverse=True)
    for m in pool:  # no later step moves a threshold more than FLOOR_MARGIN below its best alone
        if m["type"] != "phash":
            scorer.floors[m["name"]] = round(alone[m["name"]]["threshold"] - FLOOR_MARGIN, 2)
    for m in ranked:
        a = alone[m["name"]]
        figures = "  ".join(f"{o} {a[o]:.4f}" for o in scorer.objectives)
        progress(f"  {m['name']:<24} alone: F1 {figures}  at {a['threshold']}")

    steps: list[dict[str, Any]] = []
    members = [copy.deepcopy(alone[ranked[0]["name"]]["member"])]
    best = evaluate(rule(members))
    steps.append(_step(f"{members[0]['name']} alone", rule(members), best))

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
            tried.append((evaluate(rule(members + [cand])), cand))
        scores, cand = max(tried, key=lambda t: t[0].value(objective))
        if scores.value(objective) > best.value(objective) + 1e-6:
            members.append(cand)
            best = scores
            steps.append(_step(f"+ {cand['name']}", rule(members), best))

    # min2 on the best embedding member of the union.
    min2 = None
    embedding_names = [m["name"] for m in members if m["type"] == "embedding"]
    if embedding_names:
        tried = []
        for threshold in MIN2_GRID:
            cand = {"member": embedding_names[0], "threshold": threshold}
            tried.append((evaluate(rule(members, cand)), cand))
        scores, cand = max(tried, key=lambda t: t[0].value(objective))
        if scores.value(objective) > best.value(objective) + 1e-6:
            min2, best = cand, scores
            steps.append(
                _step(f"+ min2 ({cand['member']} >= {cand['threshold']})", rule(members, min2), best)
            )

    # Neighbourhood blending: up to blend_stages stages per embedding member, each with its threshold.
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
                    tried.append((evaluate(rule(trial, min2)), cand))
            scores, cand = max(tried, key=lambda t: t[0].value(objective))
            if scores.value(objective) <= best.value(objective) + 1e-6:
                break
            members[i] = m = cand
            best = scores
            steps.append(_step(f"+ blend {m['name']} {m['blend']}", rule(members, min2), best))

    params, best = refine(scorer, rule(members, min2), objective, best, ticks.update)
    steps.append(_step("refined thresholds", params, best))
    ticks.close()
    return SearchResult(validate_params(params), best, alone, steps)


def _step(label: str, params: dict[str, Any], scores: Scores) -> dict[str, Any]:
    return {"step": label, "params": copy.deepcopy(params), **scores.as_dict()}


def heldout(
    scorer: Scorer,
    pool: list[dict[str, Any]],
    objective: str,
    blend_stages: int,
    log: Callable[[str], None],
    blend_candidates: int | None = BLEND_CANDIDATES,
) -> dict[str, Any] | None:
    """The search run once per fold with that fold left out, its rule scored on the fold left out.

    Returns ``{"f1", "folds": {fold: F1}, "params": {fold: the rule tuned without it}}``: ``f1``
    is the mean over folds (over rows for the dense objective), or None with fewer than two folds.
    """
    universes = scorer.of(objective)
    folds = sorted({u.fold for u in universes if u.fold is not None})
    if len(folds) < 2:
        log(f"held-out estimate: needs two folds or more, has {len(folds)}")
        return None
    per_fold, weights, tuned = {}, [], {}
    for fold in folds:
        tune = scorer.restricted(u for u in universes if u.fold != fold)
        test = scorer.restricted(u for u in universes if u.fold == fold)
        result = search(
            tune,
            pool,
            objective,
            progress=lambda _: None,
            blend_stages=blend_stages,
            desc=f"held-out fold {fold}",
            blend_candidates=blend_candidates,
        )
        per_fold[fold] = test.score(result.params).value(objective)
        tuned[str(fold)] = result.params
        weights.append(sum(u.n_scored for u in test.universes))
        log(f"  held out fold {fold}: tuned on the others, F1 {per_fold[fold]:.4f} on it")
    values = list(per_fold.values())
    f1 = float(np.mean(values)) if objective == "fold" else float(np.average(values, weights=weights))
    return {"f1": f1, "folds": {str(k): v for k, v in per_fold.items()}, "params": tuned}


def _group_subset(universe: Universe, fraction: float, seed: int) -> Universe:
    """The universe's rows of a ``fraction`` of its groups, nested across fractions (the groups
    are taken in one seeded order), scored rows kept."""
    groups = np.unique(universe.labels)
    taken = max(1, int(round(fraction * len(groups))))
    if taken == len(groups):  # the set itself: its candidates are computed already
        return universe
    order = np.random.default_rng(seed).permutation(len(groups))
    keep = groups[order[:taken]]
    rows = np.flatnonzero(np.isin(universe.labels, keep))
    return universe.subset(rows, f"{universe.name}@{fraction:g}")


def size_subsets(universes: list[Universe], fraction: float, seed: int = 0) -> list[Universe]:
    """The universes' nested subsets of a ``fraction`` of their groups (the rule's size curve and
    the pair model's use the same ones)."""
    return [_group_subset(u, fraction, seed + (u.fold or 0)) for u in universes]


def _halves(folds: Sequence[int]) -> list[list[int]]:
    """The folds in two halves (alternating), for cross-fitting: each half tunes, the other is
    scored. With two folds each half is one fold (leave one out)."""
    ordered = sorted(folds)
    return [ordered[0::2], ordered[1::2]]


def size_curve(
    scorer: Scorer,
    params: dict[str, Any],
    objective: str,
    log: Callable[[str], None],
    seed: int = 0,
    held: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Thresholds re-tuned on nested subsets of the objective's sets (every fold's subsets at
    once: what ships), fitted against their size, and the F1 each size reaches **out of
    sample**: the folds split in two halves, each half's subsets re-tune the rule's thresholds
    (``refine``) and the other half's are scored with them. With ``held`` (the held-out search),
    what is left in sample at the full size (the rule's members and blending chosen on every fold) is
    measured, each fold's out-of-sample F1 against its held-out one, as ``optimism``; ``f1_at``
    takes it off. Sets without folds (the ``all`` objective) are re-tuned and scored in sample
    (the optimism is then the tuned rule's against the held-out estimate)."""
    universes = scorer.of(objective)
    if not universes:
        return None
    folds = sorted({u.fold for u in universes if u.fold is not None and u.n_scored})
    crossed = len(folds) >= 2
    rows, values = [], {path: [] for path in tunables(params)}
    f1s: list[float] = []
    rows_folds: dict[str, list[int]] = {}
    f1_folds: dict[str, list[float]] = {}
    for fraction in SIZE_FRACTIONS:
        subsets = size_subsets(universes, fraction, seed)
        if not any(u.n_scored for u in subsets):
            log(f"  {fraction:>4.0%} of the groups: no validation row left, skipped")
            continue
        everything, _ = _refined_on(scorer, subsets, params, objective)
        for path in values:
            values[path].append(get_value(everything, path))
        scored: list[tuple[Universe, RowScores]] = []
        for half in _halves(folds) if crossed else [None]:
            if half is None:  # no folds to cross: in sample
                tuned, targets = everything, subsets
            else:
                tuned, _ = _refined_on(scorer, [u for u in subsets if u.fold in half], params, objective)
                targets = [u for u in subsets if u.fold not in half]
            scored += [(u, scorer.row_scores(tuned, u)) for u in targets if u.n_scored]
        f1 = aggregate(objective, [r for _, r in scored]).f1
        n = int(round(np.mean([u.n for u in subsets])))
        rows.append(n)
        f1s.append(f1)
        for u, r in scored:  # each fold's own F1 against its own size: the spread of the F1 fit
            if u.fold is not None:
                rows_folds.setdefault(str(u.fold), []).append(u.n)
                f1_folds.setdefault(str(u.fold), []).append(float(r.f1.mean()))
        how = "out of sample" if crossed else "in sample"
        log(f"  {fraction:>4.0%} of the groups, {n} rows: F1 {f1:.4f} ({how})")
    if len(rows) < 2:
        log("  too few subsets for a fit: the thresholds stay as tuned")
        return None
    curve = {**fit(rows, values), "f1": f1s, "rows_folds": rows_folds, "f1_folds": f1_folds}
    curve["f1_scored"] = "out of sample (halves of the folds)" if crossed else "in sample"
    if held is not None:
        if crossed:  # the full size's out-of-sample F1 per fold against the held-out search's
            gaps = [f1_folds[k][-1] - v for k, v in held["folds"].items() if k in f1_folds]
            weights = [float(_scored_rows(universes, int(k))) for k in held["folds"] if k in f1_folds]
            if objective == "fold":
                weights = [1.0] * len(gaps)
            curve["optimism"] = optimism(gaps, weights)
        else:
            curve["optimism"] = heldout_optimism(scorer, params, objective, held)
    return curve


def _refined_on(
    scorer: Scorer, universes: Sequence[Universe], params: dict[str, Any], objective: str
) -> tuple[dict[str, Any], Scores]:
    """``params`` refined on ``universes`` alone, its floors lowered by ``FLOOR_MARGIN`` (a
    subset may want lower thresholds than the full sets did)."""
    sub = scorer.restricted(universes)
    sub.floors = {name: floor - FLOOR_MARGIN for name, floor in scorer.floors.items()}
    return refine(sub, copy.deepcopy(params), objective)


def _scored_rows(universes: Sequence[Universe], fold: int) -> int:
    return sum(u.n_scored for u in universes if u.fold == fold)


def heldout_optimism(
    scorer: Scorer, params: dict[str, Any], objective: str, held: dict[str, Any]
) -> dict[str, float]:
    """``size_curve.optimism`` of the tuned rule against the held-out estimate, fold by fold
    (folds weighted as the objective weighs them)."""
    gaps, weights = [], []
    for u in scorer.of(objective):
        if u.fold is None or str(u.fold) not in held["folds"] or not u.n_scored:
            continue
        gaps.append(float(scorer.row_scores(params, u).f1.mean()) - held["folds"][str(u.fold)])
        weights.append(1.0 if objective == "fold" else float(u.n_scored))
    return optimism(gaps, weights)


def optimize_ensemble(
    experiments: list[str],
    data_dir: Path,
    name: str,
    output: Path,
    *,
    use_tfidf: bool = False,
    use_phash: bool = False,
    objective: str = "dense",
    backend: str = "torch",
    device: str = "cpu",
    blend_stages: int = 2,
    heldout_estimate: bool = True,
    by_size: bool = True,
    pair_model: bool = False,
    pca_dims: tuple[int, ...] = (),
    pca_whiten: bool = False,
    force_pair_model: bool = False,
    test_rows: int = TEST_ROWS,
    fold_combination: str = FOLD_COMBINATIONS[0],
    exact_blending: bool = False,
    allow_code_change: bool = False,
) -> dict[str, Any]:
    """Load the experiments' OOF, search the params, write ``<output>/ensembles/NAME.json`` and
    the report folder; returns the summary printed as the last line.

    Folds trained by other embedding-shaping code than this checkout's are refused unless
    ``allow_code_change``; the ensemble file then records them (``code_changes``).

    A pair model (``pair_model``) is shipped (used by predict) only when it beats the rule on the
    held-out CV (on the dense CV without a held-out estimate), or when ``force_pair_model``;
    ``test_rows`` is the row count the expected F1 is reported at; ``fold_combination`` is how
    predict is to combine the fold models (``FOLD_COMBINATIONS``)."""
    from shopee.oof import load_oof
    from shopee.report import write_report

    started = time.perf_counter()
    if objective not in OBJECTIVES:
        raise ShopeeError(f"--objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    if fold_combination not in FOLD_COMBINATIONS:
        raise ShopeeError(
            f"--fold-combination {fold_combination!r}: use one of {', '.join(FOLD_COMBINATIONS)}"
        )
    if pair_model:
        from shopee.pairwise.model import _lightgbm

        _lightgbm()  # fail before any work
    oof = load_oof(
        output, experiments, log=lambda line: print(line, flush=True), allow_code_change=allow_code_change
    )
    for note in oof.skipped:
        print(f"skipped: {note}", flush=True)
    if objective == "dense" and not oof.has_dense:
        print(
            f"note: no dense embeddings for {', '.join(oof.dense_missing)} (trained before dense OOF, or "
            "with dense_oof=false): the objective falls back to all",
            flush=True,
        )
        objective = "all"
    text = None
    if use_tfidf or use_phash:
        text = read_split(data_dir, "train", check_images=False).set_index("posting_id")
        wanted = oof.index["posting_id"]
        if oof.has_dense:
            wanted = np.concatenate([wanted, *(d.index["posting_id"] for d in oof.dense.values())])
        missing = ~np.isin(wanted, text.index)
        if missing.any():
            raise ShopeeError(
                f"{data_dir / 'train.csv'}: {int(missing.sum())} posting_ids of the folds not in it "
                f"(first {wanted[np.argmax(missing)]!r}); the experiments used other data"
            )
    selection = selection_gain(output, {exp: oof.folds for exp in oof.experiments})
    pool, combined = embedding_members(oof)
    projections = {}
    for dim in pca_dims:  # PCA of every embedding concatenated, fitted on the OOF rows
        source = source_name(dim, pca_whiten)
        projections[source] = fit_projection(oof.embeddings, list(oof.embeddings), dim, pca_whiten)
        pool.append(
            {
                "name": source.split(":")[0],
                "type": "embedding",
                "source": source,
                "threshold": 0.5,
                "blend": [],
            }
        )
    if use_tfidf:
        pool.append({"name": "tfidf", "type": "tfidf", "threshold": 0.6, "analyzer": "word"})
    if use_phash:
        pool.append({"name": "phash", "type": "phash", "max_distance": 0})
    objectives = {"fold", objective} | ({"dense"} if oof.has_dense else set())
    scorer = Scorer(
        build_universes(oof, objectives, combined, text, projections), backend=backend, device=device
    )
    sizes = ", ".join(f"{u.name} {u.n}" for u in scorer.universes)
    print(
        f"optimizing {name} on {objective}: {len(oof.index)} OOF rows (sets: {sizes}), {len(pool)} members",
        flush=True,
    )
    blend_candidates = None if exact_blending else BLEND_CANDIDATES
    result = search(scorer, pool, objective, blend_stages=blend_stages, blend_candidates=blend_candidates)
    scores = result.scores

    held = None
    if heldout_estimate:
        print("held-out estimate (the search again without each fold, scored on it):", flush=True)
        held = heldout(
            scorer, pool, objective, blend_stages, lambda line: print(line, flush=True), blend_candidates
        )
    pairs = None
    if pair_model:
        if not oof.has_dense:
            raise ShopeeError(
                "--pair-model: trains on the dense CV sets; some folds have no dense embeddings"
            )
        from shopee.pairwise.model import train_pair_model

        print(
            "pair model (LightGBM on candidate pairs of the dense sets, out-of-fold by outer fold):",
            flush=True,
        )
        dense = scorer.of("dense")
        pairs = train_pair_model(
            dense,
            result.params,
            output / "ensembles" / f"{name}.pairs.txt",
            lambda line: print(line, flush=True),
            backend=backend,
            device=device,
            size_subsets=[size_subsets(dense, f) for f in SIZE_FRACTIONS if f < 1] if by_size else (),
            heldout_params=held["params"] if held else None,
        )
        print(
            f"  pair model: CV F1 {pairs['cv_f1']:.4f} (held-out {pairs['cv_f1_heldout']:.4f}) at "
            f"probability >= {pairs['threshold']}, min2 {pairs['min2']}; thresholds alone "
            f"{scores.value('dense'):.4f}",
            flush=True,
        )
    curve = at_test = None
    if by_size:
        print(f"thresholds by size ({objective} sets, nested subsets of their groups):", flush=True)
        curve = size_curve(scorer, result.params, objective, lambda line: print(line, flush=True), held=held)
        at_test = f1_at(curve, test_rows) if curve else None
        if at_test and selection:
            at_test["selection_gain"] = selection["gain"]
        print(describe_f1_at(at_test), flush=True)
    shipped_at = at_test
    if pairs is not None:
        pair_at = f1_at(pairs.get("size_curve"), test_rows) if by_size else None
        _decide_pair_model(pairs, scores.value("dense"), held, force_pair_model, (at_test, pair_at))
        if pairs["shipped"] and pair_at:
            shipped_at = {**pair_at, "of": "pair model"}
            if selection:
                shipped_at["selection_gain"] = selection["gain"]

    ensemble = {
        "name": name,
        "params": result.params,
        "objective": objective,
        "cv_f1": scores.value(objective),
        **{f"cv_f1_{o}": scores.value(o) for o in scorer.objectives},
        "cv_f1_heldout": held["f1"] if held else None,
        "early_stopping": selection,
        "heldout": held,
        "size_curve": curve,
        "cv_f1_at_rows": shipped_at,
        "cv_f1_at_rows_rule": at_test,
        "pair_model": pairs,
        "fold_combination": fold_combination,
        "scores": scores.as_dict(),
        "members": {
            n: {"threshold": a["threshold"], **{o: a[o] for o in scorer.objectives}}
            for n, a in result.alone.items()
        },
        "combined_sources": _combined_sources(combined, result.params),
        "projections": _save_projections(projections, result.params, output / "ensembles", name),
        "experiments": {exp: oof.folds for exp in experiments},
        "skipped": oof.skipped,
        "code_changes": oof.code_changes,
        "data": {"dir": oof.data_dir, "oof_rows": len(oof.index), **oof.data.to_dict()},
        "others_per_row": others_per_row(oof.index["label_group"].to_numpy()),  # train's, for predict
        "universes": {u.name: {"rows": u.n, "scored": u.n_scored} for u in scorer.universes},
        "steps": result.steps,
        "evaluations": scorer.evaluations,
        "seconds": round(time.perf_counter() - started, 1),
    }
    ensembles = output / "ensembles"
    write_report(ensembles / name, ensemble, result, scorer, oof)
    write_ensemble(ensembles / f"{name}.json", ensemble)
    _track(output, ensemble, use_tfidf, use_phash, blend_stages)
    return {
        "name": name,
        "objective": objective,
        **_figures(ensemble),
        "shipped": shipped_rule(ensemble),
        "members": {n: a[objective] for n, a in result.alone.items()},
    }


def selection_gain(output: Path, experiments: dict[str, list[int]]) -> dict[str, Any] | None:
    """Early stopping's selection gain over the folds tuned on (``FoldRecord.selection_gain``):
    each fold kept the epoch whose CV F1 was best on the very rows its OOF embeddings are scored
    on, so part of every CV figure is that choice. Reported beside the estimate, not taken off
    (the kept epoch may be genuinely better). None when no fold has per-epoch F1s."""
    from shopee.outputs import FoldRecord, fold_dir

    folds = {}
    for exp, numbers in experiments.items():
        for fold in numbers:
            gain = FoldRecord.open(fold_dir(output, exp, fold)).selection_gain
            if gain is not None:
                folds[f"{exp}:{fold}"] = round(gain, 6)
    if not folds:
        return None
    return {"gain": round(float(np.mean(list(folds.values()))), 6), "folds": folds}


def _decide_pair_model(
    pairs: dict[str, Any],
    rule_cv: float,
    held: dict[str, Any] | None,
    force: bool,
    at_test: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None),
) -> None:
    """Whether predict is to use the pair model (``pairs["shipped"]``) and why, said on stdout.

    Both rules are compared the same way, by the first figure each has of: the CV F1 expected at
    the test's row count (``at_test``: the rule's, the pair model's; what the test will see), the
    held-out CV, the dense CV. ``pairs["decision"]`` keeps the figures compared."""
    rule_at, pair_at = at_test
    if rule_at and pair_at:
        mine, rule, on = pair_at["f1"], rule_at["f1"], f"CV F1 at {rule_at['rows']} rows"
    elif held is not None:
        mine, rule, on = pairs["cv_f1_heldout"], held["f1"], "held-out CV"
    else:
        mine, rule, on = pairs["cv_f1"], rule_cv, "dense CV"
    better = mine > rule + 1e-6
    pairs["shipped"] = bool(better or force)
    pairs["decision"] = {"on": on, "pair_model": mine, "rule": rule}
    pairs["why"] = f"{on}: pair model {mine:.4f}, thresholds {rule:.4f}" + (
        "" if better else ("; shipped anyway (forced)" if force else "; not shipped, predict uses the rule")
    )
    print(f"  pair model {'shipped' if pairs['shipped'] else 'not shipped'}: {pairs['why']}", flush=True)


def _figures(ensemble: dict[str, Any]) -> dict[str, float | None]:
    """Every CV F1 of the ensemble (tuned, per objective, held out) and of its pair model."""
    figures = {
        key: value
        for key, value in ensemble.items()
        if key.startswith("cv_f1") and not isinstance(value, dict)
    }
    for key in ("cv_f1_at_rows", "cv_f1_at_rows_rule"):  # the shipped rule's, the thresholds'
        if ensemble.get(key):
            figures[key] = ensemble[key]["f1"]
    pairs = ensemble.get("pair_model")
    if pairs:
        figures["cv_f1_pair_model"] = pairs["cv_f1"]
        figures["cv_f1_pair_model_heldout"] = pairs["cv_f1_heldout"]
        if (pairs.get("decision") or {}).get("on", "").startswith("CV F1 at"):
            figures["cv_f1_at_rows_pair_model"] = pairs["decision"]["pair_model"]
    return figures


def shipped_rule(ensemble: dict[str, Any]) -> str:
    """``pair model`` or ``thresholds``: what predict uses."""
    pairs = ensemble.get("pair_model")
    return "pair model" if pairs and pairs.get("shipped", True) else "thresholds"


def _track(output: Path, ensemble: dict[str, Any], tfidf: bool, phash: bool, blend_stages: int) -> None:
    """The search in MLflow (when installed): what was searched as params, every CV F1 as metrics."""
    from shopee.tracking import Tracker

    params = {
        "experiments": ensemble["experiments"],
        "objective": ensemble["objective"],
        "tfidf": tfidf,
        "phash": phash,
        "blend_stages": blend_stages,
        "pair_model": bool(ensemble.get("pair_model")),
        "shipped": shipped_rule(ensemble),
        "members": [m["name"] for m in ensemble["params"]["members"]],
    }
    tags = {
        "output": str((output / "ensembles" / f"{ensemble['name']}.json").resolve()),
        "data": ensemble["data"]["train_sha256"][:10],
    }
    tracker = Tracker.start(output, "ensembles", ensemble["name"], params, tags)
    tracker.metrics(  # a held-out estimate not made (None) is left out
        {**_figures(ensemble), "seconds": ensemble["seconds"], "evaluations": ensemble["evaluations"]}
    )
    tracker.end()


def _save_projections(
    projections: dict[str, Any], params: dict[str, Any], folder: Path, name: str
) -> dict[str, Any]:
    """Each projection the params use, saved beside the ensemble file (``NAME.pca128.npz``)."""
    used = {m.get("source") for m in params["members"]}
    out = {}
    for source, projection in projections.items():
        if source in used:
            file = f"{name}.{source.split(':')[0]}.npz"
            projection.save(folder / file)
            out[source] = {
                "parts": projection.parts,
                "dim": projection.dim,
                "whiten": projection.whiten,
                "file": file,
            }
    return out


def _combined_sources(
    combined: dict[str, list[str]], params: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """How each ``cat:<kind>`` source used by the params is built, for predict and the kernel."""
    used = {m.get("source") for m in params["members"]}
    return {
        source: [{"source": part, "weight": 1.0} for part in parts]
        for source, parts in combined.items()
        if source in used
    }
