"""SCDNet: query encoder, momentum key encoder and three key queues (MoCo).

The queues are scdfast.nn.MemoryBank modules: (K, D), one row per key, so enqueueing writes
contiguous rows and the fused loss streams rows in place; their pointers stay on the device,
so no step reads one back.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from scdfast.config import SCDConfig
from scdfast.models.encoder import PretrainingEncoder
from scdfast.nn.memory_bank import MemoryBank

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
        # One bank per head, filled together. The instance bank also keeps each row's sample
        # (-1 where unknown), shared by all three since their pointers move together; it is not
        # in the state dict, which stays the authors' layout (keys `<head>_queue`, `<head>_queue_ptr`).
        self.banks = nn.ModuleDict({name: MemoryBank(config.queue_size, config.proj_dim, track_ids=name == "instance",
                                                     persistent_ids=False) for name in QUEUE_NAMES})
        self.register_state_dict_post_hook(_authors_queue_names)
        self.register_load_state_dict_pre_hook(_bank_names)

    @property
    def queues(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(temporal, spatial, instance) queues, each (K, D), in place."""
        return tuple(self.banks[name].keys for name in QUEUE_NAMES)

    @property
    def queue_ids(self) -> torch.Tensor:
        """(K,) the sample of each queue row, -1 where unknown."""
        return self.banks["instance"].ids

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
            self.banks[name].enqueue(k, ids if name == "instance" else None)


def state_shapes(config: SCDConfig) -> dict[str, torch.Size]:
    """The keys and shapes of `SCDNet(config).state_dict()`, from a model on the meta device
    (nothing allocated): what any pretraining checkpoint of this config must hold."""
    with torch.device("meta"):
        return {k: v.shape for k, v in SCDNet(config).state_dict().items()}


def _authors_queue_names(module, state_dict, prefix, local_metadata) -> None:
    """banks.<head>.keys / .ptr -> <head>_queue / <head>_queue_ptr, the layout of SCD-Net's checkpoints."""
    for name in QUEUE_NAMES:
        for field, flat in (("keys", f"{name}_queue"), ("ptr", f"{name}_queue_ptr")):
            state_dict[prefix + flat] = state_dict.pop(f"{prefix}banks.{name}.{field}")


def _bank_names(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
    for name in QUEUE_NAMES:
        for field, flat in (("keys", f"{name}_queue"), ("ptr", f"{name}_queue_ptr")):
            if prefix + flat in state_dict:
                state_dict[f"{prefix}banks.{name}.{field}"] = state_dict.pop(prefix + flat)
