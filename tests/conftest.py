"""Test setup: kernels run under the Triton interpreter and Numba's CUDA simulator on a CPU.

Both switches must be set before triton or numba is first imported, hence here.
"""
import os

if not os.environ.get("SCDFAST_TEST_REAL_GPU"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pathlib

import numpy as np
import pytest
import torch

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random inputs per test; the seed is printed, and pytest shows it on failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"numpy seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _torch_seed() -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"torch seed {seed}")
    torch.manual_seed(seed)
