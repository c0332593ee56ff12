"""Where the frozen backbone runs: `PERENNIAL_DEVICE` = auto | cpu | cuda | cuda:N.

On CUDA the backbone's forward runs under bf16 autocast, inputs travel from
pinned host memory without blocking, and pooled features come back to the CPU,
where heads and analytic statistics live (they are small). PET modules sit on
the backbone's device because they run inside it. The tests run the CPU path;
no GPU is available on the machines that build Perennial.
"""

from __future__ import annotations

import contextlib

import torch

from perennial.config import ConfigError, variable


def select(setting: str = "auto") -> torch.device:
    setting = setting.strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as error:
        raise ConfigError(
            f"{variable('device')}={setting!r}: use auto, cpu, cuda or cuda:N"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{variable('device')}={setting!r} but torch sees no CUDA device; use auto or cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{variable('device')}={setting!r}: use auto, cpu, cuda or cuda:N")
    return device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on the CPU (keeps CPU training bit-reproducible)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
