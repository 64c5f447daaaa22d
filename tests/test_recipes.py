"""The competition recipes (exp050 onwards): each file's real architecture, built offline with
random weights (timm without pretrained weights, the text model from its shipped config), runs
one forward and backward pass at a small size; the configs print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shopee.errors import ShopeeError
from shopee.models import ShopeeModel
from shopee.pretrained import create_text_encoder, shipped_text_config
from shopee.runner import load_experiment

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "exp").glob("exp0[5-9]*.py"))
SMALL_IMAGE = 64  # pixels, except where the architecture fixes its input (Swin: 224)


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    """The architectures build from the shipped configs: never a download, whatever the machine
    reaches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_there_are_recipes() -> None:
    assert {"exp050", "exp051", "exp055", "exp056", "exp057"} <= set(RECIPES)


def _small(cfg):
    size = cfg.image_size if cfg.image_model.startswith("swin") else min(cfg.image_size, SMALL_IMAGE)
    return cfg.with_overrides(
        ["image_pretrained=false", "text_pretrained=false", f"image_size={size}", "max_len=12"]
    )


@pytest.mark.parametrize("exp", RECIPES)
def test_recipe_architecture_runs_forward_and_backward(exp: str) -> None:
    name, cfg = load_experiment(str(ROOT / "exp" / f"{exp}.py"))
    cfg = _small(cfg).validate()
    assert name == exp
    torch.manual_seed(0)
    model = ShopeeModel(cfg, n_classes=7).train()
    batch: dict[str, torch.Tensor] = {"label": torch.tensor([0, 3])}
    if model.image is not None:
        batch["image"] = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    if model.text is not None:
        assert model.text.tokenizer is None and "architecture only" in model.text.source
        vocab = model.text.model.config.vocab_size
        batch["input_ids"] = torch.randint(5, vocab, (2, cfg.max_len))
        batch["attention_mask"] = torch.ones(2, cfg.max_len, dtype=torch.long)
    out = model(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    for kind in model.kinds:
        assert out[kind].shape[0] == 2 and torch.isfinite(out[kind]).all()
    reached = [model.heads[k].weight for k in model.heads]  # the heads, and each encoder's bottom
    if model.image is not None:
        reached += model.image.layer_groups()[0]
    if model.text is not None:
        reached.append(model.text.model.embeddings.word_embeddings.weight)
    for p in reached:
        assert p.grad is not None and bool(p.grad.abs().sum() > 0)


def test_recipe_prints_its_config() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "exp" / "exp051.py"), "--print-config", "--fold", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"fusion": "early"' in done.stdout and "bert-base-multilingual-uncased" in done.stdout


def test_shipped_architectures_match_their_published_sizes() -> None:
    """Parameter counts of the text models as their model cards give them (millions)."""
    published = {
        "FacebookAI/xlm-roberta-base": 278,
        "indobenchmark/indobert-large-p1": 335,
        "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2": 118,
        "google-bert/bert-base-uncased": 110,
    }
    for hub_id, millions in published.items():
        model, tokenizer, _ = create_text_encoder(hub_id, pretrained=False)
        count = sum(p.numel() for p in model.parameters()) / 1e6
        assert tokenizer is None and abs(count - millions) / millions < 0.02, (hub_id, count)
    assert shipped_text_config("xlm-roberta-base") == shipped_text_config("FacebookAI/xlm-roberta-base")


def test_an_architecture_without_its_tokenizer_cannot_read_titles() -> None:
    import pandas as pd

    from shopee.dataset import dataset_for

    _, cfg = load_experiment(str(ROOT / "exp" / "exp056.py"))
    cfg = cfg.with_overrides(["text_pretrained=false", "text_model=google-bert/bert-base-uncased"])
    model = ShopeeModel(cfg, n_classes=3)
    rows = pd.DataFrame({"posting_id": ["a"], "title": ["kopi"], "image": ["a.jpg"], "label_group": [1]})
    with pytest.raises(ShopeeError, match="only its architecture is here"):
        dataset_for(cfg, model, rows)
    with pytest.raises(ShopeeError, match="no text model"):
        create_text_encoder("google-bert/bert-base-uncased", pretrained=True)


def test_a_debug_run_keeps_the_size_of_a_backbone_with_a_fixed_input() -> None:
    """``--debug`` shrinks images to ``debug_image_size``, except for a backbone that takes one
    size: Swin at 64 px fails ("Input height (64) doesn't match model (224)"). timm's pretrained
    config says which, without building the model or fetching weights."""
    import timm

    from shopee.models.encoders import fixed_input_size
    from shopee.train import effective_config

    assert fixed_input_size("swin_base_patch4_window7_224") == 224
    assert fixed_input_size("tf_efficientnet_lite0") is None and fixed_input_size("eca_nfnet_l1") is None
    for exp, size in (("exp050", 224), ("exp052", 224), ("exp053", 64), ("exp055", 64)):
        _, cfg = load_experiment(str(ROOT / "exp" / f"{exp}.py"))
        debug = effective_config(cfg.validate(), debug=True)
        assert debug.image_size == size and debug.num_workers == 0, exp
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0).eval()
    with torch.no_grad(), pytest.raises((AssertionError, RuntimeError), match="224"):
        swin(torch.randn(1, 3, 64, 64))  # the size it used to shrink to (224 runs: the recipe test)
