"""Shared fixtures: demo datasets generated once per test session.

``demo_dir`` is the default demo (3000 train / 1000 test rows, seed 0), the one the README and
the calibration test talk about. ``small_demo_dir`` is a tiny one for quick checks. Both are
shared: a test that changes files works on ``demo_copy``.
"""

from __future__ import annotations

import os

# The suite runs on the CPU, where its exactness tests are calibrated (a GPU would run them in
# fp16 and give the torchrun tests a second device), unless a GPU run is asked for: tests marked
# ``cuda`` run only with SHOPEE_TEST_GPU=1 (``make gpu-check``). Set before torch is imported, and
# inherited by every subprocess a test starts.
GPU_RUN = os.environ.get("SHOPEE_TEST_GPU") == "1"
if not GPU_RUN:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import shutil
from pathlib import Path

import pytest

from shopee.demo import generate_demo

# The tiny random BERT several test files build models from (no weights, no downloads).
TINY_BERT_HIDDEN = 32
TINY_BERT_LAYERS = 2
TINY_BERT_INTERMEDIATE = 64
TINY_BERT_WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "red",
    "blue",
    "shoe",
    "bag",
    "phone",
    "case",
    "##s",
]


def tiny_text_config(text_dir: Path, **changes):
    """A text-only config over the tiny random BERT (``text_dir``), quick to train on the small demo."""
    from shopee.config import Config

    settings = dict(
        image_model="",
        text_model=str(text_dir),
        text_pretrained=False,
        fusion="none",
        batch_size=8,
        num_workers=0,
        lr_text=1e-3,
        lr_head=1e-2,
        dense_oof=False,
    )
    return Config(**{**settings, **changes}).validate()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if GPU_RUN and torch.cuda.is_available():
        return
    why = "needs a CUDA device and SHOPEE_TEST_GPU=1 (make gpu-check)"
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "shopee-demo"
    generate_demo(out, seed=0)
    return out


@pytest.fixture(scope="session")
def small_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small-demo") / "shopee-small"
    generate_demo(out, n_train=120, n_test=40, image_size=64, seed=3, workers=1)
    return out


@pytest.fixture
def demo_copy(small_demo_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the small demo."""
    return Path(shutil.copytree(small_demo_dir, tmp_path / "data"))


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny BERT: config and tokenizer, no weights."""
    import transformers

    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(TINY_BERT_WORDS) + "\n")
    directory = root / "model"
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(directory)
    transformers.BertConfig(
        vocab_size=len(TINY_BERT_WORDS),
        hidden_size=TINY_BERT_HIDDEN,
        num_hidden_layers=TINY_BERT_LAYERS,
        num_attention_heads=2,
        intermediate_size=TINY_BERT_INTERMEDIATE,
        max_position_embeddings=64,
    ).save_pretrained(directory)
    return directory
