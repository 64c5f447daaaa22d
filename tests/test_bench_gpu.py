"""bench gpu: its steps run on the CPU here (fp32 only); the precisions it would try, with the
GPU's compute capability mocked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shopee.bench.gpu import precisions
from shopee.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "capability, expected", [((7, 5), ["fp32", "fp16"]), ((8, 9), ["fp32", "fp16", "bf16"])]
)
def test_precisions_follow_the_card(monkeypatch, capability, expected) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precisions(torch.device("cuda:0")) == expected
    assert precisions(torch.device("cpu")) == ["fp32"]


def test_bench_gpu_runs_its_steps_on_the_cpu(text_dir: Path, capsys) -> None:
    argv = ["bench", "gpu", "--device", "cpu", "--exp", str(ROOT / "exp" / "exp001.py"), "--image-size", "32"]
    argv += ["--steps", "1", "--embed-batches", "1", "--knn-rows", "600", "--knn-dim", "16"]
    argv += ["--set", f"text_model={text_dir}", "--set", "batch_size=4", "--set", "eval_batch_size=4"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [row["precision"] for row in result["train"]] == ["fp32"]
    assert result["train"][0]["finite"] and result["train"][0]["samples_per_s"] > 0
    assert result["embed"]["precision"] == "fp32"
    assert result["knn"]["torch"]["rows_equal_to_torch"] == 1.0
    if result["knn"]["faiss"] is not None:  # faiss-cpu is installed here: the same neighbours
        assert result["knn"]["faiss"]["rows_equal_to_torch"] == 1.0


def test_bench_gpu_without_a_gpu_says_so(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert main(["bench", "gpu", "--device", "cuda"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
