"""The training step every supervised protocol takes: cross-entropy of a model's class scores,
then SGD. Linear evaluation runs it on a Linear classifier over features, fine-tuning and
semi-supervised training on the whole encoder with its classifier; like pretraining's step it
reads nothing back to the host (tests/test_meta_step.py runs it on the meta device)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F


def classification_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                        labels: torch.Tensor, autocast: Callable[[], contextlib.AbstractContextManager] | None = None
                        ) -> torch.Tensor:
    """One SGD step on the mean cross-entropy of model(x) against labels (scores taken in fp32
    under `autocast`); the loss, detached, on the device."""
    with autocast() if autocast is not None else contextlib.nullcontext():
        loss = F.cross_entropy(model(x).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
