"""Every rank's embeddings as negatives: an all-gather whose backward sends each rank its rows'
gradients, summed over every rank's loss (then DDP's gradient averaging gives exactly the
gradient of the global batch's loss).

The backward is an all-reduce and a slice, which every backend has (gloo has no
reduce-scatter). Every rank must hold the same number of rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from scdfast.errors import ScdError


def require_process_group(option: str) -> tuple[int, int]:
    """(rank, world size), or a one-line error naming the option that needs them."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ScdError(f"{option}=True needs an initialised torch.distributed process group "
                       "(torch.distributed.init_process_group, or a torchrun launch)")
    return dist.get_rank(), dist.get_world_size()


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.rows = x.shape[0]
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(world * N, ...) every rank's x in rank order; gradients flow back to each rank's own."""
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """(world * N, ...) every rank's x in rank order, without gradient (labels, keys)."""
    return _all_gather(x)
