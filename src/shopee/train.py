"""Train one fold of one experiment and write its outputs (a plain PyTorch loop).

Per epoch: train on the other folds' rows, embed the fold's validation rows, match them within
the fold and log the CV F1 at the best threshold for every embedding kind. A checkpoint after
every epoch lets ``--resume`` continue a killed run with the same result as an uninterrupted one:
model init, sampling, augmentation and dropout are all seeded from (seed, epoch).

Launched by torchrun, the same loop runs data-parallel (``shopee.distributed``): the model, its
margin head included, is wrapped in DistributedDataParallel, each process takes its slice of every
global batch (``batch_size`` is the global batch, learning rates as configured for it), embedding
is sharded and gathered, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import sys
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

from shopee.atomic import atomic_path, replace_dir, write_json
from shopee.codedigest import code_digest
from shopee.config import (
    Config,
    ConfigError,
    Stage,
    check_fold,
    config_difference,
    embedding_kinds,
    stages_of,
)
from shopee.constants import FULL_FOLD
from shopee.data import read_split
from shopee.dataset import PostingDataset, dataset_for, loader_workers, make_loader
from shopee.distributed import Dist, convert_sync_batchnorm
from shopee.embed import embed_many
from shopee.errors import ShopeeError
from shopee.evaluate import evaluate_embeddings
from shopee.folds import DataFingerprint, load_folds
from shopee.gitinfo import git_commit
from shopee.models import ShopeeModel
from shopee.models.contrastive import bounded_kmeans, proto_nce, size_band
from shopee.models.heads import margin_at
from shopee.optim import build_optimizer, freeze_batchnorm_stats, set_trainable, stage_scheduler
from shopee.outputs import (
    MODEL_FILE,
    Fold,
    FoldRecord,
    finished_folds,
    fold_dir,
    fold_name,
    is_finished,
    partial_dir,
    save_inference_weights,
    write_fold,
    write_full,
)
from shopee.progress import Progress
from shopee.runtime import Runtime
from shopee.sampling import epoch_indices, epoch_length
from shopee.tracking import Tracker


@dataclass
class Clusters:
    """A "protonce" epoch's k-means clusters of the training rows (sizes within their band) and
    the running accuracies of its two contrasts."""

    targets: torch.Tensor  # cluster of each training row (dataset index)
    prototypes: torch.Tensor
    temperature: float
    accuracy: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    def loss(self, forward, batch: dict[str, torch.Tensor], kinds: list[str]) -> torch.Tensor:
        """Two views of the batch (dropout; images also mirrored), summed over embedding kinds."""
        plain = {k: v for k, v in batch.items() if k != "label"}
        second = {**plain, "image": plain["image"].flip(-1)} if "image" in plain else plain
        one, two = forward(plain), forward(second)
        targets = self.targets[batch["index"]]
        total, inst, proto = 0.0, [], []
        for kind in kinds:
            loss, a, b = proto_nce(one[kind], two[kind], targets, self.prototypes, self.temperature)
            total, inst, proto = total + loss, [*inst, a], [*proto, b]
        self.accuracy.append((float(np.mean(inst)), float(np.mean(proto))))
        return total


RANK_SEED_STRIDE = 7919  # process k of a distributed run draws dropout and augmentation from seed + k * this


@dataclass
class FoldData:
    train: pd.DataFrame
    valid: pd.DataFrame
    train_labels: np.ndarray  # class index 0..n_classes-1 per training row
    n_classes: int
    fingerprint: DataFingerprint  # of the whole train split and its folds
    dense: pd.DataFrame  # every row of the other folds (dense OOF: embedded once trained)
    skipped: int = 0  # training rows left out for unusable images (image_policy "skip")


def effective_config(cfg: Config, debug: bool) -> Config:
    """The config a run uses: ``--debug`` shrinks images (not for a backbone that takes one size
    only, such as Swin's 224: a smaller image would not run) and loads data in-process."""
    from shopee.models.encoders import fixed_input_size

    if not debug:
        return cfg
    fixed = bool(cfg.image_model) and fixed_input_size(cfg.image_model) is not None
    image_size = cfg.image_size if fixed else min(cfg.image_size, cfg.debug_image_size)
    return dataclasses.replace(cfg, image_size=image_size, num_workers=0)


def load_fold_data(cfg: Config, data_dir: Path, fold: Fold, debug: bool) -> FoldData:
    """The fold's training and validation rows (``full``: every row trains, none validates).
    Folds are made from every row of train.csv, so all experiments share them; with
    ``image_policy="skip"`` rows whose image is unusable are then left out of training only
    (validation rows keep a blank image, so that every experiment scores the same rows)."""
    needs_images = bool(cfg.image_model)
    policy = "blank" if cfg.image_policy == "skip" else cfg.image_policy
    train = read_split(data_dir, "train", image_policy=policy, check_images=needs_images)  # type: ignore[arg-type]
    if needs_images and (train["image_path"] == "").all():
        raise ShopeeError(
            f"{data_dir / 'train_images'}: not found, and image_model={cfg.image_model!r} needs it"
        )
    check_fold(fold, cfg.n_folds)
    folds = load_folds(data_dir, train, cfg.n_folds)
    fingerprint = DataFingerprint.of(train, folds, cfg.n_folds)
    in_training = np.ones(len(train), dtype=bool) if fold == FULL_FOLD else folds != fold
    valid = train.loc[~in_training].reset_index(drop=True)
    valid["fold"] = fold
    if debug and cfg.debug_val_rows:
        valid = valid.iloc[: cfg.debug_val_rows].reset_index(drop=True)
    dense = train.loc[in_training].reset_index(drop=True)
    skipped = 0
    if cfg.image_policy == "skip" and needs_images:
        usable = train["image_ok"].to_numpy(dtype=bool)
        skipped = int((in_training & ~usable).sum())
        in_training &= usable
    trn = train.loc[in_training].reset_index(drop=True)
    codes, uniques = pd.factorize(trn["label_group"])
    return FoldData(trn, valid, codes.astype(np.int64), len(uniques), fingerprint, dense, skipped)


class Logger:
    """Prints a line and appends it to ``train.log`` (``file`` appends without printing); off on
    every process but rank 0 of a distributed run."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def file(self, message: str) -> None:
        if self.enabled:
            self._append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")

    def __call__(self, message: str) -> None:
        if self.enabled:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
            print(line, flush=True)
            self._append(line)

    def _append(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _stop_on_sigterm(dist: Dist, work: Path) -> None:
    """torchrun stops the other processes with SIGTERM when one fails: say so in one line."""

    def handler(signum, frame) -> None:  # noqa: ARG001 - the signal handler's signature
        print(
            f"error: rank {dist.rank}: stopped because another process of this run failed; the fold stays "
            f"unfinished in {work} (continue with --resume)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(143)

    signal.signal(signal.SIGTERM, handler)


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__}


@dataclass
class FoldRun:
    """One fold's training between the phases of ``train_fold``: what ``_prepare`` set up, the
    epochs' history and the latest validation embeddings."""

    cfg: Config
    exp: str
    fold: Fold
    debug: bool
    data: FoldData
    dist: Dist
    work: Path
    log: Logger
    runtime: Runtime
    model: ShopeeModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    stepper: Stepper
    train_ds: PostingDataset
    stages: list[Stage]
    epochs: int  # epochs to train: the schedule's, or a full-data run's share of it
    epochs_from: str  # where ``epochs`` came from (said in the log and the fold's config)
    checkpoint: dict[str, Any] | None = None
    started_over: str = ""  # why a resume could not continue (train.log and the run record say it)
    # the code that shapes the embeddings, read when the run starts (an edit while it trains is
    # not what trained it); checked when the fold is used (shopee.codedigest)
    code_digest: dict[str, Any] = dataclasses.field(default_factory=lambda: code_digest().to_dict())
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    start_epoch: int = 0
    embeddings: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # validation rows

    @property
    def full(self) -> bool:
        return self.fold == FULL_FOLD

    @property
    def said(self) -> str:
        """``fold 3`` or ``full`` in log lines."""
        return FULL_FOLD if self.full else f"fold {self.fold}"

    @property
    def checkpoint_path(self) -> Path:
        return self.work / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.work / "best.pt"  # the best epoch's weights, kept with early stopping

    @property
    def scheduled(self) -> int:
        return sum(s.epochs for s in self.stages)

    def embed(self, rows: pd.DataFrame, desc: str) -> dict[str, np.ndarray]:
        """The model's embeddings of ``rows``; sharded over the processes and gathered in order."""
        block = self.dist.row_block(len(rows)) if self.dist.enabled else None
        loader = make_loader(
            dataset_for(self.cfg, self.model, rows),
            self.cfg.eval_batch_size,
            block,
            num_workers=loader_workers(self.cfg, self.dist.local_world),
            pin_memory=self.runtime.pin_memory,
        )
        log = self.log
        (out,) = embed_many([self.model], loader, self.runtime, desc=desc, log=log, log_with_bar=log.file)
        return {k: self.dist.gather_rows(v, len(rows)) for k, v in out.items()}


def train_fold(
    cfg: Config,
    exp: str,
    fold: Fold,
    data_dir: Path,
    output: Path,
    *,
    debug: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    code_dir: Path | None = None,
    slim_weights: bool = False,
) -> dict[str, Any]:
    """Train ``exp`` on ``fold`` (or on every row: ``full``) and return its summary (the last line
    the runner prints). Phases: prepare (data, model, work folder), resume, epochs, embed, write.

    ``slim_weights``: the finished fold keeps inference weights (float16, no margin heads: what a
    kernel ships, a third of the bytes) instead of float32 with its heads (Kaggle's 20 GB disk)."""
    started = time.perf_counter()
    final = fold_dir(output, exp, fold)
    if is_finished(final) and not overwrite:
        record = FoldRecord.open(final)
        if not (record.debug and not debug):  # a real run replaces a smoke run's outputs
            print(f"{final}: already finished (pass --overwrite to train it again)", flush=True)
            return record.summary
    run = _prepare(cfg, exp, fold, data_dir, output, debug=debug, resume=resume)
    _resume_or_introduce(run)
    commit = git_commit(code_dir or Path.cwd())
    tracker = Tracker.start(
        output,
        exp,
        fold_name(fold) + (" debug" if debug else ""),
        run.cfg.to_dict(),
        {
            "exp": exp,
            "fold": fold,
            "git_commit": commit,
            "output": str(final.resolve()),
            "data": run.data.fingerprint.short(),
            "processes": run.dist.world,
            "debug": debug,
            "resumed_after_epoch": run.start_epoch,
        },
        enabled=run.dist.is_main,
    )
    _train_epochs(run, tracker)
    best = _restore_best(run)
    embeddings, dense, dense_seconds = _final_embeddings(run)
    summary = _run_summary(run, best, time.perf_counter() - started)  # after a resume: since it
    tracker.metrics(
        {"cv_f1": summary["cv_f1"], "minutes": summary["seconds"] / 60, "dense_seconds": dense_seconds}
    )
    tracker.end()
    if run.dist.is_main:  # rank 0 writes the outputs; the others wait for them, then leave
        meta = _fold_meta(run, data_dir, commit)
        metrics = {"exp": exp, "fold": fold, "summary": summary, "epochs": run.history, "best_epoch": best}
        metrics = {**metrics, "dense_seconds": dense_seconds}
        _write_outputs(run, final, meta, metrics, embeddings, dense, slim_weights)
    run.dist.barrier()
    run.dist.close()
    if run.dist.is_main:
        line = _done_line(run, summary, best)
        print(line, flush=True)
        Logger(final / "train.log").file(line)
    return summary


def _run_summary(run: FoldRun, best: int, seconds: float) -> dict[str, Any]:
    """The runner's last line: the kept epoch's CV F1 (a full-data run has none)."""
    if run.full:
        return {
            "exp": run.exp,
            "fold": FULL_FOLD,
            "cv_f1": None,
            "epochs": len(run.history),
            "seconds": round(seconds, 1),
        }
    return _summary(run.exp, run.fold, run.history[best - 1]["scores"], seconds)


def _done_line(run: FoldRun, summary: dict[str, Any], best: int) -> str:
    trained = len(run.history)
    if run.full:
        return f"{run.exp} full done: {trained} epochs on all {len(run.data.train)} rows ({run.epochs_from})"
    kept = f", epoch {best} of {trained}" if best != trained else ""
    return (
        f"{run.exp} fold {run.fold} done: CV F1 {summary['cv_f1']:.4f} "
        f"({summary['kind']} at {summary['threshold']:.2f}{kept})"
    )


def check_rows_per_process(cfg: Config, dist: Dist) -> None:
    """The global batch splits over the processes, each keeping two rows at least: the neck's
    BatchNorm cannot train on one ("Expected more than 1 value per channel" at step 1)."""
    per_process = dist.per_process(cfg.batch_size, pairs=cfg.head == "neg_sampling")
    if per_process < 2:
        raise ConfigError(
            f"batch_size={cfg.batch_size} over {dist.world} processes leaves one row a process, and "
            f"the neck's BatchNorm (neck {cfg.neck!r}) cannot train on one row: use batch_size "
            f">= {2 * dist.world} or fewer processes"
        )


def _prepare(
    cfg: Config, exp: str, fold: Fold, data_dir: Path, output: Path, *, debug: bool, resume: bool
) -> FoldRun:
    """The phase before any epoch: config, processes, data, work folder, model and optimizer."""
    cfg = effective_config(cfg.validate(), debug)
    dist = Dist.from_env()
    if dist.enabled:
        check_rows_per_process(cfg, dist)  # an error, early
        if not dist.is_main:
            os.environ["TQDM_DISABLE"] = "1"  # one progress bar: rank 0's
    stages = stages_of(cfg)
    if debug:
        stages = [dataclasses.replace(s, epochs=1) for s in stages]
    epochs, epochs_from = sum(s.epochs for s in stages), "the schedule"
    if fold == FULL_FOLD and not debug:
        epochs, epochs_from = full_data_epochs(cfg, output, exp)
    data = load_fold_data(cfg, data_dir, fold, debug)
    work, checkpoint, started_over = _work_folder(cfg, output, exp, fold, debug, resume, dist)
    log = Logger(work / "train.log", enabled=dist.is_main)

    runtime = Runtime.for_config(cfg, dist.device())
    torch.manual_seed(cfg.seed)
    model = ShopeeModel(cfg, data.n_classes)
    if hasattr(model.text, "fit"):  # a fixed part fitted on the fold's training titles (TF-IDF + PCA)
        model.text.fit(data.train["title"].tolist())
    model = runtime.prepare(model)
    if dist.enabled and cfg.sync_bn:
        if runtime.on_cuda:
            model = convert_sync_batchnorm(model)
        else:
            log("sync_bn: SyncBatchNorm needs GPUs; on CPU each process keeps its own batch statistics")
    optimizer = build_optimizer(model, cfg)
    scaler = runtime.grad_scaler()
    return FoldRun(
        cfg=cfg,
        exp=exp,
        fold=fold,
        debug=debug,
        data=data,
        dist=dist,
        work=work,
        log=log,
        runtime=runtime,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        stepper=Stepper(model, optimizer, scaler, cfg, runtime, dist),
        train_ds=dataset_for(cfg, model, data.train, labels=data.train_labels, augment=True),
        stages=stages,
        epochs=epochs,
        epochs_from=epochs_from,
        checkpoint=checkpoint,
        started_over=started_over,
    )


STARTED_OVER = "started over:"  # how train.log says a resume could not continue (and why)


def _cannot_continue(checkpoint: dict[str, Any], cfg: Config, debug: bool) -> str:
    """Why a checkpoint cannot be resumed by this run ("" when it can): a restored ``.partial`` of
    another config (other ``--set``, a ``--debug`` run) is no start for this one."""
    try:
        made_with = Config.from_dict(checkpoint["config"]).identity()
    except (KeyError, ShopeeError) as exc:
        return f"its config cannot be read ({exc})"
    if checkpoint.get("debug") != debug:
        return f"it was made by a {'debug' if checkpoint.get('debug') else 'full'} run"
    if made_with != cfg.identity():
        difference = config_difference(cfg.identity(), made_with, where="the checkpoint")
        return f"it was made with another config ({difference})"
    return ""


def _work_folder(
    cfg: Config, output: Path, exp: str, fold: Fold, debug: bool, resume: bool, dist: Dist
) -> tuple[Path, dict[str, Any] | None, str]:
    """The fold's ``.partial`` folder, ready (emptied unless resuming), the checkpoint to resume
    from, if any, and why a resume starts over instead ("" when it does not)."""
    work = partial_dir(output, exp, fold)
    checkpoint_path = work / "last.pt"
    checkpoint, started_over = None, ""
    if resume and checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        why = _cannot_continue(checkpoint, cfg, debug)
        if why:
            checkpoint, started_over = None, f"{STARTED_OVER} {checkpoint_path} cannot be resumed: {why}"
            print(started_over, flush=True)
        elif checkpoint.get("world", 1) != dist.world:
            made_by = checkpoint.get("world", 1)
            print(f"note: {checkpoint_path} was made by {made_by} process(es), resumed by {dist.world}")
    elif resume and work.exists():
        started_over = f"{STARTED_OVER} {work} holds no checkpoint to resume from"
        print(started_over, flush=True)
    if checkpoint is None and work.exists() and dist.is_main:
        shutil.rmtree(work)
    if dist.is_main:
        work.mkdir(parents=True, exist_ok=True)
    dist.barrier()  # the work folder is ready before any rank goes on
    if dist.enabled:
        _stop_on_sigterm(dist, work)
    return work, checkpoint, started_over


def _load_scaler(run: FoldRun, checkpoint: dict[str, Any]) -> None:
    """The GradScaler's state, when both runs scale: a checkpoint made without one (CPU, bf16 on an
    A100/H100, ``amp=off``) holds an empty state, which an enabled scaler refuses to load; it then
    starts from its initial scale, which it adapts within a few steps."""
    state = checkpoint["scaler"]
    made_in = checkpoint.get("precision", "an unrecorded precision")
    if run.scaler.is_enabled() and not state:
        run.log(
            f"the checkpoint was made in {made_in} without a GradScaler; {run.runtime.precision} starts "
            "one at its initial scale"
        )
        return
    run.scaler.load_state_dict(state)


def _resume_or_introduce(run: FoldRun) -> None:
    """The resume phase: the checkpoint's weights, optimizer and history; or, for a new run, the
    log lines that say what trains on what."""
    checkpoint, log = run.checkpoint, run.log
    if checkpoint is not None:
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        _load_scaler(run, checkpoint)
        run.history = checkpoint["history"]
        run.start_epoch = checkpoint["epoch"]
        log(f"resuming {run.exp} {run.said} after epoch {run.start_epoch}/{run.epochs}")
        _repair_best(run)
        return
    if run.started_over:
        log(run.started_over)
    data, cfg = run.data, run.cfg
    image_source = run.model.image.weights_source if run.model.image else "-"
    text_source = run.model.text.source if run.model.text else "-"
    what = "every train row, no validation" if run.full else f"{len(data.valid)} validation rows"
    log(
        f"{run.exp} {run.said}: {len(data.train)} train rows ({data.n_classes} groups), {what}; "
        f"{run.runtime.describe()}; image weights: {image_source}; text: {text_source}"
    )
    if run.full or run.epochs < run.scheduled:
        log(f"{run.epochs} of the schedule's {run.scheduled} epoch(s): {run.epochs_from}")
    if run.dist.enabled:
        log(
            f"data parallel on {run.dist.world} processes: batch {run.dist.per_process(cfg.batch_size)} per "
            f"process, {cfg.batch_size} global (the learning rates are as configured for it)"
        )
    if data.skipped:
        log(f"image_policy skip: {data.skipped} training rows with unusable images left out")


def _train_epochs(run: FoldRun, tracker: Tracker) -> None:
    """The epochs phase: stage by stage, each epoch trained, scored on the validation rows and
    checkpointed, until the schedule ends, early stopping stops it or a full-data run has its
    epochs."""
    cfg, data, model, optimizer = run.cfg, run.data, run.model, run.optimizer
    class_sizes = torch.as_tensor(np.bincount(data.train_labels), dtype=torch.float32)
    epoch = 0
    for stage_no, stage in enumerate(run.stages):
        stage_start = epoch
        epoch += stage.epochs
        if epoch <= run.start_epoch:
            continue  # finished before the resume point
        if _stop_reason(run):
            break
        trained = set_trainable(model, stage)
        run.stepper.wrap()  # DDP registers the parameters that train in this stage
        steps_per_epoch = _steps_per_epoch(epoch_length(data.train_labels, cfg), cfg, run.debug)
        scheduler = stage_scheduler(optimizer, stage, steps_per_epoch * stage.epochs, cfg.warmup)
        if run.checkpoint is not None and run.checkpoint["epoch"] > stage_start:  # resumed within the stage
            scheduler.load_state_dict(run.checkpoint["scheduler"])
            # the schedule's state does not set the rates back: without this the first update after
            # the resume would run at the warm-up's first rate
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
                group["lr"] = lr
        run.log(
            f"stage {stage_no + 1}/{len(run.stages)} {stage.name or ''}: trains {', '.join(trained)}, "
            f"{stage.epochs} epoch(s) at lr x {stage.lr_scale}"
        )
        for e in range(max(stage_start, run.start_epoch), epoch):
            reason = _stop_reason(run)
            if reason:
                run.log(reason)
                return
            margin = margin_at(e, cfg.margin, cfg.margin_start, cfg.margin_ramp_epochs)
            model.set_margin(margin)
            if cfg.adaptive_margin:
                model.set_class_margins(class_sizes.to(run.runtime.device), margin / cfg.margin)
            _one_epoch(run, e, stage_no, stage, scheduler, margin, tracker)
    reason = _stop_reason(run)
    if reason and len(run.history) < run.scheduled:
        run.log(reason)


def _one_epoch(
    run: FoldRun, e: int, stage_no: int, stage: Stage, scheduler, margin: float, tracker: Tracker
) -> None:
    """Epoch ``e``: train, embed and score the validation rows, log, checkpoint."""
    t0 = time.perf_counter()
    cfg, log, stepper = run.cfg, run.log, run.stepper
    stepper.clusters = None
    if stage.loss == "protonce":
        stepper.clusters = _cluster(run, e)
    loss, step_losses = _train_epoch(
        stepper, run.train_ds, run.data.train_labels, e, scheduler, run.debug, log
    )
    scores: dict[str, dict[str, float]] = {}
    if not run.full:
        run.embeddings = run.embed(run.data.valid, "validation")
        labels = run.data.valid["label_group"].to_numpy()
        scores = {k: evaluate_embeddings(run.embeddings[k], labels, cfg.eval_k) for k in embedding_kinds(cfg)}
    entry: dict[str, Any] = {
        "epoch": e + 1,
        "stage": stage_no + 1,
        "loss": loss,
        "margin": margin,
        "lr": max(g["lr"] for g in run.optimizer.param_groups),
        "seconds": round(time.perf_counter() - t0, 1),
        "scores": scores,
        "step_losses": [round(v, 6) for v in step_losses],
    }
    if scores:
        entry["cv_f1"] = max(s["f1"] for s in scores.values())
    if stepper.clusters is not None:
        accuracy = np.mean(stepper.clusters.accuracy, axis=0) if stepper.clusters.accuracy else (0, 0)
        entry["instance_acc"], entry["proto_acc"] = float(accuracy[0]), float(accuracy[1])
        log(f"protonce: instance accuracy {accuracy[0]:.3f}, prototype accuracy {accuracy[1]:.3f}")
    run.history.append(entry)
    tracker.epoch(entry)
    scored = [f"{k} F1 {s['f1']:.4f}@{s['threshold']:.2f} R@1 {s['recall@1']:.3f}" for k, s in scores.items()]
    line = [
        f"epoch {e + 1}/{run.epochs} loss {loss:.4f} margin {margin:.2f}",
        *scored,
        f"({entry['seconds']:.0f} s)",
    ]
    log(" ".join(line))
    dist = run.dist
    if dist.enabled:
        checksum = float(sum(p.detach().double().sum().item() for p in run.model.parameters()))
        if not dist.same_everywhere(checksum):
            raise ShopeeError(f"after epoch {e + 1} the processes hold different weights: DDP did not sync")
        log(f"weights identical on the {dist.world} processes (checksum {checksum:.6f})")
    if dist.is_main:
        _save_epoch(run, scheduler, e + 1)
    dist.barrier()


def _save_epoch(run: FoldRun, scheduler, epoch: int) -> None:
    """The epoch's writes, in an order a kill between any two of them cannot make inconsistent:
    the checkpoint first (weights, history: what a resume continues from), then, at a new best
    epoch, its weights tagged with the epoch (a resume that finds its checkpoint's epoch best but
    ``best.pt`` older writes it again, ``_repair_best``), then the partial metrics (a report only)."""
    _save_checkpoint(run, scheduler, epoch)
    if run.cfg.early_stopping_patience and best_epoch(run.history) == epoch:
        _save_best(run, epoch)
    metrics = {"exp": run.exp, "fold": run.fold, "finished": False, "epochs": run.history}
    write_json(run.work / "metrics.json", metrics)


def _save_best(run: FoldRun, epoch: int) -> None:
    with atomic_path(run.best_path) as tmp:
        torch.save({"epoch": epoch, "model": run.model.state_dict()}, tmp)


def _best_saved_epoch(path: Path) -> int | None:
    """The epoch ``best.pt`` holds (memory-mapped: its weights are not read), None without one."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")


def _repair_best(run: FoldRun) -> None:
    """After a resume: when the checkpoint's epoch is the best one and ``best.pt`` does not hold it
    (the run was killed between the two writes), its weights are the ones just loaded."""
    epoch = run.start_epoch
    watched = run.cfg.early_stopping_patience and run.dist.is_main
    if watched and best_epoch(run.history) == epoch and _best_saved_epoch(run.best_path) != epoch:
        _save_best(run, epoch)
        run.log(f"best.pt did not hold epoch {epoch}, the best so far: written again from the checkpoint")


def best_epoch(history: list[dict[str, Any]]) -> int:
    """The epoch (1-based) of the highest CV F1, the earliest on a tie; the last when nothing was
    scored (a full-data run)."""
    scored = [h for h in history if "cv_f1" in h]
    if not scored:
        return len(history)
    return max(scored, key=lambda h: (h["cv_f1"], -h["epoch"]))["epoch"]


def _stop_reason(run: FoldRun) -> str:
    """Why no more epochs train (empty while they do): a full-data run has its epochs, or the
    CV F1 has not improved for ``early_stopping_patience`` epochs."""
    done = len(run.history)
    if done >= run.epochs:
        return f"{run.epochs_from}: stopping after {done} epochs" if done < run.scheduled else ""
    patience = run.cfg.early_stopping_patience
    best = best_epoch(run.history)
    if patience and done - best >= patience:
        f1 = run.history[best - 1]["cv_f1"]
        return f"early stopping: no better CV F1 for {patience} epochs since epoch {best} ({f1:.4f})"
    return ""


def _restore_best(run: FoldRun) -> int:
    """The epoch whose weights the fold keeps: with early stopping, the best one (its weights put
    back when a later epoch ran); else the last."""
    best = best_epoch(run.history)
    if not run.cfg.early_stopping_patience or best == len(run.history):
        return len(run.history)
    saved = torch.load(run.best_path, map_location=run.runtime.device, weights_only=True)
    if saved.get("epoch") != best:
        raise ShopeeError(f"{run.best_path} holds epoch {saved.get('epoch')}, not the best epoch {best}")
    run.model.load_state_dict(saved["model"])
    run.embeddings = {}  # they were the last epoch's
    run.log(
        f"early stopping: keeping the weights of epoch {best} (CV F1 {run.history[best - 1]['cv_f1']:.4f})"
    )
    return best


def _final_embeddings(
    run: FoldRun,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, float | None]:
    """The embed phase: the validation rows (again when resumed after the last epoch or when an
    earlier epoch's weights were kept) and, with ``dense_oof``, the fold's training rows."""
    if run.full:
        return {}, None, None
    embeddings = run.embeddings or run.embed(run.data.valid, "validation")
    if not run.cfg.dense_oof:
        return embeddings, None, None
    started = time.perf_counter()
    dense = run.embed(run.data.dense, "training rows")
    seconds = round(time.perf_counter() - started, 1)
    run.log(f"dense OOF: embedded the fold's {len(run.data.dense)} training rows in {seconds:.0f} s")
    return embeddings, dense, seconds


def _fold_meta(run: FoldRun, data_dir: Path, commit: str) -> dict[str, Any]:

    model = run.model
    return {
        "exp": run.exp,
        "fold": run.fold,
        "seed": run.cfg.seed,
        "debug": run.debug,
        "git_commit": commit,
        "data": {"dir": str(Path(data_dir).resolve()), **run.data.fingerprint.to_dict()},
        "n_classes": run.data.n_classes,
        "n_train": len(run.data.train),
        "n_valid": len(run.data.valid),
        "epochs_from": run.epochs_from,
        "image_weights": model.image.weights_source if model.image else None,
        "text_source": model.text.source if model.text else None,
        "versions": _versions(),
        "code_digest": run.code_digest,
        "config": run.cfg.to_dict(),
    }


def _write_outputs(
    run: FoldRun,
    final: Path,
    meta: dict[str, Any],
    metrics: dict[str, Any],
    embeddings: dict[str, np.ndarray],
    dense: dict[str, np.ndarray] | None,
    slim_weights: bool = False,
) -> None:
    """The write phase (rank 0): weights, config, arrays and metrics into the ``.partial`` folder,
    which then becomes the fold's folder."""
    if slim_weights:
        buffers = {name for name, _ in run.model.named_buffers()}
        save_inference_weights(run.model.state_dict(), run.work / MODEL_FILE, "fp16", buffers)
    else:
        with atomic_path(run.work / MODEL_FILE) as tmp:
            safetensors.torch.save_model(run.model, str(tmp))
    if run.full:
        write_full(run.work, meta=meta, metrics=metrics, kinds=embedding_kinds(run.cfg))
    else:
        write_fold(
            run.work,
            meta=meta,
            index=run.data.valid,
            embeddings=embeddings,
            metrics=metrics,
            dense_index=run.data.dense,
            dense=dense,
        )
    run.checkpoint_path.unlink(missing_ok=True)
    run.best_path.unlink(missing_ok=True)
    replace_dir(run.work, final)


def full_data_epochs(cfg: Config, output: Path, exp: str) -> tuple[int, str]:
    """Epochs of a full-data run and where they come from: ``full_epochs``; with early stopping,
    the median best epoch of the experiment's finished folds (each fold stopped where its CV
    peaked); else the whole schedule."""
    scheduled = sum(s.epochs for s in stages_of(cfg))
    if cfg.full_epochs:
        if cfg.full_epochs > scheduled:
            raise ShopeeError(f"full_epochs={cfg.full_epochs} exceeds the schedule's {scheduled} epochs")
        return cfg.full_epochs, f"full_epochs={cfg.full_epochs}"
    if not cfg.early_stopping_patience:
        return scheduled, "the schedule"
    best = {}
    folds, _ = finished_folds(output, exp) if (Path(output) / exp).is_dir() else ([], [])
    for fold in folds:
        record = FoldRecord.open(fold_dir(output, exp, fold))
        same = {**record.config.identity(), "full_epochs": cfg.full_epochs} == cfg.identity()
        if same and not record.debug:
            best[fold] = int(record.metrics.get("best_epoch") or len(record.metrics["epochs"]))
    if not best:
        raise ShopeeError(
            f"{exp} --fold full with early stopping takes its epochs from the CV folds, and "
            f"{Path(output) / exp} has no finished fold of this config: train the folds first, or "
            "--set full_epochs=N"
        )
    epochs = math.floor(float(np.median(list(best.values()))) + 0.5)
    folds_said = ", ".join(f"fold {f}: {e}" for f, e in sorted(best.items()))
    return epochs, f"the median best epoch of the CV folds ({folds_said})"


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
    runtime = Runtime.for_config(cfg)
    torch.manual_seed(cfg.seed)
    model = runtime.prepare(ShopeeModel(cfg, max(data.n_classes, 1)))
    loader = make_loader(
        dataset_for(cfg, model, data.valid), cfg.eval_batch_size, num_workers=loader_workers(cfg)
    )
    embeddings = embed_many([model], loader, runtime, desc="zero-shot")[0]
    labels = data.valid["label_group"].to_numpy()
    scores = {k: evaluate_embeddings(v, labels, cfg.eval_k) for k, v in embeddings.items()}
    for kind, s in scores.items():
        print(
            f"zero-shot {kind}: F1 {s['f1']:.4f} at {s['threshold']:.2f}, R@1 {s['recall@1']:.3f}", flush=True
        )
    summary = _summary(exp, "all" if fold is None else fold, scores, time.perf_counter() - started)
    return {**summary, "zero_shot": True, "rows": len(labels)}


def _cluster(run: FoldRun, epoch: int) -> Clusters:
    """The epoch's clusters: the training rows embedded by the current model, k-means with sizes
    held in their band (``bounded_kmeans``); k = ``proto_clusters`` or one per training group."""
    cfg, data = run.cfg, run.data
    embeddings = run.embed(data.train, "clustering")
    kind = run.model.kinds[-1]  # fused when there is one, else the only kind
    n = len(data.train)
    k = min(cfg.proto_clusters or data.n_classes, n // 2)
    assign, centroids = bounded_kmeans(embeddings[kind], k, seed=cfg.seed * 1000 + epoch)
    sizes = np.bincount(assign, minlength=k)
    low, high = size_band(n, k)
    run.log(
        f"protonce: {k} clusters of the {kind} embeddings, sizes {sizes.min()}..{sizes.max()} "
        f"(band {low}..{high})"
    )
    device = run.runtime.device
    return Clusters(
        torch.as_tensor(assign, device=device),
        torch.as_tensor(centroids, device=device),
        cfg.proto_temperature,
    )


def _steps_per_epoch(n_rows: int, cfg: Config, debug: bool) -> int:
    """Optimizer updates in an epoch of ``n_rows`` rows (``epoch_length``), as ``_train_epoch``
    makes them: full batches only, an update every ``accum_steps`` batches and after the last."""
    if debug:
        n_rows = min(n_rows, cfg.debug_batches * cfg.batch_size)
    batches = max(1, n_rows // cfg.batch_size)
    return math.ceil(batches / cfg.accum_steps)


HOST_SYNC_EVERY = 20  # steps between two reads of the losses on the host (a CUDA synchronisation)


@dataclass
class Stepper:
    """One optimisation step: forward, backward, and (every ``accum_steps``) the update. In a
    distributed run the forward goes through DistributedDataParallel (``wrap``, once per stage),
    whose gradients are all-reduced only on the backward before an update (``no_sync`` while
    accumulating: DDP would otherwise all-reduce after every backward).

    A step returns its loss as a tensor on the device and reads nothing back to the host, so that
    the GPU runs ahead of Python; ``_train_epoch`` checks the losses every ``HOST_SYNC_EVERY`` steps
    and averages them over processes once per epoch."""

    model: ShopeeModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    cfg: Config
    runtime: Runtime
    dist: Dist = dataclasses.field(default_factory=Dist)
    ddp: torch.nn.Module | None = None
    clusters: Clusters | None = None  # set for the epochs of a "protonce" stage

    def wrap(self) -> None:
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.runtime.device.index] if self.runtime.on_cuda else None
            # unused: e.g. a text model's pooler, computed but not trained on
            self.ddp = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    def __call__(self, batch: dict[str, torch.Tensor], update: bool) -> torch.Tensor:
        batch = self.runtime.to_device(batch)
        forward = self.ddp if self.ddp is not None else self.model
        accumulating = self.ddp is not None and not update
        with self.ddp.no_sync() if accumulating else contextlib.nullcontext():  # type: ignore[union-attr]
            with self.runtime.autocast():
                if self.clusters is None:
                    loss = forward(batch)["loss"]
                else:
                    loss = self.clusters.loss(forward, batch, self.model.kinds)
            self.scaler.scale(loss / self.cfg.accum_steps).backward()
        if update:
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                trainable = [p for p in self.model.parameters() if p.requires_grad]
                torch.nn.utils.clip_grad_norm_(trainable, self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def check_losses(losses: list[torch.Tensor], first_step: int, epoch: int) -> list[float]:
    """The steps' losses on the host (one synchronisation); a loss that is not finite stops the run
    with the step it happened at."""
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    for step, value in enumerate(values, start=first_step):
        if not math.isfinite(value):
            raise ShopeeError(f"loss is {value} at epoch {epoch + 1} step {step}: lower the learning rates")
    return values


def _train_epoch(
    stepper: Stepper,
    dataset: PostingDataset,
    labels: np.ndarray,
    epoch: int,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    debug: bool,
    log: Logger,
) -> tuple[float, list[float]]:
    """One epoch; (its mean loss, the loss of every step: the global batch's in a distributed run).

    The order of the rows is the same whatever the number of processes; the random draws of
    dropout and augmentation are per process (rank 0 draws those of a one-process run)."""
    cfg, model, dist = stepper.cfg, stepper.model, stepper.dist
    draws = cfg.seed * 1000 + epoch + RANK_SEED_STRIDE * dist.rank
    torch.manual_seed(draws)  # dropout and anything else drawing from torch
    indices = epoch_indices(labels, cfg, epoch)
    if debug:
        indices = indices[: cfg.debug_batches * cfg.batch_size]
    if dist.enabled:  # this process's slice of every global batch
        indices = dist.shard(indices, cfg.batch_size)
    loader = make_loader(
        dataset,
        dist.per_process(cfg.batch_size),
        indices,
        num_workers=loader_workers(cfg, dist.local_world),
        seed=draws,
        drop_last=True,
        pin_memory=stepper.runtime.pin_memory,
    )
    model.train()
    freeze_batchnorm_stats(model)
    losses: list[torch.Tensor] = []
    checked: list[float] = []  # this process's losses read so far
    progress = Progress(loader, f"epoch {epoch + 1}", unit="batches", log=log, log_with_bar=log.file)
    stepper.optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(progress):
        update = (step + 1) % cfg.accum_steps == 0 or step + 1 == len(loader)
        losses.append(stepper(batch, update))
        if update:
            scheduler.step()
        if (step + 1) % HOST_SYNC_EVERY == 0 or step + 1 == len(loader):
            checked += check_losses(losses[len(checked) :], len(checked) + 1, epoch)
            progress.set_postfix(f"loss {np.mean(checked):.4f}")
    if not losses:
        return 0.0, []
    step_losses = dist.mean(torch.stack(losses)).tolist()  # the global batch's, one collective
    return float(np.mean(step_losses)), step_losses


def _save_checkpoint(run: FoldRun, scheduler, epoch: int) -> None:
    state = {
        "world": run.dist.world,
        "epoch": epoch,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "precision": run.runtime.precision,
        "history": run.history,
        "config": run.cfg.to_dict(),
        "debug": run.debug,
    }
    with atomic_path(run.checkpoint_path) as tmp:
        torch.save(state, tmp)
