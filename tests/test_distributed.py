"""Data-parallel training under torchrun, on CPU with gloo and two processes.

The model is a tiny BERT without dropout whose BatchNorm neck is frozen (stage: text and head):
nothing then depends on how a global batch is split, and a 2-process run must reproduce a
1-process run with the same global batch (tolerance 1e-5 on losses and embeddings: float sums
in another order). Dropout, augmentation and unfrozen BatchNorm statistics are per process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import transformers

from conftest import TINY_BERT_WORDS

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
TOL = 1e-5


@pytest.fixture(scope="module")
def ddp_exp(tmp_path_factory: pytest.TempPathFactory, small_demo_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(TINY_BERT_WORDS) + "\n")
    model = root / "bert"
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model)
    transformers.BertConfig(
        vocab_size=len(TINY_BERT_WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ).save_pretrained(model)
    exp = root / "expddp.py"
    exp.write_text(
        f'''"""A tiny text model for the data-parallel tests."""
from shopee import Config, run

CFG = Config(
    image_model="",
    text_model={str(model)!r},
    text_pretrained=False,
    fusion="none",
    stages=[{{"epochs": 2, "train": ["text", "head"]}}],
    batch_size=16,
    eval_batch_size=16,
    num_workers=0,
    lr_text=1e-3,
)
if __name__ == "__main__":
    raise SystemExit(run(CFG, __file__))
'''
    )
    return exp, Path(shutil.copytree(small_demo_dir, root / "data"))  # the shared demo stays untouched


def _train(
    exp: Path, data: Path, out: Path, processes: int, *extra: str, check: bool = True
) -> subprocess.CompletedProcess:
    command = [sys.executable, str(exp), "--fold", "0", "--data", str(data), "--output", str(out), *extra]
    if processes > 1:
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
        ]
        command = [*torchrun, *command[1:]]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _outputs(out: Path) -> tuple[list[list[float]], np.ndarray, np.ndarray]:
    fold = out / "expddp" / "fold0"
    metrics = json.loads((fold / "metrics.json").read_text())
    return (
        [e["step_losses"] for e in metrics["epochs"]],
        np.load(fold / "oof_txt.npy"),
        np.load(fold / "dense_txt.npy"),
    )


def test_two_processes_reproduce_one(ddp_exp, tmp_path: Path) -> None:
    exp, data = ddp_exp
    _train(exp, data, tmp_path / "one", 1)
    two = _train(exp, data, tmp_path / "two", 2)
    losses1, oof1, dense1 = _outputs(tmp_path / "one")
    losses2, oof2, dense2 = _outputs(tmp_path / "two")
    assert [len(e) for e in losses1] == [len(e) for e in losses2] == [6, 6]  # 96 rows, global batch 16
    np.testing.assert_allclose(np.concatenate(losses2), np.concatenate(losses1), atol=TOL)
    np.testing.assert_allclose(oof2, oof1, atol=TOL)  # gathered in the original row order
    np.testing.assert_allclose(dense2, dense1.astype(np.float32), atol=1e-3)  # stored as fp16
    log = (tmp_path / "two" / "expddp" / "fold0" / "train.log").read_text()
    assert "data parallel on 2 processes: batch 8 per process, 16 global" in log
    assert log.count("weights identical on the 2 processes") == 2  # the head's too, after every epoch
    assert two.stdout.count("expddp fold 0 done") == 1  # only rank 0 reports ...
    assert two.stdout.count('"exp": "expddp"') == 1  # ... and prints the result line


def _kill_rank_after_first_epoch(command: list[str], checkpoint: Path) -> subprocess.CompletedProcess:
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    while not checkpoint.is_file() and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_file(), "the run never wrote its first checkpoint"
    children = subprocess.run(
        ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True
    ).stdout.split()
    victim = next(
        int(pid) for pid in children if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    )
    os.kill(victim, signal.SIGKILL)
    out, err = launcher.communicate(timeout=300)
    return subprocess.CompletedProcess(command, launcher.returncode, out, err)


def test_a_killed_rank_fails_the_run_cleanly_and_resume_finishes_it(ddp_exp, tmp_path: Path) -> None:
    exp, data = ddp_exp
    _train(exp, data, tmp_path / "unbroken", 2)
    out = tmp_path / "killed"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*torchrun, str(exp), "--fold", "0", "--data", str(data), "--output", str(out)]
    killed = _kill_rank_after_first_epoch(command, out / "expddp" / "fold0.partial" / "last.pt")
    assert killed.returncode != 0
    errors = [
        line for line in (killed.stdout + killed.stderr).splitlines() if line.startswith("error: rank 0")
    ]
    assert len(errors) == 1 and "fold0.partial" in errors[0] and "--resume" in errors[0], killed.stderr[
        -2000:
    ]
    assert (out / "expddp" / "fold0.partial").is_dir() and not (out / "expddp" / "fold0").exists()

    resumed = _train(exp, data, out, 2, "--resume")
    assert "resuming expddp fold 0 after epoch 1/2" in resumed.stdout
    _, oof_unbroken, _ = _outputs(tmp_path / "unbroken")
    _, oof_resumed, _ = _outputs(out)
    np.testing.assert_allclose(oof_resumed, oof_unbroken, atol=TOL)


def test_folds_side_by_side_with_one_summary(ddp_exp, tmp_path: Path) -> None:
    exp, data = ddp_exp
    command = [sys.executable, "-m", "shopee", "train", str(exp), "--folds", "0-1", "--gpus", "cpu,cpu"]
    command += ["--data", str(data), "--output", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [row["fold"] for row in summary["folds"]] == [0, 1] and summary["failed"] == []
    assert all(0 < row["cv_f1"] <= 1 for row in summary["folds"])
    for fold in (0, 1):
        assert (tmp_path / "expddp" / f"fold{fold}" / "metrics.json").is_file()
    started = [line for line in proc.stdout.splitlines() if "started on cpu" in line]
    assert len(started) == 2

    # A fold that fails is reported, the others still run, and the exit status says so.
    again = [*command[:6], "0-2", *command[7:], "--set", "text_model=/no/such/model"]
    failing = subprocess.run(again, capture_output=True, text=True, env=ENV, timeout=600)
    assert failing.returncode == 2
    rows = json.loads(failing.stdout.strip().splitlines()[-1])
    assert rows["failed"] == [2]  # folds 0 and 1 are finished already: skipped, not retrained
    assert "fold 2: FAILED (exit 2): error:" in failing.stdout and "/no/such/model" in failing.stdout
    assert failing.stderr.strip().splitlines()[-1] == "error: 1 of 3 folds failed (see their logs)"


@pytest.mark.parametrize("world", [2, 3])
def test_neg_sampling_pairs_stay_whole_on_every_process(world: int) -> None:
    """Head "neg_sampling" reads batches of pairs (a row, then another of its group): a global
    batch whose per-process slice is odd would tear pairs apart and leave rows without their
    positive, so it is refused; an even slice keeps every pair on one process."""
    from shopee.config import Config, ConfigError
    from shopee.distributed import Dist
    from shopee.sampling import epoch_indices

    with pytest.raises(ConfigError, match=f"use a multiple of {2 * world}"):
        Dist(0, world).per_process(3 * world, pairs=True)
    assert Dist(0, world).per_process(3 * world) == 3  # no pairs: any split is fine
    labels = np.repeat(np.arange(40), 3)
    cfg = Config(head="neg_sampling", batch_size=4 * world)
    order = epoch_indices(labels, cfg, epoch=0)
    for rank in range(world):
        mine = Dist(rank, world).shard(order, cfg.batch_size)
        assert len(mine) and len(mine) % 2 == 0
        assert (labels[mine[0::2]] == labels[mine[1::2]]).all()
