"""Reading, validating and normalizing a competition directory (``shopee.data``) and ``check-data``."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shopee.cli import main
from shopee.data import (
    COMPETITION,
    decode_escapes,
    find_data_dir,
    load_image,
    normalize_title,
    read_split,
)
from shopee.errors import DataError

TRAIN_HEADER = "posting_id,image,image_phash,title,label_group"
TEST_HEADER = "posting_id,image,image_phash,title"


def write_csv_text(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, str]:
    """sha1 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def single_use_images(data_dir: Path, split: str = "train", n: int = 2) -> list[str]:
    """``n`` image file names each used by exactly one row of the split (so a break hits one row)."""
    images = pd.read_csv(data_dir / f"{split}.csv", dtype=str)["image"]
    counts = images.value_counts()
    names = [name for name in images if counts[name] == 1][:n]
    assert len(names) == n
    return names


def break_two_images(data_dir: Path) -> tuple[str, str]:
    """Delete one train image and overwrite another with garbage; return (missing, corrupt)."""
    missing, corrupt = single_use_images(data_dir)
    (data_dir / "train_images" / missing).unlink()
    (data_dir / "train_images" / corrupt).write_bytes(b"this is not a jpeg\x00\x01\x02" * 10)
    return missing, corrupt


# --------------------------------------------------------------------------------------------
# Titles
# --------------------------------------------------------------------------------------------


def test_decode_escapes_latin_letter() -> None:
    assert decode_escapes(r"Nescafe \xc3\x89clair Latte 220ml") == "Nescafe Éclair Latte 220ml"
    assert normalize_title(r"Nescafe \xc3\x89clair Latte 220ml") == "Nescafe Éclair Latte 220ml"


def test_decode_escapes_emoji_run() -> None:
    assert decode_escapes(r"Promo \xf0\x9f\x94\xa5 Murah") == "Promo \U0001f525 Murah"
    assert normalize_title(r"\xf0\x9f\x94\xa5\xf0\x9f\x94\xa5 HOT") == "\U0001f525\U0001f525 HOT"


def test_decode_escapes_upper_case_hex() -> None:
    assert decode_escapes(r"Cr\xC3\xA8me") == "Crème"


@pytest.mark.parametrize(
    "text",
    [
        r"Kopi \xc3 Susu",  # truncated UTF-8 sequence
        r"Kopi \xzz Susu",  # not hex at all
        r"Kopi \x Susu",
        r"Kopi \xff\xfe Susu",  # bytes that are never valid UTF-8
        "trailing backslash \\",
    ],
)
def test_malformed_escape_kept_literally(text: str) -> None:
    assert decode_escapes(text) == text
    assert normalize_title(text) == " ".join(text.split())


def test_malformed_run_does_not_spoil_a_valid_one() -> None:
    assert normalize_title(r"Caf\xc3\xa9 \xc3 ok") == r"Café \xc3 ok"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Sabun &amp; Shampo", "Sabun & Shampo"),
        ("&quot;Asli&quot; 100%", '"Asli" 100%'),
        ("Kid&#39;s Toy", "Kid's Toy"),
        ("a &lt;b&gt; c", "a <b> c"),
    ],
)
def test_html_entities_decoded(raw: str, expected: str) -> None:
    assert normalize_title(raw) == expected


def test_whitespace_collapsed() -> None:
    assert normalize_title("  Minyak   Goreng\t2L \n Promo  ") == "Minyak Goreng 2L Promo"


def test_entities_and_escapes_together() -> None:
    assert normalize_title(r"  Caf\xc3\xa9  &amp;  Tea ") == "Café & Tea"


@pytest.mark.parametrize("text", ["Wiga Classic Coffee 20Gr", "Café déjà vu", "", "100% ASLI!! [Promo]"])
def test_plain_text_unchanged(text: str) -> None:
    assert decode_escapes(text) == text
    assert normalize_title(text) == text


# --------------------------------------------------------------------------------------------
# find_data_dir
# --------------------------------------------------------------------------------------------


def test_find_data_dir_itself(small_demo_dir: Path) -> None:
    assert find_data_dir(small_demo_dir) == small_demo_dir
    assert find_data_dir(str(small_demo_dir)) == small_demo_dir


def test_find_data_dir_with_only_test_csv(tmp_path: Path) -> None:
    write_csv_text(tmp_path / "test.csv", TEST_HEADER, "a,a.jpg,ff,T")
    assert find_data_dir(tmp_path) == tmp_path


