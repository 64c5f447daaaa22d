"""Losses that compare embeddings with each other instead of with class centres.

``SampledNegativeLoss`` (``head="neg_sampling"``): for each row i of a batch, one positive p drawn
from its own group (another row: batches are built of pairs of one group, see
``sampling.paired_indices``) and ``negatives`` rows drawn at random from the batch, then

    loss_i = -log sigmoid(s z_i . z_p) - sum_n log sigmoid(-s z_i . z_n)

on L2-normalized embeddings (``s`` = ``neg_scale``, 1 as written in the method's description). A
positive is never the row itself; a drawn negative that shares the row's group is **masked** (it
adds nothing; not drawn again), as is the positive of a row alone in its group in the batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shopee.match import normalize_rows


class SampledNegativeLoss(nn.Module):
    returns_loss = True  # model.loss uses its output as the loss, not as logits

    def __init__(self, negatives: int = 5, scale: float = 1.0) -> None:
        super().__init__()
        if negatives < 1 or not scale > 0:
            raise ValueError(f"need negatives >= 1 and scale > 0, not {negatives} and {scale}")
        self.negatives = int(negatives)
        self.scale = float(scale)

    def set_margin(self, margin: float) -> None:  # margin heads' schedule: nothing to do here
        pass

    def set_class_margins(self, margins: torch.Tensor) -> None:
        pass

    def draw(
        self, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive index per row, or -1; ``n x negatives`` negative indices, -1 where masked)."""
        n = len(labels)
        same = labels[:, None] == labels[None, :]
        others = same & ~torch.eye(n, dtype=torch.bool, device=labels.device)
        scores = torch.rand(n, n, generator=generator, device=labels.device)
        scores = scores.masked_fill(~others, -1.0)
        positive = torch.where(others.any(dim=1), scores.argmax(dim=1), torch.full_like(labels, -1))
        negative = torch.randint(0, n, (n, self.negatives), generator=generator, device=labels.device)
        shares = same.gather(1, negative)  # itself, or another row of its group: masked
        return positive, negative.masked_fill(shares, -1)

    def loss(self, z: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        z = F.normalize(z.float(), dim=1)
        has_pos = positive >= 0
        pos_sim = (z * z[positive.clamp(min=0)]).sum(dim=1)
        pos_term = torch.where(has_pos, -F.logsigmoid(self.scale * pos_sim), torch.zeros_like(pos_sim))
        neg_sim = (z[:, None, :] * z[negative.clamp(min=0)]).sum(dim=2)
        neg_term = torch.where(negative >= 0, -F.logsigmoid(-self.scale * neg_sim), torch.zeros_like(neg_sim))
        return (pos_term + neg_term.sum(dim=1)).mean()

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positive, negative = self.draw(labels)
        return self.loss(z, positive, negative)


# --- ProtoNCE: instance and prototype contrast, with clusters of bounded size -----------------------


def size_band(n: int, k: int) -> tuple[int, int]:
    """[2/3 n/k, 4/3 n/k]: cluster sizes within one standard deviation of the mean n/k, the mean
    being taken as three standard deviations above zero (so sigma = n/(3k)); rounded outwards."""
    mean = n / k
    return max(1, int(np.floor(2 * mean / 3))), int(np.ceil(4 * mean / 3))


def bounded_kmeans(
    x: np.ndarray, k: int, seed: int = 0, iterations: int = 20, candidates: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss) of the L2-normalized rows ``x``, then every cluster's size forced
    into ``size_band(n, k)``. Returns (cluster per row, L2-normalized centroids).

    How the band is enforced: (1) points are taken most confident first (highest similarity to
    their nearest centroid) and each joins the most similar of its ``candidates`` nearest centroids
    that is not yet full (the upper bound), or, all of those full, the emptiest cluster; (2) a
    cluster left below the lower bound then takes, most similar first, points of clusters that
    can spare them (above the lower bound). Centroids are recomputed from the final clusters.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if not 1 <= k <= n // 2:
        raise ValueError(f"k={k} clusters for {n} rows: need 1 <= k <= n/2")
    low, high = size_band(n, k)
    km = faiss.Kmeans(
        d, k, niter=iterations, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1
    )
    km.train(x)
    centroids = normalize_rows(km.centroids, what="k-means centroids")
    index = faiss.IndexFlatIP(d)
    index.add(centroids)
    sims, near = index.search(x, min(candidates, k))
    assign = np.full(n, -1, dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    for i in np.argsort(-sims[:, 0], kind="stable"):
        choice = next((int(c) for c in near[i] if c >= 0 and counts[c] < high), int(np.argmin(counts)))
        assign[i] = choice
        counts[choice] += 1
    for c in np.flatnonzero(counts < low):
        # first the points that have c among their nearest centroids, then any, most similar first
        rows, slots = np.nonzero(near == c)
        listed = rows[np.argsort(-sims[rows, slots], kind="stable")]
        for pool in (listed, None):
            if counts[c] >= low:
                break
            if pool is None:
                pool = np.flatnonzero(assign != c)
                pool = pool[np.argsort(-(x[pool] @ centroids[c]), kind="stable")]
            for i in pool:
                if counts[c] >= low:
                    break
                if assign[i] != c and counts[assign[i]] > low:
                    counts[assign[i]] -= 1
                    assign[i] = c
                    counts[c] += 1
    sums = np.zeros((k, d), dtype=np.float64)
    np.add.at(sums, assign, x)
    return assign, normalize_rows(sums, what="cluster centroids")


def proto_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    targets: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, float, float]:
    """Instance contrast (two views of each row, the other rows of the batch as negatives) plus
    prototype contrast (each row against the cluster centroids, its own cluster the positive).
    Returns (loss, instance accuracy, prototype accuracy) of the batch."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    rows = torch.arange(len(z1), device=z1.device)
    instance = z1 @ z2.T / temperature
    proto = z1 @ prototypes.T / temperature
    loss = F.cross_entropy(instance, rows) + F.cross_entropy(proto, targets)
    with torch.no_grad():
        inst_acc = (instance.argmax(dim=1) == rows).float().mean().item()
        proto_acc = (proto.argmax(dim=1) == targets).float().mean().item()
    return loss, inst_acc, proto_acc
