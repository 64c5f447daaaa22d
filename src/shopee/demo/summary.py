"""The closing summary of ``make demo``: the CV F1 of every step of the loop, the test F1, where
the kernel lies."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from shopee.ensemble_file import read_ensemble
from shopee.metrics import score_files
from shopee.outputs import FoldRecord, fold_dir


def demo_summary(ensemble_path: Path, submission: Path, labels: Path, kernel: Path) -> dict:
    """Print the summary table and return its figures."""
    ensemble = read_ensemble(ensemble_path)
    objective = ensemble["objective"]
    output = ensemble_path.resolve().parent.parent
    rows = []
    for exp, folds in ensemble["experiments"].items():
        for fold in folds:
            record = FoldRecord.open(fold_dir(output, exp, fold))
            if record.finished:
                s = record.summary
                rows.append(
                    {"step": f"{exp} fold {fold} ({s['kind']})", "F1": s["cv_f1"], "on": "its fold (CV)"}
                )
    for step in ensemble["steps"]:
        rows.append(
            {"step": f"ensemble: {step['step']}", "F1": step[objective]["f1"], "on": f"CV, {objective}"}
        )
    if ensemble.get("cv_f1_heldout") is not None:
        rows.append(
            {"step": "ensemble: held-out estimate", "F1": ensemble["cv_f1_heldout"], "on": "folds left out"}
        )
    test, n_labels = score_files(submission, labels)
    rows.append({"step": "kernel submission", "F1": test.f1, "on": f"demo test ({n_labels} rows)"})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"kernel: {kernel} (notebook) and {kernel}-dataset (its Kaggle dataset)")
    result = {
        "cv_f1": ensemble["cv_f1"],
        "cv_f1_heldout": ensemble.get("cv_f1_heldout"),
        "test_f1": test.f1,
        "kernel": str(kernel),
    }
    print(json.dumps(result))
    return result
