"""A small exact t-SNE (van der Maaten and Hinton, 2008) for the embedding figure: O(n^2)
memory and time per iteration, fine for the few thousand test samples a figure shows."""
from __future__ import annotations

import math

import torch


def pca(x: torch.Tensor, dims: int) -> torch.Tensor:
    """The first `dims` principal-component scores of x (n, d), signs fixed for determinism;
    zero columns where x has fewer than `dims` components (n or d below dims)."""
    centred = x - x.mean(dim=0)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    have = min(dims, s.shape[0])
    scores = u[:, :have] * s[:have]
    sign = torch.sign(scores[scores.abs().argmax(dim=0), torch.arange(have)])
    scores = scores * torch.where(sign == 0, torch.ones_like(sign), sign)
    return torch.cat([scores, scores.new_zeros(x.shape[0], dims - have)], dim=1)


def _affinities(x: torch.Tensor, perplexity: float, steps: int = 64) -> torch.Tensor:
    """Symmetric P: each row's Gaussian width found by bisection so its entropy is log(perplexity)."""
    n = x.shape[0]
    dist = torch.cdist(x, x).square()
    dist.fill_diagonal_(float("inf"))
    target = math.log(min(perplexity, (n - 1) / 3.0))
    lo = torch.full((n, 1), 1e-20, dtype=x.dtype)
    hi = torch.full((n, 1), 1e20, dtype=x.dtype)
    beta = torch.ones(n, 1, dtype=x.dtype)
    for _ in range(steps):
        logits = -dist * beta
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(dim=1, keepdim=True)
        too_flat = entropy > target  # too wide a kernel: increase beta
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(hi < 1e19, (lo + hi) / 2, beta * 2)
    p = torch.softmax(-dist * beta, dim=1)
    return ((p + p.t()) / (2 * n)).clamp_min(1e-12)


def tsne(x: torch.Tensor, perplexity: float = 30.0, iterations: int = 750, seed: int = 0) -> torch.Tensor:
    """(n, 2) embedding of x (n, d); deterministic for a given seed."""
    x = x.double()
    n = x.shape[0]
    if n < 4:
        return pca(x, 2)
    p = _affinities(pca(x, 50), perplexity)
    generator = torch.Generator().manual_seed(seed)
    y = 1e-4 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    velocity, gains = torch.zeros_like(y), torch.ones_like(y)
    rate = max(n / 12.0 / 4.0, 50.0)
    for it in range(iterations):
        exaggeration, momentum = (12.0, 0.5) if it < 250 else (1.0, 0.8)
        num = 1.0 / (1.0 + torch.cdist(y, y).square())
        num.fill_diagonal_(0.0)
        q = (num / num.sum()).clamp_min(1e-12)
        weights = (exaggeration * p - q) * num
        grad = 4.0 * (weights.sum(dim=1, keepdim=True) * y - weights @ y)
        same_sign = (grad > 0) == (velocity > 0)
        gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_min(0.01)
        velocity = momentum * velocity - rate * gains * grad
        y = y + velocity
        y = y - y.mean(dim=0)
    return y
