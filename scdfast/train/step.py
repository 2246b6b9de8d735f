"""One pretraining step, built once for throughput: compiled encoders, bf16 autocast on CUDA,
the fused loss, multi-tensor momentum update, device-side enqueue, and under torchrun the
key gather (and optionally shuffle-BN) that keeps every rank's queues identical.

Nothing here reads a value back to the host: the step returns the loss as a device tensor.
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from scdfast.config import PretrainConfig, choices
from scdfast.errors import ScdError
from scdfast.losses import scd_loss
from scdfast.models import SCDNet
from scdfast.models.moco import unit_clues
from scdfast.train import collapse
from scdfast.train.device import cpu_bf16
from scdfast.train.distributed import Distributed
from scdfast.train.phases import PhaseTimer

# one source for each choice: the config's Literal types (the step also takes them from Python)
COMPILE_MODES = choices(PretrainConfig, "compile")
PRECISIONS = choices(PretrainConfig, "precision")
BN_MODES = tuple(mode for mode in choices(PretrainConfig, "bn") if mode != "auto")  # "auto" is resolved before


def resolve_compile(mode: str, device: torch.device) -> str | None:
    """`auto`: the default inductor mode on CUDA (stable with the fused loss's custom op); eager
    on the CPU, where the compiled step is no faster in bf16 and 1.16x faster in fp32 but costs
    2-3 minutes of compiling on 2 cores (18 s with inductor's cache warm; benchmarks/RESULTS.md)."""
    if mode not in COMPILE_MODES:
        raise ScdError(f"compile={mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    if mode == "auto":
        return "default" if device.type == "cuda" else None
    return None if mode == "off" else mode


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on CUDA and on CPUs that multiply bf16 natively (AVX-512-BF16,
    AMX), where it is 1.3-1.5x faster than fp32 (benchmarks/RESULTS.md); fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ScdError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_bf16()) else "fp32"
    return precision


def _keep_conv_layouts() -> None:
    """Inductor on the CPU turns convolution outputs channels-last, and CTR-GCN's graph matmul
    (batched over sample and channel) then reaches the CPU bmm with operands it cannot batch: it
    copies and multiplies 8,192 small matrices one by one, 295,000 copies a tiny step, which made
    the compiled step 1.9x slower than eager (benchmarks/RESULTS.md). Keeping the layouts eager
    uses is a process-wide inductor setting; scdfast compiles nothing else."""
    import torch._inductor.config as inductor_config
    inductor_config.layout_optimization = False


class PretrainStep:
    def __init__(self, model: SCDNet, optimizer: torch.optim.Optimizer, device: torch.device,
                 compile_mode: str = "auto", precision: str = "auto", distributed: Distributed | None = None,
                 bn_mode: str = "local", seed: int = 0, exclude_own_keys: bool = False):
        if bn_mode not in BN_MODES:
            raise ScdError(f"bn={bn_mode!r}: choose one of {', '.join(BN_MODES)}")
        if bn_mode != "local" and distributed is None:
            raise ScdError(f"bn={bn_mode!r} needs several processes (torchrun); one process uses local BN")
        if bn_mode == "sync" and device.type != "cuda":
            raise ScdError("bn='sync' (SyncBatchNorm) needs CUDA; use bn='shuffle' on the CPU")
        self.model, self.optimizer, self.distributed, self.bn_mode = model, optimizer, distributed, bn_mode
        query = model.query_encoder
        key = model.key_encoder
        if bn_mode == "sync":
            query = torch.nn.SyncBatchNorm.convert_sync_batchnorm(query)
            key = torch.nn.SyncBatchNorm.convert_sync_batchnorm(key)
            model.query_encoder, model.key_encoder = query, key
        if distributed is not None:
            query = DistributedDataParallel(query, device_ids=[device.index] if device.type == "cuda" else None)
        mode = resolve_compile(compile_mode, device)
        self.compiled = mode  # the torch.compile mode, or None (eager)
        if mode is not None:
            if device.type == "cpu":
                _keep_conv_layouts()
            query, key = torch.compile(query, mode=mode), torch.compile(key, mode=mode)
        self.query, self.key = query, key
        self.precision = resolve_precision(precision, device)
        self.device = device
        # shuffle-BN draws its permutation from a generator in step on every rank
        self.shuffle_generator = torch.Generator().manual_seed(seed)
        self.exclude_own_keys = exclude_own_keys  # label keys with their samples, mask a query's own
        self.last_batch = None

    def collapse_readings(self) -> torch.Tensor | None:
        """The collapse readings (scdfast.train.collapse.FIELDS) of the last step's batch, on
        the device; None before the first step."""
        return None if self.last_batch is None else collapse.readings(*self.last_batch)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _encode_keys(self, view: torch.Tensor) -> tuple:
        with self._autocast():
            return unit_clues(self.key(view))

    @torch.no_grad()
    def enqueue_keys(self, key_view: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Write the key encoder's keys of `key_view` (samples `ids`) into the queues, with no
        training step: how `queue_init="keys"` fills them before the first step."""
        self._enqueue(self._encode_keys(key_view), ids)

    @torch.no_grad()
    def _enqueue(self, keys: tuple, ids: torch.Tensor | None) -> None:
        """Keys (and, with exclude_own_keys, their samples) of every rank into the queues."""
        if not self.exclude_own_keys:
            ids = None
        elif ids is None:
            raise ScdError("exclude_own_keys needs each batch's sample ids")
        if self.distributed is not None:
            keys = tuple(self.distributed.gather(k) for k in keys)
            ids = self.distributed.gather(ids) if ids is not None else None
        self.model.enqueue(keys, ids)

    def __call__(self, query_view: torch.Tensor, key_view: torch.Tensor, timer: PhaseTimer | None = None,
                 ids: torch.Tensor | None = None) -> torch.Tensor:
        """One step on the views of samples `ids` (device int64, needed with exclude_own_keys);
        with `timer` (a sampled step) it synchronises at each phase boundary."""
        model = self.model
        if timer is not None:
            timer.start()
        model.momentum_update()
        with torch.no_grad():
            if self.bn_mode == "shuffle":
                keys = self.distributed.shuffled_keys(self._encode_keys, key_view, self.shuffle_generator)
            else:
                keys = self._encode_keys(key_view)
        with self._autocast():
            *projections, features = self.query(query_view, with_features=True)
        queries = unit_clues(projections)
        # what the collapse monitor reads at the log interval: references, no copy, no host read
        self.last_batch = (tuple(q.detach() for q in queries), features.detach())
        masked = self.exclude_own_keys
        loss = scd_loss(queries, keys, model.queues, model.config.temperature, check_finite=False,
                        query_ids=ids if masked else None, queue_ids=model.queue_ids if masked else None)
        self.optimizer.zero_grad(set_to_none=True)
        if timer is not None:
            timer.mark("forward")
        loss.backward()
        if timer is not None:
            timer.mark("backward")
        self.optimizer.step()
        self._enqueue(keys, ids)
        if timer is not None:
            timer.mark("optimiser")
        return loss.detach()
