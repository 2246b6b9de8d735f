"""The pretraining loop: a Trainer that restores a run, then per step makes the views, runs
PretrainStep, logs at the interval, checkpoints when due and stops on a signal.

Nothing in a step reads a value back to the host: the loss is summed on the device
(LossMeter) and read every `log_every` steps and at the end of each epoch, together with the
collapse readings of the interval's last batch (scdfast.train.collapse).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from scdfast.config import PretrainConfig, SCDConfig, step_lr, to_dict
from scdfast.data import SkeletonSet
from scdfast.data.dataset import dataset_identity
from scdfast.errors import ScdError
from scdfast.models import SCDNet
from scdfast.train.checkpoints import CheckpointKeeper, random_states, restore_random_states
from scdfast.train.collapse import CollapseReading
from scdfast.train.distributed import Distributed
from scdfast.train.distributed import shutdown as shutdown_process_group
from scdfast.train.phases import PhaseTimer, peak_flops, step_flops
from scdfast.train.rundir import save_json
from scdfast.train.run_log import RunLog
from scdfast.train.signals import Interrupted, StopSignals
from scdfast.train.step import PretrainStep
from scdfast.train.views import ViewSource, epoch_order, queue_fill_batches

CHECKPOINT_FORMAT = "scdfast-pretrain-v1"


@dataclass
class PretrainResult:
    checkpoint: str
    final_loss: float
    steps: int
    seconds: float
    samples_per_s: float = 0.0   # this run's steps (not those before a resume)
    data_s: float = 0.0          # host time making views (on CUDA: launching them)
    compute_s: float = 0.0       # host time in steps (on CUDA the device may run behind it)
    peak_memory_bytes: int = 0   # CUDA: the allocator's peak; CPU: the process's peak RSS
    phase_ms: dict = dataclasses.field(default_factory=dict)  # per sampled step: forward, backward, optimiser
    sampled_steps: int = 0       # steps timed phase by phase (synchronised)
    flops_per_step: int = 0      # model FLOPs of one step (query forward + backward, key forward)
    model_tflops: float = 0.0    # achieved model TFLOP/s over this run's steps
    mfu: float | None = None     # model FLOP utilisation: achieved over the GPU's dense bf16 peak
    collapse: dict | None = None  # the collapse monitor's last reading (CollapseReading.as_dict)

    def report(self) -> str:
        total = max(self.data_s + self.compute_s, 1e-9)
        line = (f"{self.samples_per_s:.1f} samples/s; time in views {self.data_s:.1f} s "
                f"({100 * self.data_s / total:.0f}%), in steps {self.compute_s:.1f} s; "
                f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB")
        if self.sampled_steps:
            line += (f"\nper step ({self.sampled_steps} sampled, synchronised): "
                     + ", ".join(f"{phase} {ms:.1f} ms" for phase, ms in self.phase_ms.items()))
        if self.flops_per_step:
            line += f"\nmodel {self.flops_per_step / 1e9:.2f} GFLOP a step, {self.model_tflops:.3f} TFLOP/s achieved"
            if self.mfu is not None:
                line += f", MFU {100 * self.mfu:.1f}% of the GPU's dense bf16 peak"
        return line

    def collapse_report(self) -> str | None:
        """The collapse monitor's last reading, in a sentence."""
        if self.collapse is None:
            return None
        return f"collapse monitor at step {self.collapse['step']}: {CollapseReading.from_dict(self.collapse).describe()}"


def lr_at(config: PretrainConfig, epoch: int) -> float:
    return step_lr(config.lr, config.lr_drop_epochs, epoch)


def query_optimizer(model: SCDNet, config: PretrainConfig) -> torch.optim.SGD:
    """SGD of the query encoder; foreach: one multi-tensor op per update for all parameters
    (PyTorch picks it by itself only on CUDA; on the CPU it is 1,660 fewer operators a step)."""
    return torch.optim.SGD(model.query_encoder.parameters(), lr=config.lr, momentum=config.sgd_momentum,
                           weight_decay=config.weight_decay, foreach=True)


def steps_per_epoch(model_config: SCDConfig, config: PretrainConfig, train: SkeletonSet) -> int:
    if config.batch_size > len(train):
        raise ScdError(f"batch_size={config.batch_size} exceeds the {len(train)} training samples")
    if model_config.queue_size % config.batch_size:
        raise ScdError(f"queue_size={model_config.queue_size} is not a multiple of batch_size={config.batch_size}")
    return len(train) // config.batch_size  # drop_last, as the authors do


