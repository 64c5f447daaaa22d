"""``bench embed``: per-item inference costs of an experiment's encoders (figures, not tests).

The figures a paper estimate of the submission notebook's runtime needs, measured on this machine
with random-init weights of the experiment's architecture (no weight lookup):

- image loading: the project's own path (``PostingDataset.image``: JPEG draft-mode decode, resize,
  normalization) on synthetic photo-like JPEGs, in ms per image on one core, for each image size;
- image encoder: items/s of a forward pass on ready tensors and GFLOPs per item
  (``FlopCounterMode``; a multiply-add counts as 2 FLOPs) for each image size;
- text encoder: the same on ready token tensors of ``max_len``, and tokenization in ms per title;
- model build, and saving then loading its weights with safetensors (what each fold costs to load).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch
from torch.utils.flop_counter import FlopCounterMode

from shopee.config import Config
from shopee.dataset import dataset_for
from shopee.demo.synthetic import photo_jpegs, synthetic_titles
from shopee.models import ShopeeModel
from shopee.runtime import Runtime

N_JPEGS = 8
N_TITLES = 2000
TRAIN_FOLD_CLASSES = 8811  # label groups in 4/5 of the real train set: the ArcFace head's size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _per_second(step: Callable[[], Any], items: int, batches: int, device: torch.device) -> float:
    """Items per second over ``batches`` calls of ``step`` after one untimed warm-up call."""
    step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    return items * batches / (time.perf_counter() - started)


def _gflops(forward: Callable[[], Any], items: int) -> float:
    with FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() / items / 1e9


def _load_cost(model: ShopeeModel, directory: Path) -> tuple[float, float]:
    """Seconds to load a fold's ``model.safetensors`` into a built model, and its size in MB."""
    path = directory / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    started = time.perf_counter()
    model.load_state_dict(safetensors.torch.load_file(str(path), device="cpu"))
    return time.perf_counter() - started, path.stat().st_size / 2**20


def _decode_ms(dataset) -> float:
    """Milliseconds per image for the dataset's own loading path, in this process (one core)."""
    dataset.image(0)  # warm the page cache
    started = time.perf_counter()
    for i in range(len(dataset)):
        dataset.image(i)
    return (time.perf_counter() - started) / len(dataset) * 1000


def _image_forward(
    model: ShopeeModel,
    size: int,
    batches: int,
    batch_size: int,
    runtime: Runtime,
) -> dict[str, float]:
    images = runtime.to_device({"image": torch.randn(batch_size, 3, size, size)})["image"]

    def forward(n: int = batch_size) -> torch.Tensor:
        with runtime.autocast():
            return model.image(images[:n])

    return {
        "forward_per_s": round(_per_second(forward, batch_size, batches, runtime.device), 1),
        "gflops": round(_gflops(lambda: forward(1), 1), 3),
    }


@torch.no_grad()
def bench_embed(
    cfg: Config,
    image_sizes: Sequence[int],
    batches: int = 5,
    batch_size: int = 32,
    source_px: int = 640,
    seed: int = 0,
) -> dict[str, Any]:
    cfg = dataclasses.replace(cfg, image_pretrained=False, text_pretrained=False).validate()
    runtime = Runtime.for_config(cfg)
    device = runtime.device
    load_start = os.getloadavg()
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = ShopeeModel(cfg, TRAIN_FOLD_CLASSES).eval()
    build_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "device": device.type,
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "batches": batches,
        "precision": runtime.precision,
        "image_model": cfg.image_model or None,
        "text_model": cfg.text_model or None,
        "max_len": cfg.max_len if cfg.text_model else None,
        "model_build_s": round(build_s, 3),
    }
    with tempfile.TemporaryDirectory() as tmp:
        load_s, size_mb = _load_cost(model, Path(tmp))
        result.update(weights_load_s=round(load_s, 3), weights_mb=round(size_mb, 1))
        runtime.prepare(model)

        result["image"] = []
        if model.image is not None:
            paths = photo_jpegs(Path(tmp), N_JPEGS, source_px, seed)
            result["source_px"] = source_px
            result["jpeg_kb"] = round(float(np.mean([p.stat().st_size for p in paths])) / 1024, 1)
            n_decode = max(len(paths), batches * batch_size)
            df = pd.DataFrame(
                {"image_path": [str(paths[i % len(paths)]) for i in range(n_decode)], "title": ""}
            )
            for size in image_sizes:
                dataset = dataset_for(dataclasses.replace(cfg, image_size=size), model, df)
                result["image"].append(
                    {"size": size, "decode_ms": round(_decode_ms(dataset), 2)}
                    | _image_forward(model, size, batches, batch_size, runtime)
                )

        result["text"] = None
        if model.text is not None:
            tokenizer = model.text.tokenizer
            titles = synthetic_titles(N_TITLES, seed)
            tokenizer(titles[:8])  # warm-up
            started = time.perf_counter()
            tokens = tokenizer(
                titles, padding="max_length", truncation=True, max_length=cfg.max_len, return_tensors="pt"
            )
            tokenize_ms = (time.perf_counter() - started) / len(titles) * 1000
            ids = tokens["input_ids"][:batch_size].to(device)
            mask = tokens["attention_mask"][:batch_size].to(device)

            def text_forward(n: int = batch_size) -> torch.Tensor:
                with runtime.autocast():
                    return model.text(ids[:n], mask[:n])

            result["text"] = {
                "tokenize_ms": round(tokenize_ms, 4),
                "forward_per_s": round(_per_second(text_forward, len(ids), batches, device), 1),
                "gflops": round(_gflops(lambda: text_forward(1), 1), 4),
                "mean_title_chars": round(float(np.mean([len(t) for t in titles])), 1),
            }
    result["loadavg_start"] = [round(v, 2) for v in load_start]
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def print_bench_embed(result: dict[str, Any]) -> None:
    """A readable table, then the result as one JSON line."""
    amp = f", {result['precision']} autocast" if result["precision"] != "fp32" else ""
    print(
        f"on {result['device']} ({result['torch_threads']} torch threads{amp}), batch {result['batch_size']} "
        f"x {result['batches']} timed batches; model build {result['model_build_s']:.2f} s, "
        f"weights {result['weights_mb']:.0f} MB loaded in {result['weights_load_s']:.2f} s"
    )
    if result["image"]:
        print(
            f"image {result['image_model']}: synthetic {result['source_px']} px JPEGs of "
            f"{result['jpeg_kb']:.0f} KB, decoded on one core"
        )
        print(f"  {'size':>6} {'decode+resize ms/img':>21} {'forward items/s':>16} {'GFLOPs/item':>12}")
        for row in result["image"]:
            print(
                f"  {row['size']:>6} {row['decode_ms']:>21.2f} {row['forward_per_s']:>16.1f} "
                f"{row['gflops']:>12.3f}"
            )
    text = result["text"]
    if text:
        print(
            f"text {result['text_model']} (max_len {result['max_len']}): tokenize {text['tokenize_ms']:.3f} "
            f"ms/title (mean {text['mean_title_chars']:.0f} chars), forward {text['forward_per_s']:.1f} "
            f"items/s, {text['gflops']:.4f} GFLOPs/item"
        )
    print(
        f"load average at start {', '.join(f'{v:.2f}' for v in result['loadavg_start'])}, "
        f"at end {', '.join(f'{v:.2f}' for v in result['loadavg_end'])} on {os.cpu_count()} cores"
    )
    print(json.dumps(result), flush=True)
