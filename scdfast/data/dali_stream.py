"""Streaming training batches with NVIDIA DALI, for datasets kept as per-sample `.npy` files.

DALI's numpy reader loads a batch of (C, T, V, M) float32 files in its own threads (on a GPU
straight into device memory) and hands the batch over through DLPack without a copy; the
batched augmentation kernels read it in place. On a machine without a GPU the same pipeline
runs on the CPU. Needs the `dali` extra (`pip install "scdfast[dali]"`).

A sample file's frame count is taken from an optional `num_frames.npy` beside the files (one
int per file, in sorted file-name order); without it, it is the number of frames up to the
last non-zero one.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from scdfast.data.resident import Batch
from scdfast.errors import ScdError

NUM_FRAMES_FILE = "num_frames.npy"


def _import_dali():
    try:
        from nvidia import dali
        from nvidia.dali import fn
    except ImportError:
        raise ScdError("the DALI loader needs NVIDIA DALI: pip install \"scdfast[dali]\" "
                       "(the nvidia-dali-cuda130 wheel, Linux only)") from None
    return dali, fn


def frames_in_use(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, V, M) -> (B,) int32: frames up to and including the last non-zero one."""
    used = (x != 0).flatten(3).any(dim=(1, 3))                                      # B, T
    last = torch.where(used, torch.arange(1, x.shape[2] + 1, device=x.device), 0).amax(dim=1)
    return last.clamp_(min=1).to(torch.int32)


class DaliStream:
    """Batches of `batch_size` samples from `root`'s `.npy` files, reshuffled every epoch
    (a permutation from `seed`), `len(self)` full batches per epoch (the last partial batch
    is dropped, as in pretraining). Each batch's arrays are DALI's buffers: consume them
    (augment) before asking for the next."""

    def __init__(self, root: str, batch_size: int, device: torch.device, seed: int = 0,
                 num_threads: int = 4, prefetch: int = 2):
        dali, fn = _import_dali()
        if not os.path.isdir(root):
            raise ScdError(f"--data {root}: no such directory")
        files = sorted(f for f in os.listdir(root) if f.endswith(".npy") and f != NUM_FRAMES_FILE)
        if len(files) < batch_size:
            raise ScdError(f"{root}: {len(files)} sample files, fewer than batch_size={batch_size}")
        self.files, self.batch_size, self.device = files, batch_size, device
        self.num_frames = None
        nf_path = os.path.join(root, NUM_FRAMES_FILE)
        if os.path.exists(nf_path):
            nf = np.load(nf_path)
            if nf.shape != (len(files),):
                raise ScdError(f"{nf_path}: shape {nf.shape}, expected ({len(files)},) (one per sample file)")
            self.num_frames = dict(zip(files, nf.astype(np.int32)))
        on_gpu = device.type == "cuda"

        @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads, prefetch_queue_depth=prefetch,
                           device_id=(device.index or 0) if on_gpu else None, seed=seed)
        def pipeline():
            return fn.readers.numpy(device="gpu" if on_gpu else "cpu", file_root=root, files=files,
                                    shuffle_after_epoch=True, pad_last_batch=False, name="reader")

        self.pipeline = pipeline()
        self.pipeline.build()

    def __len__(self) -> int:
        return len(self.files) // self.batch_size

    def next_batch(self) -> Batch:
        (out,) = self.pipeline.run()
        data = torch.from_dlpack(out.as_tensor())                                    # B, C, T, V, M
        if data.dtype != torch.float32 or data.dim() != 5:
            raise ScdError(f"DALI stream: sample files must hold float32 (C, T, V, M) arrays, got "
                           f"{data.dtype} with {data.dim() - 1} dimensions")
        if self.num_frames is None:
            nf = frames_in_use(data)
        else:
            names = [os.path.basename(out[i].source_info()) for i in range(len(out))]
            nf = torch.tensor([self.num_frames[n] for n in names], dtype=torch.int32).to(data.device)
        return Batch(data, nf, torch.arange(data.shape[0], device=data.device))