def check_same_dataset(resume: dict, identity: dict) -> None:
    """A resumed run reads the dataset it started on: source, shapes, a fingerprint and the hash
    of every value (recorded since 2026-12; a checkpoint from before is checked on the rest)."""
    saved = resume.get("dataset")
    if not isinstance(saved, dict):
        return  # a checkpoint from before identities were recorded
    for field in ("samples", "shape", "fingerprint", "sha256"):
        if field in saved and saved[field] != identity.get(field):
            then, now = (str(v)[:12] + "..." if field == "sha256" else v for v in (saved[field], identity.get(field)))
            raise ScdError(f"--resume: the dataset {identity['data']} differs from the one the run started on "
                           f"({field} {then} then, {now} now); resume it on the data it started on")


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class LossMeter:
    """The epoch's and the log interval's loss sums, on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.epoch_sum, self.summed = None, 0
        self.interval_sum, self.pending = None, 0

    def start_epoch(self, carried: torch.Tensor | None = None, carried_steps: int = 0) -> None:
        """`carried`: the sum of a resumed epoch's steps before the stop, which count too."""
        self.epoch_sum = carried if carried is not None else torch.zeros((), device=self.device)
        self.summed = carried_steps if carried is not None else 0
        self.interval_sum, self.pending = torch.zeros((), device=self.device), 0

    def add(self, loss: torch.Tensor) -> None:
        self.epoch_sum += loss
        self.interval_sum += loss
        self.summed += 1
        self.pending += 1

    def interval_mean(self, distributed: Distributed | None,
                      also: torch.Tensor | None = None) -> tuple[float, list[float]]:
        """The mean over the steps since the last call (and over ranks), and the values of
        `also` (a 1-D device tensor), in one host read."""
        total = distributed.mean(self.interval_sum) if distributed is not None else self.interval_sum
        values = torch.cat([total.reshape(1), also.to(total.dtype)]) if also is not None else total.reshape(1)
        value, *rest = values.tolist()
        self.interval_sum.zero_()
        self.pending, pending = 0, self.pending
        return value / pending, rest

    def epoch_mean(self, distributed: Distributed | None) -> float:
        if distributed is not None:
            self.epoch_sum = distributed.mean(self.epoch_sum)
        return self.epoch_sum.item() / self.summed

    def snapshot(self) -> torch.Tensor | None:
        return self.epoch_sum.detach().cpu().clone() if self.epoch_sum is not None else None


