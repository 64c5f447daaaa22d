"""The embedded demo dataset: synthetic Shopee-like data in exactly the competition layout.

``generate_demo(out)`` writes ``train.csv``, ``test.csv``, ``sample_submission.csv``,
``train_images/``, ``test_images/`` and ``test_labels.csv`` (so the demo test can be scored).
Group sizes follow the real train set; test groups are disjoint from train groups; products come
in families whose siblings are the hard negatives; some postings share an image (and so a phash),
and a few identical images appear in different groups, as in the real data. Deterministic for a
seed, whatever the number of worker processes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from shopee.atomic import atomic_dir
from shopee.demo.catalog import BRAND_SYLLABLES, Product, TitleStyle, make_products, make_title
from shopee.demo.images import photograph, render_product
from shopee.errors import ShopeeError

# Real train.csv: group size -> number of groups of that size (11,014 groups, 34,250 rows).
REAL_GROUP_SIZES: dict[int, int] = {
    2: 6979,
    3: 1779,
    4: 862,
    5: 468,
    6: 282,
    7: 154,
    8: 118,
    9: 91,
    10: 48,
    11: 38,
    12: 39,
    13: 28,
    14: 19,
    15: 19,
    16: 13,
    17: 9,
    18: 5,
    19: 5,
    20: 6,
    21: 6,
    22: 6,
    23: 4,
    24: 2,
    25: 2,
    26: 1,
    27: 1,
    30: 1,
    31: 2,
    32: 3,
    33: 3,
    34: 3,
    35: 4,
    36: 1,
    37: 1,
    41: 1,
    45: 1,
    46: 2,
    49: 1,
    51: 7,
}


@dataclass(frozen=True)
class PhotoStyle:
    """How postings of one product share photos. Defaults calibrate the phash baseline."""

    p_reuse: float = 0.3  # a later posting reuses a photo already posted in its group
    p_reencode: float = 0.3  # ... as a re-saved copy (new file, same phash) rather than the same file
    p_cross_group: float = 0.015  # a group borrows one photo of another group (a sibling if any)


def sample_group_sizes(n_rows: int, rng: np.random.Generator) -> list[int]:
    """Group sizes drawn from the real distribution, adding up to exactly ``n_rows`` (>= 2)."""
    if n_rows < 2:
        raise ShopeeError(f"a split needs at least 2 rows (one group of two), not {n_rows}")
    values = np.array(list(REAL_GROUP_SIZES))
    probs = np.array(list(REAL_GROUP_SIZES.values()), dtype=float)
    probs /= probs.sum()
    sizes: list[int] = []
    total = 0
    while total < n_rows:
        size = int(rng.choice(values, p=probs))
        size = min(size, n_rows - total)
        sizes.append(size)
        total += size
    if sizes[-1] == 1:  # a group needs two postings: give the spare row to the previous group
        sizes.pop()
        sizes[-1] += 1
    return sizes


def _unique_ints(n: int, rng: np.random.Generator, low: int, high: int) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < n:
        for v in rng.integers(low, high, size=n - len(out)):
            if int(v) not in seen:
                seen.add(int(v))
                out.append(int(v))
    return out


def _shop_name(rng: np.random.Generator) -> str:
    word = "".join(rng.choice(BRAND_SYLLABLES, size=int(rng.integers(2, 4))))
    return "@" + str(rng.choice(["toko", "grosir", "", "official", "mart", "shop"])) + word


@dataclass(frozen=True)
class PhotoTask:
    """One distinct photo: render ``product``, save as ``files[0]``, re-save copies as the rest."""

    seed: tuple[int, int]
    product: Product
    folder: str
    files: tuple[str, ...]
    qualities: tuple[int, ...]
    shop: str


def _render_tasks(tasks: Sequence[PhotoTask], root: str, image_size: int) -> dict[str, str]:
    """Worker: write the photos of ``tasks`` and return ``{folder/file: phash}``."""
    rendered: dict[int, Image.Image] = {}
    phashes: dict[str, str] = {}
    for task in tasks:
        product_img = rendered.get(task.product.product_id)
        if product_img is None:
            product_img = rendered[task.product.product_id] = render_product(task.product)
        rng = np.random.default_rng(list(task.seed))
        photo = photograph(product_img, image_size, rng, task.shop)
        for name, quality in zip(task.files, task.qualities, strict=True):
            path = os.path.join(root, task.folder, name)
            photo.save(path, format="JPEG", quality=quality)
            with Image.open(path) as saved:
                phashes[f"{task.folder}/{name}"] = str(imagehash.phash(saved))
                photo = saved.convert("RGB")  # a copy re-saves what the last upload looked like
    return phashes


@dataclass
class _Posting:
    split: str
    posting_id: str
    label_group: int
    product: Product
    title: str
    image: str


def _plan_split(
    split: str,
    sizes: list[int],
    products: list[Product],
    rng: np.random.Generator,
    seed: int,
    titles: TitleStyle,
    photos: PhotoStyle,
    counter: list[int],
) -> tuple[list[_Posting], list[PhotoTask]]:
    folder = f"{split}_images"
    labels = _unique_ints(len(sizes), rng, 10**6, 2**32 - 1)
    ids = _unique_ints(sum(sizes), rng, 10**6, 2**32 - 1)
    postings: list[_Posting] = []
    tasks: list[PhotoTask] = []
    group_files: list[list[str]] = []
    for size, label, product in zip(sizes, labels, products, strict=True):
        shop_names = [_shop_name(rng) for _ in range(size)]
        core_seed = int(rng.integers(2**63))  # the wording sellers of this product copy
        files: list[str] = []  # distinct image files of this group so far
        task_of_file: dict[str, int] = {}
        for j in range(size):
            if files and rng.random() < photos.p_reuse:
                source = files[int(rng.integers(len(files)))]
                if rng.random() < photos.p_reencode:  # re-uploaded copy: new file, same picture
                    name = f"{rng.bytes(16).hex()}.jpg"
                    t = task_of_file[source]
                    tasks[t] = PhotoTask(
                        tasks[t].seed,
                        product,
                        folder,
                        (*tasks[t].files, name),
                        (*tasks[t].qualities, int(rng.integers(55, 90))),
                        tasks[t].shop,
                    )
                    task_of_file[name] = t
                    files.append(name)
                else:
                    name = source
            else:
                name = f"{rng.bytes(16).hex()}.jpg"
                counter[0] += 1
                tasks.append(
                    PhotoTask(
                        (seed, counter[0]),
                        product,
                        folder,
                        (name,),
                        (int(rng.integers(60, 96)),),
                        shop_names[j],
                    )
                )
                task_of_file[name] = len(tasks) - 1
                files.append(name)
            copied = j == 0 or rng.random() < titles.p_copy
            title = make_title(product, rng, titles, core_seed if copied else None)
            postings.append(_Posting(split, f"{split}_{ids[len(postings)]}", label, product, title, name))
        group_files.append(files)
    _borrow_photos(postings, sizes, group_files, products, rng, photos)
    return [postings[i] for i in rng.permutation(len(postings))], tasks


def _borrow_photos(
    postings: list[_Posting],
    sizes: list[int],
    group_files: list[list[str]],
    products: list[Product],
    rng: np.random.Generator,
    photos: PhotoStyle,
) -> None:
    """A few groups post a photo of another group (sellers reuse a sibling's shot)."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    by_family: dict[int, list[int]] = {}
    for g, product in enumerate(products[: len(sizes)]):
        by_family.setdefault(product.family.family_id, []).append(g)
    for g in range(len(sizes)):
        if rng.random() >= photos.p_cross_group or len(sizes) < 2:
            continue
        siblings = [h for h in by_family[products[g].family.family_id] if h != g]
        if siblings:
            donor = int(rng.choice(siblings))
        else:  # any other group
            donor = int((g + 1 + rng.integers(len(sizes) - 1)) % len(sizes))
        row = starts[g] + int(rng.integers(sizes[g]))
        postings[row].image = str(rng.choice(group_files[donor]))


def generate_demo(
    out: str | Path,
    n_train: int = 3000,
    n_test: int = 1000,
    image_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
    workers: int | None = None,
    titles: TitleStyle | None = None,
    photos: PhotoStyle | None = None,
) -> dict[str, object]:
    """Write the demo dataset to ``out`` (atomically) and return a summary."""
    titles = titles or TitleStyle()
    photos = photos or PhotoStyle()
    if n_train < 2:
        raise ShopeeError(f"--n-train must be at least 2, not {n_train}")
    if n_test < 2:
        raise ShopeeError(f"--n-test must be at least 2, not {n_test}")
    if not 32 <= image_size <= 2048:
        raise ShopeeError(f"--image-size must be between 32 and 2048, not {image_size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ShopeeError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ShopeeError(f"{out}: already exists and is not empty; pass --overwrite to replace it")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    train_sizes = sample_group_sizes(n_train, rng)
    test_sizes = sample_group_sizes(n_test, rng)
    products = make_products(len(train_sizes) + len(test_sizes), rng)
    products = [products[i] for i in rng.permutation(len(products))]
    counter = [0]
    style = dict(rng=rng, seed=seed, titles=titles, photos=photos, counter=counter)
    train_posts, train_tasks = _plan_split("train", train_sizes, products[: len(train_sizes)], **style)
    test_posts, test_tasks = _plan_split("test", test_sizes, products[len(train_sizes) :], **style)

    with atomic_dir(out, overwrite=True) as tmp:
        for split in ("train", "test"):
            (tmp / f"{split}_images").mkdir()
        phashes = _render_all(train_tasks + test_tasks, tmp, image_size, workers)
        n_images = _write_tables(tmp, train_posts, test_posts, phashes)
        summary = {
            "seed": seed,
            "image_size": image_size,
            "train_rows": len(train_posts),
            "train_groups": len(train_sizes),
            "test_rows": len(test_posts),
            "test_groups": len(test_sizes),
            "families": len({p.family.family_id for p in products}),
            "images": n_images,
            "seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _render_all(tasks: list[PhotoTask], root: Path, image_size: int, workers: int | None) -> dict[str, str]:
    workers = workers or min(8, os.cpu_count() or 1)
    order = sorted(range(len(tasks)), key=lambda i: tasks[i].product.product_id)  # reuse renders
    chunk = max(1, min(64, len(tasks) // (workers * 4) or 1))
    batches = [[tasks[i] for i in order[s : s + chunk]] for s in range(0, len(order), chunk)]
    phashes: dict[str, str] = {}
    bar = tqdm(total=len(tasks), desc="rendering demo images", unit="img", disable=None)
    if workers == 1:
        for batch in batches:
            phashes.update(_render_tasks(batch, str(root), image_size))
            bar.update(len(batch))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_render_tasks, b, str(root), image_size) for b in batches]
            for future, batch in zip(futures, batches, strict=True):
                phashes.update(future.result())
                bar.update(len(batch))
    bar.close()
    return phashes


def _write_tables(root: Path, train: list[_Posting], test: list[_Posting], phashes: dict[str, str]) -> int:
    """Write the CSVs, remove unreferenced photos, return the number of image files."""

    def table(posts: list[_Posting], with_label: bool) -> pd.DataFrame:
        df = pd.DataFrame(
            {
                "posting_id": [p.posting_id for p in posts],
                "image": [p.image for p in posts],
                "image_phash": [phashes[f"{p.split}_images/{p.image}"] for p in posts],
                "title": [p.title for p in posts],
            }
        )
        if with_label:
            df["label_group"] = [p.label_group for p in posts]
        return df

    table(train, True).to_csv(root / "train.csv", index=False)
    table(test, False).to_csv(root / "test.csv", index=False)
    test_ids = [p.posting_id for p in test]
    pd.DataFrame({"posting_id": test_ids, "label_group": [p.label_group for p in test]}).to_csv(
        root / "test_labels.csv", index=False
    )
    pd.DataFrame({"posting_id": test_ids, "matches": test_ids}).to_csv(
        root / "sample_submission.csv", index=False
    )
    # A photo whose only posting borrowed another group's photo instead is not part of the data.
    used = {f"{p.split}_images/{p.image}" for p in (*train, *test)}
    for name in set(phashes) - used:
        (root / name).unlink()
    return len(used)
