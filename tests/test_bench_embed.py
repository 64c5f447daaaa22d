"""bench embed: the per-item costs a runtime estimate is built from, against counts worked out by
hand for the tiny BERT and against the checkpoint's own size."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import TINY_BERT_HIDDEN, TINY_BERT_INTERMEDIATE, TINY_BERT_LAYERS
from shopee.bench.embed import TRAIN_FOLD_CLASSES, bench_embed, print_bench_embed
from shopee.models import ShopeeModel
from shopee.runner import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def bert_flops(seq: int, hidden: int, intermediate: int, layers: int) -> float:
    """FLOPs of a BERT encoder forward on one sequence (a multiply-add is 2 FLOPs): per layer the
    Q, K, V and output projections, the two feed-forward layers, scores and weighted sum; then the
    pooler's dense layer on the CLS token."""
    projections = 4 * 2 * seq * hidden * hidden
    feed_forward = 2 * 2 * seq * hidden * intermediate
    attention = 2 * 2 * seq * seq * hidden
    return layers * (projections + feed_forward + attention) + 2 * hidden * hidden


def test_bench_embed_counts_what_the_models_compute(
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
    text = result["text"]
    expected = bert_flops(cfg.max_len, TINY_BERT_HIDDEN, TINY_BERT_INTERMEDIATE, TINY_BERT_LAYERS) / 1e9
    assert text["gflops"] == pytest.approx(expected, rel=0.02)
    assert text["tokenize_ms"] > 0 and text["forward_per_s"] > 0

    # The checkpoint it loads is the model's float32 weights (head for the real fold's classes).
    model = ShopeeModel(
        dataclasses.replace(cfg, image_pretrained=False, text_pretrained=False), TRAIN_FOLD_CLASSES
    )
    mib = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    assert result["weights_mb"] == pytest.approx(mib, rel=0.01)
    assert result["precision"] == "fp32" and result["device"] == "cpu"

    print_bench_embed(result)
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1])["image"][1]["size"] == 64
