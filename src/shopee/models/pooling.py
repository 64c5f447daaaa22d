"""Pooling: image feature maps to vectors (GeM, average, max) and token states to vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeM(nn.Module):
    """Generalized mean pooling with a learnable exponent ``p`` (p=1: average, p->inf: max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.float().clamp(min=1.0)  # p below 1 is not a mean any more
        # in float32 whatever autocast says: x**3 passes float16's 65,504 once a feature passes ~40.
        # CUDA's autocast runs pow in float32 by itself, CPU's does not.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class MaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


def build_image_pool(kind: str, gem_p: float = 3.0) -> nn.Module:
    if kind == "gem":
        return GeM(gem_p)
    if kind == "avg":
        return AvgPool()
    if kind == "max":
        return MaxPool()
    raise ValueError(f"unknown image pooling {kind!r} (gem, avg, max)")


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over the real tokens (``mask`` 1), as sentence-transformers pools."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-6)


class TextPool(nn.Module):
    """Token states to one vector: ``mean``, ``cls``, ``attention`` (learned), ``mean_last4``."""

    def __init__(self, kind: str, hidden: int) -> None:
        super().__init__()
        if kind not in ("mean", "cls", "attention", "mean_last4"):
            raise ValueError(f"unknown text pooling {kind!r} (mean, cls, attention, mean_last4)")
        self.kind = kind
        self.needs_all_layers = kind == "mean_last4"
        if kind == "attention":
            self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(
        self, last: torch.Tensor, mask: torch.Tensor, all_layers: tuple[torch.Tensor, ...] | None = None
    ) -> torch.Tensor:
        if self.kind == "cls":
            return last[:, 0]
        if self.kind == "mean":
            return masked_mean(last, mask)
        if self.kind == "mean_last4":
            assert all_layers is not None, "mean_last4 needs the hidden states of every layer"
            return masked_mean(torch.stack(all_layers[-4:]).mean(0), mask)
        scores = self.score(last).squeeze(-1).float().masked_fill(mask == 0, float("-inf"))
        weights = F.softmax(scores, dim=1).to(last.dtype).unsqueeze(-1)
        return (last * weights).sum(1)
