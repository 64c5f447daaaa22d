"""Batched embedding with a trained model: validation folds and test sets alike."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn.functional import normalize
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from shopee.models import ShopeeModel

TTA_MODES = (None, "flip")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bfloat16 where supported, else float16); nothing on CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool = False) -> dict:
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if key == "image" and channels_last:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


@torch.no_grad()
def embed_many(
    models: Sequence[ShopeeModel],
    loader: DataLoader,
    device: torch.device,
    amp: bool = True,
    channels_last: bool = False,
    desc: str = "embedding",
    tta: str | None = None,
) -> list[dict[str, np.ndarray]]:
    """``embed`` for several models that read the same batches, in one pass over the loader.

    Decoding images is the dearest part of inference on Kaggle's two CPU cores: the fold models
    of an experiment share every decoded batch instead of decoding the test set once each.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: expected one of {', '.join(map(str, TTA_MODES))}")
    was_training = [model.training for model in models]
    parts: list[dict[str, list[np.ndarray]]] = []
    for model in models:
        model.eval()
        parts.append({kind: [] for kind in model.kinds})
    for batch in tqdm(loader, desc=desc, leave=False, disable=None, mininterval=2.0):
        batch = to_device({k: v for k, v in batch.items() if k != "label"}, device, channels_last)
        flipped_batch = (
            {**batch, "image": batch["image"].flip(-1)} if tta == "flip" and "image" in batch else None
        )
        for model, out_parts in zip(models, parts, strict=True):
            with autocast(device, amp):
                out = {k: normalize(v.float(), dim=1) for k, v in model(batch).items() if k in model.kinds}
                if flipped_batch is not None:
                    flipped = model(flipped_batch)
                    out = {
                        k: normalize(v + normalize(flipped[k].float(), dim=1), dim=1) for k, v in out.items()
                    }
            for kind in model.kinds:
                out_parts[kind].append(out[kind].cpu().numpy())
    for model, mode in zip(models, was_training, strict=True):
        model.train(mode)
    return [{kind: np.concatenate(chunks) for kind, chunks in p.items()} for p in parts]


def embed(
    model: ShopeeModel,
    loader: DataLoader,
    device: torch.device,
    amp: bool = True,
    channels_last: bool = False,
    desc: str = "embedding",
    tta: str | None = None,
) -> dict[str, np.ndarray]:
    """L2-normalized float32 embeddings per kind, row-aligned with the loader's order.

    ``tta="flip"`` also embeds every image mirrored left to right and averages the two normalized
    embeddings of each kind before normalizing again (text-only kinds come out unchanged).
    """
    return embed_many([model], loader, device, amp, channels_last, desc, tta)[0]
