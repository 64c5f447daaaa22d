"""bench unseen: the CV set beside the F1 on groups no model has seen, measured on the path the
notebook ships (predict on those rows gives the F1 the bench reports)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from shopee.cli import main
from shopee.metrics import score_files


def test_bench_unseen_reports_the_f1_predict_reaches_on_the_unseen_groups(
    demo_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    argv = ["bench", "unseen", "--data", str(demo_copy), "--work", str(work), "--tune-share", "0.5"]
    assert main([*argv, "--set", "epochs=1", "--blend-stages", "1", "--no-pair-model"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    assert set(result["table"]) == {"thresholds, fixed", "thresholds, size-following"}
    assert [name for name, row in result["table"].items() if row["shipped"]] == ["thresholds, size-following"]
    assert result["shipped_f1_u"] == result["table"]["thresholds, size-following"]["f1_u"]
    assert {"mean_embedding", "mean_cosine", "fold 0 alone", "fold 1 alone"} == set(result["combinations"])
    for row in result["table"].values():
        for key in ("dense_cv", "heldout_cv", "cv_at_u", "f1_u", "best_u"):
            assert 0 < row[key] <= 1, key
    assert "CV at U" in printed and "F1 on U" in printed

    # U as a competition test set of its own, predicted by the ensemble tuned on T: the F1 the
    # bench reports for the shipped rule (size-following thresholds) is what predict scores.
    train = pd.read_csv(demo_copy / "train.csv", dtype=str)
    tuned = pd.read_csv(work / "tune-data" / "train.csv", dtype=str)
    unseen = train[~train["posting_id"].isin(tuned["posting_id"])]
    assert len(unseen) == result["unseen_rows"]
    test = tmp_path / "u"
    test.mkdir()
    tuned.to_csv(test / "train.csv", index=False)  # the train.csv the models were trained on
    unseen.drop(columns="label_group").to_csv(test / "test.csv", index=False)
    unseen[["posting_id", "label_group"]].to_csv(test / "labels.csv", index=False)
    (test / "test_images").symlink_to((demo_copy / "train_images").resolve(), target_is_directory=True)
    (test / "train_images").symlink_to((demo_copy / "train_images").resolve(), target_is_directory=True)
    ensemble = work / "output" / "ensembles" / "unseen.json"
    assert (
        main(["predict", "--ensemble", str(ensemble), "--data", str(test), "--out", str(tmp_path / "s.csv")])
        == 0
    )
    f1 = score_files(tmp_path / "s.csv", test / "labels.csv")[0].f1
    assert f1 == pytest.approx(result["shipped_f1_u"], abs=1e-6)
    predicted = pd.read_csv(tmp_path / "s.csv")["matches"].str.split().str.len().sum() - len(unseen)
    shipped = result["table"]["thresholds, size-following"]
    assert predicted / len(unseen) == pytest.approx(shipped["matches_per_row"], abs=1e-6)

    # --exact-blending: tuned again on the same folds (not retrained), blended spaces searched over
    # every row, which the shipped params then say (no blend_candidates field).
    assert "blend_candidates" in json.loads(ensemble.read_text())["params"]
    assert (
        main([*argv, "--set", "epochs=1", "--blend-stages", "1", "--no-pair-model", "--exact-blending"]) == 0
    )
    printed = capsys.readouterr()
    assert printed.out.count("already finished") == 2
    assert "U's embeddings from" in printed.err  # the same models embed the same rows once
    assert "blend_candidates" not in json.loads(ensemble.read_text())["params"]
