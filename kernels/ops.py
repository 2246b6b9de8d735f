"""The fused losses as autograd functions over two PyTorch custom ops, so torch.compile
(fullgraph=True) traces a model that calls them: each op is opaque to the compiler and its
fake version gives the output shapes.

`scdfast::rows` is the row pass: each row's loss, lse, and its unweighted gradients w.r.t. the
query, the positive and 1 / T. `scdfast::columns` is the negatives' gradient, run in the
backward with each row's incoming gradient as its weight. The losses return one value per
row, so any reduction (mean, sum, none) is exact; the backward scales the saved per-row
gradients, as Liger-Kernel's fused cross-entropy does. Outputs are fp32; gradients are
returned in each input's dtype.

Label-aware positives (supervised contrastive, CLIP with duplicate pairs) need no N x N mask:
the denominator of row i is every candidate but itself, which the kernels already stream, and
the positives enter only through their mean, a per-label sum of O((N + K) D).
"""
from __future__ import annotations

import torch

from scdfast.kernels.infonce import (
    EXCLUDE_POSITIVE,
    EXCLUDE_SELF_AND_POSITIVE,
    NO_EXCLUSION,
    RowsProblem,
    columns_pass,
    low_precision_dot,
    rows_pass,
)

F32 = torch.float32


def _none(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0, dtype=F32)  # a distinct tensor: custom-op outputs may not alias


# ---- the two passes as custom ops ----------------------------------------------------------------

