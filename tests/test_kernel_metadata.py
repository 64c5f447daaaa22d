"""Kaggle naming rules and metadata fields for a kernel and its dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shopee.errors import ShopeeError
from shopee.kernel import metadata as meta


def test_default_title_reads_as_the_slug() -> None:
    for slug in ("shopee-v1", "abcde", "my-2nd-kernel-x"):
        assert meta.kaggle_slug(meta.kernel_title(slug, None)) == slug
    assert meta.kaggle_slug("Shopee: Lite0 + MiniLM!") == "shopee-lite0-minilm"


@pytest.mark.parametrize("slug", ["ab", "a" * 51, "Shopee", "shopee_v1", "-shopee", "shopee--v1", "shopee-"])
def test_bad_slugs(slug: str) -> None:
    with pytest.raises(ShopeeError, match="3 to 50 lower-case"):
        meta.check_slug(slug)


def test_titles() -> None:
    with pytest.raises(ShopeeError, match="5 to 50 characters"):
        meta.kernel_title("abcd", "Abcd")
    with pytest.raises(ShopeeError, match="would make it the slug 'other-name'"):
        meta.kernel_title("shopee-v1", "Other Name")
    assert meta.dataset_title("Shopee V1") == "Shopee V1 Dataset"
    long = "A" * 45
    assert meta.dataset_title(long) == long  # the suffix would pass 50 characters


def test_metadata_fields() -> None:
    kernel = meta.kernel_metadata("me", "shopee-v1", "Shopee V1", gpu=True)
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is True and kernel["is_private"]
    assert kernel["dataset_sources"] == ["me/shopee-v1-dataset"]
    assert kernel["competition_sources"] == ["shopee-product-matching"]
    dataset = meta.dataset_metadata("me", "shopee-v1", "Shopee V1")
    assert dataset == {
        "title": "Shopee V1 Dataset",
        "id": "me/shopee-v1-dataset",
        "licenses": [{"name": "CC0-1.0"}],
    }
    with pytest.raises(ShopeeError, match="dataset slug"):
        meta.dataset_metadata("me", "a" * 45, "Shopee V1")


def test_user_from_flag_env_or_kaggle_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ShopeeError, match="--user"):
        meta.kaggle_user(None)
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "fromfile", "key": "x"}))
    assert meta.kaggle_user(None) == "fromfile"
    monkeypatch.setenv("KAGGLE_USERNAME", "fromenv")
    assert meta.kaggle_user(None) == "fromenv"
    assert meta.kaggle_user("flag") == "flag"
    with pytest.raises(ShopeeError, match="not a Kaggle user name"):
        meta.kaggle_user("bad name")
