"""The training array where the augmentation kernels read it.

On a GPU the whole array moves to device memory once; a step then sends only its batch
indices. When the array does not fit, it stays in pinned host memory and each step copies
its batch (one asynchronous copy); the CPU path reads the (possibly memory-mapped) array
in place.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from scdfast.data.synthetic import SkeletonSet
from scdfast.errors import ScdError

# Room left on the GPU for the model, its activations and the optimiser.
DEFAULT_HEADROOM_BYTES = 8 << 30
_COPY_CHUNK = 1024  # samples per host-to-device copy while loading


@dataclass
class Batch:
    """What the augmenter reads for one step: data, num_frames, and per-sample indices into them."""

    data: torch.Tensor | np.ndarray
    num_frames: torch.Tensor | np.ndarray
    index: torch.Tensor | np.ndarray


def _copied(source: np.ndarray, target: torch.Tensor) -> torch.Tensor:
    """Fill `target` from a (possibly memory-mapped) array in chunks, never holding it twice."""
    for lo in range(0, source.shape[0], _COPY_CHUNK):
        target[lo:lo + _COPY_CHUNK].copy_(torch.from_numpy(np.ascontiguousarray(source[lo:lo + _COPY_CHUNK])))
    return target


class ResidentData:
    """`placement` is "device" (all of it on the GPU), "pinned" (host, copied per batch) or
    "host" (CPU training: read in place)."""

    def __init__(self, samples: SkeletonSet, device: torch.device,
                 headroom_bytes: int = DEFAULT_HEADROOM_BYTES, verbose: bool = True):
        data = samples.data
        if data.dtype != np.float32 or data.ndim != 5:
            raise ScdError(f"training data must be float32 (N, C, T, V, M), got {data.dtype} {data.shape}")
        nf = np.asarray(samples.num_frames)
        bad = (nf < 1) | (nf > data.shape[2])
        if bad.any():
            raise ScdError(f"num_frames[{int(np.flatnonzero(bad)[0])}]={int(nf[bad][0])} is outside [1, {data.shape[2]}]")
        self.device = device
        self.num_frames_host = nf.astype(np.int32)
        if device.type != "cuda":
            self.placement = "host"
            self.data, self.num_frames = data, self.num_frames_host
            return
        free, _ = torch.cuda.mem_get_info(device)
        if data.nbytes + headroom_bytes <= free:
            self.placement = "device"
            self.data = _copied(data, torch.empty(data.shape, dtype=torch.float32, device=device))
        else:
            self.placement = "pinned"
            self.data = _copied(data, torch.empty(data.shape, dtype=torch.float32, pin_memory=True))
            if verbose:
                print(f"scdfast: the training array ({data.nbytes / 2**30:.1f} GiB) does not fit beside the model "
                      f"in {free / 2**30:.1f} GiB free on {device}; it stays in pinned host memory and each "
                      f"batch is copied", file=sys.stderr)
        self.num_frames = torch.from_numpy(self.num_frames_host).to(device)

    def batch(self, index: np.ndarray) -> Batch:
        """The samples `index` (host int array), as the augmenter reads them."""
        index = np.asarray(index, dtype=np.int64)
        if self.placement == "host":
            return Batch(self.data, self.num_frames, index)
        if self.placement == "device":
            return Batch(self.data, self.num_frames, torch.from_numpy(index).to(self.device, non_blocking=True))
        rows = torch.from_numpy(index)
        # the caching host allocator keeps the pinned staging buffer alive until the copy is done
        staged = self.data.index_select(0, rows).pin_memory().to(self.device, non_blocking=True)
        nf = torch.from_numpy(self.num_frames_host[index]).to(self.device, non_blocking=True)
        return Batch(staged, nf, torch.arange(len(index), device=self.device))
