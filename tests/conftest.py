"""Test setup: where the kernels run.

On a machine without a GPU the Triton kernels run under the Triton interpreter and the Numba
CUDA kernels under Numba's CUDA simulator; the `device` fixture is the CPU. On a machine with
an NVIDIA GPU (or SCDFAST_TEST_DEVICE=cuda) the same tests run the compiled kernels on CUDA:
that is the GPU tier, and tests marked `gpu` run only there. SCDFAST_TEST_DEVICE=cpu forces
the CPU tier on a GPU machine. Both switches must be set before triton or numba is first
imported, hence here.
"""
import os

TEST_DEVICE = os.environ.get("SCDFAST_TEST_DEVICE") or ("cuda" if os.path.exists("/dev/nvidiactl") else "cpu")
if TEST_DEVICE not in ("cpu", "cuda"):
    raise SystemExit(f"SCDFAST_TEST_DEVICE={TEST_DEVICE!r}: use cpu or cuda")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pathlib

import numpy as np
import pytest
import torch

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


# For test pretraining runs whose subject is not the queue: the tiny preset fills its 1,024 keys
# with real keys before the first step, 128 key-encoder batches at the tests' batch of 8 (about
# 8 s on 2 cores, most of a run's cost otherwise); 64 keys take 8. A multiple of every batch used.
SMALL_QUEUE = ("--set", "model.queue_size=64")


def pytest_collection_modifyitems(config, items):
    if TEST_DEVICE == "cuda":
        return
    skip = pytest.mark.skip(reason="GPU tier: needs an NVIDIA GPU (or SCDFAST_TEST_DEVICE=cuda)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests put their tensors: CUDA in the GPU tier, else the CPU (interpreters)."""
    return torch.device(TEST_DEVICE)


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
