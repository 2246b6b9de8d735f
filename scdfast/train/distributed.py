"""Multi-process pretraining under `torchrun`: one rank per GPU (or CPU process with gloo).

The global batch (`batch_size`) is split evenly over the ranks; every rank augments its own
share with the counter-based generator's view ids of the single-process run, so the global
batch's views are the same however many ranks there are. Keys are gathered from every rank
before the enqueue, so all queues stay identical; DistributedDataParallel averages the query
encoder's gradients.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from scdfast.errors import ScdError
from scdfast.losses.gather import gather


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls, device_type: str) -> Distributed | None:
        """The process group torchrun describes in the environment, or None for one process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> tuple[int, int]:
        """[lo, hi) of this rank's samples within a global batch."""
        if batch_size % self.world_size:
            raise ScdError(f"batch_size={batch_size} is not divisible by the {self.world_size} ranks")
        per = batch_size // self.world_size
        return self.rank * per, (self.rank + 1) * per

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's `t` concatenated along dim 0, in rank order (no gradient)."""
        return gather(t)

    def shuffled_keys(self, encode, key_view: torch.Tensor, generator: torch.Generator) -> tuple:
        """MoCo's shuffle-BN: the global key batch is permuted across ranks before the key
        encoder, so a rank's BatchNorm statistics are not those of its own queries' samples;
        the keys are put back in order afterwards. `generator` must be in the same state on
        every rank (it is: same seed, same number of draws)."""
        everything = self.gather(key_view)
        n = key_view.shape[0]
        order = torch.randperm(everything.shape[0], generator=generator).to(everything.device)
        mine = order[self.rank * n:(self.rank + 1) * n]
        keys = encode(everything[mine])
        inverse = order.argsort()
        return tuple(self.gather(k)[inverse][self.rank * n:(self.rank + 1) * n] for k in keys)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of `t` over the ranks."""
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world_size

    def max_int(self, value: int, device: torch.device) -> int:
        flag = torch.tensor([value], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def all_equal(self, t: torch.Tensor) -> bool:
        """Whether `t` is identical on every rank (for checks and tests)."""
        parts = self.gather(t[None])
        return bool((parts == parts[0]).all())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
