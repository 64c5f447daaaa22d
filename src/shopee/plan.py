"""``python -m shopee plan EXP``: what an experiment will cost, before a GPU is spent.

Measured here, on the CPU, on the experiment's real architecture built offline with random
weights (timm without pretrained weights; text models from their shipped config, see
``pretrained.shipped_text_config``):

- its parameters (all, and those the first stage trains);
- FLOPs per sample of the forward pass, by torch's own ``FlopCounterMode`` at the experiment's
  image size and title length; a training step counts three forwards (the backward pass costs
  about twice the forward);
- the bytes autograd keeps for the backward pass per sample (activations), measured in fp32 and
  taken as ``HALF_ACTIVATION_SHARE`` of that when the GPU trains in mixed precision.

Estimated from those (every time figure is an estimate, and says so):

- peak training memory at the experiment's per-step batch: fp32 weights, gradients and AdamW
  state (16 bytes a trained parameter, 4 a frozen one), the activations times the batch, and
  ``CUDA_OVERHEAD_GB`` for the CUDA context and the allocator's slack; whether it fits 16 GB;
- time per epoch and per fold on each machine of ``MACHINES``: the larger of the GPU time (FLOPs
  at an assumed effective throughput) and the image decoding on the machine's CPU cores (the
  per-image costs measured by ``bench embed``), plus the fold's validation and dense passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shopee.config import Config, stages_of

REAL_TRAIN_ROWS = 34_250  # the competition's train.csv
REAL_GROUPS = 11_014
CUDA_OVERHEAD_GB = 1.0  # CUDA context, cuDNN/cuBLAS workspaces, allocator slack: an assumption
OPTIMIZER_BYTES = 16  # fp32 weight, gradient, AdamW's two moments
HALF_ACTIVATION_SHARE = 0.6  # activation bytes in mixed precision over fp32's: an assumption
# Decoding and resizing one JPEG on one core, by output size (ms; `bench embed`, a 2-core Xeon,
# 1024 px sources), and the slowdown assumed for a cloud machine's core.
DECODE_MS = {128: 2.26, 256: 3.28, 384: 6.56, 512: 6.98}
TOKENIZE_MS = 0.19
CORE_SLOWDOWN = 1.5


@dataclass(frozen=True)
class Machine:
    name: str
    gpus: int
    memory_gb: float
    tflops: float  # effective training throughput per GPU in mixed precision: an assumption
    cores: float  # CPU cores decoding images in parallel with the GPUs
    link_gbps: float = 0.0  # data parallel: the all-reduce's effective bandwidth between the GPUs


# Two T4s on PCIe 3 without NVLink: the effective bus bandwidth of NCCL's ring all-reduce between
# them (GB/s), an assumption; DDP's overlap of the all-reduce with the backward pass is not counted.
PCIE_ALLREDUCE_GBPS = 5.0
# Effective throughput: about 12 % of the fp16/bf16 tensor peak for a T4 (65 TFLOPS), 25 % for an
# A100 (312) and 20 % for an H100 SXM (990 dense): what mixed-precision training of CNNs and BERTs
# at these batch sizes tends to reach. "T4 x2" is one fold data-parallel over Kaggle's two T4s.
MACHINES = (
    Machine("T4", 1, 16, 8.0, 2),
    Machine("T4 x2 (Kaggle)", 2, 16, 8.0, 4, PCIE_ALLREDUCE_GBPS),
    Machine("A100 40 GB", 1, 40, 78.0, 8),
    Machine("H100 80 GB", 1, 80, 198.0, 16),
)
# Kaggle keeps about 20 GB of /kaggle/working across a version; a session plans for a little less
# (logs, the run record, the kernel's own files).
KAGGLE_DISK_GB = 20.0
DISK_BUDGET_GB = 19.0
# A lone fold on Kaggle's T4 x2: one GPU with all four cores decoding (the other GPU idle).
KAGGLE_LONE = Machine("T4 (Kaggle, lone fold)", 1, 16, 8.0, 4)
# A fold goes data-parallel only when each process keeps this many rows for its BatchNorm
# statistics (or sync_bn is on: statistics over the global batch) ...
BN_MIN_ROWS = 16
# ... and the estimate gains at least this share of the one-GPU time (what a first run risks).
DDP_MIN_GAIN = 0.15


def _batch(model, cfg: Config, n: int) -> dict[str, torch.Tensor]:
    batch: dict[str, torch.Tensor] = {"label": torch.arange(n) % 7}
    if model.image is not None:
        batch["image"] = torch.randn(n, 3, cfg.image_size, cfg.image_size)
    if model.text is not None and hasattr(model.text, "model"):
        vocab = model.text.model.config.vocab_size
        batch["input_ids"] = torch.randint(5, vocab, (n, cfg.max_len))
        batch["attention_mask"] = torch.ones(n, cfg.max_len, dtype=torch.long)
    elif model.text is not None:  # TF-IDF + PCA features
        batch["text_features"] = torch.randn(n, cfg.tfidf_dim)
    return batch


def _decode_ms(size: int) -> float:
    """Decode + resize cost per image at ``size`` px: interpolated, by area beyond the table."""
    sizes = sorted(DECODE_MS)
    if size >= sizes[-1]:
        return DECODE_MS[sizes[-1]] * (size / sizes[-1]) ** 2
    return float(np.interp(size, sizes, [DECODE_MS[s] for s in sizes]))


def measure(cfg: Config, n_classes: int, sample_batch: int = 2, backward: bool = True) -> dict[str, Any]:
    """Parameters, FLOPs and (``backward``) activation bytes per sample of ``cfg``'s architecture
    (random weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    from shopee.models import ShopeeModel
    from shopee.optim import set_trainable

    cfg = cfg.with_overrides(["image_pretrained=false", "text_pretrained=false"]).validate()
    torch.manual_seed(0)
    offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # an architecture, not weights: nothing to download
    try:
        model = ShopeeModel(cfg, n_classes).train()
    finally:
        if offline is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = offline
    set_trainable(model, stages_of(cfg)[0])
    from shopee.outputs import HEAD_PREFIX

    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    heads = sum(p.numel() for name, p in model.named_parameters() if name.startswith(HEAD_PREFIX))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = model(_batch(model, cfg, sample_batch))
    forward = counter.get_total_flops()
    sizes = {
        "parameters": params,
        "head_parameters": heads,
        "embedding_dims": sum(out[k].shape[-1] for k in model.kinds),
    }
    if not backward:
        depthwise = any(
            isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
            for m in model.modules()
        )
        return {**sizes, "trained": trained, "flops_forward": forward / sample_batch, "depthwise": depthwise}
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}  # weights are no activations
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:  # a storage kept for several ops (or as views) counts once
            seen.add(storage.data_ptr())
            saved += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(_batch(model, cfg, sample_batch))["loss"].backward()
    # Measured in fp32 (a CPU without bf16 units runs autocast's bf16 many times slower); mixed
    # precision keeps most activations in 2 bytes and some (normalizations, softmax) in 4.
    half = cfg.amp != "off"
    saved *= HALF_ACTIVATION_SHARE if half else 1.0
    return {
        **sizes,
        "trained": trained,
        # backward = twice the forward: torch's counter (2.15) ignores the groups of a grouped
        # convolution's backward, overcounting EfficientNet's depthwise layers by their width
        "flops_train": 3 * forward / sample_batch,
        "flops_forward": forward / sample_batch,
        "activation_bytes": saved / sample_batch,
        "precision": "fp16/bf16" if half else "fp32",
    }