def test_find_data_dir_kaggle_root(tmp_path: Path) -> None:
    comp = tmp_path / COMPETITION
    write_csv_text(comp / "train.csv", TRAIN_HEADER, "a,a.jpg,ff,T,1")
    assert find_data_dir(tmp_path) == comp


def test_find_data_dir_competitions_root(tmp_path: Path) -> None:
    comp = tmp_path / "competitions" / COMPETITION
    write_csv_text(comp / "train.csv", TRAIN_HEADER, "a,a.jpg,ff,T,1")
    assert find_data_dir(tmp_path) == comp


def test_find_data_dir_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        find_data_dir(missing)
    assert str(missing) in str(info.value)


def test_find_data_dir_without_csvs_lists_what_was_tried(tmp_path: Path) -> None:
    (tmp_path / COMPETITION).mkdir()  # present but empty
    with pytest.raises(DataError) as info:
        find_data_dir(tmp_path)
    message = str(info.value)
    for tried in (tmp_path, tmp_path / COMPETITION, tmp_path / "competitions" / COMPETITION):
        assert str(tried) in message
    assert "\n" not in message


def test_find_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    comp = tmp_path / COMPETITION
    write_csv_text(comp / "train.csv", TRAIN_HEADER, "a,a.jpg,ff,T,1")
    monkeypatch.setenv("SHOPEE_DATA", str(tmp_path))
    assert find_data_dir() == comp
    assert find_data_dir(None) == comp


def test_find_data_dir_explicit_path_beats_env(
    tmp_path: Path, small_demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPEE_DATA", str(tmp_path / "elsewhere"))
    assert find_data_dir(small_demo_dir) == small_demo_dir


def test_find_data_dir_env_without_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPEE_DATA", str(tmp_path))
    with pytest.raises(DataError) as info:
        find_data_dir()
    message = str(info.value)
    assert str(tmp_path) in message
    assert "/kaggle/input" in message


# --------------------------------------------------------------------------------------------
# read_split: validation
# --------------------------------------------------------------------------------------------


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    assert str(tmp_path / "train.csv") in str(info.value)
    assert "not found" in str(info.value)


def test_missing_column(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "train.csv", "posting_id,image,image_phash,title", "a,a.jpg,ff,T")
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert str(path) in message
    assert "label_group" in message


def test_missing_column_in_test(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "test.csv", "posting_id,image,image_phash", "a,a.jpg,ff")
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "test")
    assert str(path) in str(info.value)
    assert "title" in str(info.value)


def test_duplicate_posting_id_names_both_lines(tmp_path: Path) -> None:
    path = write_csv_text(
        tmp_path / "train.csv",
        TRAIN_HEADER,
        "a,a.jpg,ff,T,1",  # line 2
        "dup,b.jpg,ff,T,1",  # line 3
        "c,c.jpg,ff,T,2",  # line 4
        "dup,d.jpg,ff,T,2",  # line 5
    )
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert str(path) in message
    assert "line 5" in message
    assert "first at line 3" in message
    assert "dup" in message


def test_empty_posting_id(tmp_path: Path) -> None:
    path = write_csv_text(
        tmp_path / "train.csv",
        TRAIN_HEADER,
        "a,a.jpg,ff,T,1",
        "b,b.jpg,ff,T,1",
        " ,c.jpg,ff,T,2",  # line 4: blank after stripping
    )
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert str(path) in message
    assert "line 4" in message
    assert "posting_id" in message


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    assert str(path) in str(info.value)
    assert "empty" in str(info.value)


def test_header_only_file(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "train.csv", TRAIN_HEADER)
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    assert str(path) in str(info.value)
    assert "no rows" in str(info.value)


@pytest.mark.parametrize("bad", ["12a", "", "1.5", "abc"])
def test_label_group_not_integer(tmp_path: Path, bad: str) -> None:
    path = write_csv_text(
        tmp_path / "train.csv",
        TRAIN_HEADER,
        "a,a.jpg,ff,T,1",
        "b,b.jpg,ff,T,2",
        f"c,c.jpg,ff,T,{bad}",  # line 4
    )
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert str(path) in message
    assert "line 4" in message
    assert "label_group" in message
    assert repr(bad) in message


def test_label_group_spaces_and_sign_accepted(tmp_path: Path) -> None:
    write_csv_text(tmp_path / "train.csv", TRAIN_HEADER, "a,a.jpg,ff,T, 7 ", "b,b.jpg,ff,T,+8")
    df = read_split(tmp_path, "train")
    assert df["label_group"].tolist() == [7, 8]


