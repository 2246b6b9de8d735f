"""A counter-based random generator: uniform(key, view, slot) is a pure function.

Every random number of a view is addressed by (seed, step, view, slot), so any thread on
any device computes it without shared state, and a (seed, step) reproduces a batch
exactly whatever the device or the thread schedule. The mixer is SplitMix64's finaliser.

All arithmetic is unsigned 64-bit: Numba turns uint64 mixed with a signed integer into a
float64, so every operand is made uint64 explicitly.
"""
from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_VIEW_STRIDE = 0xD1B54A32D192ED03
_SLOT_STRIDE = 0x8CB92BA72F3D8DD7
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53: 53 random bits -> [0, 1)


def _mix_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def batch_key(seed: int, step: int) -> np.uint64:
    """The 64-bit key of one batch; every random number of its views derives from it."""
    return np.uint64(_mix_int((_mix_int(seed & _MASK64) + _GOLDEN * (step + 1)) & _MASK64))


def make_uniform(jit):
    """uniform(key, view, slot) -> U[0, 1), compiled by `jit` (numba.njit or a CUDA
    device-function decorator), so the CPU and GPU kernels share one definition."""

    @jit
    def mix(z):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    @jit
    def uniform(key, view, slot):
        z = mix(key ^ (np.uint64(view) * np.uint64(_VIEW_STRIDE)))
        z = mix(z ^ (np.uint64(slot) * np.uint64(_SLOT_STRIDE)))
        return float(z >> np.uint64(11)) * _TO_UNIT

    return uniform
