"""Plain-PyTorch contrastive losses: the specification the fused kernels must equal.

Each builds the full logits matrix on purpose; it is simple to read and to check against
float64. Every function returns one loss per row (the caller reduces). Shapes: N queries,
K negatives, D embedding width. `temperature` is a float or a () tensor (then it takes a
gradient through the logits as any other input).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_rows(logits: torch.Tensor, excluded: torch.Tensor | None, positive: torch.Tensor) -> torch.Tensor:
    """Per row: log-sum-exp over the columns not `excluded` minus the mean logit of the
    `positive` columns (a one-hot `positive` is cross-entropy); 0 for a row without positives."""
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    npos = positive.sum(dim=1)
    mean_positive = logits.masked_fill(~positive, 0).sum(dim=1) / npos.clamp_min(1)
    return torch.where(npos > 0, torch.logsumexp(logits, dim=1) - mean_positive, torch.zeros_like(mean_positive))


def infonce_ref(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature,
                query_ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None,
                normalize: bool = False) -> torch.Tensor:
    """(N,): -log softmax at the positive of logits [q.k, q.queue^T] / T."""
    if normalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)                                      # N, 1
    logits = torch.cat([positive, q @ queue.t()], dim=1) / temperature              # N, 1+K
    if query_ids is not None:  # masked after the division, so a tensor temperature's gradient stays finite
        same = query_ids[:, None] == queue_ids[None, :]                              # N, K
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def supcon_rows_ref(x: torch.Tensor, y: torch.Tensor, self_column: torch.Tensor, row_labels: torch.Tensor,
                    col_labels: torch.Tensor, temperature) -> torch.Tensor:
    """(M,) supervised-contrastive L_out (Khosla et al. 2020, eq. 2) of anchors x against
    candidates y, column self_column[i] being anchor i itself: its denominator is every
    other candidate, its positives the other candidates of its label."""
    logits = (x @ y.t()) / temperature                                               # M, C
    is_self = torch.arange(y.shape[0], device=y.device)[None, :] == self_column[:, None]
    positive = (row_labels[:, None] == col_labels[None, :]) & ~is_self
    return contrastive_rows(logits, is_self, positive)


def nt_xent_ref(z1: torch.Tensor, z2: torch.Tensor, temperature, normalize: bool = False,
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """(2N,) SimCLR: view i's positive is its pair (with labels, every other view of its
    label), every other view a negative, itself excluded."""
    z = torch.cat([z1, z2], dim=0)                                                   # 2N, D
    if normalize:
        z = F.normalize(z, dim=1)
    index = torch.arange(z.shape[0], device=z.device)
    labels = torch.arange(z1.shape[0], device=z.device) if labels is None else labels
    labels = torch.cat([labels, labels])
    return supcon_rows_ref(z, z, index, labels, labels, temperature)


def clip_ref(a: torch.Tensor, b: torch.Tensor, temperature, normalize: bool = False,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) CLIP's symmetric loss per pair: the mean of its a->b and b->a cross-entropies
    (with labels, every pair of the same label is a positive)."""
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = (a @ b.t()) / temperature                                               # N, N
    labels = torch.arange(a.shape[0], device=a.device) if labels is None else labels
    positive = labels[:, None] == labels[None, :]
    return 0.5 * (contrastive_rows(logits, None, positive) + contrastive_rows(logits.t(), None, positive.t()))


def scd_terms(queries, keys, queues):
    """SCD-Net's interactive pairing as (query, positive, negatives) triples:
    (qt, ki | instance queue), (qs, ki | instance queue), (qi, kt | temporal queue),
    (qi, ks | spatial queue)."""
    qt, qs, qi = queries
    kt, ks, ki = keys
    t_queue, s_queue, i_queue = queues
    return ((qt, ki, i_queue), (qs, ki, i_queue), (qi, kt, t_queue), (qi, ks, s_queue))


def scd_loss_ref(queries, keys, queues, temperature, normalize: bool = False,
                 query_ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) SCD-Net's loss per sample: the sum of its four InfoNCE terms. With ids (one per
    query, one per queue row, shared by the three queues), a queue key of the query's own
    sample is no negative."""
    return sum(infonce_ref(q, k, queue, temperature, query_ids, queue_ids, normalize=normalize)
               for q, k, queue in scd_terms(queries, keys, queues))
