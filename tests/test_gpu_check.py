"""bench gpu-check (make gpu-check): one line and exit 0 without a GPU; on the CPU (``--device cpu``)
its runner times and catches every step on its own, writes the report after each, and exits
non-zero when one failed. The heavy steps (a debug fold, predict, torchrun) are left out here."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shopee.bench import gpu_check
from shopee.bench.gpu_check import (
    REPORT_FILE,
    STEPS,
    CheckOptions,
    failing_tests,
    parse_steps,
    probe_problem,
    pytest_counts,
    rank_reports,
    run_check,
    runtime_phrase,
)
from shopee.cli import main
from shopee.errors import ShopeeError

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_it_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "shopee", "bench", "gpu-check", "--out", str(tmp_path / "check")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith("gpu-check: no CUDA device here (torch ") and line.endswith("nothing to check")
    assert not (tmp_path / "check").exists()


def _boom(opts: CheckOptions, budget_s: float) -> dict:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def _tiny(tmp_path: Path, text_dir: Path, steps: tuple[int, ...]) -> CheckOptions:
    return CheckOptions(
        out=tmp_path / "check",
        device=torch.device("cpu"),
        steps=steps,
        # text only, a tiny random BERT: the steps' logic in seconds, not the real models
        recipe=str(ROOT / "exp" / "exp003.py"),
        bench_exp=str(ROOT / "exp" / "exp003.py"),
        overrides=(f"text_model={text_dir}", "batch_size=4", "eval_batch_size=4"),
        knn_rows=600,
        bench_image_size=32,
        bench_knn_rows=300,
    )


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path: Path, text_dir: Path) -> None:
    steps = [dataclasses.replace(s, run=_boom) if s.number == 6 else s for s in STEPS]
    report = run_check(_tiny(tmp_path, text_dir, (1, 3, 6, 7)), steps)

    assert report == json.loads((tmp_path / "check" / REPORT_FILE).read_text())  # written as returned
    assert report["ok"] is False and report["machine"]["torch"] == torch.__version__
    rows = {r["step"]: r for r in report["steps"]}
    assert [r["name"] for r in report["steps"]] == [s.name for s in STEPS]
    assert rows[1]["ok"] is None and rows[1]["skipped"] == "needs a CUDA device"
    assert rows[2]["ok"] is None and "not selected" in rows[2]["skipped"]

    recipe = rows[3]
    assert recipe["ok"] is True and recipe["error"] is None and recipe["seconds"] > 0
    (row,) = recipe["figures"]["precisions"]  # the CPU computes in fp32 only
    assert row["precision"] == "fp32" and row["finite"] and row["samples_per_s"] > 0
    assert row["weights_changed"] > 0.5 and row["grad_scale"] is None

    failed = rows[6]
    assert failed["ok"] is False and failed["budget_s"] == gpu_check.BUDGET_S["kNN backends"]
    assert failed["error"]["message"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "Traceback" in failed["error"]["tail"] and "_boom" in failed["error"]["tail"]

    bench = rows[7]  # after the failure, still run
    assert bench["ok"] is True and [r["precision"] for r in bench["figures"]["train"]] == ["fp32"]


def test_the_command_exits_non_zero_when_a_step_failed(tmp_path: Path, monkeypatch, capsys) -> None:
    argv = ["bench", "gpu-check", "--device", "cpu", "--steps", "6", "--knn-rows", "600"]
    argv += ["--out", str(tmp_path / "check")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "gpu-check: step 6/7 kNN backends" in out and f"report: {tmp_path / 'check' / REPORT_FILE}" in out
    knn = json.loads((tmp_path / "check" / REPORT_FILE).read_text())["steps"][5]
    assert knn["ok"] is True and knn["figures"]["torch"]["rows_equal_to_torch"] == 1.0

    monkeypatch.setattr(
        gpu_check, "STEPS", tuple(dataclasses.replace(s, run=_boom) if s.number == 6 else s for s in STEPS)
    )
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "6 kNN backends" in captured.out and "FAILED" in captured.out
    assert "error: gpu-check: 1 of 7 steps failed (6 kNN backends)" in captured.err


def test_step_selection_and_its_errors() -> None:
    assert parse_steps("all") == (1, 2, 3, 4, 5, 6, 7)
    assert parse_steps("5,2") == (2, 5) and parse_steps("1-3") == (1, 2, 3)
    for bad in ("two", "0", "8", "1-9", ""):
        with pytest.raises(ShopeeError, match="--steps"):
            parse_steps(bad)


def test_what_the_steps_read_from_their_subprocesses() -> None:
    assert pytest_counts("3 passed, 1 skipped, 402 deselected in 12.31s") == {
        "passed": 3,
        "skipped": 1,
        "deselected": 402,
    }
    assert pytest_counts("==== 1 failed, 2 passed, 1 error in 3.0s ====") == {
        "failed": 1,
        "passed": 2,
        "errors": 1,
    }
    line = (
        "2026-01-01 10:00:00 exp003 fold 0: 320 train rows (98 groups), 80 validation rows; "
        "cuda:0 (Tesla T4, sm_75), fp16 autocast + GradScaler; image weights: -; text: registry package"
    )
    assert runtime_phrase(line) == "cuda:0 (Tesla T4, sm_75), fp16 autocast + GradScaler"
    assert runtime_phrase(
        line.replace("cuda:0 (Tesla T4, sm_75), fp16 autocast + GradScaler", "cpu, float32")
    ) == ("cpu, float32")
    # two ranks' reports written into one line, and torchrun's own chatter around them
    one, two = {"rank": 1, "ok": True}, {"rank": 0, "ok": False}
    output = f'W0101 warning\n{json.dumps(one)}{json.dumps(two)}\n{{"rank" broken\n'
    assert rank_reports(output) == [two, one]
    summary = (
        "FAILED tests/test_train.py::test_amp - AssertionError: loss nan\nERROR tests/test_x.py::test_y\n"
    )
    assert failing_tests(summary) == [
        "tests/test_train.py::test_amp - AssertionError: loss nan",
        "tests/test_x.py::test_y",
    ]
    ranks = [
        {
            "rank": 0,
            "checks": {"mean": False, "barrier": True},
            "errors": {"mean": "RuntimeError: no backend"},
        },
        {"rank": 1, "checks": {"mean": False, "ddp_step": False}, "errors": {}},
    ]
    assert probe_problem(ranks) == "wrong: ddp_step, mean (RuntimeError: no backend)"
