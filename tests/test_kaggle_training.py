"""The training kernel: built, executed here offline on the demo as Kaggle would run it, and its
folds pulled home through the same code as a real ``kaggle pull``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shopee.kaggle_gpu.training import MANIFEST, RUN_RECORD, build_training_kernel, device_groups

ROOT = Path(__file__).resolve().parents[1]


def test_device_groups_pair_folds_and_run_an_odd_one_as_planned() -> None:
    assert device_groups([0, 1, 2, 3, 4], 2) == [([0, 1, 2, 3], "0,1"), ([4], "0")]
    assert device_groups([0, 1, 2, 3, 4], 2, lone_fold_gpus=2) == [([0, 1, 2, 3], "0,1"), ([4], "0+1")]
    assert device_groups([0, 1], 2) == [([0, 1], "0,1")]
    assert device_groups([3], 2, lone_fold_gpus=2) == [([3], "0+1")]
    assert device_groups([0, 1, 2], 2, at_once=1) == [([0, 1, 2], "0")]  # the disk: one at a time
    assert device_groups([0, 1, 2], 2, lone_fold_gpus=2, at_once=1) == [([0, 1, 2], "0+1")]
    assert device_groups([0, 1, 2], 1) == [([0, 1, 2], "0")]
    assert device_groups([0, 1], 0) == [([0, 1], "cpu")]


def test_training_kernel_metadata(tmp_path: Path) -> None:
    kernel = build_training_kernel(
        "exp003",
        [0, 1],
        user="tester",
        out=tmp_path,
        overrides=["epochs=2"],
        resume_from="tester/exp003-train-1",  # an earlier kernel: Kaggle attaches no kernel to itself
    )
    meta = json.loads((kernel.notebook_dir / "kernel-metadata.json").read_text())
    assert meta["id"] == "tester/exp003-train" and kernel.kernel_id == meta["id"]
    assert meta["enable_internet"] is True and meta["enable_gpu"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4" and "docker_image" not in meta
    assert meta["competition_sources"] == ["shopee-product-matching"]
    assert meta["dataset_sources"] == ["tester/exp003-train-dataset"]
    assert meta["kernel_sources"] == ["tester/exp003-train-1"]  # the earlier kernel's output
    manifest = json.loads((kernel.dataset_dir / MANIFEST).read_text())
    assert (
        manifest["exp"] == "exp003" and manifest["folds"] == [0, 1] and manifest["overrides"] == ["epochs=2"]
    )
    files = {f["path"] for f in manifest["files"]}
    assert "exp/exp003.py" in files and "shopee/train.py" in files
    assert not any(p.startswith(("shopee/bench/", "shopee/demo/")) for p in files)
    assert not list(kernel.dataset_dir.rglob("*.safetensors"))  # code only: weights download there
    assert kernel.estimate_hours > 0.5


def test_folds_trained_by_the_kernel_equal_local_training(
    small_demo_dir: Path, tmp_path: Path, capsys
) -> None:
    """The training notebook executed here (offline, CPU, exp003 --debug on folds 0 and 1), its
    working folder pulled as a downloaded version's output, then optimize-ensemble and
    build-kernel on the pulled folds: the same as on the same folds trained locally."""
    from shopee.cli import main
    from shopee.kaggle_gpu.pull import pull
    from shopee.kernel.local import run_kernel

    kernel = build_training_kernel(
        "exp003", [0, 1], user="tester", out=tmp_path / "kernels", debug=True, data_dir=small_demo_dir
    )
    assert (kernel.dataset_dir / "folds-5.csv").read_text() == (small_demo_dir / "folds-5.csv").read_text()
    working, _, _ = run_kernel(kernel.notebook_dir, small_demo_dir, work=tmp_path / "run")
    record = json.loads((working / "output" / RUN_RECORD).read_text())
    assert record["finished"] == [0, 1] and record["unfinished"] == {} and record["debug"] is True

    pulled = tmp_path / "pulled"
    pull(working, pulled, small_demo_dir, exp_file_dir=ROOT / "exp")
    local = tmp_path / "local"
    for fold in ("0", "1"):
        exp = [sys.executable, str(ROOT / "exp" / "exp003.py"), "--fold", fold, "--debug"]
        subprocess.run(
            [*exp, "--data", str(small_demo_dir), "--output", str(local)], check=True, capture_output=True
        )
    for fold in (0, 1):
        for name in ("oof_txt.npy", "dense_txt.npy"):
            a, b = (np.load(root / "exp003" / f"fold{fold}" / name) for root in (pulled, local))
            np.testing.assert_array_equal(a, b)  # same seed, same code: the same embeddings

    ensembles = {}
    for root in (pulled, local):
        argv = ["optimize-ensemble", "exp003", "--data", str(small_demo_dir), "--output", str(root)]
        assert main([*argv, "--name", "k", "--tfidf", "--blend-stages", "1", "--no-heldout"]) == 0
        ensembles[root.name] = json.loads((root / "ensembles" / "k.json").read_text())
        build = [
            "build-kernel",
            "--ensemble",
            str(root / "ensembles" / "k.json"),
            "--name",
            f"shopee-{root.name}",
        ]
        assert main([*build, "--user", "tester", "--out", str(tmp_path / "built")]) == 0
    capsys.readouterr()
    assert ensembles["pulled"]["params"] == ensembles["local"]["params"]
    assert ensembles["pulled"]["cv_f1"] == ensembles["local"]["cv_f1"]
    assert (tmp_path / "built" / "shopee-pulled-dataset" / "models" / "exp003" / "fold1").is_dir()


def test_a_kernel_whose_folds_cannot_fit_the_disk_is_refused(monkeypatch, tmp_path: Path) -> None:
    """Kaggle keeps about 20 GB of /kaggle/working: a run that cannot fit even one fold at a time
    is refused before anything is built, with one line naming the figure."""
    from shopee.errors import ShopeeError
    from shopee.kaggle_gpu import training

    measured = {"parameters": 2_000_000_000, "head_parameters": 0, "embedding_dims": 512}
    fake = {"measured": measured, "lone_fold": {"gpus": 1, "why": "-"}, "machines": []}
    monkeypatch.setattr(training, "kaggle_estimate", lambda cfg: fake)
    monkeypatch.setattr(training, "estimate_hours", lambda cfg, folds: 1.0)
    with pytest.raises(ShopeeError, match=r"need 5\d\.\d GB of /kaggle/working even one at a time"):
        build_training_kernel("exp003", [0, 1], user="tester", out=tmp_path)
    assert not (tmp_path / "exp003-train").exists()
