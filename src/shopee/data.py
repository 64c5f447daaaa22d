"""Read a competition directory in Kaggle's layout, validate it and normalize its titles.

Layout (``shopee-product-matching``)::

    train.csv   posting_id, image, image_phash, title, label_group
    test.csv    posting_id, image, image_phash, title
    sample_submission.csv
    train_images/  test_images/   (optional: text-only use of the CSVs works without them)
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from shopee.constants import COMPETITION, IMAGE_POLICIES
from shopee.errors import DataError

KAGGLE_INPUT_ROOT = Path("/kaggle/input")
DATA_ENV = "SHOPEE_DATA"

SPLITS = ("train", "test")
TEST_COLUMNS = ["posting_id", "image", "image_phash", "title"]
TRAIN_COLUMNS = [*TEST_COLUMNS, "label_group"]
ImagePolicy = str  # one of IMAGE_POLICIES


# --------------------------------------------------------------------------------------------
# Finding the data
# --------------------------------------------------------------------------------------------


def _holds_data(path: Path) -> bool:
    return (path / "train.csv").is_file() or (path / "test.csv").is_file()


def candidate_dirs(root: Path) -> list[Path]:
    """Where the competition data may sit under ``root`` (itself, or a Kaggle input root)."""
    return [root, root / COMPETITION, root / "competitions" / COMPETITION]


def find_data_dir(path: str | Path | None = None) -> Path:
    """Resolve the competition directory.

    ``path`` may be the competition directory itself or a Kaggle input root holding it at
    ``<root>/shopee-product-matching`` or ``<root>/competitions/shopee-product-matching``.
    Without ``path``, ``$SHOPEE_DATA`` and then ``/kaggle/input`` are searched.
    """
    if path is not None:
        roots = [Path(path)]
        if not roots[0].exists():
            raise DataError(f"{path}: no such directory")
    else:
        roots = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
        roots.append(KAGGLE_INPUT_ROOT)
    tried: list[Path] = []
    for root in roots:
        for candidate in candidate_dirs(root):
            tried.append(candidate)
            if _holds_data(candidate):
                return candidate
    raise DataError(
        "no competition data (train.csv or test.csv) found; looked in "
        + ", ".join(str(p) for p in tried)
        + " (pass --data DIR)"
    )


# --------------------------------------------------------------------------------------------
# Titles
# --------------------------------------------------------------------------------------------

_ESCAPE_RUN = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")
_SPACES = re.compile(r"\s+")


def _decode_escape_run(match: re.Match[str]) -> str:
    text = match.group(0)
    raw = bytes(int(text[i + 2 : i + 4], 16) for i in range(0, len(text), 4))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return text  # malformed: keep the literal text rather than guess


def decode_escapes(text: str) -> str:
    r"""Decode literal UTF-8 escape text: ``Nescafe \xc3\x89clair`` becomes ``Nescafe Éclair``."""
    if "\\x" not in text:
        return text
    return _ESCAPE_RUN.sub(_decode_escape_run, text)


def normalize_title(text: str) -> str:
    """Decode literal ``\\xNN`` UTF-8 escapes and HTML entities, collapse white space."""
    text = html.unescape(decode_escapes(text))
    return _SPACES.sub(" ", text).strip()


# --------------------------------------------------------------------------------------------
# Reading and validating a split
# --------------------------------------------------------------------------------------------


def read_csv_checked(path: Path, columns: Iterable[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a CSV as strings and check it is non-empty, well-formed and has ``columns``.

    Blank lines are dropped. Returns the rows and each row's 1-based line number in the file, so
    errors can point at it.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: malformed CSV: {reason}") from None
    if not isinstance(df.index, pd.RangeIndex):
        # pandas takes the first column as an index when the first data row has one field too many
        raise DataError(f"{path}: malformed CSV: line 2 has more fields than the header ({len(df.columns)})")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))})"
        )
    blank = (df == "").all(axis=1).to_numpy()
    lines = np.flatnonzero(~blank) + 2  # the header is line 1
    df = df.loc[~blank].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{path}: no rows after the header")
    return df, lines


def _validate_ids(path: Path, df: pd.DataFrame, lines: np.ndarray) -> None:
    ids = df["posting_id"].str.strip()
    empty = np.flatnonzero((ids == "").to_numpy())
    if empty.size:
        raise DataError(f"{path}: line {lines[empty[0]]}: column posting_id is empty")
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((ids == ids.iloc[row]).to_numpy())[0])
        raise DataError(
            f"{path}: line {lines[row]}: duplicate posting_id {ids.iloc[row]!r} "
            f"(first at line {lines[first]})"
        )


def _parse_label_group(path: Path, df: pd.DataFrame, lines: np.ndarray) -> np.ndarray:
    values = df["label_group"]
    text = values.str.strip()
    ok = text.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise DataError(
            f"{path}: line {lines[row]}: column label_group: {values.iloc[row]!r} is not an integer"
        )
    try:
        return text.astype("int64").to_numpy()
    except (OverflowError, ValueError):
        raise DataError(f"{path}: column label_group: a value does not fit in 64 bits") from None


def read_split(
    data_dir: str | Path,
    split: str = "train",
    image_policy: ImagePolicy = "error",
    check_images: bool = True,
) -> pd.DataFrame:
    """Read and validate ``train.csv`` or ``test.csv`` of a competition directory.

    Returns one row per posting with ``posting_id, image, image_phash, title_raw, title``
    (normalized), ``label_group`` (int64, train only) and ``image_path`` (absolute path, or empty
    when the image directory is absent). With ``check_images`` every image is opened (header
    only) and missing or unreadable ones are handled by ``image_policy``: ``error`` stops,
    ``skip`` drops those rows, ``blank`` keeps them with ``image_ok`` false (loaders substitute a
    blank image).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if image_policy not in IMAGE_POLICIES:
        raise DataError(f"image policy {image_policy!r} is not one of {', '.join(IMAGE_POLICIES)}")
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.csv"
    columns = TRAIN_COLUMNS if split == "train" else TEST_COLUMNS
    raw, lines = read_csv_checked(path, columns)
    _validate_ids(path, raw, lines)

    df = pd.DataFrame(
        {
            "posting_id": raw["posting_id"].str.strip(),
            "image": raw["image"].str.strip(),
            "image_phash": raw["image_phash"].str.strip().str.lower(),
            "title_raw": raw["title"],
            "title": raw["title"].map(normalize_title),
        }
    )
    if split == "train":
        df["label_group"] = _parse_label_group(path, raw, lines)

    images_dir = data_dir / f"{split}_images"
    if images_dir.is_dir():
        df["image_path"] = [str(images_dir / name) if name else "" for name in df["image"]]
    else:
        df["image_path"] = ""
    df["image_ok"] = df["image_path"] != ""
    if check_images and images_dir.is_dir():
        df = apply_image_policy(df, path, lines, image_policy)
    return df.reset_index(drop=True)


