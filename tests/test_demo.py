"""The demo dataset: competition layout, determinism, realistic structure and calibration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shopee.baselines import run_baselines
from shopee.cli import main
from shopee.data import read_split
from shopee.demo import REAL_GROUP_SIZES, generate_demo, sample_group_sizes
from shopee.demo.catalog import TitleStyle, escape_non_ascii, make_products, make_title
from shopee.errors import ShopeeError
from shopee.folds import load_folds


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_layout_matches_the_competition(demo_dir: Path) -> None:
    for name in ("train.csv", "test.csv", "sample_submission.csv", "test_labels.csv"):
        assert (demo_dir / name).is_file()
    train = pd.read_csv(demo_dir / "train.csv", dtype=str)
    test = pd.read_csv(demo_dir / "test.csv", dtype=str)
    assert list(train.columns) == ["posting_id", "image", "image_phash", "title", "label_group"]
    assert list(test.columns) == ["posting_id", "image", "image_phash", "title"]
    assert len(train) == 3000 and len(test) == 1000
    assert train["posting_id"].str.fullmatch(r"train_\d+").all()
    assert test["posting_id"].str.fullmatch(r"test_\d+").all()
    assert train["image_phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    for split, df in (("train", train), ("test", test)):
        files = {p.name for p in (demo_dir / f"{split}_images").iterdir()}
        assert set(df["image"]) == files  # every image is used, every used image exists
    submission = pd.read_csv(demo_dir / "sample_submission.csv", dtype=str)
    assert list(submission.columns) == ["posting_id", "matches"]
    assert list(submission["posting_id"]) == list(test["posting_id"])
    labels = pd.read_csv(demo_dir / "test_labels.csv", dtype={"posting_id": str})
    assert list(labels["posting_id"]) == list(test["posting_id"])
    # The data layer reads it without complaint, images included.
    assert len(read_split(demo_dir, "train")) == 3000
    assert len(read_split(demo_dir, "test")) == 1000


def test_phash_is_the_imagehash_of_the_image(small_demo_dir: Path) -> None:
    train = pd.read_csv(small_demo_dir / "train.csv", dtype=str)
    for row in train.head(20).itertuples():
        with Image.open(small_demo_dir / "train_images" / row.image) as img:
            assert str(imagehash.phash(img)) == row.image_phash


def test_group_sizes_follow_the_real_distribution(demo_dir: Path) -> None:
    train = pd.read_csv(demo_dir / "train.csv")
    test = pd.read_csv(demo_dir / "test_labels.csv")
    sizes = train["label_group"].value_counts()
    assert set(sizes.unique()) <= set(REAL_GROUP_SIZES)
    real = np.repeat(list(REAL_GROUP_SIZES), list(REAL_GROUP_SIZES.values()))
    # Share of groups of size two and mean group size close to the real ones (0.634, 3.11).
    assert abs((sizes == 2).mean() - (real == 2).mean()) < 0.05
    assert abs(sizes.mean() - real.mean()) < 0.6
    assert not set(train["label_group"]) & set(test["label_group"])  # test groups are new products


def test_sample_group_sizes_adds_up_exactly() -> None:
    rng = np.random.default_rng(5)
    for n in (2, 3, 7, 51, 52, 1000):
        sizes = sample_group_sizes(n, rng)
        assert sum(sizes) == n
        assert min(sizes) >= 2
    with pytest.raises(ShopeeError):
        sample_group_sizes(1, rng)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    kwargs = dict(n_train=40, n_test=10, image_size=48)
    generate_demo(tmp_path / "a", seed=7, workers=1, **kwargs)
    generate_demo(tmp_path / "b", seed=7, workers=2, **kwargs)  # the worker count does not matter
    generate_demo(tmp_path / "c", seed=8, workers=1, **kwargs)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    a.pop("demo.json"), b.pop("demo.json"), c.pop("demo.json")  # holds the run time
    assert a == b
    assert a["train.csv"] != c["train.csv"]


def test_siblings_are_hard_negatives(demo_dir: Path) -> None:
    """Some groups share brand and product type and differ only by size, variant or pack."""
    rng = np.random.default_rng(0)
    products = make_products(400, rng)
    by_family: dict[int, list] = {}
    for p in products:
        by_family.setdefault(p.family.family_id, []).append(p)
    siblings = [ps for ps in by_family.values() if len(ps) > 1]
    assert len(siblings) > 40
    for ps in siblings:
        keys = {(p.variant, p.size, p.pack) for p in ps}
        assert len(keys) == len(ps)  # siblings are distinct products ...
        assert len({(p.family.brand, p.family.category.key) for p in ps}) == 1  # ... of one line
    # In the data: many brands appear in more than one label group.
    train = read_split(demo_dir, "train", check_images=False)
    first_word = train["title"].str.lower().str.extract(r"([a-z]+)")[0]
    groups_per_word = train.assign(w=first_word).groupby("w")["label_group"].nunique()
    assert (groups_per_word > 1).sum() > 20


def test_titles_hold_realistic_noise(demo_dir: Path) -> None:
    train = read_split(demo_dir, "train", check_images=False)
    raw = train["title_raw"]
    escaped = raw.str.contains(r"\\x[0-9a-f]{2}", regex=True)
    assert 0.01 < escaped.mean() < 0.06  # the real train.csv: 671 of 34,250 (2 %)
    assert not train.loc[escaped, "title"].str.contains(r"\\x", regex=False).any()  # all decode
    assert raw.str.contains("&amp;", regex=False).any()
    assert raw.str.contains(r"\b\d+ ?(?:gr|g|gram|ml|kg|pcs|mm)\b", case=False, regex=True).mean() > 0.3
    assert (raw.str.upper() == raw).mean() > 0.05  # shouting sellers
    assert raw.str.len().between(5, 357).all()


def test_escape_text_round_trips_through_normalization() -> None:
    from shopee.data import normalize_title

    assert escape_non_ascii("Kopi Éclair 🔥") == r"Kopi \xc3\x89clair \xf0\x9f\x94\xa5"
    rng = np.random.default_rng(1)
    for product in make_products(30, rng):
        title = make_title(product, rng, TitleStyle(p_emoji=1.0, p_escape=0.0))
        assert normalize_title(escape_non_ascii(title)) == normalize_title(title)


def test_baselines_are_calibrated_to_the_real_data(demo_dir: Path) -> None:
    """Whole-set matching on the default demo lands where the real data's figures are."""
    train = read_split(demo_dir, "train", check_images=False)
    result = run_baselines(train, load_folds(demo_dir, train))
    assert 0.43 <= result["self"]["all"] <= 0.49  # real: 0.461
    assert 0.50 <= result["phash"]["all"] <= 0.62  # real: 0.554
    assert 0.65 <= result["tfidf"]["all"] <= 0.80  # real: 0.777 within one fold


