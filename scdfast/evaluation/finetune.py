"""Fine-tuning and semi-supervised training: the encoder and its classifier trained together
on labelled samples (all of them, or a stratified fraction), then tested on the evaluation
crop. Training views are random temporal crops made by the batched augmentation kernels
(every other transform off), on the device that holds the data."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from scdfast.augment.batched import BatchAugmenter
from scdfast.config import FinetuneConfig, step_lr
from scdfast.data import SkeletonSet
from scdfast.data.resident import ResidentData
from scdfast.errors import ScdError
from scdfast.evaluation.classifier_step import classification_step
from scdfast.evaluation.encoders import EncoderSource
from scdfast.evaluation.features import eval_batch
from scdfast.evaluation.metrics import topk_accuracy
from scdfast.train.step import resolve_precision
from scdfast.train.views import epoch_order


@dataclass
class FinetuneResult:
    top1: float
    top5: float
    best_top1: float           # best over the evaluated epochs
    logits: torch.Tensor       # (N_test, classes) after the last epoch
    features: torch.Tensor     # (N_test, 2d) after the last epoch
    train_samples: int


@torch.no_grad()
def _test(model, test: SkeletonSet, window: int, representation: str, device, autocast, batch: int = 256):
    model.eval()
    logits, features = [], []
    for lo in range(0, len(test), batch):
        x = eval_batch(test, np.arange(lo, min(lo + batch, len(test))), window, representation).to(device)
        with autocast():
            f = model.features(x)
            logits.append(model.fc(f).float().cpu())
        features.append(f.float().cpu())
    model.train()
    return torch.cat(logits), torch.cat(features)


def epoch_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """One epoch's batches of `order`, each sorted: every sample once, in full batches, with a
    last partial batch of fewer than half `batch_size` folded into the one before. A step on a
    sliver (one sample, for 33 labels at batch 32) is a full-lr step whose BatchNorm statistics
    enter the running averages the test uses. The field's loaders drop the partial batch; that
    would leave labels unused every epoch, and train nothing with fewer labels than a batch."""
    cuts = list(range(batch_size, len(order), batch_size))
    if cuts and len(order) - cuts[-1] < batch_size / 2:
        cuts.pop()
    return [np.sort(part) for part in np.split(order, cuts)]


def finetune(source: EncoderSource, train: SkeletonSet, test: SkeletonSet, config: FinetuneConfig,
             device: torch.device, train_index: np.ndarray | None = None, precision: str = "auto",
             progress: bool = False) -> FinetuneResult:
    """Train `source.model` in place on train[train_index] (default: every sample)."""
    pool = np.arange(len(train)) if train_index is None else np.asarray(train_index)
    model, window, stream = source.model.to(device), source.config.window, source.representation
    torch.manual_seed(config.seed)
    augmenter = BatchAugmenter(window, crop_ratio=config.crop_ratio, representation=stream, probability=0.0,
                               seed=config.seed, layout=train.layout)
    resident = ResidentData(train, device)
    labels = torch.from_numpy(train.labels).to(device)
    test_y = torch.from_numpy(test.labels)
    bf16 = resolve_precision(precision, device) == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.sgd_momentum,
                                weight_decay=config.weight_decay, foreach=True)
    model.train()
    step, best = 0, 0.0
    bar = tqdm(range(config.epochs), desc="fine-tune", unit="epoch", disable=not progress)
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = step_lr(config.lr, config.lr_drop_epochs, epoch)
        order = pool[epoch_order(config.seed, epoch, len(pool))]
        for index in epoch_batches(order, config.batch_size):
            batch = resident.batch(index)
            x = augmenter(batch.data, batch.num_frames, batch.index, step, validate=False)
            loss = classification_step(model, optimizer, x, labels[torch.from_numpy(index).to(device)], autocast)
            step += 1
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            if not torch.isfinite(loss):  # read back only here, where the bar reads it anyway
                raise ScdError(f"fine-tuning diverged: the loss is {loss.item()} in epoch {epoch + 1}; "
                               f"lower --lr (now {config.lr})")
            logits, features = _test(model, test, window, stream, device, autocast)
            best = max(best, topk_accuracy(logits, test_y, 1))
            bar.set_postfix(loss=f"{loss.item():.3f}", top1=f"{topk_accuracy(logits, test_y, 1):.1f}")
    model.eval()
    return FinetuneResult(top1=topk_accuracy(logits, test_y, 1), top5=topk_accuracy(logits, test_y, 5),
                          best_top1=best, logits=logits, features=features, train_samples=len(pool))