def _image_problem(path: str) -> str | None:
    """Why an image cannot be used, or None. Opens the header only (fast)."""
    if not path:
        return "no file name"
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - parsing the header is the check
    except FileNotFoundError:
        return "missing"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__})"
    return None


def apply_image_policy(
    df: pd.DataFrame, csv_path: Path, lines: np.ndarray, policy: ImagePolicy
) -> pd.DataFrame:
    """Check every image of ``df`` and apply ``policy`` to the missing or unreadable ones."""
    problems = [
        _image_problem(p)
        for p in tqdm(
            df["image_path"],
            desc=f"checking {csv_path.stem} images",
            leave=False,
            disable=None,
            mininterval=1.0,
        )
    ]
    bad = np.array([p is not None for p in problems], dtype=bool)
    if not bad.any():
        return df
    row = int(np.flatnonzero(bad)[0])
    first = f"first: line {lines[row]}, {df['image'].iloc[row] or '(empty)'}: {problems[row]}"
    summary = f"{csv_path}: {int(bad.sum())} of {len(df)} images missing or unreadable ({first})"
    if policy == "error":
        raise DataError(summary + "; use image policy 'skip' or 'blank' to go on")
    print(f"warning: {summary}; policy {policy!r}", flush=True)
    if policy == "skip":
        return df.loc[~bad]
    df = df.copy()
    df.loc[bad, "image_ok"] = False
    return df


def load_image(path: str, policy: ImagePolicy = "error", size: tuple[int, int] = (256, 256)) -> Image.Image:
    """Decode an RGB image; a broken one raises (policy ``error``) or becomes blank (otherwise).

    A JPEG much larger than ``size`` is decoded at a reduced scale (draft mode, still at least
    ``size``): several times faster on full-size photos.
    """
    try:
        with Image.open(path) as img:
            img.draft("RGB", size)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        if policy == "error":
            raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
        return Image.new("RGB", size, (255, 255, 255))
