"""Downstream evaluation of a frozen encoder: linear classification and kNN retrieval.

The encoder runs in eval mode on deterministic centre crops, so its features are computed
once and the linear classifier trains on them (the authors re-run the frozen encoder every
epoch, which gives the same features at 80x the cost).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from scdfast.augment import eval_views
from scdfast.compat import load_official_downstream, read_checkpoint
from scdfast.config import LinearConfig, SCDConfig, from_dict, step_lr
from scdfast.data import SkeletonSet
from scdfast.errors import ScdError
from scdfast.models import DownstreamEncoder
from scdfast.train.pretrain import CHECKPOINT_FORMAT


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run directory whose checkpoints/last.pt is taken."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoints", "last.pt")
    if not os.path.isfile(path):
        raise ScdError(f"--checkpoint {path}: no such file")
    return path


def load_encoder(path: str, num_classes: int) -> tuple[DownstreamEncoder, SCDConfig]:
    """A DownstreamEncoder from an scdfast pretraining checkpoint or an official one."""
    path = resolve_checkpoint(path)
    payload = read_checkpoint(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        config = from_dict(SCDConfig, payload["model_config"])
        model = DownstreamEncoder(config, num_classes)
        prefix = "query_encoder.encoder."
        state = {k.removeprefix(prefix): v for k, v in payload["model"].items() if k.startswith(prefix)}
        model.encoder.load_state_dict(state)
        return model, config
    return load_official_downstream(path, num_classes), SCDConfig.paper()


@torch.no_grad()
def extract_features(encoder: DownstreamEncoder, data: SkeletonSet, window: int, device: torch.device,
                     batch_size: int = 256, representation: str = "joint", progress: bool = False,
                     desc: str = "features") -> torch.Tensor:
    """(N, 2d) float32 features of concat(vt, vs) on centre-cropped inputs, eval mode."""
    encoder.eval().to(device)
    out = []
    for lo in tqdm(range(0, len(data), batch_size), desc=desc, unit="batch", disable=not progress):
        hi = min(lo + batch_size, len(data))
        x = eval_views(np.asarray(data.data[lo:hi]), data.num_frames[lo:hi], window, representation, data.layout)
        out.append(encoder.features(torch.from_numpy(x).to(device)).float().cpu())
    return torch.cat(out)


@dataclass
class LinearResult:
    top1: float          # test accuracy after the last epoch, %
    top5: float
    best_top1: float     # best test accuracy over epochs (what the authors' log reports), %


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hit.float().mean().item()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, config: LinearConfig, device: torch.device,
                 progress: bool = False) -> LinearResult:
    """Train a Linear classifier on frozen features with the protocol's SGD schedule."""
    if config.standardize:
        mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    fc = torch.nn.Linear(train_x.shape[1], num_classes).to(device)
    # the downstream model's classifier init: the authors' fc keeps PyTorch's default
    optimizer = torch.optim.SGD(fc.parameters(), lr=config.lr, momentum=config.sgd_momentum,
                                weight_decay=config.weight_decay)
    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = test_x.to(device), test_y.to(device)
    best = 0.0
    for epoch in tqdm(range(config.epochs), desc="linear", unit="epoch", disable=not progress):
        lr = step_lr(config.lr, config.lr_drop_epochs, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(train_x.shape[0], generator=generator).to(device)
        for lo in range(0, train_x.shape[0], config.batch_size):
            idx = order[lo:lo + config.batch_size]
            loss = F.cross_entropy(fc(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            best = max(best, _topk(fc(test_x), test_y, 1))
    with torch.no_grad():
        logits = fc(test_x)
    return LinearResult(top1=_topk(logits, test_y, 1), top5=_topk(logits, test_y, 5), best_top1=best)


@torch.no_grad()
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 1, chunk: int = 1024) -> float:
    """Top-1 accuracy of a k-nearest-neighbour vote under cosine similarity, computed in
    chunks of test rows (never the whole test x train matrix at once)."""
    if k < 1:
        raise ScdError(f"--k {k}: must be >= 1")
    train_n = F.normalize(train_x.float(), dim=1)
    test_n = F.normalize(test_x.float(), dim=1)
    k = min(k, train_n.shape[0])
    num_classes = int(max(train_y.max().item(), test_y.max().item())) + 1
    correct = 0
    for lo in range(0, test_n.shape[0], chunk):
        sim = test_n[lo:lo + chunk] @ train_n.t()                                    # chunk, N_train
        neighbours = sim.topk(k, dim=1).indices                                     # chunk, k
        votes = F.one_hot(train_y[neighbours], num_classes).sum(dim=1)               # chunk, classes
        correct += (votes.argmax(dim=1) == test_y[lo:lo + chunk]).sum().item()
    return 100.0 * correct / test_n.shape[0]
