"""``bench match``: its figures are the rule's own (checked against the oracle), and the rule
agrees with the way public notebooks match, row for row."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from oracles import naive_match
from shopee.bench.match import default_params
from shopee.cli import main
from shopee.demo.synthetic import make_synthetic
from shopee.match import match, matches_to_strings, normalize_rows
from shopee.metrics import score_pairs, score_sets


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) > 2, "a table comes before the JSON line"
    return json.loads(lines[-1])


def _frame(data) -> pd.DataFrame:
    return pd.DataFrame({"posting_id": data.posting_ids, "title": data.titles, "image_phash": data.phashes})


@pytest.mark.parametrize("n, seed", [(500, 0), (900, 1)])
def test_the_rule_agrees_with_the_notebook_way_row_for_row(n: int, seed: int) -> None:
    """Blending, kNN, TF-IDF, phash, union and min2 against scikit-learn and per-row loops."""
    data = make_synthetic(n, 32, seed)
    params = default_params()
    pairs = match(params, n, embeddings=data.embeddings, titles=data.titles, phashes=data.phashes)
    ours = matches_to_strings(pairs, data.posting_ids)
    theirs = naive_match(params, _frame(data), data.embeddings)
    differ = [
        i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if set(a.split()) != set(b.split())
    ]
    assert differ == [], f"{len(differ)} rows differ, first {differ[:3]}"
    assert np.mean([len(s.split()) for s in ours]) > 1.5  # the rule does match things


def test_bench_match_rule_figures_are_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    n = 800
    assert main(["bench", "match", "--n", str(n), "--dim", "32"]) == 0
    result = _last_json(capsys)
    assert "search" not in result and result["n"] == n
    rule = result["rule"]
    assert {
        "knn:fused:blend1",
        "blend:fused:1",
        "knn:fused:blend2",
        "blend:fused:2",
        "knn:fused",
        "knn:img",
        "knn:txt",
        "tfidf:tfidf",
        "phash:phash",
        "combine",
    } <= set(rule["stages_s"])
    assert sum(rule["stages_s"].values()) == pytest.approx(rule["match_s"], abs=0.01)
    assert len(rule["bare_topk_s"]) == 5  # fused: two blending stages and the final search; img; txt
    assert sum(rule["bare_topk_s"].values()) == pytest.approx(rule["bare_topk_total_s"], abs=0.01)
    assert set(rule["postprocess_s"]) == {"combine", "blend_sums", "matches_to_strings"}

    # The F1, matches per row and output size it reports are those of the oracle's predictions.
    data = make_synthetic(n, 32, 0)
    predicted = naive_match(default_params(), _frame(data), data.embeddings)
    ids = data.posting_ids
    truths = [set(ids[data.labels == label]) for label in data.labels]
    assert rule["f1"] == pytest.approx(score_sets([p.split() for p in predicted], truths).f1, abs=1e-4)
    assert rule["mean_matches"] == pytest.approx(np.mean([len(p.split()) for p in predicted]), abs=1e-3)
    assert rule["output_chars"] == sum(map(len, predicted))


def test_bench_match_search_reports_what_its_params_score(capsys: pytest.CaptureFixture[str]) -> None:
    rows = 600
    assert main(["bench", "match", "--search", "--search-rows", str(rows), "--dim", "32"]) == 0
    search = _last_json(capsys)["search"]
    assert search["rows"] == rows and search["folds"] == 5 and len(search["members"]) == 3
    # Matching all rows again with the params it found gives the F1 it reports.
    data = make_synthetic(rows, 32, 0, text=False)
    embeddings = {f"synthetic:{name}": normalize_rows(x) for name, x in data.embeddings.items()}
    pairs = match(search["params"], rows, embeddings=embeddings)
    # (each dense set is every row in one space, each row scored in one of them: all rows at once)
    assert score_pairs(*pairs.with_self(), data.labels).mean().f1 == pytest.approx(
        search["f1_dense"], abs=1e-4
    )


def test_bench_match_search_phases_time_what_optimize_ensemble_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "match", "--search", "--phases", "--search-rows", "400", "--dim", "16"]
    assert main([*argv, "--blend-stages", "0", "--pair-model"]) == 0
    printed = capsys.readouterr().out
    search = json.loads(printed.strip().splitlines()[-1])["search"]
    assert search["heldout_s"] > 0 and search["size_curve_s"] > 0 and 0 < search["f1_heldout"] <= 1
    assert search["pair_model_s"] > 0 and 0 < search["pair_model_f1_heldout"] <= 1
    assert "held-out searches" in printed and "size curve" in printed and "pair model" in printed


def test_bench_match_rejects_tiny_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "match", "--n", "1", "--dim", "8"]) == 2
    assert "--n must be at least 2" in capsys.readouterr().err


def test_bench_density_tunes_on_a_subset_and_scores_on_other_groups(
    demo_copy, text_dir, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "density", "--data", str(demo_copy), "--work", str(tmp_path / "work"), "--exp", "exp003"]
    argv += ["--tune-rows", "60", "--sizes", "20,40", "--folds", "0", "--no-phash"]
    argv += ["--set", f"text_model={text_dir}", "--set", "text_pretrained=false", "--set", "epochs=1"]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    source = pd.read_csv(demo_copy / "train.csv", dtype=str)
    tuning = pd.read_csv(tmp_path / "work" / "tune-data" / "train.csv", dtype=str)
    # whole groups, none of them among the rows it is scored on
    assert tuning["label_group"].value_counts().to_dict() == {
        g: n for g, n in source["label_group"].value_counts().items() if g in set(tuning["label_group"])
    }
    assert result["tune_rows"] == len(tuning) <= 60 and result["pool_rows"] == len(source) - len(tuning)
    assert set(result["table"]) == {
        "fixed, fold-tuned",
        "fixed, dense-tuned",
        "size-following",
        "best at this size",
    }
    for row in result["table"].values():
        assert len(row) == 2 and all(0 < cell["f1"] <= 1 for cell in row.values())


def test_bench_match_pair_model_times_the_second_stage(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "match", "--pair-model", "--n", "1500", "--dim", "32", "--train-rows", "1200"]
    assert main(argv) == 0
    result = _last_json(capsys)
    stage = result["pair_model"]
    assert result["pair_model_s"] == stage["pair_model_s"] and result["peak_mb"] >= stage["peak_rss_mb"] > 0
    assert set(stage["stages_s"]) == {
        "pairs:neighbours",
        "pairs:candidates",
        "pairs:features",
        "pairs:predict",
    }
    assert sum(stage["stages_s"].values()) == pytest.approx(stage["total_s"], abs=0.05)
    assert stage["pair_model_s"] == pytest.approx(
        stage["total_s"] - stage["stages_s"]["pairs:neighbours"], abs=0.01
    )
    assert stage["f1"] > 0.5  # the synthetic groups are found (a broken stage scores about 0.45)
