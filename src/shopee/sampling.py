"""Which training rows an epoch visits, in what order: uniform, weighted by group size, balanced.

Every order is drawn from a generator seeded by (seed, epoch), so an epoch is the same whether
the run was interrupted before it or not.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shopee.config import Config
from shopee.metrics import group_sizes


def size_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Sample weight ``1 / size**power`` for each row (``power`` 0: uniform), summing to 1."""
    weights = 1.0 / group_sizes(labels).astype(np.float64) ** power
    return weights / weights.sum()


def balanced_indices(
    labels: np.ndarray, min_per_class: int, max_per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Each class drawn ``clip(size, min, max)`` times (with replacement only when too small)."""
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    picks = []
    for start, count in zip(starts, counts, strict=True):
        members = order[start : start + count]
        want = int(np.clip(count, min_per_class, max_per_class))
        picks.append(rng.choice(members, size=want, replace=want > count))
    out = np.concatenate(picks)
    return out[rng.permutation(len(out))]


def paired_indices(order: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row of ``order`` followed by another row of its group drawn at random (itself when
    alone): batches of an even size then hold every row's positive (head "neg_sampling")."""
    n = len(labels)
    by_group = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[by_group], return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(counts)), counts)
    rank = np.empty(n, dtype=np.int64)
    rank[by_group] = np.arange(n) - starts[group]
    row_group = np.empty(n, dtype=np.int64)
    row_group[by_group] = group
    size = counts[row_group[order]]
    step = 1 + (rng.random(len(order)) * np.maximum(size - 1, 1)).astype(np.int64)
    partner_rank = np.where(size > 1, (rank[order] + step) % size, rank[order])
    partners = by_group[starts[row_group[order]] + partner_rank]
    return np.stack([order, partners], axis=1).reshape(-1)


def epoch_length(labels: np.ndarray, cfg: Config) -> int:
    """How many rows ``epoch_indices`` yields per epoch (the same every epoch): the training
    schedule is sized from it, since balanced resampling may draw more rows than there are (and
    the pairs of the sampled-negative loss twice as many)."""
    if cfg.head == "neg_sampling":
        return 2 * epoch_length(labels, _unpaired(cfg))
    if cfg.balanced:
        _, counts = np.unique(labels, return_counts=True)
        return int(np.clip(counts, cfg.min_per_class, cfg.max_per_class).sum())
    return len(labels)


def _unpaired(cfg: Config) -> Config:
    return dataclasses.replace(cfg, head="arcface")


def epoch_indices(labels: np.ndarray, cfg: Config, epoch: int) -> np.ndarray:
    """Row indices (into ``labels``) for one epoch (in pairs of one group for "neg_sampling")."""
    if cfg.head == "neg_sampling":
        rng = np.random.default_rng([cfg.seed, epoch, 1])
        return paired_indices(epoch_indices(labels, _unpaired(cfg), epoch), labels, rng)
    rng = np.random.default_rng([cfg.seed, epoch])
    if cfg.balanced:
        return balanced_indices(labels, cfg.min_per_class, cfg.max_per_class, rng)
    if cfg.sample_weight_power:
        p = size_weights(labels, cfg.sample_weight_power)
        return rng.choice(len(labels), size=len(labels), replace=True, p=p)
    return rng.permutation(len(labels))
