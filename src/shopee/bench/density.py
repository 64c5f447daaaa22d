"""``bench density``: do thresholds that follow the number of rows carry over to a larger test?

On a demo set larger than the default (e.g. ``demo-data --n-train 25000``):

1. a tuning subset of whole groups (``--tune-rows``, 5,000) becomes its own competition folder;
   the experiment trains on some of its folds (``--folds``), storing dense OOF embeddings;
2. the matching rule is tuned on its CV sets three ways: fixed thresholds tuned within the folds
   (objective ``fold``), fixed thresholds tuned on the dense sets, and the dense tuning with its
   thresholds fitted against the number of rows (``size_curve``);
3. the fold models embed an evaluation pool of other groups (the rest of the set); nested subsets
   of it (``--sizes``, e.g. 5,000, 10,000 and 20,000 rows of whole groups) are matched with each
   rule, and with the rule's thresholds re-tuned on that very subset and its labels (the best a
   threshold can do there: an upper bound no method can reach blind).

Prints a table of F1 (and the main threshold) per rule and size, then one JSON line.
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
    whole_groups,
    write_subset,
)
from shopee.config import Config
from shopee.data import read_split
from shopee.ensemble import optimize_ensemble
from shopee.ensemble_file import read_ensemble
from shopee.errors import ShopeeError
from shopee.predict import ensemble_embeddings, ensemble_records
from shopee.runtime import visible_devices
from shopee.size_curve import params_at_rows, tunables


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_density(
    data_dir: Path,
    exp: str,
    cfg: Config,
    work: Path,
    *,
    tune_rows: int = 5000,
    sizes: tuple[int, ...] = (5000, 10000, 20000),
    folds: tuple[int, ...] = (0, 1),
    seed: int = 0,
    tfidf: bool = True,
    phash: bool = True,
) -> dict[str, Any]:
    from shopee.train import train_fold

    started = time.perf_counter()
    train = read_split(data_dir, "train", check_images=False)
    tune, pool = split_by_group(train, tune_rows, seed)
    if len(pool) < max(sizes):
        raise ShopeeError(
            f"bench density: {len(pool)} rows outside the tuning subset, fewer than --sizes asks "
            f"({max(sizes)}); make a larger demo (--n-train {tune_rows + max(sizes) + 500})"
        )
    subset = write_subset(data_dir, tune, work / "tune-data")
    output = work / "output"
    for fold in folds:
        _log(f"density: training {exp} fold {fold} on {len(tune)} rows ...")
        train_fold(cfg, exp, fold, subset, output)

    rules: dict[str, dict[str, Any]] = {}
    options = dict(use_tfidf=tfidf, use_phash=phash, heldout_estimate=False)
    optimize_ensemble([exp], subset, "fold", output, objective="fold", by_size=False, **options)
    optimize_ensemble([exp], subset, "dense", output, objective="dense", by_size=True, **options)
    fold_ensemble = read_ensemble(output / "ensembles" / "fold.json")
    dense_ensemble = read_ensemble(output / "ensembles" / "dense.json")
    rules["fixed, fold-tuned"] = {"params": fold_ensemble["params"]}
    rules["fixed, dense-tuned"] = {"params": dense_ensemble["params"]}
    rules["size-following"] = {"curve": dense_ensemble["size_curve"], "params": dense_ensemble["params"]}

    _log(f"density: embedding the {len(pool)} evaluation rows ...")
    records = ensemble_records(dense_ensemble, output)
    embeddings = ensemble_embeddings(dense_ensemble, records, pool, visible_devices(), "blank")
    eval_order = np.random.default_rng(seed + 1).permutation(pool["label_group"].unique())
    table: dict[str, dict[str, Any]] = {name: {} for name in [*rules, "best at this size"]}
    for n in sizes:
        rows = whole_groups(pool, n, eval_order)
        sub = pool.iloc[rows].reset_index(drop=True)
        sub_embeddings = {k: v[rows] for k, v in embeddings.items()}
        for name, rule in rules.items():
            params = params_at_rows(rule["params"], rule.get("curve"), len(sub))
            table[name][len(sub)] = {
                "f1": rule_f1(params, sub, sub_embeddings),
                "threshold": main_threshold(params),
            }
        universe = labelled_universe(sub, sub_embeddings, f"eval{len(sub)}")
        best, f1 = best_on(universe, dense_ensemble["params"])
        table["best at this size"][len(sub)] = {"f1": f1, "threshold": main_threshold(best)}
        _log(f"density: {len(sub)} rows done")
    return {
        "data": str(data_dir),
        "exp": exp,
        "tune_rows": len(tune),
        "folds": list(folds),
        "pool_rows": len(pool),
        "tunables": tunables(dense_ensemble["params"]),
        "curve": dense_ensemble["size_curve"],
        "table": {name: {str(k): v for k, v in row.items()} for name, row in table.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def print_density(result: dict[str, Any]) -> None:
    sizes = list(next(iter(result["table"].values())))
    print(
        f"{result['exp']} trained on folds {result['folds']} of a {result['tune_rows']}-row subset of "
        f"{result['data']}; F1 (main embedding threshold) on nested subsets of {result['pool_rows']} rows "
        "of other groups:"
    )
    print(f"  {'rule':<22}" + "".join(f"{n + ' rows':>22}" for n in sizes))
    for name, row in result["table"].items():
        cells = "".join(f"{row[n]['f1']:>14.4f} ({row[n]['threshold'] or 0:.2f})" for n in sizes)
        print(f"  {name:<22}{cells}")
    print(json.dumps(result), flush=True)


def bench_density(data_dir: Path, exp: str, cfg: Config, work: Path, **options: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    result = run_density(data_dir, exp, cfg, work, **options)
    print_density(result)
    return result
