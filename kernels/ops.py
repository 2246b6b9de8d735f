"""The fused losses as PyTorch custom ops, so torch.compile(fullgraph=True) traces a model that
calls them: each op is opaque to the compiler and its fake version gives the output shapes.

The forward computes every gradient (the row pass gives dq and dk, the columns pass the
negatives' gradient), and the backward only scales them by the incoming gradient, as
Liger-Kernel's fused cross-entropy does. Outputs are fp32; gradients are returned in each
input's dtype.
"""
from __future__ import annotations

import torch

from scdfast.kernels.infonce import (
    EXCLUDE_POSITIVE,
    EXCLUDE_SELF_AND_POSITIVE,
    RowsProblem,
    columns_pass,
    rows_pass,
)

F32 = torch.float32


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / max(||x||, 1e-12), that norm), fp32, as F.normalize computes them."""
    norm = x.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x.float() / norm, norm


def _normalize_backward(grad: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The normalisation's backward: the gradient w.r.t. x from the one w.r.t. x / ||x||."""
    return (grad - unit * (unit * grad).sum(dim=1, keepdim=True)) / norm


def _none(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0, dtype=F32)  # a distinct tensor: custom-op outputs may not alias


# ---- MoCo InfoNCE against a queue -----------------------------------------------------------------

@torch.library.custom_op("scdfast::infonce", mutates_args=())
def _infonce_op(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, inv_t: float,
                query_ids: torch.Tensor | None, queue_ids: torch.Tensor | None, normalize: bool,
                k_grad: bool, queue_grad: bool, precision: str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, dL/dq, dL/dk, dL/dqueue); the last two are empty unless asked for. With
    `normalize`, q and k are normalised inside and the gradients are w.r.t. the raw ones."""
    n = q.shape[0]
    out = rows_pass(RowsProblem(q[None], k[None], (queue,), inv_t, query_ids=query_ids, queue_ids=queue_ids,
                                normalize=normalize, k_grad=k_grad, precision=precision, grad_scale=1.0 / n))
    dqueue = _none(q)
    if queue_grad:  # the columns pass sees the queries as the row pass did
        q_seen = _unit(q)[0].to(q.dtype) if normalize else q
        dqueue = columns_pass(q_seen, queue, out["lse"][0], inv_t, 1.0 / n, query_ids=query_ids,
                              queue_ids=queue_ids, precision=precision)
    return out["loss"].mean(), out["dq"][0], out["dk"][0] if k_grad else _none(q), dqueue


@_infonce_op.register_fake
def _(q, k, queue, inv_t, query_ids, queue_ids, normalize, k_grad, queue_grad, precision):
    return (q.new_empty((), dtype=F32), q.new_empty(q.shape, dtype=F32),
            q.new_empty(k.shape if k_grad else (0,), dtype=F32),
            q.new_empty(queue.shape if queue_grad else (0,), dtype=F32))


def _infonce_setup(ctx, inputs, output):
    q, k, queue = inputs[:3]
    ctx.save_for_backward(*output[1:])
    ctx.dtypes = (q.dtype, k.dtype, queue.dtype)
    ctx.wanted = (True, inputs[7], inputs[8])


def _infonce_backward(ctx, grad, *_unused):
    grads = [(g * grad).to(t) if wanted else None
             for g, t, wanted in zip(ctx.saved_tensors, ctx.dtypes, ctx.wanted)]
    return (*grads, *([None] * 7))


_infonce_op.register_autograd(_infonce_backward, setup_context=_infonce_setup)


# ---- in-batch losses: SimCLR's NT-Xent, CLIP ----------------------------------------------------

@torch.library.custom_op("scdfast::nt_xent", mutates_args=())
def _nt_xent_op(z1: torch.Tensor, z2: torch.Tensor, inv_t: float, normalize: bool,
                precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss over the 2N views, dL/dz1, dL/dz2). View i's positive is view (i + N) % 2N,
    and every other view but itself is a negative."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])                                                        # 2N, D
    if normalize:
        unit, norm = _unit(z)
        z = unit.to(z.dtype)
    w = 1.0 / (2 * n)
    out = rows_pass(RowsProblem(z[None], z[None], (z,), inv_t, k_shift=n, in_batch=EXCLUDE_SELF_AND_POSITIVE,
                                k_grad=True, precision=precision, grad_scale=w))
    dz = out["dq"][0] + torch.roll(out["dk"][0], n, 0)                            # row i's positive is row i + N
    dz += columns_pass(z, z, out["lse"][0], inv_t, w, k_shift=n, in_batch=EXCLUDE_SELF_AND_POSITIVE,
                       precision=precision)
    if normalize:
        dz = _normalize_backward(dz, unit, norm)
    return out["loss"].mean(), dz[:n].clone(), dz[n:].clone()


@_nt_xent_op.register_fake
def _(z1, z2, inv_t, normalize, precision):
    return z1.new_empty((), dtype=F32), z1.new_empty(z1.shape, dtype=F32), z2.new_empty(z2.shape, dtype=F32)


@torch.library.custom_op("scdfast::clip", mutates_args=())
def _clip_op(a: torch.Tensor, b: torch.Tensor, inv_t: float, normalize: bool,
             precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean of both directions' losses, dL/da, dL/db) over N matched pairs (a_i, b_i)."""
    n = a.shape[0]
    if normalize:
        (a_unit, a_norm), (b_unit, b_norm) = _unit(a), _unit(b)
        a, b = a_unit.to(a.dtype), b_unit.to(b.dtype)
    w = 0.5 / n

    def direction(x, y):  # x_i against every y_j, y_i the positive
        return rows_pass(RowsProblem(x[None], y[None], (y,), inv_t, in_batch=EXCLUDE_POSITIVE, k_grad=True,
                                     precision=precision, grad_scale=w))
    ab, ba = direction(a, b), direction(b, a)
    da = ab["dq"][0] + ba["dk"][0] + columns_pass(b, a, ba["lse"][0], inv_t, w, in_batch=EXCLUDE_POSITIVE,
                                                  precision=precision)
    db = ba["dq"][0] + ab["dk"][0] + columns_pass(a, b, ab["lse"][0], inv_t, w, in_batch=EXCLUDE_POSITIVE,
                                                  precision=precision)
    if normalize:
        da, db = _normalize_backward(da, a_unit, a_norm), _normalize_backward(db, b_unit, b_norm)
    return 0.5 * (ab["loss"].mean() + ba["loss"].mean()), da, db


