"""Choosing the compute device from `--device`, and what that device's CPU can do."""
from __future__ import annotations

import functools

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


@functools.cache
def cpu_bf16() -> bool:
    """The CPU multiplies bf16 natively (AVX-512-BF16 or AMX-BF16; x86 Linux), so bf16 autocast
    speeds its convolutions and matmuls up instead of emulating them."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False
