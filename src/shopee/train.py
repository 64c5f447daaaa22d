"""Train one fold of one experiment and write its outputs (a plain PyTorch loop).

Per epoch: train on the other folds' rows, embed the fold's validation rows, match them within
the fold and log the CV F1 at the best threshold for every embedding kind. A checkpoint after
every epoch lets ``--resume`` continue a killed run with the same result as an uninterrupted one:
model init, sampling, augmentation and dropout are all seeded from (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import timm
import torch
import transformers
from tqdm.auto import tqdm

from shopee.atomic import atomic_path, replace_dir, write_json
from shopee.augment import build_augment
from shopee.config import Config, check_fold, embedding_kinds, stages_of
from shopee.data import read_split
from shopee.dataset import PostingDataset, make_loader
from shopee.embed import autocast, embed, to_device
from shopee.errors import ShopeeError
from shopee.evaluate import evaluate_embeddings
from shopee.folds import load_folds
from shopee.models import ShopeeModel
from shopee.models.heads import margin_at
from shopee.optim import build_optimizer, freeze_batchnorm_stats, set_trainable, stage_scheduler
from shopee.outputs import (
    fold_dir,
    git_commit,
    is_finished,
    partial_dir,
    read_metrics,
    save_array,
    save_index,
)
from shopee.sampling import epoch_indices


@dataclass
class FoldData:
    train: pd.DataFrame
    valid: pd.DataFrame
    train_labels: np.ndarray  # class index 0..n_classes-1 per training row
    n_classes: int


def effective_config(cfg: Config, debug: bool) -> Config:
    """The config a run uses: ``--debug`` shrinks images and loads data in-process."""
    if not debug:
        return cfg
    return dataclasses.replace(cfg, image_size=min(cfg.image_size, cfg.debug_image_size), num_workers=0)


def load_fold_data(cfg: Config, data_dir: Path, fold: int, debug: bool) -> FoldData:
    needs_images = bool(cfg.image_model)
    train = read_split(data_dir, "train", image_policy=cfg.image_policy, check_images=needs_images)  # type: ignore[arg-type]
    if needs_images and (train["image_path"] == "").all():
        raise ShopeeError(
            f"{data_dir / 'train_images'}: not found, and image_model={cfg.image_model!r} needs it"
        )
    check_fold(fold, cfg.n_folds)
    folds = load_folds(data_dir, train, cfg.n_folds)
    valid = train.loc[folds == fold].reset_index(drop=True)
    valid["fold"] = fold
    if debug and cfg.debug_val_rows:
        valid = valid.iloc[: cfg.debug_val_rows].reset_index(drop=True)
    trn = train.loc[folds != fold].reset_index(drop=True)
    codes, uniques = pd.factorize(trn["label_group"])
    return FoldData(trn, valid, codes.astype(np.int64), len(uniques))


def make_datasets(cfg: Config, model: ShopeeModel, data: FoldData) -> tuple[PostingDataset, PostingDataset]:
    image_kwargs: dict[str, Any] = {}
    if model.image is not None:
        image_kwargs = dict(image_size=cfg.image_size, mean=model.image.mean, std=model.image.std)
    tokenizer = model.text.tokenizer if model.text is not None else None
    common = dict(tokenizer=tokenizer, max_len=cfg.max_len, image_policy=cfg.image_policy, **image_kwargs)
    transform = build_augment(cfg.augment) if model.image is not None else None
    train_ds = PostingDataset(data.train, labels=data.train_labels, transform=transform, **common)
    valid_ds = PostingDataset(data.valid, **common)
    return train_ds, valid_ds


class Logger:
    """Prints a line and appends it to ``train.log``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__}


