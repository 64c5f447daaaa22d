"""bench embed: the per-item costs a runtime estimate is built from are measured and printed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from shopee.bench_embed import bench_embed, print_bench_embed
from shopee.runner import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_bench_embed_measures_costs_that_grow_with_image_size(
    text_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg = load_experiment(str(ROOT / "exp" / "exp001.py"))  # EfficientNet-Lite0 + a text model
    cfg = dataclasses.replace(cfg, image_size=64, text_model=str(text_dir))  # a tiny BERT: quick
    result = bench_embed(cfg, [32, 64], batches=1, batch_size=2, source_px=160)

    small, large = result["image"]
    for row in (small, large):
        assert row["decode_ms"] > 0 and row["forward_per_s"] > 0
    # FLOPs scale with the pixel count: 4x the pixels, about 4x the FLOPs
    assert 3.0 < large["gflops"] / small["gflops"] < 5.0
    assert result["jpeg_kb"] > 0 and result["weights_mb"] > 0
    text = result["text"]
    assert text["tokenize_ms"] > 0 and text["forward_per_s"] > 0 and text["gflops"] > 0

    print_bench_embed(result)
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1])["image"][1]["size"] == 64
