"""``bench match`` smoke test: tiny runs of each part print a table, then one JSON line."""

from __future__ import annotations

import json

import pytest

from shopee.cli import main


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) > 2, "a table comes before the JSON line"
    return json.loads(lines[-1])


def test_bench_match_parts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "match", "--n", "2000", "--dim", "32"]) == 0
    result = _last_json(capsys)
    assert {"n", "dim", "seed", "backend", "loadavg_start", "loadavg_end", "peak_rss_mb"} <= set(result)
    assert "naive" not in result and "search" not in result
    rule = result["rule"]
    for key in (
        "match_s",
        "stages_s",
        "embedding_s",
        "tfidf_s",
        "phash_s",
        "bare_topk_s",
        "bare_topk_total_s",
        "embedding_over_bare",
        "postprocess_s",
        "postprocess_total_s",
        "peak_rss_mb",
        "f1",
    ):
        assert key in rule, key
    assert {"blend:fused:1", "blend:fused:2", "knn:fused", "knn:img", "knn:txt", "combine"} <= set(
        rule["stages_s"]
    )
    assert len(rule["bare_topk_s"]) == 5  # fused: two blending stages and the final search; img; txt
    assert set(rule["postprocess_s"]) == {"combine", "blend_sums", "matches_to_strings"}
    assert rule["embedding_over_bare"] > 0 and rule["peak_rss_mb"] > 0
    assert rule["f1"] > 0.5

    assert main(["bench", "match", "--naive", "--n", "500", "--dim", "32"]) == 0
    naive = _last_json(capsys)["naive"]
    assert {"ours_s", "naive_s", "naive_over_ours", "ours_stages_s", "naive_stages_s"} <= set(naive)
    assert naive["agreement"] >= 0.99  # the same predictions (a borderline float may differ)

    assert main(["bench", "match", "--search", "--search-rows", "600", "--dim", "32"]) == 0
    search = _last_json(capsys)["search"]
    assert search["rows"] == 600 and search["folds"] == 5
    assert search["evaluations"] > 0 and search["search_s"] > 0
    assert len(search["members"]) == 3


def test_bench_match_rejects_tiny_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "match", "--n", "1", "--dim", "8"]) == 2
    assert "--n must be at least 2" in capsys.readouterr().err
