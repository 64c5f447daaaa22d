"""``bench gpu``: the GPU check, one command, meant to run in a few minutes on a T4-class card.

1. training steps of an experiment (exp001 at 256 px by default) in every precision the card
   supports (fp32; fp16 with a GradScaler; bf16 on compute capability 8.0 and up): samples per
   second, peak memory, a finite loss;
2. embedding throughput (inference in the precision ``amp=auto`` picks);
3. kNN at test scale (70,000 x 512): torch, and faiss / cuml when importable, with the share of
   rows whose neighbour lists agree with torch's;
4. with ``--kernel`` and ``--data``: the kernel's notebook run here (``run-kernel``), its time
   and, with ``--labels``, its submission's F1.

Prints a table, then one JSON line. ``--device cpu`` runs the same steps on the CPU (fp32 only):
how its logic is tested where no GPU is.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shopee.config import Config
from shopee.constants import TEST_ROWS
from shopee.match import knn_pairs, normalize_rows
from shopee.match.knn import _importable
from shopee.models import ShopeeModel
from shopee.optim import build_optimizer
from shopee.runtime import BF16_MIN_CAPABILITY, Runtime, pick_precision

TRAIN_FOLD_CLASSES = 8811  # label groups in 4/5 of the real train set: the margin head's size


def precisions(device: torch.device) -> list[str]:
    """What the device computes in natively: fp32 everywhere, fp16 on CUDA, bf16 from sm_80."""
    if device.type != "cuda":
        return ["fp32"]
    supported = ["fp32", "fp16"]
    if tuple(torch.cuda.get_device_capability(device)) >= BF16_MIN_CAPABILITY:
        supported.append("bf16")
    return supported


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(cfg: Config, model: ShopeeModel, size: int, device: torch.device, labels: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    batch: dict[str, torch.Tensor] = {}
    if model.image is not None:
        batch["image"] = torch.randn(size, 3, cfg.image_size, cfg.image_size, generator=gen)
    if model.text is not None:
        vocab = model.text.model.config.vocab_size
        batch["input_ids"] = torch.randint(0, vocab, (size, cfg.max_len), generator=gen)
        batch["attention_mask"] = torch.ones(size, cfg.max_len, dtype=torch.long)
    if labels:
        batch["label"] = torch.randint(0, TRAIN_FOLD_CLASSES, (size,), generator=gen)
    return batch


def _peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def train_steps(
    cfg: Config, device: torch.device, precision: str, steps: int, warmup: int = 2
) -> dict[str, Any]:
    """Samples/s of full training steps (``train.Stepper``: forward, loss, backward, update) on
    synthetic batches."""
    from shopee.train import Stepper

    runtime = Runtime(device, precision, bool(cfg.channels_last and device.type == "cuda"))
    torch.manual_seed(0)
    model = runtime.prepare(ShopeeModel(cfg, TRAIN_FOLD_CLASSES)).train()
    # the training loop's own step (autocast, GradScaler, unscale and clip, update), so that what
    # this times is what a fold runs
    stepper = Stepper(model, build_optimizer(model, cfg), runtime.grad_scaler(), cfg, runtime)
    batch = _batch(cfg, model, cfg.batch_size, device, labels=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss = torch.tensor(float("nan"))
    started = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        loss = stepper(batch, update=True)
    _sync(device)
    seconds = time.perf_counter() - started
    return {
        "precision": precision,
        "samples_per_s": round(cfg.batch_size * steps / seconds, 1),
        "peak_mb": _peak_mb(device),
        "loss": round(float(loss.detach()), 4),
        "finite": bool(torch.isfinite(loss.detach())),
    }


@torch.no_grad()
def embed_throughput(cfg: Config, device: torch.device, batches: int, batch_size: int) -> dict[str, Any]:
    """Items/s of inference (encoders and necks, no head) in the precision ``cfg.amp`` picks."""
    runtime = Runtime.for_config(cfg, device)
    model = runtime.prepare(ShopeeModel(cfg, TRAIN_FOLD_CLASSES, with_heads=False)).eval()
    batch = runtime.to_device(_batch(cfg, model, batch_size, device, labels=False))
    with runtime.autocast():
        model(batch)
    _sync(device)
    started = time.perf_counter()
    for _ in range(batches):
        with runtime.autocast():
            model(batch)
    _sync(device)
    return {
        "precision": runtime.precision,
        "items_per_s": round(batches * batch_size / (time.perf_counter() - started), 1),
    }


def knn_agreement(rows: int, dim: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Seconds of a k=50 search over ``rows`` clustered embeddings per backend, and the share of
    rows whose neighbour list equals torch's (faiss and cuml only when importable)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(rows // 3, 1), dim), dtype=np.float32)
    x = normalize_rows(
        centres[rng.integers(0, len(centres), rows)] + rng.standard_normal((rows, dim), dtype=np.float32)
    )
    results: dict[str, Any] = {"rows": rows, "dim": dim}
    reference = None
    for backend in ("torch", "faiss", "cuml"):
        if backend != "torch" and (not _importable(backend) or (backend == "cuml" and device.type != "cuda")):
            results[backend] = None
            continue
        started = time.perf_counter()
        pairs = knn_pairs(x, 50, device=str(device), backend=backend)
        seconds = time.perf_counter() - started
        cols = pairs.cols.reshape(rows, -1)
        if reference is None:
            reference = cols
        same = float(np.mean([set(a) == set(b) for a, b in zip(cols, reference, strict=True)]))
        results[backend] = {"seconds": round(seconds, 3), "rows_equal_to_torch": round(same, 5)}
    return results


def run_kernel_on_device(kernel: Path, data: Path, labels: Path | None) -> dict[str, Any]:
    from shopee.kernel.local import run_kernel
    from shopee.metrics import score_files

    working, _, seconds = run_kernel(kernel, data)
    result: dict[str, Any] = {"kernel": str(kernel), "seconds": round(seconds, 1)}
    if labels is not None:
        result["f1"] = round(score_files(working / "submission.csv", labels)[0].f1, 4)
    return result


def bench_gpu(
    cfg: Config,
    device: torch.device,
    *,
    image_size: int = 256,
    steps: int = 10,
    embed_batches: int = 10,
    knn_rows: int = TEST_ROWS,
    knn_dim: int = 512,
    kernel: Path | None = None,
    data: Path | None = None,
    labels: Path | None = None,
) -> dict[str, Any]:
    cfg = dataclasses.replace(
        cfg, image_pretrained=False, text_pretrained=False, image_size=image_size
    ).validate()
    result: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        result["gpu"] = torch.cuda.get_device_name(device)
        result["capability"] = f"{major}.{minor}"
        result["gpus_visible"] = torch.cuda.device_count()
        result["auto_precision"] = pick_precision("auto", device)
    result["train"] = [train_steps(cfg, device, p, steps) for p in precisions(device)]
    result["embed"] = embed_throughput(cfg, device, embed_batches, cfg.eval_batch_size)
    result["knn"] = knn_agreement(knn_rows, knn_dim, device)
    if kernel is not None and data is not None:
        result["kernel"] = run_kernel_on_device(kernel, data, labels)
    return result


def print_bench_gpu(result: dict[str, Any]) -> None:
    where = result.get("gpu", result["device"])
    print(f"bench gpu on {where} (torch {result['torch']}):")
    for row in result["train"]:
        peak = f", peak {row['peak_mb']:.0f} MB" if row["peak_mb"] is not None else ""
        print(
            f"  train {row['precision']:<5} {row['samples_per_s']:8.1f} samples/s{peak}, loss {row['loss']}"
        )
    embed = result["embed"]
    print(f"  embed {embed['precision']:<5} {embed['items_per_s']:8.1f} items/s")
    knn = result["knn"]
    for backend in ("torch", "faiss", "cuml"):
        if knn[backend] is not None:
            row = knn[backend]
            print(
                f"  kNN {backend:<6} {knn['rows']} x {knn['dim']}: {row['seconds']:.2f} s, "
                f"{100 * row['rows_equal_to_torch']:.2f} % of rows as torch"
            )
    if "kernel" in result:
        k = result["kernel"]
        print(f"  kernel {k['kernel']}: {k['seconds']} s" + (f", F1 {k['f1']}" if "f1" in k else ""))
    print(json.dumps(result), flush=True)
