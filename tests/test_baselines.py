"""The baselines command: figures a user can trust, JSON on the last line, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from shopee.baselines import run_baselines
from shopee.cli import main
from shopee.constants import TFIDF_GRID
from shopee.data import read_split
from shopee.folds import load_folds
from shopee.match import tfidf_matrix
from shopee.metrics import score_sets


def _oracle_tfidf_f1(titles: list[str], labels: np.ndarray, threshold: float) -> float:
    """Dense brute force: each row predicts every row with cosine >= threshold (itself always)."""
    x = tfidf_matrix(titles).toarray()
    sims = x @ x.T
    ids = np.arange(len(titles))
    preds = []
    for i in ids:
        others = [j for j in np.argsort(-sims[i], kind="stable") if j != i and sims[i, j] >= threshold]
        preds.append({i, *others[:50]})
    truths = [set(ids[labels == labels[i]]) for i in ids]
    return score_sets(preds, truths).f1


def test_baselines_agree_with_brute_force(demo_copy: Path) -> None:
    train = read_split(demo_copy, "train", check_images=False)
    folds = load_folds(demo_copy, train)
    result = run_baselines(train, folds)
    labels = train["label_group"].to_numpy()
    ids = np.arange(len(train))
    truths = [set(ids[labels == labels[i]]) for i in ids]

    assert np.isclose(result["self"]["all"], score_sets([{i} for i in ids], truths).f1)
    phash = train["image_phash"].to_numpy()
    assert np.isclose(
        result["phash"]["all"], score_sets([set(ids[phash == phash[i]]) for i in ids], truths).f1
    )
    best = max(_oracle_tfidf_f1(list(train["title"]), labels, t) for t in TFIDF_GRID)
    assert np.isclose(result["tfidf"]["all"], best)
    thr = result["tfidf"]["threshold_all"]
    assert np.isclose(_oracle_tfidf_f1(list(train["title"]), labels, thr), best)

    # Per fold: each fold is matched within itself; the F1s are averaged over folds.
    fold_self = [
        score_sets([{i} for i in range(m)], [set(np.flatnonzero(lab == lab[i])) for i in range(m)]).f1
        for lab in (labels[folds == f] for f in range(5))
        for m in [len(lab)]
    ]
    assert np.isclose(result["self"]["fold"], np.mean(fold_self))


def test_cli_json_last_line(demo_copy: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shopee", "baselines", "--data", str(demo_copy), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == {"self", "phash", "tfidf"}
    for key in ("self", "phash", "tfidf"):
        assert {"fold", "all", "threshold"} <= set(result[key])
        assert 0 < result[key]["fold"] <= 1 and 0 < result[key]["all"] <= 1
    assert 0.2 <= result["tfidf"]["threshold"] <= 0.95
    assert any("TF-IDF" in line for line in lines[:-1])  # the human table comes first


def test_cli_finds_data_under_a_kaggle_input_root(demo_copy: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "kaggle-input"
    (root / "competitions").mkdir(parents=True)
    (root / "competitions" / "shopee-product-matching").symlink_to(demo_copy)
    assert main(["baselines", "--data", str(root), "--json"]) == 0
    assert "tfidf" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["baselines", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nowhere" in err[0]

    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"posting_id": ["a", "b"], "image": ["x", "y"], "title": ["t", "u"]}).to_csv(
        bad / "train.csv", index=False
    )
    assert main(["baselines", "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.csv" in err[0] and "label_group" in err[0]
    assert sorted(p.name for p in bad.iterdir()) == ["train.csv"]  # nothing written beside it
