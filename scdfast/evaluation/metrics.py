"""Accuracy from class scores."""
from __future__ import annotations

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """% of rows whose label is among the k highest scores (k capped at the class count)."""
    if scores.shape[0] == 0:
        return 0.0
    k = min(k, scores.shape[1])
    hit = (scores.topk(k, dim=1).indices == labels.to(scores.device)[:, None]).any(dim=1)
    return 100.0 * hit.float().mean().item()
