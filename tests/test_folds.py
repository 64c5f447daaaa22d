"""GroupKFold folds on ``label_group``, saved once beside the data (``shopee.folds``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import shopee.folds
from shopee.data import read_split
from shopee.errors import DataError
from shopee.folds import load_folds, make_folds


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never let a test read or write the user's real ~/.cache/shopee."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SHOPEE_CACHE", str(cache))
    return cache


@pytest.fixture
def train(demo_copy: Path) -> pd.DataFrame:
    return read_split(demo_copy, "train", check_images=False)


def assert_group_folds(labels: np.ndarray, folds: np.ndarray, n_folds: int) -> None:
    assert folds.shape == labels.shape
    assert folds.dtype == np.int64
    per_group = pd.Series(folds).groupby(pd.Series(labels)).nunique()
    assert (per_group == 1).all(), "a label_group is split across folds"
    assert sorted(set(folds.tolist())) == list(range(n_folds))


# --------------------------------------------------------------------------------------------
# make_folds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_folds", [2, 3, 5])
def test_make_folds_groups_stay_together(n_folds: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 40, size=300) * 1_000_003  # large, sparse ids like the real data
    folds = make_folds(labels, n_folds)
    assert_group_folds(labels, folds, n_folds)


def test_make_folds_exactly_as_many_groups_as_folds() -> None:
    labels = np.array([7, 7, 7, 9, 11, 11, 13, 15, 15, 15])
    folds = make_folds(labels, 5)
    assert_group_folds(labels, folds, 5)


def test_make_folds_is_deterministic() -> None:
    labels = np.random.default_rng(1).integers(0, 30, size=200)
    assert np.array_equal(make_folds(labels, 5), make_folds(labels, 5))


def test_make_folds_on_demo(train: pd.DataFrame) -> None:
    labels = train["label_group"].to_numpy()
    assert_group_folds(labels, make_folds(labels, 5), 5)


def test_make_folds_too_few_groups() -> None:
    labels = np.array([1, 1, 2, 2, 3, 3, 3, 3])
    with pytest.raises(DataError, match="3 label groups"):
        make_folds(labels, 5)


@pytest.mark.parametrize("n_folds", [1, 0, -2])
def test_make_folds_n_folds_below_two(n_folds: int) -> None:
    labels = np.arange(20)
    with pytest.raises(DataError, match="at least 2"):
        make_folds(labels, n_folds)


# --------------------------------------------------------------------------------------------
# load_folds
# --------------------------------------------------------------------------------------------


def test_load_folds_writes_file_beside_data(demo_copy: Path, train: pd.DataFrame, cache_dir: Path) -> None:
    folds = load_folds(demo_copy, train)
    assert_group_folds(train["label_group"].to_numpy(), folds, 5)
    path = demo_copy / "folds-5.csv"
    assert path.is_file()
    stored = pd.read_csv(path, dtype={"posting_id": str})
    assert list(stored.columns) == ["posting_id", "fold"]
    assert stored["posting_id"].tolist() == train["posting_id"].tolist()
    assert stored["fold"].tolist() == folds.tolist()
    assert not cache_dir.exists()
    # no temporary files left beside the data
    assert not [p.name for p in demo_copy.iterdir() if p.name.startswith(".")]


def test_load_folds_reads_the_saved_file(
    demo_copy: Path, train: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_folds(demo_copy, train)
    second = load_folds(demo_copy, train)
    assert np.array_equal(first, second)

    # Move a whole group to another fold in the file: the next call must return the edit.
    path = demo_copy / "folds-5.csv"
    stored = pd.read_csv(path, dtype={"posting_id": str})
    group = train["label_group"].iloc[0]
    rows = (train["label_group"] == group).to_numpy()
    new_fold = (int(first[rows][0]) + 1) % 5
    stored.loc[rows, "fold"] = new_fold
    stored.to_csv(path, index=False)

    def no_recompute(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("folds recomputed although the file exists")

    monkeypatch.setattr(shopee.folds, "make_folds", no_recompute)
    third = load_folds(demo_copy, train)
    expected = first.copy()
    expected[rows] = new_fold
    assert np.array_equal(third, expected)
    assert not np.array_equal(third, first)


def test_load_folds_row_aligned_with_train(demo_copy: Path, train: pd.DataFrame) -> None:
    folds = load_folds(demo_copy, train)
    shuffled = train.sample(frac=1.0, random_state=0).reset_index(drop=True)
    again = load_folds(demo_copy, shuffled)
    by_id = dict(zip(train["posting_id"], folds, strict=True))
    assert again.tolist() == [by_id[pid] for pid in shuffled["posting_id"]]


def test_load_folds_separate_file_per_n(demo_copy: Path, train: pd.DataFrame) -> None:
    five = load_folds(demo_copy, train, 5)
    five_bytes = (demo_copy / "folds-5.csv").read_bytes()
    three = load_folds(demo_copy, train, 3)
    assert (demo_copy / "folds-3.csv").is_file()
    assert (demo_copy / "folds-5.csv").read_bytes() == five_bytes
    assert_group_folds(train["label_group"].to_numpy(), three, 3)
    assert np.array_equal(load_folds(demo_copy, train, 5), five)
    assert np.array_equal(load_folds(demo_copy, train, 3), three)


def test_load_folds_for_other_posting_ids(demo_copy: Path, train: pd.DataFrame) -> None:
    folds = make_folds(train["label_group"].to_numpy(), 5)
    ids = train["posting_id"].tolist()
    ids[3] = "train_not_in_this_data"
    path = demo_copy / "folds-5.csv"
    pd.DataFrame({"posting_id": ids, "fold": folds}).to_csv(path, index=False)
    before = path.read_bytes()
    with pytest.raises(DataError) as info:
        load_folds(demo_copy, train)
    message = str(info.value)
    assert str(path) in message
    assert "delete" in message
    assert path.read_bytes() == before  # nothing already written is destroyed


def test_load_folds_file_for_more_rows(demo_copy: Path, train: pd.DataFrame) -> None:
    load_folds(demo_copy, train)
    subset = train.iloc[:-5].reset_index(drop=True)
    with pytest.raises(DataError, match="delete"):
        load_folds(demo_copy, subset)


def test_load_folds_fold_number_out_of_range(demo_copy: Path, train: pd.DataFrame) -> None:
    folds = load_folds(demo_copy, train, 3)
    path = demo_copy / "folds-3.csv"
    folds[0] = 7
    pd.DataFrame({"posting_id": train["posting_id"], "fold": folds}).to_csv(path, index=False)
    with pytest.raises(DataError, match="delete"):
        load_folds(demo_copy, train, 3)


@pytest.mark.parametrize("damage", ["duplicate_id", "non_integer_fold", "empty"])
def test_load_folds_damaged_file_is_a_data_error(demo_copy: Path, train: pd.DataFrame, damage: str) -> None:
    load_folds(demo_copy, train)
    path = demo_copy / "folds-5.csv"
    lines = path.read_text().splitlines(keepends=True)
    if damage == "duplicate_id":
        text = "".join([*lines, lines[1]])
    elif damage == "non_integer_fold":
        lines[2] = lines[2].rsplit(",", 1)[0] + ",x\n"
        text = "".join(lines)
    else:
        text = ""
    path.write_text(text)
    with pytest.raises(DataError):
        load_folds(demo_copy, train)


def test_load_folds_falls_back_to_cache(
    demo_copy: Path, train: pd.DataFrame, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_csv = shopee.folds.write_csv
    data_root = demo_copy.resolve()
    written: list[Path] = []

    def read_only_data(path: str | Path, df: pd.DataFrame) -> None:
        path = Path(path)
        if path.resolve().is_relative_to(data_root):
            raise PermissionError(13, "Read-only file system", str(path))
        written.append(path)
        real_write_csv(path, df)

    monkeypatch.setattr(shopee.folds, "write_csv", read_only_data)
    folds = load_folds(demo_copy, train)
    assert_group_folds(train["label_group"].to_numpy(), folds, 5)
    assert not (demo_copy / "folds-5.csv").exists()
    assert len(written) == 1
    cached = written[0]
    assert cached.is_file()
    assert cached.resolve().is_relative_to(cache_dir.resolve())
    assert cached.name == "folds-5.csv"

    # Reused from the cache: an edit there shows up and nothing is recomputed or rewritten.
    stored = pd.read_csv(cached, dtype={"posting_id": str})
    group = train["label_group"].iloc[0]
    rows = (train["label_group"] == group).to_numpy()
    new_fold = (int(folds[rows][0]) + 2) % 5
    stored.loc[rows, "fold"] = new_fold
    stored.to_csv(cached, index=False)

    def no_recompute(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("folds recomputed although the cached file exists")

    monkeypatch.setattr(shopee.folds, "make_folds", no_recompute)
    again = load_folds(demo_copy, train)
    expected = folds.copy()
    expected[rows] = new_fold
    assert np.array_equal(again, expected)
    assert len(written) == 1


def test_cache_is_per_data_dir(
    demo_copy: Path, small_demo_dir: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two read-only copies of different data must not share a cached folds file."""
    other = Path(shutil.copytree(small_demo_dir, tmp_path / "other" / demo_copy.name))
    train = read_split(demo_copy, "train", check_images=False)
    real_write_csv = shopee.folds.write_csv

    def read_only_data(path: str | Path, df: pd.DataFrame) -> None:
        if not Path(path).resolve().is_relative_to(cache_dir.resolve()):
            raise PermissionError(13, "Read-only file system", str(path))
        real_write_csv(path, df)

    monkeypatch.setattr(shopee.folds, "write_csv", read_only_data)
    load_folds(demo_copy, train)
    load_folds(other, train)
    assert len(list(cache_dir.rglob("folds-5.csv"))) == 2


