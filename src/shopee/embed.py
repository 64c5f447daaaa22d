"""Batched embedding with trained models: validation folds and test sets alike."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn.functional import normalize
from torch.utils.data import DataLoader

from shopee.config import Config
from shopee.dataset import dataset_for, loader_workers, make_loader
from shopee.models import ShopeeModel
from shopee.progress import Log, Progress
from shopee.runtime import Runtime

TTA_MODES = (None, "flip")


@torch.no_grad()
def embed_many(
    models: Sequence[ShopeeModel],
    loader: DataLoader,
    runtime: Runtime | Sequence[Runtime],
    desc: str = "embedding",
    tta: str | None = None,
    log: Log | None = None,
    log_with_bar: Log | None = None,
) -> list[dict[str, np.ndarray]]:
    """L2-normalized float32 embeddings per kind of each model, row-aligned with the loader's
    order, in one pass over the loader (models that read the same batches share every decoded
    batch: decoding images is the dearest part of inference on Kaggle's two CPU cores).

    ``runtime`` is one for all models or one per model: models on different devices (each
    already there) all get every batch, moved once per device, and run concurrently: every
    model's forward pass is queued before any result is copied back.

    ``tta="flip"`` also embeds every image mirrored left to right and averages the two normalized
    embeddings of each kind before normalizing again (text-only kinds come out unchanged).
    Progress lines go to ``log`` and ``log_with_bar`` as ``Progress`` says.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: expected one of {', '.join(map(str, TTA_MODES))}")
    runtimes = [runtime] * len(models) if isinstance(runtime, Runtime) else list(runtime)
    if len(runtimes) != len(models):
        raise ValueError(f"{len(runtimes)} runtimes for {len(models)} models")
    was_training = [model.training for model in models]
    parts: list[dict[str, list[np.ndarray]]] = []
    for model in models:
        model.eval()
        parts.append({kind: [] for kind in model.kinds})
    for batch in Progress(loader, desc, unit="batches", log=log, log_with_bar=log_with_bar):
        batch = {k: v for k, v in batch.items() if k != "label"}
        on_device: dict[torch.device, dict[str, torch.Tensor]] = {}
        outs = []
        for model, rt in zip(models, runtimes, strict=True):
            if rt.device not in on_device:
                on_device[rt.device] = rt.to_device(batch)
            outs.append(_forward(model, on_device[rt.device], rt, tta))
        for model, out, out_parts in zip(models, outs, parts, strict=True):
            for kind in model.kinds:
                out_parts[kind].append(out[kind].cpu().numpy())
    for model, mode in zip(models, was_training, strict=True):
        model.train(mode)
    return [{kind: np.concatenate(chunks) for kind, chunks in p.items()} for p in parts]


def _forward(
    model: ShopeeModel, batch: dict[str, torch.Tensor], runtime: Runtime, tta: str | None
) -> dict[str, torch.Tensor]:
    """One model's normalized embeddings of a batch already on its device (left there)."""
    with runtime.autocast():
        out = {k: normalize(v.float(), dim=1) for k, v in model(batch).items() if k in model.kinds}
        if tta == "flip" and "image" in batch:
            flipped = model({**batch, "image": batch["image"].flip(-1)})
            out = {k: normalize(v + normalize(flipped[k].float(), dim=1), dim=1) for k, v in out.items()}
    return out


def embed_rows(
    models: Sequence[ShopeeModel],
    cfg: Config,
    df: pd.DataFrame,
    runtime: Runtime | Sequence[Runtime],
    *,
    image_policy: str | None = None,
    batch_size: int | None = None,
    tta: str | None = None,
    desc: str = "embedding",
) -> list[dict[str, np.ndarray]]:
    """Embeddings of the rows of ``df`` by ``models``, which read the same batches as a model
    built from ``cfg`` (``dataset_for``); images decoded once for all of them. ``runtime``: one,
    or one per model (see ``embed_many``)."""
    dataset = dataset_for(cfg, models[0], df, image_policy=image_policy)
    loader = make_loader(
        dataset,
        batch_size or cfg.eval_batch_size,
        num_workers=loader_workers(cfg),
        pin_memory=any(rt.pin_memory for rt in ([runtime] if isinstance(runtime, Runtime) else runtime)),
    )
    return embed_many(models, loader, runtime, desc=desc, tta=tta)
