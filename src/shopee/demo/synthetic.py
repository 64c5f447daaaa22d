"""Synthetic inputs for benchmarks and tests: embeddings, titles and phashes of postings at any
scale, and photo-like JPEGs.

Embeddings: group sizes drawn from the real train set; products (and their families, whose
siblings are the hard negatives) and seller titles from the demo catalog; for each embedding
member a category, a family and a group centre plus per-row noise of the member's own level (so
that thresholds around 0.5-0.7 matter); phashes shared, nearly shared (a few bits flipped) or
unrelated within a group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from shopee.demo import sample_group_sizes
from shopee.demo.catalog import TitleStyle, make_products, make_title
from shopee.errors import ShopeeError

# name -> (category, family, noise) variances; the group centre has variance 1 - category - family.
# Two postings of one group: cosine about 1 / (1 + noise) on average; siblings (same family, other
# group): (category + family) / (1 + noise); same category only: category / (1 + noise).
MEMBER_NOISE: dict[str, tuple[float, float, float]] = {
    "img": (0.25, 0.45, 0.5),
    "txt": (0.3, 0.45, 0.6),
    "fused": (0.25, 0.45, 0.4),
}
ROW_NOISE_SPREAD = 0.3  # each row's noise scaled by lognormal(0, this): some postings are poor
P_PHASH_SAME = 0.35  # a posting reuses its group's photo (same phash)
P_PHASH_NEAR = 0.15  # ... or a re-encoded copy (1 to 4 bits differ)
P_PHASH_OTHER_GROUP = 0.005  # ... or another group's photo


@dataclass
class Synthetic:
    labels: np.ndarray  # group of each row (int64)
    embeddings: dict[str, np.ndarray]  # member source -> n x dim float32 (not normalized)
    titles: np.ndarray | None  # object array of str
    phashes: np.ndarray | None  # object array of 16-hex-digit str
    posting_ids: np.ndarray  # object array of unique str

    def __len__(self) -> int:
        return len(self.labels)


def make_synthetic(n: int, dim: int, seed: int, *, text: bool = True) -> Synthetic:
    """``n`` synthetic postings (rows shuffled); ``text=False`` skips titles and phashes."""
    if n < 2:
        raise ShopeeError(f"synthetic postings: n must be at least 2, got {n}")
    if dim < 2:
        raise ShopeeError(f"synthetic postings: dim must be at least 2, got {dim}")
    rng = np.random.default_rng(seed)
    sizes = np.array(sample_group_sizes(n, rng))
    n_groups = len(sizes)
    products = make_products(n_groups, rng)
    family_of_group = np.array([p.family.family_id for p in products], dtype=np.int64)
    group = np.repeat(np.arange(n_groups, dtype=np.int64), sizes)

    category_of_group = pd.factorize(pd.Series([p.family.category.key for p in products]))[0]
    embeddings = {}
    for name, (category_var, family_var, noise_var) in MEMBER_NOISE.items():
        categories = rng.standard_normal((int(category_of_group.max()) + 1, dim), dtype=np.float32)
        families = rng.standard_normal((int(family_of_group.max()) + 1, dim), dtype=np.float32)
        centres = rng.standard_normal((n_groups, dim), dtype=np.float32)
        centres *= np.float32(np.sqrt(1.0 - category_var - family_var))
        centres += np.float32(np.sqrt(family_var)) * families[family_of_group]
        centres += np.float32(np.sqrt(category_var)) * categories[category_of_group]
        scale = (np.sqrt(noise_var) * rng.lognormal(0.0, ROW_NOISE_SPREAD, size=n)).astype(np.float32)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x *= scale[:, None]
        x += centres[group]
        embeddings[name] = x

    titles = phashes = None
    if text:
        style = TitleStyle()
        titles_list: list[str] = []
        for g, size in enumerate(sizes.tolist()):
            core_seed = int(rng.integers(2**63))  # the wording sellers of this product copy
            for j in range(size):
                copied = j == 0 or rng.random() < style.p_copy
                titles_list.append(make_title(products[g], rng, style, core_seed if copied else None))
        titles = np.array(titles_list, dtype=object)
        phashes = _phashes(group, n_groups, rng)

    ids = (np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(rng.integers(2**32))) % (
        np.uint64(2**32)
    )  # odd multiplier: a bijection mod 2^32, so unique
    order = rng.permutation(n)
    return Synthetic(
        labels=group[order],
        embeddings={k: np.ascontiguousarray(v[order]) for k, v in embeddings.items()},
        titles=None if titles is None else titles[order],
        phashes=None if phashes is None else phashes[order],
        posting_ids=np.array([f"train_{v}" for v in ids.tolist()], dtype=object),
    )


def _random_u64(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(8 * size), dtype=np.uint64).copy()


def _phashes(group: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    n = len(group)
    photo = _random_u64(rng, n_groups)
    values = _random_u64(rng, n)  # unrelated photos by default
    u = rng.random(n)
    same = u < P_PHASH_SAME
    near = (u >= P_PHASH_SAME) & (u < P_PHASH_SAME + P_PHASH_NEAR)
    other = (u >= P_PHASH_SAME + P_PHASH_NEAR) & (u < P_PHASH_SAME + P_PHASH_NEAR + P_PHASH_OTHER_GROUP)
    values[same] = photo[group[same]]
    flips = np.zeros(int(near.sum()), dtype=np.uint64)
    n_bits = rng.integers(1, 5, size=len(flips))
    for b in range(4):
        bit = rng.integers(0, 64, size=len(flips)).astype(np.uint64)
        flips ^= np.where(b < n_bits, np.uint64(1) << bit, np.uint64(0))
    values[near] = photo[group[near]] ^ flips
    values[other] = photo[rng.integers(0, n_groups, size=int(other.sum()))]
    return np.array([f"{v:016x}" for v in values.tolist()], dtype=object)


def photo_jpegs(directory: Path, n: int, px: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs (smooth colour gradients plus sensor-like noise, quality 90) of
    ``px`` x ``px``: about 80 KB at 640 px, like a typical Shopee product photo."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((px, px), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 5, smooth.shape), 0, 255).astype(np.uint8)
        path = directory / f"photo{i}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def synthetic_titles(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    products = make_products(max(1, n // 3), rng)
    style = TitleStyle()
    return [make_title(products[i % len(products)], rng, style) for i in range(n)]
