"""``plan``: the architecture's parameters and FLOPs measured offline, and the estimates'
arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shopee.cli import main
from shopee.outputs import FoldRecord
from shopee.plan import MACHINES, OPTIMIZER_BYTES, estimate, measure
from shopee.runner import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def _cfg(exp: str, *overrides: str):
    return load_experiment(str(ROOT / "exp" / f"{exp}.py"), list(overrides))[1]


def test_flops_and_activations_follow_the_image_area() -> None:
    small = measure(_cfg("exp002", "image_size=64"), n_classes=50)
    large = measure(_cfg("exp002", "image_size=128"), n_classes=50)
    assert large["parameters"] == small["parameters"] > 3e6  # EfficientNet-Lite0 and its head
    assert large["flops_forward"] / small["flops_forward"] == pytest.approx(4.0, rel=0.05)
    assert large["flops_forward"] == pytest.approx(0.25e9, rel=0.05)  # bench embed's figure at 128 px
    assert 2.0 < large["activation_bytes"] / small["activation_bytes"] < 4.5  # feature maps, and a fixed part


def test_memory_and_time_estimates_by_hand() -> None:
    cfg = _cfg("exp002", "batch_size=10", "epochs=2", "image_size=128")
    measured = {
        "parameters": 1_000_000,
        "trained": 600_000,
        "flops_train": 3e9,
        "flops_forward": 1e9,
        "activation_bytes": 2**20,
        "precision": "fp16/bf16",
        "head_parameters": 100_000,
        "embedding_dims": 64,
    }
    est = estimate(cfg, measured, train_rows=10_000)
    memory = (600_000 * OPTIMIZER_BYTES + 400_000 * 4 + 10 * 2**20) / 2**30 + 1.0
    assert est["memory_gb"] == pytest.approx(memory)
    assert est["fold_train_rows"] == 8_000 and est["epochs"] == 2
    h100 = next(r for r in est["machines"] if r["machine"].startswith("H100"))
    machine = next(m for m in MACHINES if m.name.startswith("H100"))
    rate = machine.tflops * 1e12
    decode = lambda n: n * 2.26 * 1.5 / 1000 / machine.cores  # noqa: E731 - 128 px, one core per image
    epoch = max(8_000 * 3e9 / rate, decode(8_000)) + max(2_000 * 1e9 / rate, decode(2_000))
    assert h100["epoch_s"] == pytest.approx(epoch)
    assert h100["fold_s"] == pytest.approx(2 * epoch + max(8_000 * 1e9 / rate, decode(8_000)))


def test_plan_command_prints_its_table_and_one_json_line(capsys) -> None:
    assert main(["plan", str(ROOT / "exp" / "exp055.py"), "--set", "image_size=64"]) == 0
    out = capsys.readouterr().out
    assert "eca_nfnet_l1 @64" in out and "estimates" in out and "T4 x2 (Kaggle)" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["exp"] == "exp055" and result["n_classes"] == 8_812  # a fold's share of 11,014 groups
    # timm's eca_nfnet_l1 (38.3 M), the BN neck, and the ArcFace head: 3,072 x classes
    assert result["parameters"] == pytest.approx(38.3e6 + 3072 * 8_812, rel=0.01)
    assert len(result["machines"]) == len(MACHINES)


def test_kernel_runtime_follows_its_cost_model(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The README's demo ensemble (exp001 at 128 px, 2 folds, + exp003, 2 folds) priced by hand:
    a pass takes max(decoding once, the busier GPU) + tokenizing + loading its models; matching
    5 searches x 3 s + 54.7 s x 1.5; 138 s fixed."""
    from shopee.config import Config
    from shopee.kernel import runtime

    rows = 70_000  # the README's per-row FLOPs (image + title) at 1 TFLOPS (depthwise) and 4 (text)
    per_row = {"img": (0.25e9 + 0.69e9) / 1e12, "txt": 0.69e9 / 4e12}

    def seconds(record: FoldRecord, cache: dict) -> float:
        return per_row["img" if record.config.image_model else "txt"]

    monkeypatch.setattr(runtime, "_forward_seconds", seconds)
    image, text = Config(image_size=128), Config(image_model="", fusion="none")
    records = [
        FoldRecord(tmp_path / exp / f"fold{k}", {"exp": exp, "fold": k, "n_classes": 10}, cfg)
        for exp, cfg in (("exp001", image), ("exp003", text))
        for k in (0, 1)
    ]
    member = {"type": "embedding", "source": "x", "threshold": 0.5, "blend": []}
    params = {"members": [{**member, "blend": [0.5, 0.6]}, member, member, {"type": "tfidf"}]}  # 5 searches
    est = runtime.estimate_runtime(records, params)
    decode, tokenize = rows * 2.26e-3 * 1.5 / 1.6, rows * 0.19e-3 * 1.5
    assert [len(p["models"]) for p in est["passes"]] == [2, 2]  # folds reading the same batches share a pass
    assert est["passes"][0]["seconds"] == pytest.approx(max(decode, rows * per_row["img"]) + tokenize + 6)
    assert est["passes"][1]["seconds"] == pytest.approx(rows * per_row["txt"] + tokenize + 6)
    assert est["matching_s"] == pytest.approx(5 * 3 + 54.7 * 1.5)
    assert est["seconds"] == pytest.approx(est["embedding_s"] + est["matching_s"] + 138) and est["fits"]
    assert est["seconds"] == pytest.approx(447, abs=2)  # the README: 174 + 38 + 97 + 138
    one_gpu = runtime.estimate_runtime(records, params, gpus=1)
    assert one_gpu["passes"][1]["gpu_s"] == pytest.approx(2 * est["passes"][1]["gpu_s"])
    flipped = runtime.estimate_runtime(records, params, tta="flip")
    assert flipped["passes"][0]["gpu_s"] == pytest.approx(2 * est["passes"][0]["gpu_s"])
    assert flipped["passes"][1]["gpu_s"] == pytest.approx(est["passes"][1]["gpu_s"])  # no image to flip
    half = runtime.estimate_runtime(records, params, rows=35_000)
    assert half["matching_s"] == pytest.approx(5 * 3 / 4 + 54.7 * 1.5 / 2)  # kNN quadratic in rows


