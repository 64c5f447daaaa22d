"""Epoch sampling: weights by group size, class-balanced resampling, seeded per epoch."""

from __future__ import annotations

import numpy as np

from shopee.config import Config
from shopee.sampling import balanced_indices, epoch_indices, epoch_length, size_weights


def test_size_weights() -> None:
    labels = np.array([1, 1, 1, 1, 2, 2, 3])
    w = size_weights(labels, 0.4)
    assert np.isclose(w.sum(), 1.0)
    np.testing.assert_allclose(w[0] / w[4], (2 / 4) ** 0.4)  # 1/size^p, size 4 vs size 2
    np.testing.assert_allclose(size_weights(labels, 0.0), np.full(7, 1 / 7))


def test_weighted_epochs_favour_small_groups() -> None:
    labels = np.repeat(np.arange(50), np.r_[np.full(25, 2), np.full(25, 20)])
    cfg = Config(sample_weight_power=1.0)
    idx = np.concatenate([epoch_indices(labels, cfg, e) for e in range(20)])
    small = np.isin(labels[idx], np.arange(25)).mean()
    assert 0.45 < small < 0.55  # with 1/size weights each group is drawn about equally often
    plain = np.isin(labels[epoch_indices(labels, Config(), 0)], np.arange(25)).mean()
    assert np.isclose(plain, 50 / 550)


def test_balanced_respects_min_and_max() -> None:
    labels = np.repeat([10, 20, 30], [1, 5, 40])
    idx = balanced_indices(labels, 3, 8, np.random.default_rng(0))
    counts = {c: int((labels[idx] == c).sum()) for c in (10, 20, 30)}
    assert counts == {10: 3, 20: 5, 30: 8}
    assert len(set(idx[labels[idx] == 30])) == 8  # large classes: no repeats


def test_epochs_are_seeded_and_differ() -> None:
    labels = np.repeat(np.arange(40), 3)
    cfg = Config(seed=1)
    assert np.array_equal(epoch_indices(labels, cfg, 2), epoch_indices(labels, cfg, 2))
    assert not np.array_equal(epoch_indices(labels, cfg, 2), epoch_indices(labels, cfg, 3))
    assert sorted(epoch_indices(labels, cfg, 0)) == list(range(len(labels)))  # a permutation


def test_epoch_length_is_what_an_epoch_yields() -> None:
    # Small groups lifted to min_per_class make a balanced epoch longer than the data.
    labels = np.repeat(np.arange(30), np.r_[np.full(20, 2), np.full(10, 12)])
    balanced = Config(balanced=True, min_per_class=4, max_per_class=12)
    for cfg in (Config(), Config(sample_weight_power=0.4), balanced, Config(balanced=True)):
        for epoch in (0, 3):
            assert epoch_length(labels, cfg) == len(epoch_indices(labels, cfg, epoch))
    assert epoch_length(labels, balanced) == 20 * 4 + 10 * 12 > len(labels)
