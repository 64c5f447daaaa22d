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
4. per rule (the thresholds fixed and size-following; the pair model with its probability
   thresholds as tuned and following the rows) a row: dense CV, held-out CV, the CV F1 expected at
   U's size, F1 on U, the best F1 that thresholds re-tuned on U itself reach (an upper bound no
   method reaches blind) and the matches a row, beside the true matches U's rows have; the rule
   shipped is marked.

U's embeddings are kept in ``--work`` for the next run with the same fold models and rows.

Prints the tables and per-phase times, then one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from shopee.atomic import atomic_path, write_json
from shopee.bench.split import (
    best_on,
    labelled_universe,
    main_threshold,
    rule_result,
    split_by_group,
    write_subset,
)
from shopee.config import Config
from shopee.constants import FOLD_COMBINATIONS
from shopee.data import read_split
from shopee.ensemble import optimize_ensemble
from shopee.ensemble_file import (
    embedding_sources,
    expected_f1,
    fold_combination,
    params_for_rows,
    read_ensemble,
)
from shopee.errors import ShopeeError
from shopee.metrics import others_per_row, score_pairs
from shopee.predict import combine_folds, ensemble_records, fold_embeddings, with_derived_sources
from shopee.runtime import visible_devices
from shopee.scoring import Universe
from shopee.size_curve import f1_at

ENSEMBLE = "unseen"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pair_rows(ensemble: dict[str, Any], path: Path, universe: Universe) -> dict[str, dict[str, float]]:
    """The pair model on U (shipped or not), at its thresholds as tuned and at those for U's row
    count (``pair_thresholds_at``): F1 and matches a row each, and the F1 at the best thresholds
    found on U."""
    from shopee.pairwise.model import (
        load_booster,
        match_from_probabilities,
        pair_set,
        pair_thresholds_at,
        tune_thresholds,
    )

    info = ensemble["pair_model"]
    booster = load_booster(path.parent / info["file"])
    pairs = pair_set(universe, info["params"], info["floors"])
    p = booster.predict(pairs.features[info["features"]]) if len(pairs.truth) else np.zeros(0)
    _, _, best = tune_thresholds([pairs], [p])
    out = {}
    for name, (threshold, min2) in (
        ("fixed", (info["threshold"], info["min2"])),
        ("size-following", pair_thresholds_at(info, universe.n)),
    ):
        matched = match_from_probabilities(universe.n, pairs.cands.a, pairs.cands.b, p, threshold, min2)
        out[name] = {
            "f1": score_pairs(*matched.with_self(), universe.labels).mean().f1,
            "best": float(best),
            "threshold": threshold,
            "matches_per_row": len(matched) / max(universe.n, 1),
        }
    return out