@_clip_op.register_fake
def _(a, b, inv_t, normalize, precision):
    return a.new_empty((), dtype=F32), a.new_empty(a.shape, dtype=F32), b.new_empty(b.shape, dtype=F32)


def _pair_setup(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)


def _pair_backward(ctx, grad, *_unused):
    da, db = ctx.saved_tensors
    return (da * grad).to(ctx.dtypes[0]), (db * grad).to(ctx.dtypes[1]), None, None, None


_nt_xent_op.register_autograd(_pair_backward, setup_context=_pair_setup)
_clip_op.register_autograd(_pair_backward, setup_context=_pair_setup)


# ---- SCD-Net's four terms -------------------------------------------------------------------------

@torch.library.custom_op("scdfast::scd_loss", mutates_args=())
def _scd_op(qt: torch.Tensor, qs: torch.Tensor, qi: torch.Tensor, kt: torch.Tensor, ks: torch.Tensor,
            ki: torch.Tensor, temporal_queue: torch.Tensor, spatial_queue: torch.Tensor,
            instance_queue: torch.Tensor, inv_t: float, normalize: bool, query_ids: torch.Tensor | None,
            queue_ids: torch.Tensor | None, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the four batch-mean terms, (4, N, D) each term's gradient of its query); the
    keys and queues take no gradient (they come from the momentum encoder). One row pass for all four terms:
    term t streams its own queue, and the (4, N, D) query and key stacks are N x D copies."""
    n = qt.shape[0]
    out = rows_pass(RowsProblem(torch.stack([qt, qs, qi, qi]), torch.stack([ki, ki, kt, ks]),
                                (instance_queue, temporal_queue, spatial_queue), inv_t, query_ids=query_ids,
                                queue_ids=queue_ids, normalize=normalize, precision=precision, grad_scale=1.0 / n))
    return out["loss"].sum() / n, out["dq"]


@_scd_op.register_fake
def _(qt, qs, qi, kt, ks, ki, temporal_queue, spatial_queue, instance_queue, inv_t, normalize, query_ids,
      queue_ids, precision):
    return qt.new_empty((), dtype=F32), qt.new_empty((4, *qt.shape), dtype=F32)


def _scd_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.dtypes = tuple(t.dtype for t in inputs[:3])


def _scd_backward(ctx, grad, *_unused):
    dq, = ctx.saved_tensors                                   # terms: (qt, .), (qs, .), (qi, .), (qi, .)
    grads = (dq[0], dq[1], dq[2] + dq[3])
    return (*((g * grad).to(t) for g, t in zip(grads, ctx.dtypes)), *([None] * 11))


_scd_op.register_autograd(_scd_backward, setup_context=_scd_setup)


# ---- entry points (inputs already validated by scdfast.losses) -----------------------------------

def _ids(ids: torch.Tensor | None) -> torch.Tensor | None:
    return None if ids is None else ids.to(torch.int64).contiguous()


def fused_infonce(q, k, queue, temperature, query_ids=None, queue_ids=None, normalize=False, precision="tf32"):
    return _infonce_op(q, k, queue, 1.0 / temperature, _ids(query_ids), _ids(queue_ids), normalize,
                       k.requires_grad, queue.requires_grad, precision)[0]


def fused_nt_xent(z1, z2, temperature, normalize=False, precision="tf32"):
    return _nt_xent_op(z1, z2, 1.0 / temperature, normalize, precision)[0]


def fused_clip(a, b, temperature, normalize=False, precision="tf32"):
    return _clip_op(a, b, 1.0 / temperature, normalize, precision)[0]


def fused_scd_loss(queries, keys, queues, temperature, normalize=False, query_ids=None, queue_ids=None,
                   precision="tf32"):
    """All four terms in one row pass; the caller checks that keys and queues take no gradient
    and that the queues share length, dtype and strides (`one_launch_fits`)."""
    return _scd_op(*queries, *keys, *queues, 1.0 / temperature, normalize, _ids(query_ids), _ids(queue_ids),
                   precision)[0]


def one_launch_fits(keys, queues) -> bool:
    """SCD-Net's case: keys and queues from the momentum encoder (no gradient), one queue layout."""
    return (not any(t.requires_grad for t in (*keys, *queues))
            and len({(t.shape[0], t.dtype, t.stride()) for t in queues}) == 1)
