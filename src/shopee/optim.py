"""Optimizer parameter groups (per part, layer-wise decay), staged freezing and schedules."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import get_cosine_schedule_with_warmup

from shopee.config import Config, Stage
from shopee.models import ShopeeModel


def _split_decay(params: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weights decay; biases, norm scales and scalars (GeM p) do not."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return decay, no_decay


def param_groups(model: ShopeeModel, cfg: Config) -> list[dict]:
    """One group per encoder layer (learning rate x ``layer_decay`` per layer below the top),
    plus the neck and head groups at ``lr_head``; each split into decayed and not decayed."""
    groups: list[dict] = []

    def add(name: str, params: list[nn.Parameter], lr: float) -> None:
        decay, no_decay = _split_decay(params)
        for suffix, ps, wd in (("", decay, cfg.weight_decay), (".no_decay", no_decay, 0.0)):
            if ps:
                groups.append(
                    {"name": name + suffix, "params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd}
                )

    for part, lr in (("image", cfg.lr_image), ("text", cfg.lr_text)):
        layers = model.encoder_layers(part)
        for i, params in enumerate(layers):
            add(f"{part}.{i}", params, lr * cfg.layer_decay ** (len(layers) - 1 - i))
    for part in ("neck", "head"):
        params = [p for module in model.part_modules()[part] for p in module.parameters()]
        add(part, params, cfg.lr_head)
    return groups


def build_optimizer(model: ShopeeModel, cfg: Config) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr_head, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr_head)


def set_trainable(model: ShopeeModel, stage: Stage) -> list[str]:
    """Freeze everything, then unfreeze the stage's parts; returns what trains, for the log."""
    for p in model.parameters():
        p.requires_grad_(False)
    parts = model.part_modules()
    trained = []
    for part in stage.train:
        if part == "all":
            for p in model.parameters():
                p.requires_grad_(True)
            trained.append("all")
            continue
        base, _, last = part.partition(".last")
        if last:
            layers = model.encoder_layers(base)
            for params in layers[-int(last) :]:
                for p in params:
                    p.requires_grad_(True)
        else:
            for module in parts[base]:
                for p in module.parameters():
                    p.requires_grad_(True)
        trained.append(part)
    return trained


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Frozen BatchNorm layers keep their running statistics (eval mode) while the rest trains."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def stage_scheduler(
    optimizer: torch.optim.Optimizer, stage: Stage, steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup then cosine decay over one stage, from each group's base rate x the stage's scale."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = group["base_lr"] * stage.lr_scale
    return get_cosine_schedule_with_warmup(optimizer, int(warmup * steps), max(steps, 1))