def _compiled_dtypes(rows: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rows (and positives) in a dtype combination the compile gate compiles: one dtype
    throughout, or fp32 rows against bf16 negatives. Any other mix (bf16 queries against an
    fp32 bank) reads the rows as fp32, an N x D copy."""
    c = others[-1]
    same = all(t.dtype == rows.dtype for t in others[:-1])
    if same and (rows.dtype == c.dtype or (rows.dtype == F32 and c.dtype == torch.bfloat16)):
        return (rows, *others[:-1])
    return (rows.float(), *(t.float() for t in others[:-1]))


@torch.library.custom_op("scdfast::rows", mutates_args=())
def _rows_op(q: torch.Tensor, k: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor,
             inv_t: torch.Tensor, query_ids: torch.Tensor | None, queue_ids: torch.Tensor | None, k_shift: int,
             in_batch: int, normalize: bool, k_grad: bool, scd_terms: bool, precision: str
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, lse, dscale: (terms, N); dq, dk: (terms, N, D); q_inv: (terms, N)), dk empty unless
    k_grad, q_inv (1 / ||q_i||, as the logits were made) unless normalize. q, k are (terms, N, D);
    term t streams c0, or with scd_terms SCD-Net's c0 c0 c1 c2."""
    q, k = _compiled_dtypes(q, k, c0)
    out = rows_pass(RowsProblem(q, k, (c0, c1, c2) if scd_terms else (c0,), inv_t, k_shift=k_shift, in_batch=in_batch,
                                query_ids=query_ids, queue_ids=queue_ids, normalize=normalize, k_grad=k_grad,
                                precision=precision))
    return (out["loss"], out["lse"], out["dscale"], out["dq"], out["dk"] if k_grad else _none(q),
            out["q_inv"] if normalize else _none(q))


@_rows_op.register_fake
def _(q, k, c0, c1, c2, inv_t, query_ids, queue_ids, k_shift, in_batch, normalize, k_grad, scd_terms, precision):
    terms, n, d = q.shape
    per_row = [q.new_empty((terms, n), dtype=F32) for _ in range(3)]
    return (*per_row, q.new_empty((terms, n, d), dtype=F32), q.new_empty((terms, n, d) if k_grad else (0,), dtype=F32),
            q.new_empty((terms, n) if normalize else (0,), dtype=F32))


@torch.library.custom_op("scdfast::columns", mutates_args=())
def _columns_op(q: torch.Tensor, c: torch.Tensor, lse: torch.Tensor, inv_t: torch.Tensor, weights: torch.Tensor,
                query_ids: torch.Tensor | None, queue_ids: torch.Tensor | None, k_shift: int, in_batch: int,
                precision: str) -> torch.Tensor:
    """(K, D) fp32: sum_i w_i p_ij q_i / T over the rows that count c_j as a negative."""
    q, = _compiled_dtypes(q, c)
    return columns_pass(q, c, lse, inv_t, weights, k_shift=k_shift, in_batch=in_batch, query_ids=query_ids,
                        queue_ids=queue_ids, precision=precision)


@_columns_op.register_fake
def _(q, c, lse, inv_t, weights, query_ids, queue_ids, k_shift, in_batch, precision):
    return c.new_empty(c.shape, dtype=F32)


def _row_weights(grad: torch.Tensor) -> torch.Tensor:
    return grad.to(F32).contiguous()


def _temperature_grad(ctx, grad: torch.Tensor, dscale: torch.Tensor, index: int):
    return (grad.to(F32) * dscale).sum() if ctx.needs_input_grad[index] else None


# ---- MoCo InfoNCE against a queue -----------------------------------------------------------------

class _InfoNCE(torch.autograd.Function):
    """Per-row loss of q_i against its positive k_i and the queue's rows."""

    @staticmethod
    def forward(ctx, q, k, queue, inv_t, query_ids, queue_ids, normalize, precision):
        k_grad = ctx.needs_input_grad[1]
        loss, lse, dscale, dq, dk, q_inv = _rows_op(q[None], k[None], queue, queue, queue, inv_t, query_ids,
                                                    queue_ids, 0, NO_EXCLUSION, normalize, k_grad, False, precision)
        # the queue is kept only when it takes a gradient: a memory bank enqueues in place after the loss
        ctx.save_for_backward(q, queue if ctx.needs_input_grad[2] else None, inv_t, lse[0], dscale[0], dq[0],
                              dk[0] if k_grad else dk, q_inv[0] if normalize else q_inv,
                              *((query_ids, queue_ids) if query_ids is not None else ()))
        # the dtype the row pass's dot took the normalised q_i in (bf16 on the tensor cores, else fp32)
        seen = torch.bfloat16 if low_precision_dot(q, k, queue) else F32
        ctx.settings = (normalize, precision, q.dtype, k.dtype, queue.dtype, seen)
        return loss[0]

    @staticmethod
    def backward(ctx, grad):
        q, queue, inv_t, lse, dscale, dq, dk, q_inv, *ids = ctx.saved_tensors
        normalize, precision, q_dtype, k_dtype, queue_dtype, seen = ctx.settings
        w = _row_weights(grad)
        dk_out = dqueue = None
        if ctx.needs_input_grad[1]:
            dk_out = (w[:, None] * dk).to(k_dtype)
        if ctx.needs_input_grad[2]:
            # the columns pass must see the very q_i the row pass's logits (and lse) were made of: at
            # a logit near 10 one ulp of q_i moves p_ij = exp(s_ij - lse_i) by 1e-6 (F.normalize's
            # q_i gave a trained queue's gradient up to 8x plain PyTorch's error). The kernels scaled
            # q by the row pass's inverse norms, one fp32 product, which this repeats exactly.
            q_seen = (q.float() * q_inv[:, None]).to(seen) if normalize else q
            dqueue = _columns_op(q_seen, queue, lse, inv_t, w, *(ids or (None, None)), 0, NO_EXCLUSION,
                                 precision).to(queue_dtype)
        return ((w[:, None] * dq).to(q_dtype), dk_out, dqueue, _temperature_grad(ctx, grad, dscale, 3),
                None, None, None, None)


def fused_infonce(q, k, queue, inv_t, query_ids=None, queue_ids=None, normalize=False, precision="tf32"):
    """(N,) per-row losses; inv_t a () fp32 tensor on q's device."""
    return _InfoNCE.apply(q, k, queue, inv_t, _ids(query_ids), _ids(queue_ids), normalize, precision)


# ---- in-batch losses: NT-Xent, SupCon, CLIP ------------------------------------------------------

def _label_groups(row_labels: torch.Tensor, col_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Dense group numbers of the rows' and the columns' labels, shared, with no host read (a
    sort instead of torch.unique), and an upper bound on the number of groups."""
    labels = torch.cat([row_labels, col_labels])
    ordered, order = labels.sort()
    first = torch.ones_like(ordered, dtype=torch.long)
    first[1:] = (ordered[1:] != ordered[:-1]).long()
    group = torch.empty_like(first).scatter_(0, order, first.cumsum(0) - 1)
    return group[:row_labels.shape[0]], group[row_labels.shape[0]:], labels.shape[0]


class _InBatch(torch.autograd.Function):
    """Per-row loss of rows x against columns y, the kernels' positive of row i being row
    (i + k_shift) % M of k, with columns excluded by `in_batch` or by ids.

    Without labels that positive is the one positive. With labels (the rows' and the
    columns'), the denominator is every candidate that is not row i itself and the positives
    are its same-label candidates, averaged (SupCon's L_out): the kernels' result is corrected
    by delta_i = k_(i+shift) - mean of row i's positives, and the negatives' gradient by the
    per-label sums of the rows. `self_in_columns`: row i is itself among the columns (SupCon),
    so it is not its own positive."""

    @staticmethod
    def forward(ctx, x, k, y, inv_t, k_shift, in_batch, row_ids, col_ids, row_labels, col_labels, self_in_columns,
                precision):
        *rows, _ = _rows_op(x[None], k[None], y, y, y, inv_t, row_ids, col_ids, k_shift, in_batch, False, True, False,
                            precision)
        loss, lse, dscale, dq, dk = (t[0] for t in rows)
        ids = (row_ids, col_ids) if row_ids is not None else ()
        npos = groups = None
        if row_labels is not None:
            xf = x.float()
            row_group, col_group, bound = _label_groups(row_labels, col_labels)
            pos_sum = y.new_zeros((bound, y.shape[1]), dtype=F32).index_add_(0, col_group, y.float())[row_group]
            npos = y.new_zeros(bound, dtype=F32).index_add_(0, col_group, torch.ones_like(col_group, dtype=F32))[row_group]
            if self_in_columns:
                pos_sum, npos = pos_sum - xf, npos - 1
            delta = k.float().roll(-k_shift, 0) - pos_sum / npos.clamp_min(1)[:, None]
            along = (xf * delta).sum(1)
            loss = loss + inv_t * along
            dscale = dscale + along
            dq = dq + inv_t * delta
            dk = dk + inv_t * xf         # the positive's share now comes from the per-label sums
            groups = (row_group, col_group)
        ctx.save_for_backward(x, y, inv_t, lse, dscale, dq, dk, *ids, *(groups or ()),
                              *((npos,) if npos is not None else ()))
        ctx.settings = (k_shift, in_batch, bool(ids), groups is not None, self_in_columns, precision,
                        x.dtype, k.dtype, y.dtype)
        if npos is None:
            npos = torch.ones_like(loss)
        ctx.mark_non_differentiable(npos)
        return loss, npos

    @staticmethod
    def backward(ctx, grad, _npos_grad):
        k_shift, in_batch, has_ids, has_labels, self_in_columns, precision, x_dtype, k_dtype, y_dtype = ctx.settings
        x, y, inv_t, lse, dscale, dq, dk, *rest = ctx.saved_tensors
        ids, rest = (rest[:2], rest[2:]) if has_ids else ((None, None), rest)
        w = _row_weights(grad)
        dx = w[:, None] * dq
        dk_out = (w[:, None] * dk).roll(k_shift, 0)           # row i's positive is row i + k_shift of k
        dy = _columns_op(x, y, lse, inv_t, w, *ids, k_shift, in_batch, precision)
        if has_labels:
            row_group, col_group, npos = rest
            share = (w * inv_t / npos.clamp_min(1))[:, None] * x.float()    # row i's weight on each positive
            dy = dy - dy.new_zeros((row_group.shape[0] + col_group.shape[0], y.shape[1])).index_add_(
                0, row_group, share)[col_group]
            if self_in_columns:  # the column that is row i itself was counted as a positive above
                dx = dx + share
        return (dx.to(x_dtype), dk_out.to(k_dtype), dy.to(y_dtype), _temperature_grad(ctx, grad, dscale, 3),
                *([None] * 8))


def fused_in_batch(x, k, y, inv_t, k_shift, in_batch, row_ids=None, col_ids=None, row_labels=None, col_labels=None,
                   self_in_columns=False, precision="tf32"):
    """((M,) per-row losses, (M,) positives per row) of an in-batch problem (see _InBatch)."""
    return _InBatch.apply(x, k, y, inv_t, k_shift, in_batch, _ids(row_ids), _ids(col_ids), _ids(row_labels),
                          _ids(col_labels), self_in_columns, precision)


def fused_views_rows(z, inv_t, k_shift, labels=None, precision="tf32"):
    """((M,) losses, (M,) positives) of M views z against each other, each view's own row
    excluded: NT-Xent over [z1; z2] (k_shift N, the pair as the positive) or, with labels (M,),
    SupCon's L_out (k_shift names any other row as the kernels' positive; the result does not
    depend on which)."""
    return fused_in_batch(z, z, z, inv_t, k_shift, EXCLUDE_SELF_AND_POSITIVE, row_labels=labels, col_labels=labels,
                          self_in_columns=True, precision=precision)


def fused_clip_rows(a, b, inv_t, labels=None, precision="tf32"):
    """(N,) losses of one CLIP direction: a_i against every b_j, b_i the positive (with
    labels, every b_j of a_i's label)."""
    return fused_in_batch(a, b, b, inv_t, 0, EXCLUDE_POSITIVE, row_labels=labels, col_labels=labels,
                          precision=precision)[0]


# ---- SCD-Net's four terms -------------------------------------------------------------------------

class _SCD(torch.autograd.Function):
    """(4, N) per-row losses of SCD-Net's four terms in one row pass; term t streams its own
    queue. Keys and queues take no gradient (they come from the momentum encoder)."""

    @staticmethod
    def forward(ctx, qt, qs, qi, kt, ks, ki, temporal_queue, spatial_queue, instance_queue, inv_t, query_ids,
                queue_ids, normalize, precision):
        loss, _, dscale, dq, _, _ = _rows_op(torch.stack([qt, qs, qi, qi]), torch.stack([ki, ki, kt, ks]),
                                             instance_queue, temporal_queue, spatial_queue, inv_t, query_ids,
                                             queue_ids, 0, NO_EXCLUSION, normalize, False, True, precision)
        ctx.save_for_backward(dscale, dq)
        ctx.dtypes = (qt.dtype, qs.dtype, qi.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad):
        dscale, dq = ctx.saved_tensors                         # terms: (qt, .), (qs, .), (qi, .), (qi, .)
        dq = grad.to(F32)[..., None] * dq
        grads = (dq[0], dq[1], dq[2] + dq[3])
        return (*(g.to(t) for g, t in zip(grads, ctx.dtypes)), *([None] * 6), _temperature_grad(ctx, grad, dscale, 9),
                None, None, None, None)


def fused_scd_loss(queries, keys, queues, inv_t, normalize=False, query_ids=None, queue_ids=None, precision="tf32"):
    """(4, N) per-row losses of the four terms; the caller checks `one_launch_fits`."""
    return _SCD.apply(*queries, *keys, *queues, inv_t, _ids(query_ids), _ids(queue_ids), normalize, precision)


def one_launch_fits(keys, queues) -> bool:
    """SCD-Net's case: keys and queues from the momentum encoder (no gradient), one queue layout."""
    return (not any(t.requires_grad for t in (*keys, *queues))
            and len({(t.shape[0], t.dtype, t.stride()) for t in queues}) == 1)


def _ids(ids: torch.Tensor | None) -> torch.Tensor | None:
    return None if ids is None else ids.to(torch.int64).contiguous()
