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
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from shopee.config import Config
from shopee.dataset import PostingDataset
from shopee.demo.catalog import TitleStyle, make_products, make_title
from shopee.embed import autocast
from shopee.models import ShopeeModel

N_JPEGS = 8
N_TITLES = 2000
TRAIN_FOLD_CLASSES = 8811  # label groups in 4/5 of the real train set: the ArcFace head's size


def photo_jpegs(directory: Path, n: int, px: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs (smooth colour gradients plus sensor-like noise, quality 90) of
    ``px`` x ``px``: about 80 KB at 640 px, like a typical Shopee product photo."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((px, px), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 5, smooth.shape), 0, 255).astype(np.uint8)
        path = directory / f"photo{i}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def _titles(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    products = make_products(max(1, n // 3), rng)
    style = TitleStyle()
    return [make_title(products[i % len(products)], rng, style) for i in range(n)]


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


def _decode_ms(dataset: PostingDataset) -> float:
    """Milliseconds per image for the dataset's own loading path, in this process (one core)."""
    dataset.image(0)  # warm the page cache
    started = time.perf_counter()
    for i in range(len(dataset)):
        dataset.image(i)
    return (time.perf_counter() - started) / len(dataset) * 1000


def _image_forward(
    model: ShopeeModel,
    cfg: Config,
    size: int,
    batches: int,
    batch_size: int,
    device: torch.device,
    channels_last: bool,
) -> dict[str, float]:
    images = torch.randn(batch_size, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def forward(n: int = batch_size) -> torch.Tensor:
        with autocast(device, cfg.amp):
            return model.image(images[:n])

    return {
        "forward_per_s": round(_per_second(forward, batch_size, batches, device), 1),
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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    channels_last = cfg.channels_last and device.type == "cuda"
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
        "amp": cfg.amp and device.type == "cuda",
        "image_model": cfg.image_model or None,
        "text_model": cfg.text_model or None,
        "max_len": cfg.max_len if cfg.text_model else None,
        "model_build_s": round(build_s, 3),
    }
    with tempfile.TemporaryDirectory() as tmp:
        load_s, size_mb = _load_cost(model, Path(tmp))
        result.update(weights_load_s=round(load_s, 3), weights_mb=round(size_mb, 1))
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)

        result["image"] = []
        if model.image is not None:
            paths = photo_jpegs(Path(tmp), N_JPEGS, source_px, seed)
            result["source_px"] = source_px
            result["jpeg_kb"] = round(float(np.mean([p.stat().st_size for p in paths])) / 1024, 1)
            n_decode = max(len(paths), batches * batch_size)
            df = pd.DataFrame({"image_path": [str(paths[i % len(paths)]) for i in range(n_decode)]})
            for size in image_sizes:
                decode_ms = _decode_ms(
                    PostingDataset(df, image_size=size, mean=model.image.mean, std=model.image.std)
                )
                result["image"].append(
                    {"size": size, "decode_ms": round(decode_ms, 2)}
                    | _image_forward(model, cfg, size, batches, batch_size, device, channels_last)
                )

        result["text"] = None
        if model.text is not None:
            tokenizer = model.text.tokenizer
            titles = _titles(N_TITLES, seed)
            tokenizer(titles[:8])  # warm-up
            started = time.perf_counter()
            tokens = tokenizer(
                titles, padding="max_length", truncation=True, max_length=cfg.max_len, return_tensors="pt"
            )
            tokenize_ms = (time.perf_counter() - started) / len(titles) * 1000
            ids = tokens["input_ids"][:batch_size].to(device)
            mask = tokens["attention_mask"][:batch_size].to(device)

            def text_forward(n: int = batch_size) -> torch.Tensor:
                with autocast(device, cfg.amp):
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
    amp = ", AMP" if result["amp"] else ""
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
