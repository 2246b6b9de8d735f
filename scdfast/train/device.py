"""Choosing the compute device from `--device`."""
from __future__ import annotations

import torch

from scdfast.errors import ScdError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ScdError(f"--device {name!r}: not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScdError(f"--device {name}: CUDA is not available on this machine")
    return device
