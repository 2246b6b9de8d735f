"""Linear evaluation: a Linear classifier trained on a frozen encoder with the protocol's
SGD step schedule. `linear_probe` trains on cached features; `linear_probe_exact` runs the
frozen encoder on every batch of every epoch, as the authors' script does, and gives the same
classifier up to floating-point summation order."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from scdfast.config import LinearConfig, step_lr
from scdfast.data import SkeletonSet
from scdfast.errors import ScdError
from scdfast.evaluation.classifier_step import classification_step
from scdfast.evaluation.features import eval_batch
from scdfast.evaluation.metrics import topk_accuracy
from scdfast.models import DownstreamEncoder


@dataclass
class LinearResult:
    top1: float                # test accuracy after the last epoch, %
    top5: float
    best_top1: float           # best test accuracy over epochs (what the authors' log reports), %
    logits: torch.Tensor       # (N_test, classes) class scores after the last epoch


def _fit(features: Callable[[torch.Tensor], torch.Tensor], train_y: torch.Tensor,
         test_logits: Callable[[torch.nn.Linear], torch.Tensor], test_y: torch.Tensor, dim: int,
         num_classes: int, config: LinearConfig, device: torch.device, progress: bool) -> LinearResult:
    """The training loop both variants share; `features(idx)` gives the features of training
    samples idx (a tensor on `device`)."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    fc = torch.nn.Linear(dim, num_classes).to(device)
    with torch.no_grad():  # the authors' action_classification.py (MoCo's linear protocol): N(0, 0.01), zero bias
        fc.weight.normal_(0.0, 0.01)
        fc.bias.zero_()
    optimizer = torch.optim.SGD(fc.parameters(), lr=config.lr, momentum=config.sgd_momentum,
                                weight_decay=config.weight_decay)
    train_y, test_y = train_y.to(device), test_y.to(device)
    best = 0.0
    for epoch in tqdm(range(config.epochs), desc="linear", unit="epoch", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = step_lr(config.lr, config.lr_drop_epochs, epoch)
        order = torch.randperm(train_y.shape[0], generator=generator).to(device)
        for lo in range(0, train_y.shape[0], config.batch_size):
            idx = order[lo:lo + config.batch_size]
            classification_step(fc, optimizer, features(idx), train_y[idx])
        with torch.no_grad():
            logits = test_logits(fc)
        best = max(best, topk_accuracy(logits, test_y, 1))
    return LinearResult(top1=topk_accuracy(logits, test_y, 1), top5=topk_accuracy(logits, test_y, 5),
                        best_top1=best, logits=logits.cpu())


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, config: LinearConfig, device: torch.device,
                 progress: bool = False) -> LinearResult:
    """Train the classifier on cached features (N, dim)."""
    if config.standardize:
        mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_x, test_x = train_x.to(device), test_x.to(device)
    return _fit(lambda idx: train_x[idx], train_y, lambda fc: fc(test_x), test_y, train_x.shape[1],
                num_classes, config, device, progress)


def linear_probe_exact(encoder: DownstreamEncoder, train: SkeletonSet, test: SkeletonSet, window: int,
                       representation: str, num_classes: int, config: LinearConfig, device: torch.device,
                       progress: bool = False, test_batch: int = 256) -> LinearResult:
    """The authors' protocol: the frozen encoder (eval mode) recomputes every batch's features."""
    if config.standardize:
        raise ScdError("--standardize needs the cached features (drop --exact-protocol, or add --no-standardize)")
    encoder.eval().to(device)

    @torch.no_grad()
    def features_of(data: SkeletonSet, index: np.ndarray) -> torch.Tensor:
        return encoder.features(eval_batch(data, index, window, representation).to(device)).float()

    def test_logits(fc: torch.nn.Linear) -> torch.Tensor:
        return torch.cat([fc(features_of(test, np.arange(lo, min(lo + test_batch, len(test)))))
                          for lo in range(0, len(test), test_batch)])

    return _fit(lambda idx: features_of(train, idx.cpu().numpy()), torch.from_numpy(train.labels), test_logits,
                torch.from_numpy(test.labels), encoder.fc.in_features, num_classes, config, device, progress)