def train_fold(
    cfg: Config,
    exp: str,
    fold: int,
    data_dir: Path,
    output: Path,
    *,
    debug: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    code_dir: Path | None = None,
) -> dict[str, Any]:
    """Train ``exp`` on ``fold`` and return its summary (the last line the runner prints)."""
    started = time.perf_counter()
    final = fold_dir(output, exp, fold)
    if is_finished(final) and not overwrite:
        debug_result = json.loads((final / "config.json").read_text()).get("debug", False)
        if not (debug_result and not debug):  # a real run replaces a smoke run's outputs
            print(f"{final}: already finished (pass --overwrite to train it again)", flush=True)
            return read_metrics(final)["summary"]
    cfg = effective_config(cfg.validate(), debug)
    data = load_fold_data(cfg, data_dir, fold, debug)
    work = partial_dir(output, exp, fold)
    checkpoint_path = work / "last.pt"
    checkpoint = None
    if resume and checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if checkpoint["config"] != cfg.to_dict() or checkpoint["debug"] != debug:
            raise ShopeeError(f"{checkpoint_path}: made with a different config; drop --resume to start over")
    elif work.exists():
        if resume:
            print(f"{work}: no checkpoint to resume from; starting over", flush=True)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log = Logger(work / "train.log")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    channels_last = cfg.channels_last and on_cuda
    torch.manual_seed(cfg.seed)
    model = ShopeeModel(cfg, data.n_classes)
    class_sizes = torch.as_tensor(np.bincount(data.train_labels), dtype=torch.float32)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=on_cuda and cfg.amp and not torch.cuda.is_bf16_supported())
    stepper = Stepper(model, optimizer, scaler, cfg, device, channels_last)
    train_ds, valid_ds = make_datasets(cfg, model, data)
    valid_loader = make_loader(valid_ds, cfg.eval_batch_size, num_workers=cfg.num_workers, pin_memory=on_cuda)
    valid_labels = data.valid["label_group"].to_numpy()
    kinds = embedding_kinds(cfg)

    stages = stages_of(cfg)
    if debug:
        stages = [dataclasses.replace(s, epochs=1) for s in stages]
    total_epochs = sum(s.epochs for s in stages)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        history = checkpoint["history"]
        start_epoch = checkpoint["epoch"]
        log(f"resuming {exp} fold {fold} after epoch {start_epoch}/{total_epochs}")
    else:
        image_source = model.image.weights_source if model.image else "-"
        text_source = model.text.source if model.text else "-"
        log(
            f"{exp} fold {fold}: {len(data.train)} train rows ({data.n_classes} groups), "
            f"{len(data.valid)} validation rows; device {device}; image weights: {image_source}; "
            f"text: {text_source}"
        )
    embeddings: dict[str, np.ndarray] = {}

    epoch = 0
    for stage_no, stage in enumerate(stages):
        stage_start = epoch
        epoch += stage.epochs
        if epoch <= start_epoch:
            continue  # finished before the resume point
        trained = set_trainable(model, stage)
        steps_per_epoch = _steps_per_epoch(len(data.train), cfg, debug)
        scheduler = stage_scheduler(optimizer, stage, steps_per_epoch * stage.epochs, cfg.warmup)
        if checkpoint is not None and checkpoint["epoch"] > stage_start:
            scheduler.load_state_dict(checkpoint["scheduler"])
        log(
            f"stage {stage_no + 1}/{len(stages)} {stage.name or ''}: trains {', '.join(trained)}, "
            f"{stage.epochs} epoch(s) at lr x {stage.lr_scale}"
        )
        for e in range(max(stage_start, start_epoch), epoch):
            t0 = time.perf_counter()
            margin = margin_at(e, cfg.margin, cfg.margin_start, cfg.margin_ramp_epochs)
            model.set_margin(margin)
            if cfg.adaptive_margin:
                model.set_class_margins(class_sizes.to(device), margin / cfg.margin)
            loss = _train_epoch(stepper, train_ds, data.train_labels, e, scheduler, debug)
            embeddings = embed(model, valid_loader, device, cfg.amp, channels_last, desc="validation")
            scores = {k: evaluate_embeddings(embeddings[k], valid_labels, cfg.eval_k) for k in kinds}
            entry = {
                "epoch": e + 1,
                "stage": stage_no + 1,
                "loss": loss,
                "margin": margin,
                "lr": max(g["lr"] for g in optimizer.param_groups),
                "seconds": round(time.perf_counter() - t0, 1),
                "scores": scores,
            }
            history.append(entry)
            log(
                f"epoch {e + 1}/{total_epochs} loss {loss:.4f} margin {margin:.2f} "
                + " ".join(
                    f"{k} F1 {s['f1']:.4f}@{s['threshold']:.2f} R@1 {s['recall@1']:.3f}"
                    for k, s in scores.items()
                )
                + f" ({entry['seconds']:.0f} s)"
            )
            _save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, e + 1, history, cfg, debug)
            write_json(
                work / "metrics.json", {"exp": exp, "fold": fold, "finished": False, "epochs": history}
            )
    if not embeddings:  # resumed after the last epoch: embed once more from the checkpoint
        embeddings = embed(model, valid_loader, device, cfg.amp, channels_last, desc="validation")

    # this run's time (after a resume: since the resume)
    summary = _summary(exp, fold, history[-1]["scores"], time.perf_counter() - started)
    best_kind = summary["kind"]
    _write_outputs(work, model, cfg, exp, fold, data, embeddings, history, summary, debug, code_dir, data_dir)
    checkpoint_path.unlink(missing_ok=True)
    replace_dir(work, final)
    log_line = (
        f"{exp} fold {fold} done: CV F1 {summary['cv_f1']:.4f} ({best_kind} at {summary['threshold']:.2f})"
    )
    print(log_line, flush=True)
    with open(final / "train.log", "a", encoding="utf-8") as f:
        f.write(log_line + "\n")
    return summary


def _summary(
    exp: str, fold: int | str, scores: dict[str, dict[str, float]], seconds: float
) -> dict[str, Any]:
    best = max(scores, key=lambda k: scores[k]["f1"])
    return {
        "exp": exp,
        "fold": fold,
        "cv_f1": scores[best]["f1"],
        "kind": best,
        "threshold": scores[best]["threshold"],
        "seconds": round(seconds, 1),
    }


