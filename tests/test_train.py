"""Experiment files end to end: debug runs as subprocesses, the output contract, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_text_config
from shopee.data import read_split
from shopee.folds import load_folds

ROOT = Path(__file__).resolve().parents[1]
# progress lines however quick the step (a debug epoch takes seconds)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "SHOPEE_PROGRESS_MIN_SECONDS": "0"}


def run_exp(exp: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "exp" / f"{exp}.py"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{exp} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("exp, kinds", [("exp001", ["img", "txt", "fused"]), ("exp003", ["txt"])])
def test_debug_run_writes_the_fold_contract(
    demo_dir: Path, tmp_path: Path, exp: str, kinds: list[str]
) -> None:
    out = tmp_path / "output"
    proc = run_exp(exp, "--fold", "1", "--data", str(demo_dir), "--debug", "--output", str(out))
    summary = last_json(proc)
    assert summary["exp"] == exp and summary["fold"] == 1
    assert summary["kind"] in kinds and 0 < summary["cv_f1"] <= 1
    fold_dir = out / exp / "fold1"
    for name in ("config.json", "model.safetensors", "oof_index.parquet", "metrics.json", "train.log"):
        assert (fold_dir / name).is_file(), name
    assert not (out / exp / "fold1.partial").exists()
    assert not list(fold_dir.glob("*.tmp")) and not (fold_dir / "last.pt").exists()

    index = pd.read_parquet(fold_dir / "oof_index.parquet")
    assert list(index.columns) == ["posting_id", "label_group", "fold"]
    train = read_split(demo_dir, "train", check_images=False)
    folds = load_folds(demo_dir, train)
    expected = train.loc[folds == 1]
    assert list(index["posting_id"]) == list(expected["posting_id"])  # exactly the validation rows
    assert list(index["label_group"]) == list(expected["label_group"])
    assert (index["fold"] == 1).all()
    for kind in kinds:
        array = np.load(fold_dir / f"oof_{kind}.npy")
        assert array.shape[0] == len(index)
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-4)
    assert sorted(p.stem[4:] for p in fold_dir.glob("oof_*.npy")) == sorted(kinds)

    config = json.loads((fold_dir / "config.json").read_text())
    assert config["seed"] == 42 and config["debug"] is True and config["git_commit"]
    assert config["config"]["image_size"] <= 64 or not config["config"]["image_model"]
    assert config["data"]["train_sha256"] and config["data"]["rows"] == len(train)
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert metrics["finished"] is True and metrics["summary"] == summary
    epoch = metrics["epochs"][-1]
    assert set(epoch["scores"]) == set(kinds)
    for score in epoch["scores"].values():
        assert {"f1", "threshold", "recall@1", "recall@5", "recall@10"} <= set(score)
    assert np.isfinite(epoch["loss"])

    # Off a terminal (a pipe, a log file) the epoch still shows its progress, in train.log too.
    assert "epoch 1: 33% (1/3 batches" in proc.stdout and "validation: " in proc.stdout
    assert "epoch 1: 67% (2/3 batches" in (fold_dir / "train.log").read_text()

    # A finished fold is left alone without --overwrite.
    before = (fold_dir / "model.safetensors").stat().st_mtime_ns
    again = run_exp(exp, "--fold", "1", "--data", str(demo_dir), "--debug", "--output", str(out))
    assert "already finished" in again.stdout and last_json(again) == summary
    assert (fold_dir / "model.safetensors").stat().st_mtime_ns == before


def _kill_after_first_epoch(cmd: list[str], checkpoint: Path) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "epoch 1/2" in line:
            break
    deadline = time.time() + 60
    while not checkpoint.is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.is_file(), "the run died before writing its first checkpoint"


def test_resume_gives_the_uninterrupted_result(demo_dir: Path, tmp_path: Path) -> None:
    two_stages = '[{"epochs": 1, "train": ["neck", "head"]}, {"epochs": 1, "train": ["all"]}]'
    common = ["--fold", "0", "--data", str(demo_dir), "--debug", "--set", f"stages={two_stages}"]
    run_exp("exp003", *common, "--output", str(tmp_path / "a"))
    run_exp("exp003", *common, "--output", str(tmp_path / "b"))
    cmd = [sys.executable, str(ROOT / "exp" / "exp003.py"), *common, "--output", str(tmp_path / "c")]
    _kill_after_first_epoch(cmd, tmp_path / "c" / "exp003" / "fold0.partial" / "last.pt")
    assert not (tmp_path / "c" / "exp003" / "fold0").exists()  # no finished-looking output
    resumed = run_exp("exp003", *common, "--output", str(tmp_path / "c"), "--resume")
    assert "resuming exp003 fold 0 after epoch 1/2" in resumed.stdout

    a, b, c = (np.load(tmp_path / x / "exp003" / "fold0" / "oof_txt.npy") for x in "abc")
    np.testing.assert_array_equal(a, b)  # same seed, same embeddings
    np.testing.assert_array_equal(a, c)  # a killed and resumed run ends where an unbroken one does
    metrics = json.loads((tmp_path / "c" / "exp003" / "fold0" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]


@pytest.mark.parametrize(
    "args, named",
    [
        (["--fold", "7"], "--fold 7"),
        (["--fold", "0", "--set", "epochz=2"], "epochz"),
        (["--fold", "0", "--set", "epochs=two"], "epochs"),
        (["--fold", "0", "--set", "text_model=no-such-org/no-such-model"], "no-such-org/no-such-model"),
        (["--fold", "0", "--data", "/no/such/dir"], "/no/such/dir"),
    ],
)
def test_bad_input_is_one_line(demo_dir: Path, tmp_path: Path, args: list[str], named: str) -> None:
    if "--data" not in args:
        args = [*args, "--data", str(demo_dir)]
    proc = run_exp("exp003", *args, "--debug", "--output", str(tmp_path), check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and named in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_bench_train_prints_rates_and_ratios(demo_copy: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shopee",
            "bench",
            "train",
            "--data",
            str(demo_copy),
            "--exp",
            str(ROOT / "exp" / "exp001.py"),
            "--batches",
            "2",
            "--set",
            "image_size=32",
            "--set",
            "batch_size=8",
            "--set",
            "eval_batch_size=8",
            "--set",
            "num_workers=0",
            "--set",
            "n_folds=2",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["exp"] == "exp001" and result["device"] == "cpu" and result["precision"] == "fp32"
    for key in ("train_loader_per_s", "train_tensors_per_s", "embed_loader_per_s", "embed_tensors_per_s"):
        assert result[key] > 0
    assert np.isclose(
        result["train_ratio"], result["train_loader_per_s"] / result["train_tensors_per_s"], rtol=0.01
    )


def test_the_schedule_ends_with_the_epoch_it_was_sized_for(
    demo_copy: Path, text_dir: Path, tmp_path: Path
) -> None:
    """Balanced resampling draws more rows than the fold has: the cosine schedule must be sized
    from what an epoch really yields, or it runs past its end and the learning rate rises again."""
    from shopee.config import Config
    from shopee.sampling import epoch_length
    from shopee.train import load_fold_data, train_fold

    cfg = Config(
        image_model="",
        text_model=str(text_dir),
        text_pretrained=False,
        fusion="none",
        balanced=True,
        min_per_class=4,
        batch_size=8,
        epochs=1,
        warmup=0.0,
        num_workers=0,
    )
    data = load_fold_data(cfg, demo_copy, 0, debug=False)
    assert epoch_length(data.train_labels, cfg) > len(data.train) + 2 * cfg.batch_size  # the case at hand
    train_fold(cfg, "sched", 0, demo_copy, tmp_path / "output")
    history = json.loads((tmp_path / "output" / "sched" / "fold0" / "metrics.json").read_text())["epochs"]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine's end, not past it


def test_skip_leaves_bad_images_out_of_training_only(demo_copy: Path, tmp_path: Path) -> None:
    """image_policy=skip: rows with broken images train no more, but the folds (shared by every
    experiment) and the validation rows scored stay those of the whole train.csv."""
    from shopee.config import Config
    from shopee.train import train_fold

    train = read_split(demo_copy, "train", check_images=False)
    folds = load_folds(demo_copy, train)  # another experiment already made the folds
    folds_file = (demo_copy / "folds-5.csv").read_text()
    broken = [train.index[folds != 0][0], train.index[folds == 0][0]]  # one training, one validation row
    for row in broken:
        (demo_copy / "train_images" / train.loc[row, "image"]).write_bytes(b"not a jpeg")
    cfg = Config(
        image_model="tf_efficientnet_lite0",
        image_pretrained=False,
        text_model="",
        fusion="none",
        image_policy="skip",
        num_workers=0,
    )
    summary = train_fold(cfg, "skip", 0, demo_copy, tmp_path, debug=True)
    assert 0 <= summary["cv_f1"] <= 1
    out = tmp_path / "skip" / "fold0"
    index = pd.read_parquet(out / "oof_index.parquet")
    assert list(index["posting_id"]) == list(train.loc[folds == 0, "posting_id"])  # the broken one too
    config = json.loads((out / "config.json").read_text())
    assert config["n_train"] == int((folds != 0).sum()) - 1
    assert "1 training rows with unusable images left out" in (out / "train.log").read_text()
    assert (demo_copy / "folds-5.csv").read_text() == folds_file


def test_runs_are_tracked_in_mlflow_and_listed_from_the_outputs(demo_copy: Path, tmp_path: Path) -> None:
    """A debug run logs its config and per-epoch metrics to the SQLite store under the output
    folder; ``runs`` lists the fold from the files alone."""
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "output"
    env = {k: v for k, v in ENV.items() if k != "MLFLOW_TRACKING_URI"}
    two_stages = '[{"epochs": 1, "train": ["neck", "head"]}, {"epochs": 1, "train": ["all"]}]'
    args = [
        "--fold",
        "0",
        "--data",
        str(demo_copy),
        "--debug",
        "--output",
        str(out),
        "--set",
        f"stages={two_stages}",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "exp" / "exp003.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("exp003").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "fold0 debug"
    assert run.data.params["lr_text"] == "0.0001" and run.data.params["stages"].startswith("[{")
    assert run.data.tags["output"].endswith("exp003/fold0") and run.data.tags["git_commit"]
    history = client.get_metric_history(run.info.run_id, "txt.f1")
    assert [m.step for m in history] == [1, 2] and all(0 <= m.value <= 1 for m in history)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert "txt.recall_at_1" in run.data.metrics

    listed = subprocess.run(
        [sys.executable, "-m", "shopee", "runs", "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout.strip().splitlines()[-1])["folds"]
    assert [(r["exp"], r["fold"], r["epochs"]) for r in rows] == [("exp003", 0, 2)]
    assert rows[0]["cv_f1"] == run.data.metrics["cv_f1"]


def _scripted_f1(monkeypatch: pytest.MonkeyPatch, f1s: list[float]) -> list[np.ndarray]:
    """Make the per-epoch CV F1 follow ``f1s`` (fold by fold, epoch by epoch); the embeddings each
    call scored are returned, in order."""
    import shopee.train

    scored: list[np.ndarray] = []
    real = shopee.train.evaluate_embeddings

    def scripted(embeddings: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
        scored.append(np.array(embeddings))
        return {**real(embeddings, labels, k), "f1": f1s[len(scored) - 1]}

    monkeypatch.setattr(shopee.train, "evaluate_embeddings", scripted)
    return scored


def test_early_stopping_keeps_the_best_epochs_weights(
    demo_copy: Path, text_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shopee.outputs import FoldRecord
    from shopee.train import train_fold

    cfg = tiny_text_config(text_dir, epochs=8, early_stopping_patience=2)
    scored = _scripted_f1(monkeypatch, [0.50, 0.70, 0.60, 0.65, 0.90, 0.95])
    summary = train_fold(cfg, "es", 0, demo_copy, tmp_path / "output")
    fold = tmp_path / "output" / "es" / "fold0"
    metrics = json.loads((fold / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4]  # 2 epochs without a gain: stop
    assert metrics["best_epoch"] == 2 and summary["cv_f1"] == 0.70
    assert metrics["summary"] == summary
    assert not (fold / "best.pt").exists() and not (fold / "last.pt").exists()
    # the OOF embeddings are those of epoch 2's weights, not of the last epoch's
    oof = FoldRecord.open(fold).oof("txt")
    np.testing.assert_allclose(oof, scored[1], atol=1e-6)
    assert not np.allclose(oof, scored[3], atol=1e-4)
    log = (fold / "train.log").read_text()
    assert "early stopping: no better CV F1 for 2 epochs since epoch 2" in log
    assert "keeping the weights of epoch 2" in log
    # what picking epoch 2 on these very rows added, against the last epoch trained (0.65)
    assert FoldRecord.open(fold).selection_gain == pytest.approx(0.70 - 0.65)
    from shopee.ensemble import selection_gain

    assert selection_gain(tmp_path / "output", {"es": [0]}) == {"gain": 0.05, "folds": {"es:0": 0.05}}


def test_full_data_run_takes_its_epochs_from_the_cv_folds(
    demo_copy: Path, text_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shopee.errors import ShopeeError
    from shopee.outputs import FoldRecord, finished_folds, is_finished
    from shopee.train import train_fold

    out = tmp_path / "output"
    cfg = tiny_text_config(text_dir, epochs=6, early_stopping_patience=1)
    with pytest.raises(ShopeeError, match="train the folds first, or --set full_epochs=N"):
        train_fold(cfg, "es", "full", demo_copy, out)
    # fold 0 peaks at epoch 2, fold 1 at epoch 3: the full run trains round(2.5) = 3 epochs
    _scripted_f1(monkeypatch, [0.5, 0.6, 0.4, 0.5, 0.6, 0.7, 0.6])
    train_fold(cfg, "es", 0, demo_copy, out)
    train_fold(cfg, "es", 1, demo_copy, out)
    summary = train_fold(cfg, "es", "full", demo_copy, out)
    full = out / "es" / "full"
    assert summary["fold"] == "full" and summary["epochs"] == 3 and summary["cv_f1"] is None
    assert is_finished(full) and not (full / "oof_index.parquet").exists()
    record = FoldRecord.open(full)
    assert record.is_full and record.name == "es/full"
    assert record.meta["n_train"] == len(read_split(demo_copy, "train", check_images=False))
    assert "median best epoch of the CV folds (fold 0: 2, fold 1: 3)" in record.meta["epochs_from"]
    assert len(record.metrics["epochs"]) == 3 and "cv_f1" not in record.metrics["epochs"][0]
    assert finished_folds(out, "es")[0] == [0, 1]  # the full run is no fold of the CV
    # a fixed number of epochs needs no CV folds; more than the schedule holds is refused
    fixed = train_fold(cfg.with_overrides(["full_epochs=2"]), "fixed", "full", demo_copy, out)
    assert fixed["epochs"] == 2
    with pytest.raises(ShopeeError, match="full_epochs=9 exceeds the schedule's 6 epochs"):
        train_fold(cfg.with_overrides(["full_epochs=9"]), "fixed", "full", demo_copy, out, overwrite=True)


def _phased_f1(monkeypatch: pytest.MonkeyPatch, table: dict[str, dict[int, float]], phase: list[str]):
    """The CV F1 of epoch e is ``table[phase[0]][e]`` (the phase switched by the test between a
    killed run and its resume: a GPU does not retrain an epoch bit for bit); the embeddings
    scored are kept by (phase, epoch)."""
    import shopee.train

    scored: dict[tuple[str, int], np.ndarray] = {}
    epoch = {"now": 0}
    real_epoch, real_eval = shopee.train._one_epoch, shopee.train.evaluate_embeddings

    def one_epoch(run, e, *args):
        epoch["now"] = e + 1
        return real_epoch(run, e, *args)

    def scripted(embeddings: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
        scored[(phase[0], epoch["now"])] = np.array(embeddings)
        return {**real_eval(embeddings, labels, k), "f1": table[phase[0]][epoch["now"]]}

    monkeypatch.setattr(shopee.train, "_one_epoch", one_epoch)
    monkeypatch.setattr(shopee.train, "evaluate_embeddings", scripted)
    return scored


@pytest.mark.parametrize("killed_before", ["last.pt", "best.pt", "metrics.json"])
def test_a_kill_between_two_writes_keeps_weights_and_metrics_together(
    demo_copy: Path, text_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_before: str
) -> None:
    """Epoch 2 is a new best, and the run is killed before one of its writes; the resume retrains
    what the checkpoint lacks and scores it lower (as a GPU may: not bit for bit), then early
    stopping keeps the best epoch of the history it ends with. The fold's OOF embeddings are those
    that epoch's weights gave, whichever write the kill fell before."""
    import shopee.train
    from shopee.outputs import FoldRecord
    from shopee.train import train_fold

    cfg = tiny_text_config(text_dir, epochs=6, early_stopping_patience=2)
    phase = ["killed"]
    table = {"killed": {1: 0.70, 2: 0.80}, "resumed": {2: 0.60, 3: 0.65, 4: 0.66, 5: 0.5}}
    scored = _phased_f1(monkeypatch, table, phase)

    def kill_at_epoch_2(real, writes_epoch):
        def write(*args, **kwargs):
            if writes_epoch(*args) == 2:
                raise KeyboardInterrupt(f"killed before {killed_before}")
            return real(*args, **kwargs)

        return write

    patches = {
        "last.pt": ("_save_checkpoint", lambda run, scheduler, epoch: epoch),
        "best.pt": ("_save_best", lambda run, epoch: epoch),
        "metrics.json": (
            "write_json",
            lambda path, data: len(data.get("epochs", [])) if "epochs" in data else 0,
        ),
    }
    name, epoch_of = patches[killed_before]
    real = getattr(shopee.train, name)
    monkeypatch.setattr(shopee.train, name, kill_at_epoch_2(real, epoch_of))
    output = tmp_path / "output"
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, "kill", 0, demo_copy, output)
    monkeypatch.setattr(shopee.train, name, real)

    phase[0] = "resumed"
    train_fold(cfg, "kill", 0, demo_copy, output, resume=True)
    fold = output / "kill" / "fold0"
    metrics = json.loads((fold / "metrics.json").read_text())
    resumed_after = 1 if killed_before == "last.pt" else 2
    f1s = [e["cv_f1"] for e in metrics["epochs"]]
    assert f1s[:resumed_after] == [0.70, 0.80][:resumed_after]
    best = metrics["best_epoch"]
    assert best == (1 if resumed_after == 1 else 2)  # the retrained epoch 2 scored 0.60
    expected = scored[("killed" if best <= resumed_after else "resumed", best)]
    np.testing.assert_allclose(FoldRecord.open(fold).oof("txt"), expected, atol=1e-6)
    assert metrics["summary"]["cv_f1"] == f1s[best - 1]