def test_malformed_csv_too_many_fields(tmp_path: Path) -> None:
    path = write_csv_text(
        tmp_path / "train.csv",
        TRAIN_HEADER,
        "a,a.jpg,ff,T,1",
        "b,b.jpg,ff,T,2",
        "c,c.jpg,ff,T,3,extra",  # line 4
    )
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert str(path) in message
    assert "malformed" in message
    assert "line 4" in message
    assert "\n" not in message


def test_malformed_csv_extra_field_in_first_row(tmp_path: Path) -> None:
    write_csv_text(tmp_path / "test.csv", TEST_HEADER, "a,a.jpg,ff,T,extra", "b,b.jpg,ff,T")
    with pytest.raises(DataError):
        read_split(tmp_path, "test")


def test_line_number_after_blank_line(tmp_path: Path) -> None:
    write_csv_text(tmp_path / "train.csv", TRAIN_HEADER, "a,a.jpg,ff,T,1", "", "b,b.jpg,ff,T,12a")
    with pytest.raises(DataError, match="line 4"):
        read_split(tmp_path, "train")


def test_unknown_image_policy(small_demo_dir: Path) -> None:
    with pytest.raises(DataError, match="bogus"):
        read_split(small_demo_dir, "train", image_policy="bogus")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# read_split: what it returns
# --------------------------------------------------------------------------------------------


