"""Plain-PyTorch contrastive losses: the specification the fused kernels must equal.

Each builds the full logits matrix on purpose; it is simple to read and to check against
float64. Shapes: N queries, K negatives, D embedding width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_ref(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
                query_ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None,
                normalize: bool = False) -> torch.Tensor:
    """Mean over rows of -log softmax at the positive: logits [q.k, q.queue^T] / T."""
    if normalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)                                      # N, 1
    negatives = q @ queue.t()                                                        # N, K
    if query_ids is not None:
        same = query_ids[:, None] == queue_ids[None, :]                              # N, K
        negatives = negatives.masked_fill(same, float("-inf"))
    logits = torch.cat([positive, negatives], dim=1) / temperature                  # N, 1+K
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def nt_xent_ref(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
                normalize: bool = False) -> torch.Tensor:
    """SimCLR: 2N views; view i's positive is its pair, every other view a negative, itself
    excluded. Mean over the 2N rows."""
    z = torch.cat([z1, z2], dim=0)                                                   # 2N, D
    if normalize:
        z = F.normalize(z, dim=1)
    n = z1.shape[0]
    logits = (z @ z.t()) / temperature                                               # 2N, 2N
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(logits, target)


def clip_ref(a: torch.Tensor, b: torch.Tensor, temperature: float, normalize: bool = False) -> torch.Tensor:
    """CLIP's symmetric loss: mean of the a->b and b->a cross-entropies over N pairs."""
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = (a @ b.t()) / temperature                                               # N, N
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def scd_terms(queries, keys, queues):
    """SCD-Net's interactive pairing as (query, positive, negatives) triples:
    (qt, ki | instance queue), (qs, ki | instance queue), (qi, kt | temporal queue),
    (qi, ks | spatial queue)."""
    qt, qs, qi = queries
    kt, ks, ki = keys
    t_queue, s_queue, i_queue = queues
    return ((qt, ki, i_queue), (qs, ki, i_queue), (qi, kt, t_queue), (qi, ks, s_queue))


def scd_loss_ref(queries, keys, queues, temperature: float, normalize: bool = False,
                 query_ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None) -> torch.Tensor:
    """SCD-Net's loss: the sum of its four InfoNCE terms, each a batch mean. With ids (one per
    query, one per queue row, shared by the three queues), a queue key of the query's own
    sample is no negative."""
    return sum(infonce_ref(q, k, queue, temperature, query_ids, queue_ids, normalize=normalize)
               for q, k, queue in scd_terms(queries, keys, queues))
