"""``python -m shopee runs``: the lab diary, from the output folder alone (no tracking server).

Every finished fold (exp, fold, CV F1, best kind, threshold, epochs, minutes, commit) and every
ensemble (name, objective, CV F1, held-out estimate, the pair model's two, folds), best first;
ensembles are grouped by objective, since CV F1s on different rows do not compare.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shopee.constants import OBJECTIVES, TEST_ROWS
from shopee.ensemble_file import EnsembleError, expected_f1, read_ensemble
from shopee.errors import ShopeeError
from shopee.outputs import FoldRecord, is_finished


def fold_rows(output: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(Path(output).glob("*/fold*")):
        if not path.is_dir() or not path.name[4:].isdigit() or not is_finished(path):
            continue
        try:
            record = FoldRecord.open(path)
            summary, epochs = record.summary, record.metrics.get("epochs", [])
        except (ShopeeError, KeyError):
            continue
        rows.append(
            {
                "exp": record.exp,
                "fold": record.fold,
                "cv_f1": summary["cv_f1"],
                "kind": summary["kind"],
                "threshold": summary["threshold"],
                "epochs": len(epochs),
                "minutes": round(sum(e.get("seconds", 0) for e in epochs) / 60, 1),
                "commit": str(record.meta.get("git_commit", "unknown"))[:12],
                "debug": record.debug,
            }
        )
    return sorted(rows, key=lambda r: -r["cv_f1"])


def ensemble_rows(output: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((Path(output) / "ensembles").glob("*.json")):
        try:
            e = read_ensemble(path)
        except EnsembleError:
            continue
        pairs = e.get("pair_model") or {}
        rows.append(
            {
                "ensemble": e["name"],
                "objective": e["objective"],
                "cv_f1": e["cv_f1"],
                "cv_f1_heldout": e.get("cv_f1_heldout"),
                "pair_cv_f1": pairs.get("cv_f1"),
                "pair_cv_f1_heldout": pairs.get("cv_f1_heldout"),
                "at_test": (expected_f1(e, TEST_ROWS) or {}).get("f1"),  # what predict ships, expected
                "folds": ", ".join(f"{exp} {folds}" for exp, folds in e["experiments"].items()),
            }
        )
    order = {objective: i for i, objective in enumerate(OBJECTIVES)}
    return sorted(rows, key=lambda r: (order.get(r["objective"], len(order)), -r["cv_f1"]))


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def print_runs(output: Path) -> dict[str, Any]:
    folds, ensembles = fold_rows(output), ensemble_rows(output)
    if not folds and not ensembles:
        raise ShopeeError(f"{output}: no finished fold and no ensemble here")
    print(f"{len(folds)} finished folds in {output}, best first:")
    print(f"  {'exp':<12}{'fold':>5}{'CV F1':>9}{'kind':>7}{'thr':>6}{'epochs':>8}{'minutes':>9}  commit")
    for r in folds:
        debug = "  (debug)" if r["debug"] else ""
        print(
            f"  {r['exp']:<12}{r['fold']:>5}{r['cv_f1']:>9.4f}{r['kind']:>7}{r['threshold']:>6.2f}"
            f"{r['epochs']:>8}{r['minutes']:>9.1f}  {r['commit']}{debug}"
        )
    print(f"{len(ensembles)} ensembles, best first within each objective:")
    header = (
        f"{'ensemble':<16}{'objective':>10}{'CV F1':>9}{'held-out':>10}{'pair CV':>9}{'held-out':>10}"
        f"{'at ' + str(TEST_ROWS // 1000) + 'k':>9}"
    )
    print(f"  {header}  folds")
    for r in ensembles:
        print(
            f"  {r['ensemble']:<16}{r['objective']:>10}{_cell(r['cv_f1']):>9}{_cell(r['cv_f1_heldout']):>10}"
            f"{_cell(r['pair_cv_f1']):>9}{_cell(r['pair_cv_f1_heldout']):>10}{_cell(r['at_test']):>9}"
            f"  {r['folds']}"
        )
    result = {"folds": folds, "ensembles": ensembles}
    print(json.dumps(result))
    return result
