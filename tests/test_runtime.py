"""The precision policy, device and memory format (CUDA capability mocked: no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from shopee.config import Config, ConfigError
from shopee.runtime import Runtime, pick_precision

CUDA = torch.device("cuda:0")
CPU = torch.device("cpu")
T4, P100, A100, L4 = (7, 5), (6, 0), (8, 0), (8, 9)


@pytest.mark.parametrize(
    "amp, device, capability, expected",
    [
        ("auto", CPU, None, "fp32"),  # CPU: always float32
        ("bf16", CPU, None, "fp32"),
        ("auto", CUDA, T4, "fp16"),  # Kaggle's T4: no bf16 tensor cores
        ("auto", CUDA, P100, "fp16"),
        ("auto", CUDA, A100, "bf16"),
        ("auto", CUDA, L4, "bf16"),
        ("fp16", CUDA, A100, "fp16"),
        ("bf16", CUDA, A100, "bf16"),
        ("off", CUDA, A100, "fp32"),
        ("off", CUDA, T4, "fp32"),
    ],
)
def test_precision_policy(amp: str, device: torch.device, capability, expected: str) -> None:
    assert pick_precision(amp, device, capability) == expected


def test_bf16_on_a_card_without_it_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match=r"compute capability 8\.0.*7\.5.*amp='auto' or 'fp16'") as info:
        pick_precision("bf16", CUDA, T4)
    assert "\n" not in str(info.value)


def test_t4_gets_fp16_with_a_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect this policy fixes: ``torch.cuda.is_bf16_supported()`` counts emulation and says
    True on a T4, so the old code trained in bf16 without tensor cores and without a scaler."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: T4)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    runtime = Runtime.for_config(Config(), CUDA)
    assert runtime.precision == "fp16" and runtime.uses_grad_scaler
    assert runtime.channels_last and runtime.pin_memory

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: A100)
    runtime = Runtime.for_config(Config(), CUDA)
    assert runtime.precision == "bf16" and not runtime.uses_grad_scaler


def test_cpu_runtime_runs_plain_float32() -> None:
    runtime = Runtime.for_config(Config(amp="auto", channels_last=True), CPU)
    assert (runtime.precision, runtime.channels_last, runtime.pin_memory) == ("fp32", False, False)
    assert not runtime.grad_scaler().is_enabled()
    with runtime.autocast():
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32
    batch = runtime.to_device({"image": torch.zeros(1, 3, 4, 4), "input_ids": torch.zeros(1, 3)})
    assert batch["image"].is_contiguous()
    assert "float32" in runtime.describe()


def test_channels_last_is_applied_to_images_only() -> None:
    runtime = Runtime(CPU, "fp32", channels_last=True)
    batch = runtime.to_device({"image": torch.zeros(2, 3, 4, 4), "input_ids": torch.zeros(2, 5)})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["input_ids"].is_contiguous()