class Trainer:
    """One pretraining run in `run_dir`, new or resumed (`resume` from load_resume_state)."""

    def __init__(self, model_config: SCDConfig, config: PretrainConfig, train: SkeletonSet, run_dir: str,
                 device: torch.device, progress: bool = True, resume: dict | None = None, data: str = "synthetic"):
        self.model_config, self.config, self.train, self.run_dir, self.data = model_config, config, train, run_dir, data
        self.progress, self.resume = progress, resume
        self.steps_per_epoch = steps_per_epoch(model_config, config, train)
        self.total = self.steps_per_epoch * config.epochs
        self.identity = dataset_identity(train, data)
        self.distributed = Distributed.from_env(device.type)
        if self.distributed is not None and device.type == "cuda":
            device = torch.device("cuda", self.distributed.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.shard = self.distributed.shard(config.batch_size) if self.distributed is not None else None
        self.main_process = self.distributed is None or self.distributed.is_main
        torch.manual_seed(config.seed)
        self.views = ViewSource(train, model_config, config, device)
        self.model = SCDNet(model_config).to(device)
        if self.distributed is not None:  # dropout differs across ranks; the weights above do not
            torch.manual_seed(config.seed * 7919 + self.distributed.rank + 1)
        self.optimizer = query_optimizer(self.model, config)
        bn = config.bn if config.bn != "auto" else ("shuffle" if self.distributed is not None else "local")
        self.run_step = PretrainStep(self.model, self.optimizer, device, config.compile, config.precision,
                                     self.distributed, bn, seed=config.seed, exclude_own_keys=config.exclude_own_keys)
        self.keeper = CheckpointKeeper(os.path.join(run_dir, "checkpoints"), config.keep_last, enabled=self.main_process)
        self.losses, self.timer = LossMeter(device), PhaseTimer(device)
        self.step, self.best, self.carried_sum = 0, math.inf, None
        self.flops_per_step, self.data_s, self.compute_s = None, 0.0, 0.0     # this run's totals
        self.loss_value = math.nan
        self.collapse: CollapseReading | None = None   # the newest collapse monitor reading

    # ---- the run ----------------------------------------------------------------------------------

    def run(self) -> PretrainResult:
        self.restore() if self.resume is not None else self.start()
        self.first_step = self.step
        log = RunLog(self.run_dir, self.total, self.step, self.main_process, self.progress,
                     resumed_at=self.step if self.resume is not None else None)
        self.model.train()
        start = time.perf_counter()
        try:
            with StopSignals() as stop:
                for epoch in range(self.step // self.steps_per_epoch, self.config.epochs):
                    self.run_epoch(epoch, stop, log)
        finally:
            log.close()
            if self.distributed is not None:
                shutdown_process_group()
        return self.result(time.perf_counter() - start)

    def run_epoch(self, epoch: int, stop: StopSignals, log: RunLog) -> None:
        first, batch = self.begin_epoch(epoch), self.config.batch_size
        order = epoch_order(self.config.seed, epoch, len(self.train))
        epoch_start, checkpoint_due = time.perf_counter(), False
        for b in range(first, self.steps_per_epoch):
            warming_up = self.run_step.compiled is not None and self.step == self.first_step
            if warming_up:
                log.compiling(self.run_step.compiled)
            began = time.perf_counter()
            self.losses.add(self.train_step(order[b * batch:(b + 1) * batch]))
            if warming_up:
                log.compiled(time.perf_counter() - began)
            log.step_done()
            end_of_epoch = b == self.steps_per_epoch - 1
            if self.distributed is not None and self.step % self.config.log_every == 0:
                stop.agree(self.distributed, self.device)  # every rank stops at the same step
            checkpoint_due = bool(self.config.checkpoint_steps and self.step % self.config.checkpoint_steps == 0) \
                or stop.received is not None
            if self.step % self.config.log_every == 0 or end_of_epoch or checkpoint_due:
                self.log_interval(epoch, log)
            if not end_of_epoch and checkpoint_due:
                self.keeper.save(self.state(), self.step)
            if not end_of_epoch and stop.received is not None:
                raise Interrupted(stop.received, self.step, self.keeper.last)
        self.end_epoch(epoch, first, time.perf_counter() - epoch_start, checkpoint_due, stop, log)

    def train_step(self, batch) -> torch.Tensor:
        """Views of `batch`, then one PretrainStep; the host time of each is counted."""
        t0 = time.perf_counter()
        q_view, k_view = self.views(batch, self.step, self.shard)
        ids = self.views.samples(batch, self.shard) if self.config.exclude_own_keys else None
        data_s = time.perf_counter() - t0
        if self.flops_per_step is None:  # once, on the eager encoders; counted in neither time
            self.flops_per_step = step_flops(self.model, q_view, k_view)
        t1 = time.perf_counter()
        sampled = self.step - self.first_step >= 2 and self.step % self.config.log_every == 0  # not compile's steps
        loss = self.run_step(q_view, k_view, self.timer if sampled else None, ids)
        compute_s = time.perf_counter() - t1
        self.step += 1
        self.epoch_data_s += data_s
        self.epoch_compute_s += compute_s
        self.data_s += data_s
        self.compute_s += compute_s
        return loss

    # ---- the epoch's edges and the interval -------------------------------------------------------

    def begin_epoch(self, epoch: int) -> int:
        """Set the epoch's learning rate and counters; the first batch of the epoch to run."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.config, epoch)
        first = self.step - epoch * self.steps_per_epoch
        carried = self.carried_sum if first and self.carried_sum is not None else None
        self.losses.start_epoch(carried, first)
        self.carried_sum = None
        self.epoch_data_s = self.epoch_compute_s = 0.0
        return first

    def log_interval(self, epoch: int, log: RunLog) -> None:
        """The interval's mean loss and the collapse readings of its last batch: one host read."""
        self.loss_value, values = self.losses.interval_mean(self.distributed, self.run_step.collapse_readings())
        if not math.isfinite(self.loss_value):
            good = self.keeper.last if os.path.exists(self.keeper.last) else "none (none was written yet)"
            raise ScdError(f"pretrain: the loss became non-finite by step {self.step} (epoch {epoch}); "
                           f"the last good checkpoint: {good}")
        queries, _ = self.run_step.last_batch
        reading = CollapseReading.from_values(self.step, values, queries[0].shape[0], queries[0].shape[1])
        if reading.collapsed and (self.collapse is None or not self.collapse.collapsed):
            log.warn(reading.warning())  # once each time the run enters collapse
        self.collapse = reading
        log.interval(self.step, self.loss_value, lr_at(self.config, epoch), epoch, self.epoch_data_s,
                     self.epoch_compute_s, reading)

    def end_epoch(self, epoch: int, first: int, seconds: float, checkpoint_due: bool, stop: StopSignals,
                  log: RunLog) -> None:
        """The epoch's metrics row, best.pt when it is the best, a checkpoint when due."""
        epoch_loss = self.losses.epoch_mean(self.distributed)
        log.epoch(epoch, self.step, epoch_loss, lr_at(self.config, epoch),
                  (self.steps_per_epoch - first) * self.config.batch_size / seconds, self.epoch_data_s,
                  self.epoch_compute_s)
        if epoch_loss < self.best:
            self.best = epoch_loss
            self.keeper.save_best(self.state(epoch_loss))
        if (epoch + 1) % self.config.checkpoint_every == 0 or epoch + 1 == self.config.epochs or checkpoint_due:
            self.keeper.save(self.state(epoch_loss), self.step)
        if stop.received is not None and epoch + 1 < self.config.epochs:
            raise Interrupted(stop.received, self.step, self.keeper.last)

    # ---- state ------------------------------------------------------------------------------------

    def start(self) -> None:
        """A new run: the queues filled when asked, the run's config.json."""
        if self.config.queue_init == "keys":
            self.fill_queues()
        if self.main_process:
            save_json({"command": "pretrain", "data": self.data, "model": to_dict(self.model_config),
                       "pretrain": to_dict(self.config), "device": str(self.device), "train_samples": len(self.train),
                       "dataset": self.identity}, os.path.join(self.run_dir, "config.json"))

    def fill_queues(self) -> None:
        """`queue_init="keys"`: K / batch_size batches of key views through the key encoder into the
        queues, each batch its own augmentation stream (steps -1, -2, ..., apart from training's)."""
        count = self.model_config.queue_size // self.config.batch_size
        batches = queue_fill_batches(self.config.seed, len(self.train), self.config.batch_size, count)
        shown = self.progress and self.main_process
        for i, index in enumerate(tqdm(batches, desc="filling queues", unit="batch", disable=not shown)):
            _, key_view = self.views(index, -(i + 1), self.shard)
            self.run_step.enqueue_keys(key_view, self.views.samples(index, self.shard)
                                       if self.config.exclude_own_keys else None)

    def restore(self) -> None:
        """Everything a checkpoint holds, so the run continues as if it had never stopped."""
        resume = self.resume
        self.model.load_state_dict(resume["model"])
        if resume.get("queue_ids") is not None:
            self.model.queue_ids.copy_(resume["queue_ids"])
        self.optimizer.load_state_dict(resume["optimizer"])
        restore_random_states(resume["random"])
        if resume.get("reference_rng") is not None and self.config.augment == "reference":
            self.views.rng.bit_generator.state = resume["reference_rng"]
        self.step, self.best = resume["step"], resume.get("best_loss", math.inf)
        if self.step % self.steps_per_epoch and resume.get("epoch_sum") is not None:  # stopped mid-epoch
            self.carried_sum = resume["epoch_sum"].to(self.device)

    def state(self, epoch_loss: float | None = None) -> dict:
        config = self.config
        return {"format": CHECKPOINT_FORMAT, "model_config": to_dict(self.model_config),
                "pretrain_config": to_dict(config), "data": self.data, "epoch": self.step // self.steps_per_epoch,
                "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "random": random_states(),
                "reference_rng": self.views.rng.bit_generator.state if config.augment == "reference" else None,
                "best_loss": self.best, "epoch_loss": epoch_loss, "queue_ids": self.model.queue_ids,
                "dataset": self.identity,
                # the epoch's running sum, so that a resumed epoch's loss counts every step
                "epoch_sum": self.losses.snapshot()}

    def result(self, seconds: float) -> PretrainResult:
        steps = self.step - self.first_step
        achieved = (self.flops_per_step or 0) * steps / max(seconds, 1e-9)
        peak = peak_flops(self.device)
        result = PretrainResult(checkpoint=self.keeper.last, final_loss=self.loss_value, steps=self.step,
                                seconds=seconds, samples_per_s=steps * self.config.batch_size / max(seconds, 1e-9),
                                data_s=self.data_s, compute_s=self.compute_s,
                                peak_memory_bytes=_peak_memory(self.device),
                                phase_ms={p: 1000 * s for p, s in self.timer.per_step().items()},
                                sampled_steps=self.timer.steps, flops_per_step=self.flops_per_step or 0,
                                model_tflops=achieved / 1e12, mfu=achieved / peak if peak else None,
                                collapse=self.collapse.as_dict() if self.collapse is not None else None)
        if self.main_process:
            save_json(dataclasses.asdict(result), os.path.join(self.run_dir, "report.json"))
        return result