def test_a_split_made_elsewhere_is_installed_for_this_data(
    small_demo_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The training kernel ships the user's fold split: installed beside the data, or in the cache
    when the data is read-only (a Kaggle input), it is the split load_folds then reads; a data
    folder already holding another split refuses it."""
    from shopee.folds import CACHE_ENV, install_folds

    train = read_split(small_demo_dir, "train", check_images=False)
    made = load_folds(small_demo_dir, train)
    shipped = tmp_path / "shipped.csv"
    rotated = (made + 1) % 5  # any split other than the one this machine would compute
    pd.DataFrame({"posting_id": train["posting_id"], "fold": rotated}).to_csv(shipped, index=False)

    data = Path(shutil.copytree(small_demo_dir, tmp_path / "data", ignore=shutil.ignore_patterns("folds-*")))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    real_write = shopee.folds.write_csv

    def read_only(path: Path, table: pd.DataFrame) -> None:  # as /kaggle/input (root ignores chmod)
        if Path(path).parent == data:
            raise OSError(30, "Read-only file system")
        real_write(path, table)

    monkeypatch.setattr(shopee.folds, "write_csv", read_only)
    where = install_folds(data, train, shipped, 5)
    assert str(where).startswith(str(tmp_path / "cache")) and not (data / "folds-5.csv").exists()
    np.testing.assert_array_equal(load_folds(data, train), rotated)
    writable = Path(shutil.copytree(small_demo_dir, tmp_path / "data2"))  # holds the split made here
    with pytest.raises(DataError, match="another split than"):
        install_folds(writable, train, shipped, 5)
