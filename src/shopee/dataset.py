"""Torch datasets and loaders over a DataFrame of postings (train and test alike).

Titles are tokenized once up front; images are decoded per item (JPEG draft mode decodes a
large photo at reduced size directly). A text-only dataset never opens an image file, and an
image-only one never needs a tokenizer.

``dataset_for`` is the one place that turns (config, model, rows) into a dataset: training,
validation, prediction and the benchmarks all use it, so train-time and test-time inputs are
built the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import albumentations as A
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from shopee.augment import build_augment
from shopee.config import Config
from shopee.data import ImagePolicy, load_image
from shopee.errors import ShopeeError

ROW_SEED_STRIDE = 1_000_003  # a row's augmentation seed: epoch seed x this + row index
MAX_WORKERS = 8  # loader processes beyond this add memory, not speed, at the image sizes used here


class PostingDataset(Dataset):
    def __init__(
        self,
        df: pd.DataFrame,
        *,
        image_size: int | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        tokenizer=None,
        max_len: int = 32,
        labels: np.ndarray | None = None,
        transform: A.Compose | None = None,
        image_policy: ImagePolicy = "error",
        text_features: np.ndarray | None = None,
    ) -> None:
        self.n = len(df)
        self.image_size = image_size
        self.transform = transform
        self.augment_seed = 0  # set per epoch by ``make_loader``; with the row's index, its draws
        self.image_policy = image_policy
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if image_size:
            self.paths = df["image_path"].tolist()
            self.ok = df["image_ok"].to_numpy(dtype=bool) if "image_ok" in df else np.ones(self.n, bool)
            self.mean = np.asarray(mean, dtype=np.float32) * 255.0
            self.std = np.asarray(std, dtype=np.float32) * 255.0
        self.text_features = (
            None if text_features is None else torch.as_tensor(text_features, dtype=torch.float32)
        )
        self.input_ids = self.attention_mask = None
        if tokenizer is not None:
            encoded = tokenizer(
                [str(t) for t in df["title"]],
                padding="max_length",
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            self.input_ids = encoded["input_ids"]
            self.attention_mask = encoded["attention_mask"]

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        if self.ok[i]:
            pil = load_image(self.paths[i], self.image_policy, size)
        else:  # policy "blank": known-bad image
            pil = Image.new("RGB", size, (255, 255, 255))
        arr = np.asarray(pil.resize(size, Image.BILINEAR), dtype=np.uint8)
        if self.transform is not None:
            # each row draws from (epoch seed, row): the same augmentation whichever worker
            # process decodes it, so that the number of workers changes speed, not results
            self.transform.set_random_seed((self.augment_seed * ROW_SEED_STRIDE + i) % 2**32)
            arr = self.transform(image=arr)["image"]
        arr = (arr.astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item: dict[str, torch.Tensor] = {"index": torch.tensor(i)}
        if self.labels is not None:
            item["label"] = self.labels[i]
        if self.image_size:
            item["image"] = self.image(i)
        if self.text_features is not None:
            item["text_features"] = self.text_features[i]
        if self.input_ids is not None:
            item["input_ids"] = self.input_ids[i]
            item["attention_mask"] = self.attention_mask[i]
        return item


def dataset_for(
    cfg: Config,
    model,
    df: pd.DataFrame,
    *,
    labels: np.ndarray | None = None,
    augment: bool = False,
    image_policy: str | None = None,
) -> PostingDataset:
    """The dataset a ``ShopeeModel`` built from ``cfg`` reads ``df`` through.

    Images at ``cfg.image_size`` normalized by the image encoder's mean and std, titles by its
    tokenizer to ``cfg.max_len``; ``augment`` applies ``cfg.augment`` (training only);
    ``labels`` (class index per row) for training. ``image_policy`` (default ``cfg.image_policy``)
    decides what an image that fails to decode becomes: ``skip`` rows were dropped when the data
    was read, so here it acts as ``blank``.
    """
    policy = image_policy or cfg.image_policy
    image_kwargs: dict = {}
    if model.image is not None:
        image_kwargs = dict(image_size=cfg.image_size, mean=model.image.mean, std=model.image.std)
    features = None
    if getattr(model.text, "needs_features", False):  # TF-IDF + PCA: computed once, here
        features = model.text.features(df["title"].tolist())
    elif model.text is not None and model.text.tokenizer is None:
        raise ShopeeError(
            f"text model {cfg.text_model!r}: only its architecture is here ({model.text.source}); "
            "its tokenizer and weights are needed to read titles: give a model directory with "
            "--set text_weights=DIR, or put the model in the Hugging Face cache"
        )
    return PostingDataset(
        df,
        text_features=features,
        tokenizer=model.text.tokenizer if model.text is not None else None,
        max_len=cfg.max_len,
        labels=labels,
        transform=build_augment(cfg.augment) if augment and model.image is not None else None,
        image_policy="blank" if policy == "skip" else policy,  # type: ignore[arg-type]
        **image_kwargs,
    )


def loader_workers(cfg: Config, processes: int = 1) -> int:
    """Loader processes for ``cfg``: ``num_workers`` when set; auto (-1): none for a model that
    reads no images (titles are tokenized up front), else this process's share of the CPU cores
    it may run on (``processes`` training processes on this machine, or ``SHOPEE_CPUS`` when the
    launcher gave this fold a share), at most ``MAX_WORKERS``."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    if not cfg.image_model:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = int(os.environ.get("SHOPEE_CPUS") or cores) // max(processes, 1)
    return max(1, min(MAX_WORKERS, share))


def make_loader(
    dataset: PostingDataset,
    batch_size: int,
    indices: Sequence[int] | None = None,
    *,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over ``indices`` (in that order) or the whole dataset; deterministic for ``seed``
    whatever ``num_workers``."""
    sampler = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    dataset.augment_seed = seed
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
