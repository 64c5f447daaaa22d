"""Batched embedding with a trained model: validation folds and test sets alike."""

from __future__ import annotations

import contextlib

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
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: expected one of {', '.join(map(str, TTA_MODES))}")
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {kind: [] for kind in model.kinds}
    for batch in tqdm(loader, desc=desc, leave=False, disable=None, mininterval=2.0):
        batch = to_device({k: v for k, v in batch.items() if k != "label"}, device, channels_last)
        with autocast(device, amp):
            out = {k: normalize(v.float(), dim=1) for k, v in model(batch).items() if k in model.kinds}
            if tta == "flip" and "image" in batch:
                flipped = model({**batch, "image": batch["image"].flip(-1)})
                out = {k: normalize(v + normalize(flipped[k].float(), dim=1), dim=1) for k, v in out.items()}
        for kind in model.kinds:
            parts[kind].append(out[kind].cpu().numpy())
    model.train(was_training)
    return {kind: np.concatenate(chunks) for kind, chunks in parts.items()}
