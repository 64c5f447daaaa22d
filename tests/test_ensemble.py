"""optimize-ensemble: loading OOF across experiments, the search, its outputs and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopee.cli import main
from shopee.constants import EMBEDDING_GRID
from shopee.data import read_split
from shopee.errors import ShopeeError
from shopee.folds import fingerprint_of_dir, load_folds
from shopee.match import match
from shopee.metrics import score_pairs, score_sets
from shopee.oof import combined_embedding, load_oof


def fake_fold(
    out: Path,
    exp: str,
    fold: int,
    index: pd.DataFrame,
    arrays: dict[str, np.ndarray],
    data_dir: Path,
    legacy: bool = False,
) -> None:
    """Write a finished fold in the output contract, as train_fold would (``legacy``: as it did
    before data fingerprints, with the data's path only)."""
    path = out / exp / f"fold{fold}"
    path.mkdir(parents=True)
    index.to_parquet(path / "oof_index.parquet", index=False)
    for kind, array in arrays.items():
        np.save(path / f"oof_{kind}.npy", array.astype(np.float32))
    (path / "model.safetensors").write_bytes(b"")
    (path / "train.log").write_text("")
    data = str(data_dir) if legacy else {"dir": str(data_dir), **fingerprint_of_dir(data_dir, 5).to_dict()}
    (path / "config.json").write_text(json.dumps({"data": data, "config": {}}))
    (path / "metrics.json").write_text(json.dumps({"finished": True, "kinds": list(arrays), "summary": {}}))


def noisy_embeddings(labels: np.ndarray, noise: float, dim: int, seed: int) -> np.ndarray:
    """Each group a random centre plus per-row noise: the noisier, the harder to match."""
    rng = np.random.default_rng(seed)
    _, codes = np.unique(labels, return_inverse=True)
    centres = rng.normal(size=(codes.max() + 1, dim))
    x = centres[codes] + noise * rng.normal(size=(len(labels), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def trained(demo_copy: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two fake experiments on the small demo: exp_a (img, txt, fused) and exp_b (txt), folds 0-2."""
    train = read_split(demo_copy, "train", check_images=False)
    folds = load_folds(demo_copy, train)
    out = tmp_path / "output"
    for fold in (0, 1, 2):
        rows = train.loc[folds == fold]
        index = pd.DataFrame(
            {"posting_id": rows["posting_id"], "label_group": rows["label_group"], "fold": fold}
        )
        labels = index["label_group"].to_numpy()
        fake_fold(
            out,
            "exp_a",
            fold,
            index,
            {
                "img": noisy_embeddings(labels, 1.4, 16, fold),
                "txt": noisy_embeddings(labels, 1.0, 16, 10 + fold),
                "fused": noisy_embeddings(labels, 0.8, 16, 20 + fold),
            },
            demo_copy,
        )
        fake_fold(out, "exp_b", fold, index, {"txt": noisy_embeddings(labels, 1.0, 16, 30 + fold)}, demo_copy)
    return out, demo_copy


def test_load_oof_aligns_experiments(trained: tuple[Path, Path]) -> None:
    out, data = trained
    oof = load_oof(out, ["exp_a", "exp_b"])
    assert oof.folds == [0, 1, 2]
    assert set(oof.embeddings) == {"exp_a:img", "exp_a:txt", "exp_a:fused", "exp_b:txt"}
    assert all(len(a) == len(oof.index) for a in oof.embeddings.values())
    assert not oof.index["posting_id"].duplicated().any()
    assert oof.kinds() == ["fused", "img", "txt"]


def test_missing_fold_is_skipped_and_reported(trained: tuple[Path, Path]) -> None:
    out, _ = trained
    (out / "exp_b" / "fold2" / "metrics.json").unlink()
    oof = load_oof(out, ["exp_a", "exp_b"])
    assert oof.folds == [0, 1]
    assert any("exp_b fold2" in note for note in oof.skipped)
    assert any("exp_a fold2" in note for note in oof.skipped)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_experiment", "no such experiment"),
        ("no_fold", "no finished fold"),
        ("nan", "NaN"),
        ("rows", "rows"),
        ("other_rows", "validation rows differ"),
    ],
)
def test_load_oof_errors(trained: tuple[Path, Path], damage: str, message: str) -> None:
    out, _ = trained
    exps = ["exp_a", "exp_b"]
    fold0 = out / "exp_b" / "fold0"
    if damage == "no_experiment":
        exps = ["exp_a", "exp_zzz"]
    elif damage == "no_fold":
        for f in (0, 1, 2):
            (out / "exp_b" / f"fold{f}" / "metrics.json").unlink()
    elif damage == "nan":
        a = np.load(fold0 / "oof_txt.npy")
        a[3, 0] = np.nan
        np.save(fold0 / "oof_txt.npy", a)
    elif damage == "rows":
        np.save(fold0 / "oof_txt.npy", np.load(fold0 / "oof_txt.npy")[:-1])
    else:
        index = pd.read_parquet(fold0 / "oof_index.parquet")
        index.loc[0, "posting_id"] = "train_other"
        index.to_parquet(fold0 / "oof_index.parquet", index=False)
    with pytest.raises(ShopeeError, match=message):
        load_oof(out, exps)


def test_combined_embedding_cosine_is_the_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 4))
    b = rng.normal(size=(5, 3))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    c = combined_embedding([a, b], [1.0, 2.0])
    expected = (1 * (a @ a.T) + 4 * (b @ b.T)) / 5
    np.testing.assert_allclose(c @ c.T, expected, atol=1e-6)


def test_optimize_ensemble_end_to_end(trained: tuple[Path, Path], capsys) -> None:
    out, data = trained
    code = main(
        [
            "optimize-ensemble",
            "exp_a",
            "exp_b",
            "--data",
            str(data),
            "--name",
            "v1",
            "--output",
            str(out),
            "--tfidf",
            "--phash",
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert summary["name"] == "v1" and set(summary) == {"name", "cv_f1_fold", "cv_f1_all", "members"}
    assert {"exp_a_fused", "exp_a_txt", "exp_b_txt", "cat_txt", "tfidf", "phash"} <= set(summary["members"])

    ensemble = json.loads((out / "ensembles" / "v1.json").read_text())
    assert ensemble["experiments"] == {"exp_a": [0, 1, 2], "exp_b": [0, 1, 2]}
    assert ensemble["data"]["dir"] == str(data.resolve()) and ensemble["format"] == 2
    assert ensemble["data"]["train_sha256"] == fingerprint_of_dir(data, 5).train_sha256
    for name in ("report.md", "f1_threshold.png", "similarity_hist.png", "f1_by_group_size.png"):
        assert (out / "ensembles" / "v1" / name).stat().st_size > 0
    assert "Each rule added in turn" in (out / "ensembles" / "v1" / "report.md").read_text()

    # The stored params reproduce the stored score when matched again from scratch.
    oof = load_oof(out, ["exp_a", "exp_b"])
    train = read_split(data, "train", check_images=False).set_index("posting_id").loc[oof.index["posting_id"]]
    embeddings = dict(oof.embeddings)
    for source, parts in ensemble["combined_sources"].items():
        embeddings[source] = combined_embedding(
            [oof.embeddings[p["source"]] for p in parts], [p["weight"] for p in parts]
        )
    pairs = match(
        ensemble["params"],
        len(oof.index),
        embeddings=embeddings,
        titles=train["title"].to_numpy(),
        phashes=train["image_phash"].to_numpy(),
    )
    f1 = score_pairs(*pairs.with_self(), oof.labels).mean().f1
    assert np.isclose(f1, ensemble["cv_f1_all"])

    # Each member alone: the threshold and F1 reported are the best of a brute-force sweep scored
    # by the set-based metric (another code path than the search's one-pass curves).
    ids = oof.index["posting_id"].to_numpy()
    truths = [set(ids[oof.labels == label]) for label in oof.labels]
    for name in ("exp_a_fused", "exp_b_txt"):
        source = name.replace("exp_a_", "exp_a:").replace("exp_b_", "exp_b:")
        sweep = []
        for threshold in EMBEDDING_GRID:
            member = {"name": name, "type": "embedding", "source": source, "threshold": float(threshold)}
            found = match({"version": 1, "members": [member]}, len(ids), embeddings=embeddings)
            rows, cols = found.with_self()
            predicted = [set(ids[cols[rows == i]]) for i in range(len(ids))]
            sweep.append(score_sets(predicted, truths).f1)
        chosen = int(np.argmin(np.abs(EMBEDDING_GRID - ensemble["members"][name]["threshold"])))
        assert ensemble["members"][name]["all"] == pytest.approx(max(sweep))
        assert sweep[chosen] == pytest.approx(max(sweep))  # (plateaus: any best threshold will do)


def test_optimize_ensemble_bad_input_is_one_line(trained: tuple[Path, Path], capsys) -> None:
    out, data = trained
    assert (
        main(["optimize-ensemble", "exp_nope", "--data", str(data), "--name", "x", "--output", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exp_nope" in err[0]
    assert not (out / "ensembles").exists()


def test_the_search_unites_members_that_see_different_products(trained: tuple[Path, Path], capsys) -> None:
    """exp_img sees the even groups clearly and the odd ones not at all; exp_txt the reverse. Each
    alone stays low, their union is nearly perfect: the search must find the union (and min2 or
    blending must not undo it)."""
    out, data = trained
    train = read_split(data, "train", check_images=False)
    folds = load_folds(data, train)
    rng = np.random.default_rng(7)
    for fold in (0, 1, 2):
        rows = train.loc[folds == fold]
        index = pd.DataFrame(
            {"posting_id": rows["posting_id"], "label_group": rows["label_group"], "fold": fold}
        )
        labels = index["label_group"].to_numpy()
        _, codes = np.unique(labels, return_inverse=True)
        clear = noisy_embeddings(labels, 0.2, 32, fold)
        lost = rng.normal(size=clear.shape)  # no group information at all
        lost /= np.linalg.norm(lost, axis=1, keepdims=True)
        even = (codes % 2 == 0)[:, None]
        fake_fold(out, "exp_img", fold, index, {"img": np.where(even, clear, lost)}, data)
        fake_fold(out, "exp_txt", fold, index, {"txt": np.where(even, lost, clear)}, data)
    argv = [
        "optimize-ensemble",
        "exp_img",
        "exp_txt",
        "--data",
        str(data),
        "--name",
        "u",
        "--output",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    ensemble = json.loads((out / "ensembles" / "u.json").read_text())
    alone = max(m["all"] for m in ensemble["members"].values())
    assert alone < 0.85 and ensemble["cv_f1_all"] > max(0.95, alone + 0.1)
    assert {m["name"] for m in ensemble["params"]["members"]} == {"exp_img_img", "exp_txt_txt"}


def test_folds_of_another_train_csv_are_refused(trained: tuple[Path, Path]) -> None:
    out, data = trained
    other = json.loads((out / "exp_b" / "fold1" / "config.json").read_text())
    other["data"]["train_sha256"] = "f" * 64
    (out / "exp_b" / "fold1" / "config.json").write_text(json.dumps(other))
    with pytest.raises(ShopeeError, match="exp_b/fold1: trained on other data than"):
        load_oof(out, ["exp_a", "exp_b"])


def test_folds_from_before_fingerprints_get_theirs_recorded(demo_copy: Path, tmp_path: Path) -> None:
    """Folds trained before data fingerprints hold their data's path: while it is there, the
    fingerprint is computed and written into their config.json once."""
    train = read_split(demo_copy, "train", check_images=False)
    folds = load_folds(demo_copy, train)
    out = tmp_path / "output"
    rows = train.loc[folds == 0]
    index = pd.DataFrame({"posting_id": rows["posting_id"], "label_group": rows["label_group"], "fold": 0})
    labels = index["label_group"].to_numpy()
    fake_fold(out, "old", 0, index, {"txt": noisy_embeddings(labels, 1.0, 8, 0)}, demo_copy, legacy=True)
    notes: list[str] = []
    oof = load_oof(out, ["old"], log=notes.append)
    assert oof.data == fingerprint_of_dir(demo_copy, 5)
    assert len(notes) == 1 and "recorded the fingerprint" in notes[0]
    config = json.loads((out / "old" / "fold0" / "config.json").read_text())
    assert config["data"]["train_sha256"] == oof.data.train_sha256 and config["data"]["dir"] == str(demo_copy)
    load_oof(out, ["old"], log=notes.append)
    assert len(notes) == 1  # written once

    shutil.rmtree(tmp_path / "gone", ignore_errors=True)
    fake_fold(
        out, "older", 0, index, {"txt": noisy_embeddings(labels, 1.0, 8, 0)}, tmp_path / "gone", legacy=True
    )
    with pytest.raises(ShopeeError, match="trained before data fingerprints.*is gone"):
        load_oof(out, ["older"])