def zero_shot(
    cfg: Config, exp: str, fold: int | None, data_dir: Path, *, debug: bool = False
) -> dict[str, Any]:
    """Score the untrained model (pretrained encoders, fresh neck) the way training scores a fold.

    ``fold=None`` embeds the whole train split and matches it at once (nothing is trained, so
    nothing leaks). The baseline every experiment must beat.
    """
    started = time.perf_counter()
    cfg = effective_config(cfg.validate(), debug)
    data = load_fold_data(cfg, data_dir, 0 if fold is None else fold, debug)
    if fold is None:
        data = dataclasses.replace(data, valid=pd.concat([data.valid, data.train], ignore_index=True))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model = ShopeeModel(cfg, max(data.n_classes, 1)).to(device)
    _, valid_ds = make_datasets(cfg, model, data)
    loader = make_loader(valid_ds, cfg.eval_batch_size, num_workers=cfg.num_workers)
    embeddings = embed(model, loader, device, cfg.amp, desc="zero-shot")
    labels = data.valid["label_group"].to_numpy()
    scores = {k: evaluate_embeddings(v, labels, cfg.eval_k) for k, v in embeddings.items()}
    for kind, s in scores.items():
        print(
            f"zero-shot {kind}: F1 {s['f1']:.4f} at {s['threshold']:.2f}, R@1 {s['recall@1']:.3f}", flush=True
        )
    summary = _summary(exp, "all" if fold is None else fold, scores, time.perf_counter() - started)
    return {**summary, "zero_shot": True, "rows": len(labels)}


def _steps_per_epoch(n_rows: int, cfg: Config, debug: bool) -> int:
    n = cfg.debug_batches if debug else max(1, n_rows // cfg.batch_size)
    return max(1, math.ceil(n / cfg.accum_steps))


@dataclass
class Stepper:
    """One optimisation step: forward, backward, and (every ``accum_steps``) the update."""

    model: ShopeeModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    cfg: Config
    device: torch.device
    channels_last: bool

    def __call__(self, batch: dict[str, torch.Tensor], update: bool, where: str = "") -> float:
        batch = to_device(batch, self.device, self.channels_last)
        with autocast(self.device, self.cfg.amp):
            loss = self.model(batch)["loss"]
        if not torch.isfinite(loss):
            raise ShopeeError(f"loss is {loss.item()} {where}: lower the learning rates")
        self.scaler.scale(loss / self.cfg.accum_steps).backward()
        if update:
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                trainable = [p for p in self.model.parameters() if p.requires_grad]
                torch.nn.utils.clip_grad_norm_(trainable, self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def _train_epoch(
    stepper: Stepper,
    dataset: PostingDataset,
    labels: np.ndarray,
    epoch: int,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    debug: bool,
) -> float:
    cfg, model = stepper.cfg, stepper.model
    torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout and anything else drawing from torch
    indices = epoch_indices(labels, cfg, epoch)
    if debug:
        indices = indices[: cfg.debug_batches * cfg.batch_size]
    loader = make_loader(
        dataset,
        cfg.batch_size,
        indices,
        num_workers=cfg.num_workers,
        seed=cfg.seed * 1000 + epoch,
        drop_last=True,
        pin_memory=stepper.device.type == "cuda",
    )
    model.train()
    freeze_batchnorm_stats(model)
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=None, mininterval=2.0)
    stepper.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(bar):
        update = (step + 1) % cfg.accum_steps == 0 or step + 1 == len(loader)
        total += stepper(batch, update, where=f"at epoch {epoch + 1} step {step + 1}")
        if update:
            scheduler.step()
        count += 1
        bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
    return total / max(count, 1)


def _save_checkpoint(path, model, optimizer, scheduler, scaler, epoch, history, cfg, debug) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "history": history,
        "config": cfg.to_dict(),
        "debug": debug,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _write_outputs(
    work: Path,
    model: ShopeeModel,
    cfg: Config,
    exp: str,
    fold: int,
    data: FoldData,
    embeddings: dict[str, np.ndarray],
    history: list[dict[str, Any]],
    summary: dict[str, Any],
    debug: bool,
    code_dir: Path | None,
    data_dir: Path,
) -> None:
    with atomic_path(work / "model.safetensors") as tmp:
        safetensors.torch.save_model(model, str(tmp))
    index = data.valid[["posting_id", "label_group", "fold"]].reset_index(drop=True)
    save_index(work / "oof_index.parquet", index)
    for kind, array in embeddings.items():
        assert len(array) == len(index)
        save_array(work / f"oof_{kind}.npy", array.astype(np.float32))
    write_json(
        work / "config.json",
        {
            "exp": exp,
            "fold": fold,
            "seed": cfg.seed,
            "debug": debug,
            "git_commit": git_commit(code_dir or Path.cwd()),
            "data": str(Path(data_dir).resolve()),
            "n_classes": data.n_classes,
            "n_train": len(data.train),
            "n_valid": len(data.valid),
            "image_weights": model.image.weights_source if model.image else None,
            "text_source": model.text.source if model.text else None,
            "versions": _versions(),
            "config": cfg.to_dict(),
        },
    )
    write_json(
        work / "metrics.json",
        {
            "exp": exp,
            "fold": fold,
            "finished": True,
            "kinds": list(embeddings),
            "summary": summary,
            "epochs": history,
        },
    )
