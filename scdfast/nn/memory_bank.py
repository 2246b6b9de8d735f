"""MemoryBank: MoCo's queue of keys as a module, for any loss that streams negatives from it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scdfast.errors import ScdError
from scdfast.losses.gather import gather, require_process_group


class MemoryBank(nn.Module):
    """A (size, dim) first-in first-out queue of keys, one row per key.

    The rows are what the fused losses stream as negatives, read in place (`bank.keys`); a
    (dim, size) view for code written for MoCo's layout is `bank.keys.t()`, also no copy. The
    write pointer stays on the device, so `enqueue` never waits for the GPU. With
    `track_ids`, the bank also keeps each row's sample id (-1 until written), which the losses
    use to leave a query's own older keys out of its negatives (-1 where unknown). Everything is in `state_dict`,
    so a resumed run continues with the same queue.

    Args:
        size: K, the number of keys held.
        dim: D, the key width.
        dtype: the keys' dtype (float32, bfloat16, ...); enqueued keys are cast to it.
        track_ids: keep a sample id per row (`enqueue` then needs `ids`).
        gather_distributed: `enqueue` writes every rank's keys (rank order), so every rank's
            bank stays identical; needs an initialised process group.
        persistent_ids: keep the ids in `state_dict` (SCDNet keeps its checkpoints in the
            authors' layout, which has none).
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32, track_ids: bool = False,
                 gather_distributed: bool = False, persistent_ids: bool = True):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ScdError(f"MemoryBank: size={size} and dim={dim} must be > 0")
        self.gather_distributed = gather_distributed
        # random unit keys, as MoCo starts: negatives that carry no sample's information
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1).to(dtype))       # K, D
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long) if track_ids else None,
                             persistent=persistent_ids)

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @property
    def dim(self) -> int:
        return self.keys.shape[1]

    def check_width(self, name: str, width: int) -> None:
        if width != self.dim:
            raise ScdError(f"{name}: embedding width {width} differs from the memory bank's {self.dim}")

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Write `keys` (N, D) at the pointer, oldest rows first out; with track_ids, their
        `ids` (N,), or -1 (unknown) for each row when none are given."""
        if not isinstance(keys, torch.Tensor) or keys.dim() != 2:
            raise ScdError(f"MemoryBank.enqueue: keys must be (N, {self.dim}), got "
                           f"{tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__}")
        self.check_width("MemoryBank.enqueue: keys", keys.shape[1])
        if ids is not None and self.ids is None:
            raise ScdError("MemoryBank.enqueue: ids given, but the bank was built with track_ids=False")
        if ids is not None and ids.shape != (keys.shape[0],):
            raise ScdError(f"MemoryBank.enqueue: ids must be ({keys.shape[0]},), got {tuple(ids.shape)}")
        if self.gather_distributed:
            require_process_group("gather_distributed")
            keys = gather(keys)
            ids = gather(ids) if ids is not None else None
        n = keys.shape[0]
        if n > self.size:
            raise ScdError(f"MemoryBank.enqueue: {n} keys at once exceed the bank's size {self.size}")
        rows = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size                    # N
        self.keys.index_copy_(0, rows, keys.to(self.keys.dtype))
        if ids is not None:
            self.ids.index_copy_(0, rows, ids.to(self.ids.device, torch.long))
        elif self.ids is not None:  # keys of unknown samples: they exclude nothing
            self.ids.index_fill_(0, rows, -1)
        self.ptr.add_(n).remainder_(self.size)

    def forward(self) -> torch.Tensor:
        """The (K, D) keys, in place."""
        return self.keys

    def extra_repr(self) -> str:
        return (f"size={self.size}, dim={self.dim}, dtype={self.keys.dtype}, track_ids={self.ids is not None}, "
                f"gather_distributed={self.gather_distributed}")