def test_depthwise_convolutions_are_recognized() -> None:
    """The runtime estimate prices a model with depthwise convolutions at the slower rate."""
    from shopee.config import Config

    lite = measure(Config(image_size=64, text_model="", fusion="none"), 10, backward=False)
    text = measure(Config(image_model="", fusion="none"), 10, backward=False)
    assert lite["depthwise"] and not text["depthwise"] and lite["flops_forward"] > 0


def test_kernel_runtime_adds_a_shipped_pair_models_second_stage(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A bundle shipping a pair model runs its second stage after the members' lists: 33.7 s on
    70,000 rows measured on this project's 2-core Xeon (README, "A second stage"), 50.55 s on
    Kaggle's cores at 1.5x slower; half of that at 35,000 rows (pairs from k-bounded lists)."""
    from shopee.config import Config
    from shopee.kernel import runtime

    monkeypatch.setattr(runtime, "_forward_seconds", lambda record, cache: 1e-3)
    text = Config(image_model="", fusion="none")
    records = [FoldRecord(tmp_path / "exp003" / "fold0", {"exp": "exp003", "fold": 0, "n_classes": 10}, text)]
    params = {"members": [{"type": "embedding", "source": "x", "threshold": 0.5, "blend": []}]}
    without = runtime.estimate_runtime(records, params)
    with_pairs = runtime.estimate_runtime(records, params, pair_model=True)
    assert with_pairs["seconds"] - without["seconds"] == pytest.approx(50.55)
    assert with_pairs["matching_s"] - without["matching_s"] == pytest.approx(50.55)
    assert with_pairs["pair_stage_s"] == pytest.approx(50.55) and without["pair_stage_s"] == 0
    half = runtime.estimate_runtime(records, params, rows=35_000, pair_model=True)
    assert half["pair_stage_s"] == pytest.approx(25.275)
    assert "with the pair model's 0.8" in runtime.describe_runtime(with_pairs)


def test_kaggle_disk_by_hand() -> None:
    """A training fold keeps last.pt (12 bytes a parameter), twice while it is replaced, and with
    early stopping best.pt (4 bytes); a finished fold its float16 weights without heads and its
    embeddings. Hand-worked for 500 M parameters (100 M of them heads), 1,000 embedding dims,
    10,000 rows in 5 folds: arrays 1,000 x (4 x 2,000 + 2 x 8,000) = 24 MB."""
    from shopee.plan import disk

    measured = {"parameters": 500_000_000, "head_parameters": 100_000_000, "embedding_dims": 1000}
    plain = disk(_cfg("exp002"), measured, 10_000)
    assert plain["training_fold_gb"] == pytest.approx(12.024)  # 2 x 6 GB + 24 MB
    assert plain["finished_fold_gb"] == pytest.approx(0.824)  # 2 x 400 M + 24 MB
    assert plain["peak_two_gb"] == pytest.approx(2 * 12.024 + 3 * 0.824)  # 26.52: over 19
    assert plain["peak_one_gb"] == pytest.approx(12.024 + 4 * 0.824)  # 15.32
    assert plain["folds_at_once"] == 1
    stopping = disk(_cfg("exp002", "early_stopping_patience=2"), measured, 10_000)
    assert stopping["training_fold_gb"] == pytest.approx(14.024) and stopping["folds_at_once"] == 1
    two = disk(_cfg("exp002"), measured, 10_000, folds=2)  # a kernel of two folds: 2 x 12.024 > 19
    assert two["folds_at_once"] == 1
    small = disk(_cfg("exp002"), {**measured, "parameters": 150_000_000, "head_parameters": 0}, 10_000)
    assert small["folds_at_once"] == 2  # 2 x 3.624 + 3 x 0.324 = 8.22
    huge = disk(_cfg("exp002"), {**measured, "parameters": 800_000_000}, 10_000)
    assert huge["folds_at_once"] == 0  # 19.224 for one training fold alone
