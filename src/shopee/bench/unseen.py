"""``bench unseen``: does the CV predict the F1 on a test of groups no model has seen?

The whole path from tuning to a test, on a labelled train set (a large demo here, the real
``train.csv`` for a user):

1. the rows split by group into a tuning part T (``--tune-share``, a third: the hidden test is
   about twice train) and an unseen part U of the other groups; T becomes a competition folder of
   its own and the experiment trains on some of its folds (``--folds``);
2. ``optimize-ensemble`` on T as a user runs it: the dense objective, the held-out estimate, the
   thresholds by size, the CV F1 expected at U's row count and (``--pair-model``) the pair model;
3. the fold models embed U as ``predict`` does, and U is matched as the notebook would: the fold
   models combined as shipped, the params at U's size; every fold combination
   (``FOLD_COMBINATIONS``) and each fold model alone are matched too, to compare;
4. per rule (fixed thresholds, size-following thresholds, the pair model) a row: dense CV,
   held-out CV, the CV F1 expected at U's size, F1 on U, and the best F1 that thresholds re-tuned
   on U itself reach (an upper bound no method reaches blind).

Prints the tables and per-phase times, then one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shopee.bench.split import (
    best_on,
    labelled_universe,
    main_threshold,
    rule_f1,
    split_by_group,
    write_subset,
)
from shopee.config import Config
from shopee.constants import FOLD_COMBINATIONS
from shopee.data import read_split
from shopee.ensemble import optimize_ensemble
from shopee.ensemble_file import expected_f1, fold_combination, params_for_rows, read_ensemble
from shopee.errors import ShopeeError
from shopee.metrics import score_pairs
from shopee.predict import combine_folds, ensemble_records, fold_embeddings, with_derived_sources
from shopee.runtime import visible_devices
from shopee.scoring import Universe
from shopee.size_curve import f1_at

ENSEMBLE = "unseen"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pair_rows(ensemble: dict[str, Any], path: Path, universe: Universe) -> dict[str, float]:
    """The pair model on U (shipped or not): F1 at its tuned thresholds, matches a row, and the
    F1 at the best thresholds found on U."""
    from shopee.pairwise.model import load_booster, match_from_probabilities, pair_set, tune_thresholds

    info = ensemble["pair_model"]
    booster = load_booster(path.parent / info["file"])
    pairs = pair_set(universe, info["params"], info["floors"])
    p = booster.predict(pairs.features) if len(pairs.truth) else np.zeros(0)
    matched = match_from_probabilities(
        universe.n, pairs.cands.a, pairs.cands.b, p, info["threshold"], info["min2"]
    )
    _, _, best = tune_thresholds([pairs], [p])
    return {
        "f1": score_pairs(*matched.with_self(), universe.labels).mean().f1,
        "best": float(best),
        "matches_per_row": len(matched) / max(universe.n, 1),
    }


def run_unseen(
    data_dir: Path,
    exp: str,
    cfg: Config,
    work: Path,
    *,
    tune_share: float = 1 / 3,
    folds: tuple[int, ...] = (0, 1),
    seed: int = 0,
    tfidf: bool = True,
    phash: bool = True,
    pair_model: bool = True,
    blend_stages: int = 2,
    exact_blending: bool = False,
) -> dict[str, Any]:
    from shopee.train import train_fold

    if not 0 < tune_share < 1:
        raise ShopeeError(f"--tune-share {tune_share}: must be between 0 and 1")
    times: dict[str, float] = {}
    started = time.perf_counter()
    train = read_split(data_dir, "train", check_images=False)
    tune, unseen = split_by_group(train, int(round(tune_share * len(train))), seed)
    subset = write_subset(data_dir, tune, work / "tune-data")
    output = work / "output"
    _log(f"unseen: T {len(tune)} rows ({tune['label_group'].nunique()} groups), U {len(unseen)} rows")
    for fold in folds:
        _log(f"unseen: training {exp} fold {fold} on T ...")
        train_fold(cfg, exp, fold, subset, output)
    times["train"] = time.perf_counter() - started

    mark = time.perf_counter()
    optimize_ensemble(
        [exp],
        subset,
        ENSEMBLE,
        output,
        use_tfidf=tfidf,
        use_phash=phash,
        objective="dense",
        blend_stages=blend_stages,
        heldout_estimate=True,
        by_size=True,
        pair_model=pair_model,
        test_rows=len(unseen),
        exact_blending=exact_blending,
    )
    times["optimize-ensemble"] = time.perf_counter() - mark
    path = output / "ensembles" / f"{ENSEMBLE}.json"
    ensemble = read_ensemble(path)

    mark = time.perf_counter()
    records = ensemble_records(ensemble, output)
    per_fold = fold_embeddings(ensemble, records, unseen, visible_devices(), "blank")
    times["embed U"] = time.perf_counter() - mark

    mark = time.perf_counter()
    shipped = fold_combination(ensemble)
    fixed = ensemble["params"]
    by_size = params_for_rows(ensemble, len(unseen))
    combos: dict[str, dict[str, float]] = {}
    ways = {how: combine_folds(per_fold, how) for how in FOLD_COMBINATIONS}
    used = ensemble["experiments"][exp]  # every finished fold in --work, in predict's order
    for i, fold in enumerate(used):
        ways[f"fold {fold} alone"] = {k: arrays[i] for k, arrays in per_fold.items()}
    for how, base in ways.items():
        embeddings = with_derived_sources(ensemble, base, path.parent)
        combos[how] = {
            "fixed": rule_f1(fixed, unseen, embeddings),
            "size-following": rule_f1(by_size, unseen, embeddings),
        }
        _log(f"unseen: U matched with the fold models combined by {how}: {combos[how]}")
    embeddings = with_derived_sources(ensemble, ways[shipped], path.parent)
    universe = labelled_universe(unseen, embeddings, "unseen")
    at_u = f1_at(ensemble.get("size_curve"), len(unseen))
    _, best = best_on(universe, fixed)
    table = {
        name: {
            "dense_cv": ensemble["cv_f1_dense"],
            "heldout_cv": ensemble["cv_f1_heldout"],
            "cv_at_u": at_u["f1"] if at_u else None,
            "cv_at_u_se": at_u["se"] if at_u else None,
            "f1_u": combos[shipped][name],
            "best_u": best,
            "threshold": main_threshold(params),
        }
        for name, params in (("fixed", fixed), ("size-following", by_size))
    }
    pairs = ensemble.get("pair_model")
    if pairs:
        on_u = _pair_rows(ensemble, path, universe)
        estimate = f1_at(pairs.get("size_curve"), len(unseen))
        table["pair model"] = {
            "dense_cv": pairs["cv_f1"],
            "heldout_cv": pairs["cv_f1_heldout"],
            "cv_at_u": estimate["f1"] if estimate else None,
            "cv_at_u_se": estimate["se"] if estimate else None,
            "f1_u": on_u["f1"],
            "best_u": on_u["best"],
            "threshold": pairs["threshold"],
            "shipped": pairs.get("shipped", True),
            "matches_per_row": on_u["matches_per_row"],
        }
    times["score U"] = time.perf_counter() - mark
    shipped_estimate = expected_f1(ensemble, len(unseen))
    return {
        "data": str(data_dir),
        "exp": exp,
        "folds": list(used),
        "tune_rows": len(tune),
        "unseen_rows": len(unseen),
        "fold_combination": shipped,
        "table": table,
        "combinations": combos,
        "expected_shipped": shipped_estimate,
        "pair_model_why": pairs.get("why") if pairs else None,
        "times": {k: round(v, 1) for k, v in times.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _cell(value: float | None, width: int = 10) -> str:
    return f"{value:>{width}.4f}" if value is not None else f"{'-':>{width}}"


def print_unseen(result: dict[str, Any]) -> None:
    print(
        f"{result['exp']} trained on folds {result['folds']} of T ({result['tune_rows']} rows of "
        f"{result['data']}), tuned there; U: {result['unseen_rows']} rows of other groups, matched "
        f"with the fold models combined by {result['fold_combination']}:"
    )
    print(f"  {'rule':<16}{'dense CV':>10}{'held-out':>10}{'CV at U':>16}{'F1 on U':>10}{'best on U':>11}")
    for name, row in result["table"].items():
        at_u = f"{row['cv_at_u']:.4f} +- {row['cv_at_u_se']:.3f}" if row["cv_at_u"] is not None else "-"
        note = ""
        if name == "pair model":
            shipped = "shipped" if row["shipped"] else "not shipped"
            note = f"  ({shipped}; {row['matches_per_row']:.1f} matches a row)"
        print(
            f"  {name:<16}{_cell(row['dense_cv'])}{_cell(row['heldout_cv'])}{at_u:>16}"
            f"{_cell(row['f1_u'])}{_cell(row['best_u'], 11)}{note}"
        )
    print("  F1 on U by how the fold models are combined (fixed / size-following thresholds):")
    for how, row in result["combinations"].items():
        print(f"    {how:<24}{row['fixed']:.4f} / {row['size-following']:.4f}")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result["times"].items())
    print(f"  times: {times}; {result['seconds']:.0f} s in all")
    print(json.dumps(result), flush=True)


def bench_unseen(data_dir: Path, exp: str, cfg: Config, work: Path, **options: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    result = run_unseen(data_dir, exp, cfg, work, **options)
    print_unseen(result)
    return result
