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


def write_synthetic_dataset(root: pathlib.Path, samples: int = 24, max_frames: int = 300,
                            num_frames_file: bool = True) -> pathlib.Path:
    """A small synthetic dataset directory (3 classes) in the format every command reads."""
    import pickle

    from scdfast.data import generate
    for split, seed in (("train", 0), ("val", 1)):
        s = generate(samples, seed=seed, num_classes=3, max_frames=max_frames)
        np.save(root / f"{split}_data_joint.npy", s.data)
        if num_frames_file:
            np.save(root / f"{split}_num_frame.npy", s.num_frames)
        with open(root / f"{split}_label.pkl", "wb") as f:
            pickle.dump(([f"s{i}" for i in range(samples)], s.labels.tolist()), f)
    return root
