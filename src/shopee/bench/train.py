"""Throughput benchmarks (not tests): is data loading hidden behind compute?

``bench_train`` times training steps and embedding batches twice: fed by the real data loader
(decoding, augmenting, tokenized titles) and fed ready-made tensors of the same shape. The ratio
of the two rates says how much the loader costs; 1.0 means it is fully hidden.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from shopee.config import Config
from shopee.dataset import dataset_for, loader_workers, make_loader
from shopee.models import ShopeeModel
from shopee.optim import build_optimizer
from shopee.runtime import Runtime
from shopee.train import Stepper, load_fold_data


def _repeat(batch: dict[str, torch.Tensor], n: int) -> Iterator[dict[str, torch.Tensor]]:
    for _ in range(n):
        yield {k: v.clone() for k, v in batch.items()}


def _timed(batches: Iterable[dict[str, torch.Tensor]], step, warmup: int) -> float:
    """Samples per second over ``batches`` after ``warmup`` untimed ones (loader start included)."""
    samples, started = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            started = time.perf_counter()
        if i >= warmup:
            samples += len(batch["index"])
        step(batch)
    return samples / (time.perf_counter() - started)


def bench_train(cfg: Config, data_dir: Path, batches: int = 10, warmup: int = 2) -> dict[str, float]:
    cfg = cfg.validate()
    data = load_fold_data(cfg, data_dir, 0, debug=False)
    runtime = Runtime.for_config(cfg)
    torch.manual_seed(cfg.seed)
    model = runtime.prepare(ShopeeModel(cfg, data.n_classes))
    optimizer = build_optimizer(model, cfg)
    stepper = Stepper(model, optimizer, runtime.grad_scaler(), cfg, runtime)
    train_ds = dataset_for(cfg, model, data.train, labels=data.train_labels, augment=True)
    valid_ds = dataset_for(cfg, model, data.valid)
    n = batches + warmup
    rng = np.random.default_rng(cfg.seed)
    pin = runtime.pin_memory
    workers = loader_workers(cfg)

    def train_loader():
        indices = rng.choice(
            len(train_ds), size=n * cfg.batch_size, replace=len(train_ds) < n * cfg.batch_size
        )
        return make_loader(
            train_ds, cfg.batch_size, indices, num_workers=workers, drop_last=True, pin_memory=pin
        )

    def valid_loader():
        indices = np.arange(min(len(valid_ds), n * cfg.eval_batch_size))
        return make_loader(valid_ds, cfg.eval_batch_size, indices, num_workers=workers, pin_memory=pin)

    model.train()
    train_step = lambda batch: stepper(batch, update=True)  # noqa: E731
    ready = next(iter(train_loader()))
    train_real = _timed(train_loader(), train_step, warmup)
    train_tensors = _timed(_repeat(ready, n), train_step, warmup)

    model.eval()

    @torch.no_grad()
    def embed_step(batch):
        batch = runtime.to_device({k: v for k, v in batch.items() if k != "label"})
        with runtime.autocast():
            model(batch)

    ready = next(iter(valid_loader()))
    embed_batches = max(1, min(n, len(valid_ds) // cfg.eval_batch_size))
    embed_warmup = min(warmup, embed_batches - 1)
    embed_real = _timed(valid_loader(), embed_step, embed_warmup)
    embed_tensors = _timed(_repeat(ready, embed_batches), embed_step, embed_warmup)
    return {
        "train_loader_per_s": round(train_real, 2),
        "train_tensors_per_s": round(train_tensors, 2),
        "train_ratio": round(train_real / train_tensors, 3),
        "embed_loader_per_s": round(embed_real, 2),
        "embed_tensors_per_s": round(embed_tensors, 2),
        "embed_ratio": round(embed_real / embed_tensors, 3),
        "device": runtime.device.type,
        "precision": runtime.precision,
        "image_size": cfg.image_size if cfg.image_model else None,
        "batch_size": cfg.batch_size,
        "num_workers": workers,
    }
