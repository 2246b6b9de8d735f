"""SCDNet: query encoder, momentum key encoder and three key queues (MoCo).

The queues are stored (K, D), one row per key, so enqueueing writes contiguous rows and
the fused loss streams rows. Queue pointers stay on the device: no host read per step.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from scdfast.config import SCDConfig
from scdfast.models.encoder import PretrainingEncoder

QUEUE_NAMES = ("temporal", "spatial", "instance")


def unit_clues(projections) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three projected clues L2-normalised in fp32 (under bf16 autocast too: the loss
    and the queues take fp32 unit vectors)."""
    return tuple(F.normalize(z.float(), dim=1) for z in projections)


class SCDNet(nn.Module):
    def __init__(self, config: SCDConfig):
        super().__init__()
        self.config = config
        self.query_encoder = PretrainingEncoder(config)
        self.key_encoder = copy.deepcopy(self.query_encoder)
        self.key_encoder.requires_grad_(False)
        for name in QUEUE_NAMES:
            queue = F.normalize(torch.randn(config.queue_size, config.proj_dim), dim=1)
            self.register_buffer(f"{name}_queue", queue)                               # K, D
            self.register_buffer(f"{name}_queue_ptr", torch.zeros(1, dtype=torch.long))
        # The sample of each queue row, -1 where unknown (one row of each queue holds one
        # sample's keys). Not in the state dict, which stays the authors' layout.
        self.register_buffer("queue_ids", torch.full((config.queue_size,), -1, dtype=torch.long), persistent=False)

    @property
    def queues(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(temporal, spatial, instance) queues, each (K, D)."""
        return self.temporal_queue, self.spatial_queue, self.instance_queue

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key = m * key + (1 - m) * query, over all parameters in two fused multi-tensor ops."""
        m = self.config.momentum
        keys = list(self.key_encoder.parameters())
        queries = list(self.query_encoder.parameters())
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, queries, alpha=1.0 - m)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised (kt, ks, ki) from the key encoder."""
        return unit_clues(self.key_encoder(x))

    def encode_queries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised (qt, qs, qi) from the query encoder."""
        return unit_clues(self.query_encoder(x))

    @torch.no_grad()
    def enqueue(self, keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor], ids: torch.Tensor | None = None) -> None:
        """Write the batch's keys at each queue's pointer and advance it, on the device; with
        `ids` (N,), their samples into `queue_ids` (give ids with every enqueue or with none)."""
        for name, k in zip(QUEUE_NAMES, keys):
            queue = getattr(self, f"{name}_queue")
            ptr = getattr(self, f"{name}_queue_ptr")
            n, size = k.shape[0], queue.shape[0]
            rows = (ptr + torch.arange(n, device=ptr.device)) % size                    # N
            queue.index_copy_(0, rows, k.to(queue.dtype))
            ptr.add_(n).remainder_(size)
        if ids is not None:  # the pointers move together: the last queue's rows are every queue's
            self.queue_ids.index_copy_(0, rows, ids.to(self.queue_ids.device))
