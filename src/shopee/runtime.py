"""Where and how models run: device, precision policy, gradient scaler, memory format.

The one place that picks them; training, prediction and the benchmarks all take a ``Runtime``.

Precision policy (``Config.amp``):

- on CPU everything runs in float32, whatever ``amp`` says;
- ``auto`` on CUDA: bfloat16 autocast on compute capability 8.0 and above (A100, L4, H100), where
  tensor cores do bf16; float16 autocast with a ``GradScaler`` below (T4 is 7.5, P100 6.0), since
  bf16 there is emulated: slow, and without a scaler its gradients would not be protected;
- ``bf16`` or ``fp16`` ask for one; ``bf16`` on a card below 8.0 is refused with one line;
- ``off``: float32.

``torch.cuda.is_bf16_supported()`` is not used: by default it also counts emulation and says
True on a T4.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from shopee.config import Config, ConfigError

PRECISIONS = ("bf16", "fp16", "fp32")
BF16_MIN_CAPABILITY = (8, 0)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def visible_devices() -> list[torch.device]:
    """Every CUDA device (a Kaggle "GPU T4 x2" kernel has two), else the CPU."""
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


def parse_devices(spec: str | None) -> list[torch.device]:
    """``cuda:0,cuda:1`` (or ``cpu``, ``cpu,cpu`` ...) as devices; None: ``visible_devices()``."""
    if not spec:
        return visible_devices()
    devices = []
    for name in spec.split(","):
        try:
            device = torch.device(name.strip())
        except RuntimeError:
            raise ConfigError(
                f"--devices {spec}: {name.strip()!r} is not a device (cuda:0, cpu ...)"
            ) from None
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            raise ConfigError(f"--devices {spec}: {device} is not available here")
        devices.append(device)
    return devices


def pick_precision(amp: str, device: torch.device, capability: tuple[int, int] | None = None) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for ``Config.amp`` on ``device`` (see the module doc).

    ``capability`` is the CUDA compute capability; asked of the device when not given.
    """
    if device.type != "cuda" or amp == "off":
        return "fp32"
    if capability is None:
        capability = tuple(torch.cuda.get_device_capability(device))  # type: ignore[assignment]
    bf16_ok = tuple(capability) >= BF16_MIN_CAPABILITY
    if amp == "auto":
        return "bf16" if bf16_ok else "fp16"
    if amp == "bf16" and not bf16_ok:
        major, minor = capability
        raise ConfigError(
            f"amp='bf16' needs a GPU of compute capability 8.0 or more; {device} has {major}.{minor} "
            "(no bf16 tensor cores): use amp='auto' or 'fp16'"
        )
    if amp not in ("bf16", "fp16"):
        raise ConfigError(f"amp={amp!r} is not one of auto, bf16, fp16, off")
    return amp


@dataclass(frozen=True)
class Runtime:
    """A device, the precision computations run in there, and the memory format of images."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def for_config(cls, cfg: Config, device: torch.device | str | None = None) -> Runtime:
        device = torch.device(device) if device is not None else default_device()
        on_cuda = device.type == "cuda"
        return cls(device, pick_precision(cfg.amp, device), bool(cfg.channels_last and on_cuda))

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def uses_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return self.precision == "fp16"

    @property
    def pin_memory(self) -> bool:
        return self.on_cuda

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass (nothing in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.uses_grad_scaler)

    def set_backend_flags(self) -> None:
        """On CUDA, let cuDNN time its convolution algorithms for the input sizes it meets: images
        and titles come at one fixed size, so the search runs once and every later batch is faster."""
        if self.on_cuda:
            torch.backends.cudnn.benchmark = True

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` moved to the device (and to channels-last when on)."""
        self.set_backend_flags()
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in batch.items():
            value = value.to(self.device, non_blocking=True)
            if key == "image" and self.channels_last:
                value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        return out

    def describe(self) -> str:
        """One phrase for the logs: ``cuda:0 (Tesla T4, sm_75), fp16 autocast + GradScaler``."""
        where = str(self.device)
        if self.on_cuda:
            major, minor = torch.cuda.get_device_capability(self.device)
            where += f" ({torch.cuda.get_device_name(self.device)}, sm_{major}{minor})"
        how = "float32" if self.precision == "fp32" else f"{self.precision} autocast"
        if self.uses_grad_scaler:
            how += " + GradScaler"
        if self.channels_last:
            how += ", channels-last"
        return f"{where}, {how}"
