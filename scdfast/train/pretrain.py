"""MoCo pretraining of SCD-Net.

One step: two views per sample (query, key) from the batched augmentation kernels, momentum
update, keys from the key encoder, queries from the query encoder, the four-term loss, SGD,
enqueue. Nothing in the step reads a value back to the host; the loss is summed on the
device and read every `log_every` steps.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from scdfast.compat import read_checkpoint, require_fields
from scdfast.config import PretrainConfig, SCDConfig, step_lr, to_dict
from scdfast.data import SkeletonSet
from scdfast.data.dataset import dataset_identity
from scdfast.errors import ScdError
from scdfast.models import SCDNet
from scdfast.train.checkpoints import (
    CheckpointKeeper,
    random_states,
    restore_random_states,
)
from scdfast.train.distributed import Distributed
from scdfast.train.distributed import shutdown as shutdown_process_group
from scdfast.train.phases import PhaseTimer, peak_flops, step_flops
from scdfast.train.plots import plot_curves
from scdfast.train.rundir import MetricsCSV, atomic_write, save_json
from scdfast.train.signals import Interrupted, StopSignals
from scdfast.train.step import PretrainStep
from scdfast.train.views import ViewSource, epoch_order, queue_fill_batches

CHECKPOINT_FORMAT = "scdfast-pretrain-v1"
METRIC_FIELDS = ["epoch", "step", "loss", "lr", "samples_per_s", "data_s", "compute_s"]


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


def _tensorboard(run_dir: str):
    """A TensorBoard writer for run_dir/tensorboard, or None where tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def lr_at(config: PretrainConfig, epoch: int) -> float:
    return step_lr(config.lr, config.lr_drop_epochs, epoch)


def _check_sizes(model_config: SCDConfig, config: PretrainConfig, train: SkeletonSet) -> int:
    if config.batch_size > len(train):
        raise ScdError(f"batch_size={config.batch_size} exceeds the {len(train)} training samples")
    if model_config.queue_size % config.batch_size:
        raise ScdError(f"queue_size={model_config.queue_size} is not a multiple of batch_size={config.batch_size}")
    return len(train) // config.batch_size  # drop_last, as the authors do