def test_a_resume_of_another_config_starts_over(demo_copy: Path, text_dir: Path, tmp_path: Path) -> None:
    """A restored ``.partial`` made by another config (another --set, a --debug run) is no start:
    the fold starts over and says why, instead of failing in every continuation."""
    import shopee.train
    from shopee.train import train_fold

    output = tmp_path / "output"
    partial = output / "other" / "fold0.partial"
    partial.mkdir(parents=True)
    other = tiny_text_config(text_dir, epochs=1, seed=7)
    torch_save = {"config": other.to_dict(), "debug": False, "epoch": 1}
    import torch

    torch.save(torch_save, partial / "last.pt")
    cfg = tiny_text_config(text_dir, epochs=1)
    summary = train_fold(cfg, "other", 0, demo_copy, output, resume=True)
    log = (output / "other" / "fold0" / "train.log").read_text()
    line = next(x for x in log.splitlines() if shopee.train.STARTED_OVER in x)
    assert "cannot be resumed: it was made with another config (seed=7 in the checkpoint, 42 here)" in line
    assert summary["cv_f1"] > 0
    from shopee.kaggle_gpu.training import write_run_record

    record = write_run_record(output, "other", [0], [], False, 1.0)
    assert record["finished"] == [0] and "seed=7 in the checkpoint" in record["started_over"]["0"]
