"""Datasets and loaders: tensors, normalization, image policies, tokenization, order and
determinism of augmented loaders, and the augmentation pipeline built from the Config."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import torch
import transformers
from PIL import Image

from shopee.augment import build_augment
from shopee.config import Config, ConfigError
from shopee.data import read_split
from shopee.dataset import PostingDataset, make_loader
from shopee.errors import DataError
from shopee.models import ShopeeModel

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 32
MAX_LEN = 12


@pytest.fixture(scope="module")
def tokenizer(text_dir: Path):
    return transformers.AutoTokenizer.from_pretrained(text_dir)


@pytest.fixture(scope="module")
def train_df(small_demo_dir: Path) -> pd.DataFrame:
    return read_split(small_demo_dir, "train")


def labels_of(df: pd.DataFrame) -> np.ndarray:
    return pd.factorize(df["label_group"])[0].astype(np.int64)


def normalized_white(mean=MEAN, std=STD) -> torch.Tensor:
    value = (1.0 - torch.tensor(mean)) / torch.tensor(std)
    return value.view(3, 1, 1).expand(3, SIZE, SIZE)


@pytest.fixture
def no_image_open(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any ``PIL.Image.open`` fails the test; the calls are recorded."""
    calls: list[str] = []

    def refuse(fp, *args, **kwargs):
        calls.append(str(fp))
        raise AssertionError(f"an image was opened: {fp}")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    return calls


# ------------------------------------------------------------------------------------------------
# items
# ------------------------------------------------------------------------------------------------
def test_item_tensors_and_length(train_df, tokenizer):
    labels = labels_of(train_df)
    ds = PostingDataset(
        train_df, image_size=SIZE, mean=MEAN, std=STD, tokenizer=tokenizer, max_len=MAX_LEN, labels=labels
    )
    assert len(ds) == len(train_df) == 120
    for i in (0, 57, len(ds) - 1):
        item = ds[i]
        assert set(item) == {"index", "label", "image", "input_ids", "attention_mask"}
        assert item["index"].item() == i
        assert item["label"].item() == labels[i] and item["label"].dtype == torch.long
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert torch.isfinite(item["image"]).all()
        assert item["input_ids"].shape == (MAX_LEN,) and item["attention_mask"].shape == (MAX_LEN,)
        assert item["input_ids"][0].item() == tokenizer.cls_token_id

    unlabelled = PostingDataset(train_df, image_size=SIZE, tokenizer=tokenizer, max_len=MAX_LEN)
    assert "label" not in unlabelled[0] and len(unlabelled) == 120