def _truncate_csv(path: str, column: str, last: int) -> None:
    """Drop rows whose `column` exceeds `last`: what a killed run logged past its checkpoint."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows[0].keys() if rows else None
    if fields is None:
        return
    kept = [r for r in rows if int(r[column]) <= last]
    def write(f):
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(kept)
    atomic_write(path, write, mode="w")


def load_resume_state(run_dir: str) -> dict:
    """The newest checkpoint of a run directory, checked to be a pretraining checkpoint."""
    path = os.path.join(run_dir, "checkpoints", "last.pt")
    if not os.path.isfile(path):
        raise ScdError(f"--resume {run_dir}: no checkpoint at {path}")
    state = read_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ScdError(f"--resume {run_dir}: {path} is not an scdfast pretraining checkpoint")
    require_fields(state, ("model_config", "pretrain_config", "step", "model", "optimizer", "random"), path,
                   CHECKPOINT_FORMAT)
    return state


def _fill_queues(run_step: PretrainStep, views: ViewSource, model_config: SCDConfig, config: PretrainConfig,
                 num_samples: int, shard, progress: bool) -> None:
    """`queue_init="keys"`: K / batch_size batches of key views through the key encoder into the
    queues, each batch its own augmentation stream (steps -1, -2, ..., apart from training's)."""
    count = model_config.queue_size // config.batch_size
    batches = queue_fill_batches(config.seed, num_samples, config.batch_size, count)
    for i, index in enumerate(tqdm(batches, desc="filling queues", unit="batch", disable=not progress)):
        _, key_view = views(index, -(i + 1), shard)
        run_step.enqueue_keys(key_view, views.samples(index, shard) if config.exclude_own_keys else None)


def _check_same_dataset(resume: dict, identity: dict) -> None:
    """A resumed run reads the dataset it started on (path, shapes and a fingerprint)."""
    saved = resume.get("dataset")
    if saved is None:
        return  # a checkpoint from before identities were recorded
    for field in ("samples", "shape", "fingerprint"):
        if saved.get(field) != identity.get(field):
            raise ScdError(f"--resume: the dataset {identity['data']} differs from the one the run started on "
                           f"({field} {saved.get(field)} then, {identity.get(field)} now)")


def pretrain(model_config: SCDConfig, config: PretrainConfig, train: SkeletonSet, run_dir: str,
             device: torch.device, progress: bool = True, resume: dict | None = None,
             data: str = "synthetic") -> PretrainResult | None:
    """Pretrain, or with `resume` (from load_resume_state) continue exactly where that
    checkpoint stopped: the same data order, views, dropout and optimiser state follow, and
    the epoch's running loss, so metrics.csv and best.pt equal an uninterrupted run's. Resuming
    a finished run does nothing and returns None."""
    steps_per_epoch = _check_sizes(model_config, config, train)
    total = steps_per_epoch * config.epochs
    identity = dataset_identity(train, data)
    if resume is not None:
        _check_same_dataset(resume, identity)
        if resume["step"] >= total:
            return None
    distributed = Distributed.from_env(device.type)
    if distributed is not None and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
        torch.cuda.set_device(device)
    shard = distributed.shard(config.batch_size) if distributed is not None else None
    main_process = distributed is None or distributed.is_main
    torch.manual_seed(config.seed)
    views = ViewSource(train, model_config, config, device)
    model = SCDNet(model_config).to(device)
    if distributed is not None:  # dropout differs across ranks; the weights above do not
        torch.manual_seed(config.seed * 7919 + distributed.rank + 1)
    optimizer = torch.optim.SGD(model.query_encoder.parameters(), lr=config.lr, momentum=config.sgd_momentum,
                                weight_decay=config.weight_decay)
    bn = config.bn if config.bn != "auto" else ("shuffle" if distributed is not None else "local")
    run_step = PretrainStep(model, optimizer, device, config.compile, config.precision, distributed, bn,
                            seed=config.seed, exclude_own_keys=config.exclude_own_keys)
    keeper = CheckpointKeeper(os.path.join(run_dir, "checkpoints"), config.keep_last, enabled=main_process)
    step, best, resumed_epoch_sum = 0, math.inf, None
    if resume is not None:
        model.load_state_dict(resume["model"])
        if resume.get("queue_ids") is not None:
            model.queue_ids.copy_(resume["queue_ids"])
        optimizer.load_state_dict(resume["optimizer"])
        restore_random_states(resume["random"])
        if resume.get("reference_rng") is not None and config.augment == "reference":
            views.rng.bit_generator.state = resume["reference_rng"]
        step, best = resume["step"], resume.get("best_loss", math.inf)
        if step % steps_per_epoch and resume.get("epoch_sum") is not None:  # stopped mid-epoch
            resumed_epoch_sum = resume["epoch_sum"].to(device)
        _truncate_csv(os.path.join(run_dir, "steps.csv"), "step", step)
        _truncate_csv(os.path.join(run_dir, "metrics.csv"), "step", step)
    else:
        if config.queue_init == "keys":
            _fill_queues(run_step, views, model_config, config, len(train), shard, progress and main_process)
        if main_process:
            save_json({"command": "pretrain", "data": data, "model": to_dict(model_config),
                       "pretrain": to_dict(config), "device": str(device), "train_samples": len(train),
                       "dataset": identity}, os.path.join(run_dir, "config.json"))
    metrics = MetricsCSV(os.path.join(run_dir, "metrics.csv"), METRIC_FIELDS, enabled=main_process)
    board = _tensorboard(run_dir) if main_process else None
    step_log = MetricsCSV(os.path.join(run_dir, "steps.csv"), ["step", "loss"], enabled=main_process)

    def state(epoch_loss: float | None = None) -> dict:
        return {"format": CHECKPOINT_FORMAT, "model_config": to_dict(model_config),
                "pretrain_config": to_dict(config), "data": data, "epoch": step // steps_per_epoch,
                "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "random": random_states(),
                "reference_rng": views.rng.bit_generator.state if config.augment == "reference" else None,
                "best_loss": best, "epoch_loss": epoch_loss, "queue_ids": model.queue_ids, "dataset": identity,
                # the epoch's running sum, so that a resumed epoch's loss counts every step
                "epoch_sum": epoch_sum.detach().cpu().clone() if epoch_sum is not None else None}

    epoch_sum = None
    first_step, data_total, compute_total = step, 0.0, 0.0
    timer, flops_per_step = PhaseTimer(device), None
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not (progress and main_process),
               dynamic_ncols=True)
    loss_value, start = math.nan, time.perf_counter()
    model.train()
    try:
        with StopSignals() as stop:
            for epoch in range(step // steps_per_epoch, config.epochs):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(config, epoch)
                order = epoch_order(config.seed, epoch, len(train))
                first = step - epoch * steps_per_epoch
                if first and resumed_epoch_sum is not None:  # the steps before the stop count too
                    epoch_sum, summed = resumed_epoch_sum, first
                else:
                    epoch_sum, summed = torch.zeros((), device=device), 0
                resumed_epoch_sum = None
                interval_sum = torch.zeros((), device=device)
                pending = 0  # steps in interval_sum
                data_s = compute_s = 0.0
                epoch_start = time.perf_counter()
                for b in range(first, steps_per_epoch):
                    t0 = time.perf_counter()
                    batch = order[b * config.batch_size:(b + 1) * config.batch_size]
                    q_view, k_view = views(batch, step, shard)
                    ids = views.samples(batch, shard) if config.exclude_own_keys else None
                    t1 = time.perf_counter()
                    if flops_per_step is None:
                        flops_per_step = step_flops(model, q_view, k_view)
                        t1 = time.perf_counter()
                    sampled = step - first_step >= 2 and step % config.log_every == 0  # not compile's steps
                    loss = run_step(q_view, k_view, timer if sampled else None, ids)
                    epoch_sum += loss
                    summed += 1
                    interval_sum += loss
                    pending += 1
                    step += 1
                    data_s += t1 - t0
                    compute_s += time.perf_counter() - t1
                    data_total += t1 - t0
                    compute_total += time.perf_counter() - t1
                    bar.update(1)
                    end_of_epoch = b == steps_per_epoch - 1
                    if distributed is not None and step % config.log_every == 0:
                        stop.agree(distributed, device)  # every rank stops at the same step
                    want_checkpoint = (config.checkpoint_steps and step % config.checkpoint_steps == 0) \
                        or stop.received is not None
                    if step % config.log_every == 0 or end_of_epoch or want_checkpoint:
                        if distributed is not None:  # the logged loss is the mean over ranks
                            interval_sum = distributed.mean(interval_sum)
                        loss_value = interval_sum.item() / pending  # host sync, once per log interval
                        interval_sum.zero_()
                        pending = 0
                        if not math.isfinite(loss_value):
                            good = keeper.last if os.path.exists(keeper.last) else "none (none was written yet)"
                            raise ScdError(f"pretrain: the loss became non-finite by step {step} (epoch {epoch}); "
                                           f"the last good checkpoint: {good}")
                        step_log.write(step=step, loss=repr(loss_value))
                        if board is not None:
                            board.add_scalar("loss/step", loss_value, step)
                            board.add_scalar("lr", lr_at(config, epoch), step)
                        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr_at(config, epoch):.3g}", epoch=epoch,
                                        data=f"{data_s:.1f}s", compute=f"{compute_s:.1f}s")
                    if want_checkpoint and not end_of_epoch:
                        keeper.save(state(), step)
                    if stop.received is not None and not end_of_epoch:
                        raise Interrupted(stop.received, step, keeper.last)
                if distributed is not None:
                    epoch_sum = distributed.mean(epoch_sum)
                epoch_loss = epoch_sum.item() / summed
                elapsed = time.perf_counter() - epoch_start
                if board is not None:
                    board.add_scalar("loss/epoch", epoch_loss, step)
                    board.add_scalar("samples_per_s", (steps_per_epoch - first) * config.batch_size / elapsed, step)
                metrics.write(epoch=epoch, step=step, loss=f"{epoch_loss:.6f}", lr=f"{lr_at(config, epoch):.6g}",
                              samples_per_s=f"{(steps_per_epoch - first) * config.batch_size / elapsed:.1f}",
                              data_s=f"{data_s:.3f}", compute_s=f"{compute_s:.3f}")
                if epoch_loss < best:
                    best = epoch_loss
                    keeper.save_best(state(epoch_loss))
                if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs \
                        or want_checkpoint:
                    keeper.save(state(epoch_loss), step)
                if stop.received is not None and epoch + 1 < config.epochs:
                    raise Interrupted(stop.received, step, keeper.last)
    finally:
        bar.close()
        metrics.close()
        step_log.close()
        if board is not None:
            board.close()
        if main_process:
            plot_curves(run_dir)  # also after a crash or a stop: the figure of what ran
        if distributed is not None:
            shutdown_process_group()
    seconds = time.perf_counter() - start
    achieved = (flops_per_step or 0) * (step - first_step) / max(seconds, 1e-9)
    peak = peak_flops(device)
    result = PretrainResult(checkpoint=keeper.last, final_loss=loss_value, steps=step, seconds=seconds,
                            samples_per_s=(step - first_step) * config.batch_size / max(seconds, 1e-9),
                            data_s=data_total, compute_s=compute_total, peak_memory_bytes=_peak_memory(device),
                            phase_ms={p: 1000 * s for p, s in timer.per_step().items()}, sampled_steps=timer.steps,
                            flops_per_step=flops_per_step or 0, model_tflops=achieved / 1e12,
                            mfu=achieved / peak if peak else None)
    if main_process:
        save_json(dataclasses.asdict(result), os.path.join(run_dir, "report.json"))
    return result