def test_cross_group_identical_images_exist(demo_dir: Path) -> None:
    train = pd.read_csv(demo_dir / "train.csv")
    groups_per_image = train.groupby("image")["label_group"].nunique()
    assert 1 <= (groups_per_image > 1).sum() <= 0.05 * train["label_group"].nunique()


def test_cli_refuses_to_overwrite_and_keeps_the_old_data(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    args = ["demo-data", "--out", str(out), "--n-train", "20", "--n-test", "6", "--image-size", "48"]
    assert main(args) == 0
    before = _digest(out)
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(out) in err[0]
    assert _digest(out) == before
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    assert _digest(out)["train.csv"] != before["train.csv"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["train_rows"] == 20 and summary["seed"] == 1


@pytest.mark.parametrize("flag, value", [("--n-train", "1"), ("--n-test", "1"), ("--image-size", "8")])
def test_cli_rejects_bad_sizes(tmp_path: Path, capsys, flag: str, value: str) -> None:
    assert main(["demo-data", "--out", str(tmp_path / "d"), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
    assert not (tmp_path / "d").exists()


def test_cli_unwritable_output_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["demo-data", "--out", str(blocker / "demo"), "--n-train", "4", "--n-test", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "a-file" in err[0]
    assert blocker.read_text() == "not a directory"
