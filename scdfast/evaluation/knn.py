"""kNN retrieval: test features classified by their nearest training features under cosine
similarity, on the device, in chunks of test rows (never the whole N_test x N_train matrix)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scdfast.errors import ScdError
from scdfast.evaluation.metrics import topk_accuracy


@dataclass
class KnnResult:
    top1: float
    top5: float
    scores: torch.Tensor   # (N_test, classes): votes among the k nearest, ties broken by similarity


@torch.no_grad()
def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, k: int = 1, device: torch.device | str = "cpu", chunk: int = 1024) -> KnnResult:
    """Each class scores its number of votes among the k nearest training samples, plus a
    fraction below one that grows with its best similarity: the vote decides, the closest
    sample breaks ties, and with k = 1 the top-5 are the five classes whose nearest training
    sample is closest."""
    if k < 1:
        raise ScdError(f"--k {k}: must be >= 1")
    if k > train_x.shape[0]:
        raise ScdError(f"--k {k}: larger than the {train_x.shape[0]} training samples")
    train_n = F.normalize(train_x.float().to(device), dim=1)
    test_n = F.normalize(test_x.float().to(device), dim=1)
    train_y = train_y.to(device)
    scores = []
    for lo in range(0, test_n.shape[0], chunk):
        sim = test_n[lo:lo + chunk] @ train_n.t()                                   # chunk, N_train
        neighbours = sim.topk(k, dim=1).indices                                    # chunk, k
        votes = F.one_hot(train_y[neighbours], num_classes).sum(dim=1).float()      # chunk, classes
        best = torch.full((sim.shape[0], num_classes), -1.0, device=device)
        best.scatter_reduce_(1, train_y.expand_as(sim), sim, reduce="amax")         # each class's closest
        scores.append((votes + (best + 1.0) / 2.001).cpu())                          # tie-break term in [0, 1)
    scores = torch.cat(scores) if scores else torch.zeros(0, num_classes)
    return KnnResult(top1=topk_accuracy(scores, test_y, 1), top5=topk_accuracy(scores, test_y, 5), scores=scores)