def test_images_are_normalized_with_the_given_mean_and_std(train_df):
    a = PostingDataset(train_df, image_size=SIZE, mean=MEAN, std=STD)
    b = PostingDataset(train_df, image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    for i in (0, 1):
        pixels_a = a[i]["image"] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        pixels_b = b[i]["image"] * 0.5 + 0.5
        torch.testing.assert_close(pixels_a, pixels_b, atol=1e-5, rtol=0)
        assert pixels_a.min().item() >= -1e-5 and pixels_a.max().item() <= 1.0 + 1e-5
        assert pixels_a.std().item() > 0.01  # a photo, not a constant


def test_white_image_maps_to_one_minus_mean_over_std(demo_copy):
    df = read_split(demo_copy, "train")
    Image.new("RGB", (50, 40), (255, 255, 255)).save(df["image_path"][3], format="PNG")
    ds = PostingDataset(df, image_size=SIZE, mean=MEAN, std=STD)
    torch.testing.assert_close(ds[3]["image"], normalized_white())
    assert not torch.allclose(ds[2]["image"], normalized_white())


def test_text_only_dataset_never_opens_an_image(train_df, tokenizer, no_image_open):
    ds = PostingDataset(train_df, tokenizer=tokenizer, max_len=MAX_LEN, labels=labels_of(train_df))
    seen = 0
    for batch in make_loader(ds, 32):
        assert "image" not in batch
        assert batch["input_ids"].shape[1] == MAX_LEN
        seen += len(batch["index"])
    assert seen == len(train_df)
    assert no_image_open == []


def test_text_only_dataset_needs_no_image_columns(tokenizer):
    df = pd.DataFrame({"title": ["red shoe", "blue bag"]})
    ds = PostingDataset(df, tokenizer=tokenizer, max_len=MAX_LEN)
    assert len(ds) == 2 and set(ds[1]) == {"index", "input_ids", "attention_mask"}


def test_image_only_dataset_needs_no_tokenizer(train_df):
    df = train_df.drop(columns=["title", "title_raw"])
    ds = PostingDataset(df, image_size=SIZE, labels=labels_of(train_df))
    batch = next(iter(make_loader(ds, 4)))
    assert set(batch) == {"index", "label", "image"}
    assert batch["image"].shape == (4, 3, SIZE, SIZE)


# ------------------------------------------------------------------------------------------------
# image policy at load time
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def corrupt(demo_copy) -> tuple[Path, int]:
    """The demo copy with the image of train row 5 overwritten by garbage bytes."""
    df = read_split(demo_copy, "train")
    Path(df["image_path"][5]).write_bytes(b"this is not a jpeg" * 20)
    return demo_copy, 5


def test_corrupt_image_with_policy_error_names_the_file(corrupt):
    data_dir, row = corrupt
    df = read_split(data_dir, "train", check_images=False)
    ds = PostingDataset(df, image_size=SIZE, image_policy="error")
    ds[row - 1]  # the others load
    with pytest.raises(DataError, match=df["image"][row]):
        ds[row]


def test_corrupt_image_with_policy_blank_is_a_white_image(corrupt):
    data_dir, row = corrupt
    df = read_split(data_dir, "train", check_images=False)
    for policy in ("blank", "skip"):
        ds = PostingDataset(df, image_size=SIZE, mean=MEAN, std=STD, image_policy=policy)
        image = ds[row]["image"]
        assert image.shape == (3, SIZE, SIZE)
        torch.testing.assert_close(image, normalized_white())


def test_rows_flagged_bad_get_a_blank_image_without_opening_the_file(corrupt, monkeypatch):
    data_dir, row = corrupt
    df = read_split(data_dir, "train", image_policy="blank")
    assert not df["image_ok"][row] and df["image_ok"].drop(index=row).all()
    ds = PostingDataset(df, image_size=SIZE, mean=MEAN, std=STD, image_policy="blank")
    opened: list[str] = []

    def refuse(fp, *args, **kwargs):
        opened.append(str(fp))
        raise AssertionError("opened")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    torch.testing.assert_close(ds[row]["image"], normalized_white())
    assert opened == []


# ------------------------------------------------------------------------------------------------
# titles
# ------------------------------------------------------------------------------------------------
def test_empty_title_is_a_valid_sequence_and_the_model_runs(text_dir, tokenizer):
    df = pd.DataFrame({"title": ["", "red shoe", ""]})
    ds = PostingDataset(df, tokenizer=tokenizer, max_len=MAX_LEN, labels=np.array([0, 1, 0]))
    ids, mask = ds[0]["input_ids"], ds[0]["attention_mask"]
    expected = [tokenizer.cls_token_id, tokenizer.sep_token_id] + [tokenizer.pad_token_id] * (MAX_LEN - 2)
    assert ids.tolist() == expected
    assert mask.tolist() == [1, 1] + [0] * (MAX_LEN - 2)

    cfg = Config(
        image_model="", text_model=str(text_dir), text_pretrained=False, fusion="none", max_len=MAX_LEN
    ).validate()
    model = ShopeeModel(cfg, n_classes=2)
    batch = next(iter(make_loader(ds, 3)))
    out = model(batch)
    assert out["txt"].shape == (3, 32)
    assert torch.isfinite(out["txt"]).all() and torch.isfinite(out["loss"])
    model.eval()
    with torch.no_grad():
        one = model({k: v[:1] for k, v in batch.items() if k != "label"})
    assert torch.isfinite(one["txt"]).all()


def test_long_titles_are_truncated_to_max_len(tokenizer):
    df = pd.DataFrame({"title": [" ".join(["red shoe"] * 50)]})
    ds = PostingDataset(df, tokenizer=tokenizer, max_len=MAX_LEN)
    assert ds[0]["input_ids"].shape == (MAX_LEN,)
    assert ds[0]["attention_mask"].tolist() == [1] * MAX_LEN
    assert ds[0]["input_ids"][-1].item() == tokenizer.sep_token_id


# ------------------------------------------------------------------------------------------------
# loaders
# ------------------------------------------------------------------------------------------------
def test_loader_visits_the_given_indices_in_order(train_df, tokenizer):
    labels = labels_of(train_df)
    ds = PostingDataset(train_df, tokenizer=tokenizer, max_len=MAX_LEN, labels=labels)
    indices = np.array([17, 3, 99, 3, 0, 64, 118])  # repeats allowed (resampling)
    batches = list(make_loader(ds, 3, indices))
    assert [len(b["index"]) for b in batches] == [3, 3, 1]
    assert torch.cat([b["index"] for b in batches]).tolist() == indices.tolist()
    assert torch.cat([b["label"] for b in batches]).tolist() == labels[indices].tolist()
    dropped = list(make_loader(ds, 3, indices, drop_last=True))
    assert torch.cat([b["index"] for b in dropped]).tolist() == indices[:6].tolist()
    everything = torch.cat([b["index"] for b in make_loader(ds, 50)])
    assert everything.tolist() == list(range(len(train_df)))


@pytest.fixture(scope="module")
def augmented(train_df) -> PostingDataset:
    transform = build_augment(Config().augment)
    assert transform is not None
    return PostingDataset(train_df.iloc[:24].reset_index(drop=True), image_size=SIZE, transform=transform)


def images(loader) -> torch.Tensor:
    return torch.cat([b["image"] for b in loader])


def test_augmented_loader_is_deterministic_for_a_seed(augmented):
    indices = list(range(23, -1, -1))
    first = images(make_loader(augmented, 8, indices, seed=7))
    second = images(make_loader(augmented, 8, indices, seed=7))
    other = images(make_loader(augmented, 8, indices, seed=8))
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not torch.equal(first, other)
    plain = PostingDataset(augmented_df(augmented), image_size=SIZE)
    assert not torch.equal(first, images(make_loader(plain, 8, indices)))  # augmentation is on


def augmented_df(ds: PostingDataset) -> pd.DataFrame:
    return pd.DataFrame({"image_path": ds.paths, "image_ok": ds.ok})


def test_augmented_loader_with_workers_is_deterministic_for_a_seed(augmented):
    first = images(make_loader(augmented, 6, num_workers=2, seed=11))
    second = images(make_loader(augmented, 6, num_workers=2, seed=11))
    other = images(make_loader(augmented, 6, num_workers=2, seed=12))
    assert first.shape == (24, 3, SIZE, SIZE)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_workers_do_not_repeat_each_others_augmentations(train_df, num_workers):
    """One photo twelve times: each batch (one per worker in turn) gets its own random draws."""
    df = train_df.iloc[[0] * 12].reset_index(drop=True)
    transform = build_augment([{"name": "Affine", "rotate": [-45, 45], "p": 1.0}])
    ds = PostingDataset(df, image_size=SIZE, transform=transform)
    batches = [b["image"] for b in make_loader(ds, 6, num_workers=num_workers, seed=5)]
    assert len(batches) == 2
    assert not torch.equal(batches[0], batches[1])


# ------------------------------------------------------------------------------------------------
# build_augment
# ------------------------------------------------------------------------------------------------
def test_build_augment_default_and_empty():
    compose = build_augment(Config().augment)
    assert [type(t).__name__ for t in compose.transforms] == [d["name"] for d in Config().augment]
    assert build_augment([]) is None
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    assert compose(image=arr)["image"].shape == arr.shape


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "NoSuchTransform"},
        {"name": "Compose"},  # an albumentations name, not a transform
        {"p": 0.5},  # no name
        {"name": "Affine", "scale": "abc"},
        {"name": "HorizontalFlip", "p": "often"},
    ],
)
def test_build_augment_errors_name_the_item(bad):
    spec = [{"name": "HorizontalFlip", "p": 0.5}, bad]
    with pytest.raises(ConfigError, match=r"augment\[1\]"):
        build_augment(spec)


def test_build_augment_unknown_keyword_is_an_error():
    with pytest.raises(ConfigError, match=r"augment\[0\]"):
        build_augment([{"name": "HorizontalFlip", "prob": 1.0}])


def test_png_bytes_under_a_jpg_name_load(demo_copy):
    """Images are recognised by content, not by file name."""
    df = read_split(demo_copy, "train")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 0)).save(buf, format="PNG")
    Path(df["image_path"][0]).write_bytes(buf.getvalue())
    ds = PostingDataset(df, image_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))
    assert ds[0]["image"].abs().max().item() == 0.0
