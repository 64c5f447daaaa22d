"""Necks: from pooled features to the embedding the margin head sees."""

from __future__ import annotations

from torch import nn


def build_neck(kind: str, in_dim: int, embed_dim: int, dropout: float = 0.0) -> tuple[nn.Module, int]:
    """The neck and its output width.

    ``bn`` is BatchNorm alone (the winners' choice: no extra FC, so the width stays ``in_dim``);
    ``linear_bn`` and ``linear_bn_prelu`` project to ``embed_dim``; ``fc_dropout`` adds dropout
    before the projection.
    """
    if kind == "bn":
        return nn.BatchNorm1d(in_dim), in_dim
    if kind == "linear_bn":
        return nn.Sequential(nn.Linear(in_dim, embed_dim, bias=False), nn.BatchNorm1d(embed_dim)), embed_dim
    if kind == "linear_bn_prelu":
        layers = [nn.Linear(in_dim, embed_dim, bias=False), nn.BatchNorm1d(embed_dim), nn.PReLU()]
        return nn.Sequential(*layers), embed_dim
    if kind == "fc_dropout":
        layers = [nn.Dropout(dropout), nn.Linear(in_dim, embed_dim), nn.BatchNorm1d(embed_dim)]
        return nn.Sequential(*layers), embed_dim
    raise ValueError(f"unknown neck {kind!r} (bn, linear_bn, linear_bn_prelu, fc_dropout)")
