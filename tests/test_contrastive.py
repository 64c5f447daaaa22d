"""The sampled-negative sigmoid loss against a direct computation, and the pairs it trains on."""

from __future__ import annotations

import math

import numpy as np
import torch

from shopee.config import Config
from shopee.models.contrastive import SampledNegativeLoss
from shopee.sampling import epoch_indices, epoch_length, paired_indices


def test_the_loss_is_the_formula_on_a_hand_made_batch() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])  # row 6 is alone in the batch
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    head = SampledNegativeLoss(negatives=3, scale=2.0)
    positive, negative = head.draw(labels, torch.Generator().manual_seed(1))
    unit = (z / z.norm(dim=1, keepdim=True)).tolist()
    total = 0.0
    for i in range(7):
        if labels[i] == 3:
            assert positive[i] == -1  # no other row of its group: no positive term
        else:
            p = int(positive[i])
            assert p != i and labels[p] == labels[i]  # a positive is never the row itself
            total -= math.log(
                1 / (1 + math.exp(-2.0 * sum(a * b for a, b in zip(unit[i], unit[p], strict=True))))
            )
        for n in negative[i].tolist():
            if n < 0:
                continue
            assert labels[n] != labels[i]  # drawn rows of its own group are masked
            total -= math.log(
                1 / (1 + math.exp(2.0 * sum(a * b for a, b in zip(unit[i], unit[n], strict=True))))
            )
    assert torch.isclose(head.loss(z, positive, negative), torch.tensor(total / 7), atol=1e-5)
    # masking does happen: with 2 groups of 5, about 40 % of the drawn negatives are group-mates
    many = torch.tensor([0] * 5 + [1] * 5)
    _, drawn = SampledNegativeLoss(negatives=50).draw(many, torch.Generator().manual_seed(2))
    assert 0.25 < (drawn < 0).float().mean() < 0.6


def test_batches_come_in_pairs_of_one_group() -> None:
    labels = np.repeat(np.arange(40), np.r_[np.full(20, 2), np.full(19, 5), [1]])
    order = np.random.default_rng(0).permutation(len(labels))
    pairs = paired_indices(order, labels, np.random.default_rng(1)).reshape(-1, 2)
    assert list(pairs[:, 0]) == list(order)
    alone = labels[pairs[:, 0]] == 39
    assert (labels[pairs[:, 0]] == labels[pairs[:, 1]]).all()
    assert (pairs[~alone, 0] != pairs[~alone, 1]).all() and (pairs[alone, 0] == pairs[alone, 1]).all()
    cfg = Config(head="neg_sampling")
    assert len(epoch_indices(labels, cfg, 3)) == epoch_length(labels, cfg) == 2 * len(labels)