def all_reduce_seconds(trained: int, machine: Machine) -> float:
    """One all-reduce of the float32 gradients of ``trained`` parameters: a ring all-reduce moves
    2 (N - 1) / N of the buffer through each GPU's link (0 on one GPU)."""
    if machine.gpus < 2 or not machine.link_gbps:
        return 0.0
    moved = 4 * trained * 2 * (machine.gpus - 1) / machine.gpus
    return moved / (machine.link_gbps * 1e9)


def updates_per_epoch(cfg: Config, rows: int) -> int:
    """Optimizer updates in an epoch of ``rows`` (full global batches, one every ``accum_steps``):
    with ``no_sync`` while accumulating, DDP all-reduces once per update."""
    return math.ceil(max(1, rows // cfg.batch_size) / cfg.accum_steps)


def machine_times(cfg: Config, measured: dict[str, Any], train_rows: int, m: Machine) -> dict[str, Any]:
    """Epoch and fold seconds of ``cfg`` on ``m``: per pass, the larger of the GPU time (FLOPs at the
    machine's throughput, plus the gradients' all-reduce once per update when data parallel) and
    the decoding on its cores; the fold's validation and dense passes added."""
    valid_rows = train_rows // max(cfg.n_folds, 1)
    fold_train = train_rows - valid_rows
    epochs = sum(s.epochs for s in stages_of(cfg))
    decode = _decode_ms(cfg.image_size) if cfg.image_model else 0.0
    tokenize = TOKENIZE_MS if cfg.text_model else 0.0
    rate = m.tflops * 1e12 * m.gpus

    def gpu_and_cpu(n: int, flops: float) -> tuple[float, float]:
        return n * flops / rate, n * (decode + tokenize) * CORE_SLOWDOWN / 1000 / m.cores

    gpu, cpu = gpu_and_cpu(fold_train, measured["flops_train"])
    gpu += updates_per_epoch(cfg, fold_train) * all_reduce_seconds(measured["trained"], m)
    epoch = max(gpu, cpu) + max(gpu_and_cpu(valid_rows, measured["flops_forward"]))
    dense = max(gpu_and_cpu(fold_train, measured["flops_forward"])) if cfg.dense_oof else 0.0
    return {
        "machine": m.name,
        "epoch_s": epoch,
        "fold_s": epoch * epochs + dense,
        "bound": "GPU" if gpu >= cpu else "decoding",
    }


def lone_fold(cfg: Config, measured: dict[str, Any], train_rows: int) -> dict[str, Any]:
    """How a fold alone on Kaggle's two T4s trains: on one GPU, or data-parallel over both.

    Data parallel halves the compute but all-reduces the gradients over PCIe once per update, and
    each process normalises its BatchNorm layers over half the batch; it is chosen when each
    process keeps ``BN_MIN_ROWS`` rows (or ``sync_bn``) and the estimate gains ``DDP_MIN_GAIN``."""
    one = machine_times(cfg, measured, train_rows, KAGGLE_LONE)["fold_s"]
    both = machine_times(cfg, measured, train_rows, MACHINES[1])["fold_s"]
    rows = cfg.batch_size // 2
    all_reduce = all_reduce_seconds(measured["trained"], MACHINES[1])
    if rows < BN_MIN_ROWS and not cfg.sync_bn:
        gpus, why = 1, f"{rows} rows a process for BatchNorm (< {BN_MIN_ROWS}, sync_bn off)"
    elif both > one * (1 - DDP_MIN_GAIN):
        gpus, why = 1, f"data parallel gains {1 - both / one:.0%} (< {DDP_MIN_GAIN:.0%})"
    else:
        gpus, why = 2, f"data parallel gains {1 - both / one:.0%}"
    return {
        "gpus": gpus,
        "why": why,
        "one_gpu_fold_s": one,
        "ddp_fold_s": both,
        "all_reduce_s": all_reduce,
        "gradient_gb": 4 * measured["trained"] / 2**30,
    }


def disk(cfg: Config, measured: dict[str, Any], train_rows: int, folds: int | None = None) -> dict[str, Any]:
    """Bytes a Kaggle training session writes to ``/kaggle/working`` (``KAGGLE_DISK_GB``; a
    continuation's restored output is the same folders, copied in), and how many folds may train
    side by side under ``DISK_BUDGET_GB``.

    A training fold keeps ``last.pt`` (float32 weights and AdamW's two moments: 12 bytes a
    parameter), twice while it is replaced atomically, and with early stopping ``best.pt`` (4
    bytes a parameter); a finished fold keeps its embeddings and, as the training notebook writes
    them (``--slim-weights``), float16 weights without the margin heads."""
    folds = cfg.n_folds if folds is None else folds
    params, heads = measured["parameters"], measured["head_parameters"]
    checkpoint = 12 * params
    best = 4 * params if cfg.early_stopping_patience else 0
    valid_rows = train_rows // max(cfg.n_folds, 1)
    arrays = measured["embedding_dims"] * (
        4 * valid_rows + (2 * (train_rows - valid_rows) if cfg.dense_oof else 0)
    )
    training = 2 * checkpoint + best + arrays
    finished = 2 * (params - heads) + arrays

    def peak(at_once: int) -> int:  # the last folds training while the others have finished
        at_once = min(at_once, folds)
        return at_once * training + (folds - at_once) * finished

    side_by_side = next((n for n in (2, 1) if peak(n) <= DISK_BUDGET_GB * 1e9), 0)
    return {
        "checkpoint_gb": checkpoint / 1e9,
        "best_gb": best / 1e9,
        "training_fold_gb": training / 1e9,
        "finished_fold_gb": finished / 1e9,
        "peak_two_gb": peak(2) / 1e9,
        "peak_one_gb": peak(1) / 1e9,
        "folds_at_once": side_by_side,  # 0: not even one fold at a time fits
        "folds": folds,
    }


def estimate(cfg: Config, measured: dict[str, Any], train_rows: int) -> dict[str, Any]:
    """Memory and time on each of ``MACHINES`` (estimates), and the choice for a lone fold."""
    frozen = measured["parameters"] - measured["trained"]

    def memory(batch: int) -> float:  # one GPU's peak, in GiB
        weights = measured["trained"] * OPTIMIZER_BYTES + frozen * 4
        return (weights + measured["activation_bytes"] * batch) / 2**30 + CUDA_OVERHEAD_GB

    memory_gb = memory(cfg.batch_size)
    rows = []
    for m in MACHINES:
        times = machine_times(cfg, measured, train_rows, m)
        # under DDP the batch is global: each GPU holds its share of the activations
        rows.append({**times, "fits": memory(math.ceil(cfg.batch_size / m.gpus)) <= m.memory_gb})
    return {
        "memory_gb": memory_gb,
        "fits_16gb": memory_gb <= 16,
        "epochs": sum(s.epochs for s in stages_of(cfg)),
        "fold_train_rows": train_rows - train_rows // max(cfg.n_folds, 1),
        "machines": rows,
        "lone_fold": lone_fold(cfg, measured, train_rows),
        "disk": disk(cfg, measured, train_rows),
    }


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def plan(exp: str, cfg: Config, train_rows: int = REAL_TRAIN_ROWS) -> dict[str, Any]:
    n_classes = math.ceil(REAL_GROUPS * (cfg.n_folds - 1) / cfg.n_folds) if cfg.n_folds > 1 else REAL_GROUPS
    measured = measure(cfg, n_classes)
    est = estimate(cfg, measured, train_rows)
    parts = [f"{cfg.image_model} @{cfg.image_size}" if cfg.image_model else "", cfg.text_model]
    print(f"plan {exp}: {' + '.join(p for p in parts if p)}, fusion {cfg.fusion}, head {cfg.head}")
    print(f"  measured on this CPU with random weights; memory and times are estimates ({__name__})")
    print(
        f"  parameters        {measured['parameters'] / 1e6:.1f} M ({measured['trained'] / 1e6:.1f} M "
        f"trained first), head of {n_classes} classes"
    )
    print(
        f"  FLOPs per sample  {measured['flops_train'] / 1e9:.1f} G training (forward + backward), "
        f"{measured['flops_forward'] / 1e9:.1f} G forward"
    )
    activations = measured["activation_bytes"] / 2**20
    print(f"  activations       {activations:.0f} MB per sample in {measured['precision']}")
    fits = "fits" if est["fits_16gb"] else "does NOT fit"
    print(
        f"  peak memory       {est['memory_gb']:.1f} GB at batch {cfg.batch_size} per step x "
        f"{cfg.accum_steps} accumulated ({fits} a 16 GB T4)"
    )
    print(
        f"  a fold            {est['fold_train_rows']} training rows, {est['epochs']} epochs "
        f"(of {train_rows} rows, {cfg.n_folds} folds)"
    )
    print(f"  {'machine':<30} {'epoch':>9} {'fold':>9}  bound")
    for row in est["machines"]:
        note = "" if row["fits"] else "  (out of memory)"
        print(
            f"  {row['machine']:<30} {_duration(row['epoch_s']):>9} {_duration(row['fold_s']):>9}  "
            f"{row['bound']}{note}"
        )
    lone = est["lone_fold"]
    print(
        f"  a lone fold on T4 x2: {'one GPU' if lone['gpus'] == 1 else 'data parallel'}: {lone['why']} "
        f"({_duration(lone['one_gpu_fold_s'])} on one GPU, {_duration(lone['ddp_fold_s'])} on both with "
        f"{lone['gradient_gb']:.2f} GiB of gradients all-reduced in {lone['all_reduce_s']:.2f} s per update)"
    )
    space = est["disk"]
    schedule = {2: "two at a time", 1: "one at a time", 0: "does NOT fit even one at a time"}
    print(
        f"  disk on Kaggle    a training fold {space['training_fold_gb']:.1f} GB (last.pt "
        f"{space['checkpoint_gb']:.1f} GB, twice while replaced{', best.pt' if space['best_gb'] else ''}), "
        f"a finished fold {space['finished_fold_gb']:.2f} GB; {space['folds']} folds peak at "
        f"{space['peak_two_gb']:.1f} GB two at a time, {space['peak_one_gb']:.1f} GB one at a time: "
        f"{schedule[space['folds_at_once']]} (of {DISK_BUDGET_GB:.0f} GB planned, {KAGGLE_DISK_GB:.0f} kept)"
    )
    result = {"exp": exp, "n_classes": n_classes, **measured, **est}
    print(json.dumps(result))
    return result


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    from shopee.cli_args import add_set, positive_int

    parser = sub.add_parser(
        "plan", help="parameters, FLOPs, memory and estimated GPU time of an experiment (offline)"
    )
    parser.add_argument("exp", metavar="EXP", help="experiment name or file (exp051, exp/exp051.py)")
    parser.add_argument(
        "--rows", type=positive_int, default=REAL_TRAIN_ROWS, help="train rows to plan for [%(default)s]"
    )
    add_set(parser)
    parser.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> None:
    from shopee.runner import load_experiment

    exp, cfg = load_experiment(args.exp, args.set)
    plan(exp, cfg, args.rows)