def _embed_unseen(
    ensemble: dict[str, Any], output: Path, unseen: pd.DataFrame, work: Path
) -> dict[str, list[np.ndarray]]:
    """The fold models' embeddings of U, kept in ``work`` for the next run with the same models,
    sources and rows (embedding U is most of a re-run's time)."""
    records = ensemble_records(ensemble, output)
    key = {
        "sources": sorted(embedding_sources(ensemble)[1]),
        "models": [[str(r.path), (r.path / "model.safetensors").stat().st_mtime_ns] for r in records],
        "rows": hashlib.sha256("\n".join(unseen["posting_id"]).encode()).hexdigest(),
    }
    cache, meta = work / "unseen-embeddings.npz", work / "unseen-embeddings.json"
    if cache.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
        with np.load(cache) as stored:
            per_fold: dict[str, list[np.ndarray]] = {}
            for name in sorted(stored.files, key=lambda n: (n.rsplit("|", 1)[0], int(n.rsplit("|", 1)[1]))):
                per_fold.setdefault(name.rsplit("|", 1)[0], []).append(stored[name])
        _log(f"unseen: U's embeddings from {cache}")
        return per_fold
    per_fold = fold_embeddings(ensemble, records, unseen, visible_devices(), "blank")
    arrays = {f"{k}|{i}": a for k, fold_arrays in per_fold.items() for i, a in enumerate(fold_arrays)}
    with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    write_json(meta, key)
    return per_fold


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
    per_fold = _embed_unseen(ensemble, output, unseen, work)
    times["embed U"] = time.perf_counter() - mark

    mark = time.perf_counter()
    shipped = fold_combination(ensemble)
    fixed = ensemble["params"]
    by_size = params_for_rows(ensemble, len(unseen))
    combos: dict[str, dict[str, float]] = {}
    matches: dict[str, float] = {}
    ways = {how: combine_folds(per_fold, how) for how in FOLD_COMBINATIONS}
    used = ensemble["experiments"][exp]  # every finished fold in --work, in predict's order
    for i, fold in enumerate(used):
        ways[f"fold {fold} alone"] = {k: arrays[i] for k, arrays in per_fold.items()}
    for how, base in ways.items():
        embeddings = with_derived_sources(ensemble, base, path.parent)
        combos[how] = {}
        for name, params in (("fixed", fixed), ("size-following", by_size)):
            combos[how][name], per_row = rule_result(params, unseen, embeddings)
            if how == shipped:
                matches[name] = per_row
        _log(f"unseen: U matched with the fold models combined by {how}: {combos[how]}")
    embeddings = with_derived_sources(ensemble, ways[shipped], path.parent)
    universe = labelled_universe(unseen, embeddings, "unseen")
    at_u = f1_at(ensemble.get("size_curve"), len(unseen))
    _, best = best_on(universe, fixed)
    pairs = ensemble.get("pair_model")
    rule_shipped = not (pairs and pairs.get("shipped", True))
    table = {
        f"thresholds, {name}": {
            "dense_cv": ensemble["cv_f1_dense"],
            "heldout_cv": ensemble["cv_f1_heldout"],
            "cv_at_u": at_u["f1"] if at_u else None,
            "cv_at_u_se": at_u["se"] if at_u else None,
            "f1_u": combos[shipped][name],
            "best_u": best,
            "threshold": main_threshold(params),
            "matches_per_row": matches[name],
            "shipped": rule_shipped and name == "size-following",
        }
        for name, params in (("fixed", fixed), ("size-following", by_size))
    }
    if pairs:
        estimate = f1_at(pairs.get("size_curve"), len(unseen))
        for name, on_u in _pair_rows(ensemble, path, universe).items():
            table[f"pair model, {name}"] = {
                "dense_cv": pairs["cv_f1"],
                "heldout_cv": pairs["cv_f1_heldout"],
                "cv_at_u": estimate["f1"] if estimate else None,
                "cv_at_u_se": estimate["se"] if estimate else None,
                "f1_u": on_u["f1"],
                "best_u": on_u["best"],
                "threshold": on_u["threshold"],
                "matches_per_row": on_u["matches_per_row"],
                "shipped": not rule_shipped and name == "size-following",
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
        "shipped_f1_u": next(row["f1_u"] for row in table.values() if row["shipped"]),
        "others_per_row_u": others_per_row(unseen["label_group"].to_numpy()),
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
    print(
        f"  {'rule':<28}{'dense CV':>10}{'held-out':>10}{'CV at U':>16}{'F1 on U':>10}{'best on U':>11}"
        f"{'matches a row':>15}"
    )
    for name, row in result["table"].items():
        at_u = f"{row['cv_at_u']:.4f} +- {row['cv_at_u_se']:.3f}" if row["cv_at_u"] is not None else "-"
        label = f"{name}{' (shipped)' if row['shipped'] else ''}"
        print(
            f"  {label:<28}{_cell(row['dense_cv'])}{_cell(row['heldout_cv'])}{at_u:>16}"
            f"{_cell(row['f1_u'])}{_cell(row['best_u'], 11)}{row['matches_per_row']:>15.2f}"
        )
    print(
        f"  U's rows have {result['others_per_row_u']:.2f} true matches each on average; shipped: "
        f"{result['pair_model_why'] or 'the thresholds (no pair model)'}"
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