def test_read_train(small_demo_dir: Path) -> None:
    df = read_split(small_demo_dir, "train")
    with open(small_demo_dir / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(df) == len(rows) > 0
    assert df["posting_id"].tolist() == [r["posting_id"] for r in rows]
    assert df["title_raw"].tolist() == [r["title"] for r in rows]
    assert df["title"].tolist() == [normalize_title(r["title"]) for r in rows]
    # the demo has literal escapes, which must be decoded in title only
    assert df["title_raw"].str.contains(r"\x", regex=False).any()
    assert not df["title"].str.contains(r"\\x[0-9a-f]{2}", regex=True).any()
    assert (df["title"] != df["title_raw"]).any()
    assert df["label_group"].dtype == np.int64
    assert df["label_group"].tolist() == [int(r["label_group"]) for r in rows]
    assert df["image_ok"].all()
    for image, image_path in zip(df["image"], df["image_path"], strict=True):
        assert Path(image_path) == small_demo_dir / "train_images" / image
        assert Path(image_path).is_file()


def test_read_test(small_demo_dir: Path) -> None:
    df = read_split(small_demo_dir, "test")
    expected = pd.read_csv(small_demo_dir / "test.csv", dtype=str)
    assert len(df) == len(expected) > 0
    assert "label_group" not in df.columns
    assert {"posting_id", "image", "image_phash", "title", "title_raw", "image_path", "image_ok"} <= set(
        df.columns
    )
    assert all(Path(p).is_file() and Path(p).parent.name == "test_images" for p in df["image_path"])


def test_read_split_normalizes_hand_made_titles(tmp_path: Path) -> None:
    raw = r"  Nescafe \xc3\x89clair  &amp; Latte 220ml "
    write_csv_text(tmp_path / "test.csv", TEST_HEADER, f'a,a.jpg,FF00,"{raw}"')
    df = read_split(tmp_path, "test")
    assert df["title"].tolist() == ["Nescafe Éclair & Latte 220ml"]
    assert df["title_raw"].tolist() == [raw]
    assert df["image_phash"].tolist() == ["ff00"]
    assert df["image_path"].tolist() == [""]


def test_read_split_bad_split_name(small_demo_dir: Path) -> None:
    with pytest.raises(ValueError):
        read_split(small_demo_dir, "valid")


def test_without_image_folder(demo_copy: Path) -> None:
    shutil.rmtree(demo_copy / "train_images")
    n_rows = len(pd.read_csv(demo_copy / "train.csv"))
    df = read_split(demo_copy, "train", image_policy="error")
    assert len(df) == n_rows
    assert (df["image_path"] == "").all()
    assert not df["image_ok"].any()
    # the other split still has its images
    assert read_split(demo_copy, "test")["image_path"].map(lambda p: Path(p).is_file()).all()


# --------------------------------------------------------------------------------------------
# Image policy
# --------------------------------------------------------------------------------------------


def test_image_policy_error(demo_copy: Path) -> None:
    break_two_images(demo_copy)
    with pytest.raises(DataError) as info:
        read_split(demo_copy, "train", image_policy="error")
    message = str(info.value)
    assert str(demo_copy / "train.csv") in message
    assert " 2 of " in message
    assert "\n" not in message


def test_image_policy_skip(demo_copy: Path) -> None:
    missing, corrupt = break_two_images(demo_copy)
    full = pd.read_csv(demo_copy / "train.csv", dtype=str)
    df = read_split(demo_copy, "train", image_policy="skip")
    assert len(df) == len(full) - 2
    assert missing not in set(df["image"])
    assert corrupt not in set(df["image"])
    kept = ~full["image"].isin([missing, corrupt])
    assert df["posting_id"].tolist() == full.loc[kept, "posting_id"].tolist()
    assert df["image_ok"].all()
    assert df.index.tolist() == list(range(len(df)))


def test_image_policy_blank(demo_copy: Path) -> None:
    missing, corrupt = break_two_images(demo_copy)
    n_rows = len(pd.read_csv(demo_copy / "train.csv"))
    df = read_split(demo_copy, "train", image_policy="blank")
    assert len(df) == n_rows
    assert sorted(df.loc[~df["image_ok"], "image"]) == sorted([missing, corrupt])
    assert int((~df["image_ok"]).sum()) == 2


def test_check_images_false_skips_the_check(demo_copy: Path) -> None:
    break_two_images(demo_copy)
    df = read_split(demo_copy, "train", image_policy="error", check_images=False)
    assert len(df) == len(pd.read_csv(demo_copy / "train.csv"))


def test_load_image_good(small_demo_dir: Path) -> None:
    path = next((small_demo_dir / "train_images").glob("*.jpg"))
    img = load_image(str(path))
    assert img.mode == "RGB"
    assert img.size == (64, 64)


def test_load_image_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 garbage, not a jpeg")
    with pytest.raises(DataError) as info:
        load_image(str(path), policy="error")
    assert str(path) in str(info.value)
    for policy in ("blank", "skip"):
        img = load_image(str(path), policy=policy, size=(32, 16))
        assert isinstance(img, Image.Image)
        assert img.mode == "RGB"
        assert img.size == (32, 16)


def test_load_image_missing(tmp_path: Path) -> None:
    path = tmp_path / "gone.jpg"
    with pytest.raises(DataError, match="gone.jpg"):
        load_image(str(path))
    assert load_image(str(path), policy="blank").mode == "RGB"


# --------------------------------------------------------------------------------------------
# check-data
# --------------------------------------------------------------------------------------------


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check-data", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *names: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0]


def test_check_data_ok(demo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_check(capsys, "--data", str(demo_copy))
    assert code == 0
    assert err == ""
    assert f"{demo_copy}: ok" in out


def test_check_data_corrupt_image(demo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, corrupt = break_two_images(demo_copy)
    before = snapshot(demo_copy)
    code, out, err = run_check(capsys, "--data", str(demo_copy))
    assert code == 2
    assert_one_error_line(err, str(demo_copy / "train.csv"))
    assert ": ok" not in out
    assert snapshot(demo_copy) == before


def test_check_data_blank_policy_goes_on(demo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    break_two_images(demo_copy)
    code, out, err = run_check(capsys, "--data", str(demo_copy), "--image-policy", "blank", "--json")
    assert code == 0
    assert not err.startswith("error")
    assert f"{demo_copy}: ok" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["train"]["images_blank"] == 2
    assert summary["test"]["images_blank"] == 0


def test_check_data_malformed_csv(demo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = demo_copy / "test.csv"
    with open(path, "a", encoding="utf-8") as f:
        f.write("x,y.jpg,ff,title,one too many\n")
    before = snapshot(demo_copy)
    code, _, err = run_check(capsys, "--data", str(demo_copy))
    assert code == 2
    assert_one_error_line(err, str(path))
    assert snapshot(demo_copy) == before


def test_check_data_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    code, out, err = run_check(capsys, "--data", str(missing))
    assert code == 2
    assert_one_error_line(err, str(missing))
    assert not missing.exists()


def test_check_data_subprocess(demo_copy: Path) -> None:
    """The real entry point: exit status, one stderr line and no traceback; data left byte-identical."""
    good = subprocess.run(
        [sys.executable, "-m", "shopee", "check-data", "--data", str(demo_copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert good.returncode == 0, good.stderr
    assert f"{demo_copy}: ok" in good.stdout

    labels = demo_copy / "train.csv"
    text = labels.read_text(encoding="utf-8").splitlines(keepends=True)
    text[5] = text[5].rstrip("\n").rsplit(",", 1)[0] + ",12a\n"  # line 6
    labels.write_text("".join(text), encoding="utf-8")
    before = snapshot(demo_copy)
    bad = subprocess.run(
        [sys.executable, "-m", "shopee", "check-data", "--data", str(demo_copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert_one_error_line(bad.stderr, str(labels), "line 6", "label_group")
    assert snapshot(demo_copy) == before
