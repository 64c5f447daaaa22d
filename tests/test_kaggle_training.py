"""The training kernel: built, executed here offline on the demo as Kaggle would run it, and its
folds pulled home through the same code as a real ``kaggle pull``."""

from __future__ import annotations

import contextlib
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


def test_training_kernel_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pins = {"sentence-transformers/all-MiniLM-L6-v2": "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"}
    monkeypatch.setenv("SHOPEE_HUB_REVISIONS", json.dumps(pins))  # what fetch printed
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
    notebook = (kernel.notebook_dir / "exp003-train.ipynb").read_text()
    assert "c9745ed1d9f207416be6d2e6f8de32d1f16199bf" in notebook  # the downloads there take the pins
    assert 'os.environ[\\"SHOPEE_HUB_REVISIONS\\"] = json.dumps(HUB_REVISIONS)' in notebook


TWO_STAGES = 'stages=[{"epochs": 1, "train": ["neck", "head"]}, {"epochs": 1, "train": ["all"]}]'


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # replaced while counted
            total += path.stat().st_size if path.is_file() else 0
    return total


class _Session:
    """A training notebook's version run here as Kaggle runs it: its ``/kaggle/working`` watched
    for the bytes it holds (Kaggle keeps about 20 GB: the test's limit is ``plan.disk``'s peak for
    the run), and, when ``kill_when`` appears in it, every training process killed at once (Kaggle's
    12-hour stop, a crash: whatever was written stays, as on Kaggle)."""

    def __init__(self, kill_when: str | None = None) -> None:
        self.kill_when, self.killed, self.peak = kill_when, False, 0

    def run(self, kernel, data: Path, work: Path, sources: dict[str, Path] | None = None) -> Path:
        import os
        import signal
        import threading

        from shopee.kernel.local import run_kernel

        done = threading.Event()
        working = work / "working"

        def watch() -> None:
            while not done.wait(0.02):
                self.peak = max(self.peak, _folder_bytes(working)) if working.is_dir() else self.peak
                if self.kill_when and not self.killed and (working / self.kill_when).is_file():
                    found = subprocess.run(["pgrep", "-f", "shopee train"], capture_output=True, text=True)
                    for pid in map(int, found.stdout.split()):
                        os.killpg(os.getpgid(pid), signal.SIGKILL)  # the launcher and its fold
                        self.killed = True

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            run_kernel(kernel.notebook_dir, data, work=work, kernel_sources=sources)
        finally:
            done.set()
            watcher.join()
        return working


def test_a_killed_kaggle_session_continued_by_a_second_version_equals_local_training(
    small_demo_dir: Path, tmp_path: Path, capsys
) -> None:
    """The training notebook executed here under a /kaggle layout (offline, CPU, exp003 --debug,
    fold 0, two epochs): the first version is killed once the fold has written its first
    checkpoint; a second version with the first's output attached (``--resume-from``) continues
    it. Each version stays under the disk ``plan`` budgets for it; the pulled folds, then
    optimize-ensemble and build-kernel on them, are the same as the same folds trained locally
    without a break."""
    from shopee.cli import main
    from shopee.kaggle_gpu.pull import pull
    from shopee.kaggle_gpu.training import kaggle_estimate
    from shopee.plan import disk
    from shopee.runner import load_experiment

    common = dict(user="tester", debug=True, data_dir=small_demo_dir, overrides=[TWO_STAGES])
    first = build_training_kernel("exp003", [0], out=tmp_path / "kernels", **common)
    assert (first.dataset_dir / "folds-5.csv").read_text() == (small_demo_dir / "folds-5.csv").read_text()
    killed = _Session(kill_when="output/exp003/fold0.partial/last.pt")
    working = killed.run(first, small_demo_dir, tmp_path / "run1")
    assert killed.killed
    record = json.loads((working / "output" / RUN_RECORD).read_text())
    assert record["finished"] == [] and set(record["unfinished"]) == {"0"}
    assert (working / "output" / "exp003" / "fold0.partial" / "last.pt").is_file()

    second = build_training_kernel(
        "exp003",
        [0],
        out=tmp_path / "kernels",
        slug="exp003-train-2",
        resume_from=first.kernel_id,
        **common,
    )
    session = _Session()
    working = session.run(second, small_demo_dir, tmp_path / "run2", sources={"exp003-train": working})
    record = json.loads((working / "output" / RUN_RECORD).read_text())
    assert record["finished"] == [0] and record["unfinished"] == {} and record["debug"] is True
    assert "resuming exp003 fold 0 after epoch" in (working / "output/exp003/fold0/train.log").read_text()

    _, cfg = load_experiment("exp003", [TWO_STAGES])
    budget = disk(cfg, kaggle_estimate(cfg)["measured"], 120, folds=1)  # the small demo's 120 rows
    limit = budget["peak_two_gb" if budget["folds_at_once"] > 1 else "peak_one_gb"] * 1e9
    assert 0 < max(killed.peak, session.peak) <= limit

    pulled = tmp_path / "pulled"
    pull(working, pulled, small_demo_dir, exp_file_dir=ROOT / "exp")
    local = tmp_path / "local"
    for fold in ("0",):
        exp = [
            sys.executable,
            str(ROOT / "exp" / "exp003.py"),
            "--fold",
            fold,
            "--debug",
            "--set",
            TWO_STAGES,
        ]
        subprocess.run(
            [*exp, "--data", str(small_demo_dir), "--output", str(local)], check=True, capture_output=True
        )
    for fold in (0,):
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
    assert (tmp_path / "built" / "shopee-pulled-dataset" / "models" / "exp003" / "fold0").is_dir()


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
