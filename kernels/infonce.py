"""Fused InfoNCE in Triton: loss and gradient in one streaming pass, no N x K logits.

For a query q_i, positive k_i and negatives c_j (a queue, or the batch itself), temperature T:

    s_ip = q_i . k_i / T,   s_ij = q_i . c_j / T   (masked columns: s_ij = -inf)
    loss_i = lse_i - s_ip,  lse_i = log(exp(s_ip) + sum_j exp(s_ij))
    dloss_i/dq_i = (p_ip k_i + sum_j p_ij c_j - k_i) / T,  p = exp(s - lse)

`_rows_kernel` streams the negatives in tiles keeping the running max m, the running sum l
and the softmax-weighted sum of candidates acc, rescaled online as flash-attention does, so
loss_i, lse_i and dq_i come out of one pass. When the negatives need gradients too (NT-Xent,
CLIP), `_columns_kernel` makes the transposed pass with the saved lse:
dloss/dc_j = sum_i p_ij q_i / T. Neither kernel holds more than a BLOCK_N x BLOCK_K tile.

Masks are computed in the kernel from compact inputs: up to two excluded column indices per
row (the row itself for NT-Xent, the positive's column for in-batch negatives) and instance
ids (a negative whose id equals its query's id is excluded). Inputs may be fp32 or bf16;
they are converted to fp32 at load and every accumulation is fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from scdfast.errors import ScdError
from scdfast.losses.reference import scd_terms

_NEG_INF = float("-inf")
MAX_WIDTH = 512  # widest embedding whose tiles stay in registers; wider ones use the reference


@triton.jit
def _column_mask(cols, K, excl_a, excl_b, row_ids, ids_ptr, HAS_EXCL: tl.constexpr, HAS_IDS: tl.constexpr):
    """True where column `cols` is a valid negative for each row (BLOCK_N x BLOCK_K)."""
    valid = (cols < K)[None, :]
    if HAS_EXCL:
        valid = valid & (cols[None, :] != excl_a[:, None]) & (cols[None, :] != excl_b[:, None])
    if HAS_IDS:
        col_ids = tl.load(ids_ptr + cols, mask=cols < K, other=-1)
        valid = valid & (col_ids[None, :] != row_ids[:, None])
    return valid


@triton.jit
def _row_masks(excl_ptr, qid_ptr, rows, row_ok, N, BLOCK_N: tl.constexpr,
               HAS_EXCL: tl.constexpr, HAS_IDS: tl.constexpr):
    """Per-row mask inputs: two excluded column indices (-1: none) and the row's id."""
    excl_a = tl.full([BLOCK_N], -1, tl.int32)
    excl_b = tl.full([BLOCK_N], -1, tl.int32)
    if HAS_EXCL:
        excl_a = tl.load(excl_ptr + rows, mask=row_ok, other=-1)
        excl_b = tl.load(excl_ptr + N + rows, mask=row_ok, other=-1)
    row_ids = tl.zeros([BLOCK_N], dtype=tl.int64)
    if HAS_IDS:
        row_ids = tl.load(qid_ptr + rows, mask=row_ok, other=-2)
    return excl_a, excl_b, row_ids


@triton.jit
def _load_rows(ptr, rows, dims, N, D, NORMALIZE: tl.constexpr):
    """A (BLOCK_N, BLOCK_D) fp32 tile of rows, L2-normalised when NORMALIZE (as F.normalize:
    x / max(||x||, 1e-12)); also returns 1 / max(||x||, 1e-12) for the backward."""
    mask = (rows < N)[:, None] & (dims < D)[None, :]
    tile = tl.load(ptr + rows.to(tl.int64)[:, None] * D + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    inv_norm = tl.full([tile.shape[0]], 1.0, tl.float32)
    if NORMALIZE:
        inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(tile * tile, axis=1)), 1e-12)
        tile = tile * inv_norm[:, None]
    return tile, inv_norm


@triton.jit
def _through_normalize(grad, unit, inv_norm, NORMALIZE: tl.constexpr):
    """The gradient w.r.t. x from the gradient w.r.t. x / ||x||: (g - u (u . g)) / ||x||."""
    if NORMALIZE:
        grad = (grad - unit * tl.sum(unit * grad, axis=1)[:, None]) * inv_norm[:, None]
    return grad


@triton.jit
def _stream_negatives(q, s_pos, k, c_ptr, rows, dims, K, D, inv_t, excl_a, excl_b, row_ids, cid_ptr,
                      HAS_EXCL: tl.constexpr, HAS_IDS: tl.constexpr, BLOCK_K: tl.constexpr):
    """One query tile against every negative: the online log-sum-exp (m, l) and the
    softmax-weighted sum of candidates acc; the positive opens it (m = s_pos, l = 1, acc = k)."""
    m = s_pos
    l = tl.full([q.shape[0]], 1.0, tl.float32)
    acc = k
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        c_offs = cols.to(tl.int64)[:, None] * D + dims[None, :]
        c = tl.load(c_ptr + c_offs, mask=(cols < K)[:, None] & (dims < D)[None, :], other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(c), input_precision="ieee") * inv_t             # BLOCK_N, BLOCK_K
        valid = _column_mask(cols, K, excl_a, excl_b, row_ids, cid_ptr, HAS_EXCL, HAS_IDS)
        s = tl.where(valid, s, _NEG_INF)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, c, input_precision="ieee")
        m = m_new
    return m, l, acc


@triton.jit
def _rows_block(q_ptr, k_ptr, c_ptr, excl_ptr, qid_ptr, cid_ptr, loss_ptr, lse_ptr, dq_ptr, rows, dims,
                N, K, D, inv_t, HAS_EXCL: tl.constexpr, HAS_IDS: tl.constexpr, NORMALIZE: tl.constexpr,
                STORE_LSE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One block of query rows against every negative: per-row loss, lse (when STORE_LSE) and
    dloss/dq, the gradient taken through the normalisation when NORMALIZE."""
    row_ok = rows < N
    q, q_inv = _load_rows(q_ptr, rows, dims, N, D, NORMALIZE)                  # BLOCK_N, BLOCK_D
    k, _ = _load_rows(k_ptr, rows, dims, N, D, NORMALIZE)
    s_pos = tl.sum(q * k, axis=1) * inv_t                                       # BLOCK_N
    excl_a, excl_b, row_ids = _row_masks(excl_ptr, qid_ptr, rows, row_ok, N, BLOCK_N, HAS_EXCL, HAS_IDS)
    m, l, acc = _stream_negatives(q, s_pos, k, c_ptr, rows, dims, K, D, inv_t, excl_a, excl_b, row_ids,
                                  cid_ptr, HAS_EXCL, HAS_IDS, BLOCK_K)
    lse = m + tl.log(l)
    tl.store(loss_ptr + rows, lse - s_pos, mask=row_ok)
    if STORE_LSE:
        tl.store(lse_ptr + rows, lse, mask=row_ok)
    dq = _through_normalize((acc / l[:, None] - k) * inv_t, q, q_inv, NORMALIZE)
    tl.store(dq_ptr + rows.to(tl.int64)[:, None] * D + dims[None, :], dq,
             mask=row_ok[:, None] & (dims < D)[None, :])


@triton.jit
def _rows_kernel(
    q_ptr, k_ptr, c_ptr,            # queries (N, D), positives (N, D), negatives (K, D); row-major
    excl_ptr,                       # (2, N) int32 excluded columns per row, -1 for none (HAS_EXCL)
    qid_ptr, cid_ptr,               # (N,), (K,) int64 ids (HAS_IDS)
    loss_ptr, lse_ptr, dq_ptr,      # out: (N,), (N,) fp32, (N, D) fp32 dloss_i/dq_i
    N, K, D, inv_t,                 # sizes and 1 / temperature
    HAS_EXCL: tl.constexpr, HAS_IDS: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    _rows_block(q_ptr, k_ptr, c_ptr, excl_ptr, qid_ptr, cid_ptr, loss_ptr, lse_ptr, dq_ptr, rows,
                tl.arange(0, BLOCK_D), N, K, D, inv_t, HAS_EXCL, HAS_IDS, NORMALIZE, True, BLOCK_N, BLOCK_K)


@triton.jit
def _scd_shared_queue_terms(qt_ptr, qs_ptr, k_ptr, c_ptr, qid_ptr, cid_ptr, loss_ptr, dq_ptr, rows, dims,
                            N, K, D, inv_t, HAS_IDS: tl.constexpr, NORMALIZE: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """SCD-Net's two terms on the instance queue, (qt, ki) and (qs, ki), streaming each queue
    tile once for both queries; with ids, a key of the query's own sample is no negative."""
    qt, qt_inv = _load_rows(qt_ptr, rows, dims, N, D, NORMALIZE)
    qs, qs_inv = _load_rows(qs_ptr, rows, dims, N, D, NORMALIZE)
    k, _ = _load_rows(k_ptr, rows, dims, N, D, NORMALIZE)
    st_pos = tl.sum(qt * k, axis=1) * inv_t
    ss_pos = tl.sum(qs * k, axis=1) * inv_t
    mt, ms = st_pos, ss_pos
    lt = tl.full([qt.shape[0]], 1.0, tl.float32)
    ls = lt
    acc_t, acc_s = k, k
    # ids only: no excluded columns, so the exclusion arguments below are placeholders never read
    _, _, row_ids = _row_masks(qid_ptr, qid_ptr, rows, rows < N, N, BLOCK_N, False, HAS_IDS)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        c = tl.load(c_ptr + cols.to(tl.int64)[:, None] * D + dims[None, :],
                    mask=(cols < K)[:, None] & (dims < D)[None, :], other=0.0).to(tl.float32)
        valid = _column_mask(cols, K, row_ids, row_ids, row_ids, cid_ptr, False, HAS_IDS)
        st = tl.where(valid, tl.dot(qt, tl.trans(c), input_precision="ieee") * inv_t, _NEG_INF)
        ss = tl.where(valid, tl.dot(qs, tl.trans(c), input_precision="ieee") * inv_t, _NEG_INF)
        mt_new = tl.maximum(mt, tl.max(st, axis=1))
        ms_new = tl.maximum(ms, tl.max(ss, axis=1))
        at, as_ = tl.exp(mt - mt_new), tl.exp(ms - ms_new)
        pt, ps = tl.exp(st - mt_new[:, None]), tl.exp(ss - ms_new[:, None])
        lt = lt * at + tl.sum(pt, axis=1)
        ls = ls * as_ + tl.sum(ps, axis=1)
        acc_t = acc_t * at[:, None] + tl.dot(pt, c, input_precision="ieee")
        acc_s = acc_s * as_[:, None] + tl.dot(ps, c, input_precision="ieee")
        mt, ms = mt_new, ms_new
    row_ok = rows < N
    tile_mask = row_ok[:, None] & (dims < D)[None, :]
    offs = rows.to(tl.int64)[:, None] * D + dims[None, :]
    tl.store(loss_ptr + rows, mt + tl.log(lt) - st_pos, mask=row_ok)
    tl.store(loss_ptr + N + rows, ms + tl.log(ls) - ss_pos, mask=row_ok)
    tl.store(dq_ptr + offs, _through_normalize((acc_t / lt[:, None] - k) * inv_t, qt, qt_inv, NORMALIZE),
             mask=tile_mask)
    tl.store(dq_ptr + N * D + offs, _through_normalize((acc_s / ls[:, None] - k) * inv_t, qs, qs_inv, NORMALIZE),
             mask=tile_mask)


@triton.jit
def _scd_kernel(
    qt_ptr, qs_ptr, qi_ptr,         # queries (N, D) each
    kt_ptr, ks_ptr, ki_ptr,         # keys (N, D) each
    tq_ptr, sq_ptr, iq_ptr,         # temporal, spatial, instance queues (K, D) each
    qid_ptr, cid_ptr,               # (N,), (K,) int64 sample ids of the queries and of every queue row (HAS_IDS)
    loss_ptr, dq_ptr,               # out: (4, N) per-row losses, (4, N, D) dloss/dq per term
    N, K, D, inv_t,
    HAS_IDS: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """All four SCD-Net terms in one launch; axis 1 of the grid picks the queue a program
    streams: 0 the instance queue (terms 0 and 1 share its tiles), 1 the temporal queue
    (term 2: qi, kt), 2 the spatial queue (term 3: qi, ks). The three queues are filled
    together, so one id per queue row serves all three."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    queue = tl.program_id(1)
    if queue == 0:
        _scd_shared_queue_terms(qt_ptr, qs_ptr, ki_ptr, iq_ptr, qid_ptr, cid_ptr, loss_ptr, dq_ptr, rows, dims,
                                N, K, D, inv_t, HAS_IDS, NORMALIZE, BLOCK_N, BLOCK_K)
    elif queue == 1:  # no excluded columns and no lse: the pointers passed for them are never read
        _rows_block(qi_ptr, kt_ptr, tq_ptr, loss_ptr, qid_ptr, cid_ptr, loss_ptr + 2 * N, loss_ptr,
                    dq_ptr + 2 * N * D, rows, dims, N, K, D, inv_t, False, HAS_IDS, NORMALIZE, False,
                    BLOCK_N, BLOCK_K)
    else:
        _rows_block(qi_ptr, ks_ptr, sq_ptr, loss_ptr, qid_ptr, cid_ptr, loss_ptr + 3 * N, loss_ptr,
                    dq_ptr + 3 * N * D, rows, dims, N, K, D, inv_t, False, HAS_IDS, NORMALIZE, False,
                    BLOCK_N, BLOCK_K)


@triton.jit
def _columns_kernel(
    q_ptr, c_ptr,                   # queries (N, D), negatives (K, D)
    lse_ptr,                        # (N,) fp32 from _rows_kernel
    excl_ptr, qid_ptr, cid_ptr,     # the same masks as the row pass
    dc_ptr,                         # out: (K, D) fp32, sum_i p_ij q_i / T (row weights w_i applied)
    w_ptr,                          # (N,) fp32 per-row weight of the loss (e.g. 1 / N)
    N, K, D, inv_t,
    HAS_EXCL: tl.constexpr, HAS_IDS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < K
    c_mask = col_ok[:, None] & (dims < D)[None, :]
    c_offs = cols.to(tl.int64)[:, None] * D + dims[None, :]
    c = tl.load(c_ptr + c_offs, mask=c_mask, other=0.0).to(tl.float32)            # BLOCK_K, BLOCK_D
    acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        offs = rows.to(tl.int64)[:, None] * D + dims[None, :]
        q = tl.load(q_ptr + offs, mask=row_ok[:, None] & (dims < D)[None, :], other=0.0).to(tl.float32)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        w = tl.load(w_ptr + rows, mask=row_ok, other=0.0)
        excl_a, excl_b, row_ids = _row_masks(excl_ptr, qid_ptr, rows, row_ok, N, BLOCK_N, HAS_EXCL, HAS_IDS)
        s = tl.dot(q, tl.trans(c), input_precision="ieee") * inv_t                 # BLOCK_N, BLOCK_K
        valid = _column_mask(cols, K, excl_a, excl_b, row_ids, cid_ptr, HAS_EXCL, HAS_IDS) & row_ok[:, None]
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0) * w[:, None]
        acc += tl.dot(tl.trans(p), q, input_precision="ieee")
    tl.store(dc_ptr + c_offs, acc * inv_t, mask=c_mask)


def _blocks(d: int) -> tuple[int, int, int]:
    if d > MAX_WIDTH:
        raise ScdError(f"embedding width {d}: the fused kernels take D <= {MAX_WIDTH}; use backend='torch'")
    block_d = max(16, triton.next_power_of_2(d))
    # keep a BLOCK_N x BLOCK_D query tile and a BLOCK_K x BLOCK_D negative tile in registers
    block_n = 32 if block_d <= 128 else 16
    block_k = 64 if block_d <= 128 else 32
    return block_n, block_k, block_d


def rows_pass(q, k, c, inv_t, excl=None, query_ids=None, queue_ids=None, normalize=False):
    """(loss (N,), lse (N,), dq (N, D)) for contiguous q, k (N, D) and c (K, D); with
    `normalize`, q and k are L2-normalised in the kernel and dq is w.r.t. the raw q."""
    n, d = q.shape
    block_n, block_k, block_d = _blocks(d)
    loss = torch.empty(n, device=q.device, dtype=torch.float32)
    lse = torch.empty_like(loss)
    dq = torch.empty(n, d, device=q.device, dtype=torch.float32)
    dummy = loss
    _rows_kernel[(triton.cdiv(n, block_n),)](
        q, k, c, excl if excl is not None else dummy,
        query_ids if query_ids is not None else dummy, queue_ids if queue_ids is not None else dummy,
        loss, lse, dq, n, c.shape[0], d, inv_t,
        HAS_EXCL=excl is not None, HAS_IDS=query_ids is not None, NORMALIZE=normalize,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d)
    return loss, lse, dq


def scd_pass(queries, keys, queues, inv_t, normalize=False, query_ids=None, queue_ids=None):
    """(per-row losses (4, N), dloss/dq (4, N, D)) of SCD-Net's four terms in one launch."""
    qt = queries[0]
    n, d = qt.shape
    block_n, block_k, block_d = _blocks(d)
    loss = torch.empty(4, n, device=qt.device, dtype=torch.float32)
    dq = torch.empty(4, n, d, device=qt.device, dtype=torch.float32)
    _scd_kernel[(triton.cdiv(n, block_n), 3)](
        *queries, *keys, *queues, query_ids if query_ids is not None else loss,
        queue_ids if queue_ids is not None else loss, loss, dq, n, queues[0].shape[0], d, inv_t,
        HAS_IDS=query_ids is not None, NORMALIZE=normalize, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d)
    return loss, dq


def columns_pass(q, c, lse, weight, inv_t, excl=None, query_ids=None, queue_ids=None):
    """dc (K, D): the gradient reaching the negatives, sum_i weight_i p_ij q_i / T."""
    n, d = q.shape
    block_n, block_k, block_d = _blocks(d)
    dc = torch.empty(c.shape[0], d, device=q.device, dtype=torch.float32)
    dummy = lse
    _columns_kernel[(triton.cdiv(c.shape[0], block_k),)](
        q, c, lse, excl if excl is not None else dummy,
        query_ids if query_ids is not None else dummy, queue_ids if queue_ids is not None else dummy,
        dc, weight, n, c.shape[0], d, inv_t,
        HAS_EXCL=excl is not None, HAS_IDS=query_ids is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d)
    return dc


# ---- custom ops: the forward computes every gradient; the backward only scales them ----

def _excluded(n_rows: int, first: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
    """(2, n_rows) int32 excluded column indices, -1 where none."""
    none = torch.full((n_rows,), -1, dtype=torch.int32, device=first.device)
    return torch.stack([first.to(torch.int32), none if second is None else second.to(torch.int32)]).contiguous()


def _positive_grad(loss_rows: torch.Tensor, q: torch.Tensor, inv_t: float, weight: float) -> torch.Tensor:
    """dloss/dk_i = (p_ip - 1) q_i / T with p_ip = exp(s_ip - lse_i) = exp(-loss_i)."""
    return (torch.exp(-loss_rows) - 1.0)[:, None] * q.float() * (inv_t * weight)


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / max(||x||, 1e-12), that norm), fp32, as F.normalize computes them."""
    norm = x.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (x.float() / norm).contiguous(), norm


def _normalize_backward(grad: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The normalisation's backward: gradient w.r.t. x from the one w.r.t. x / ||x||."""
    return (grad - unit * (unit * grad).sum(dim=1, keepdim=True)) / norm


# MoCo InfoNCE is a torch.library custom op, so torch.compile(fullgraph=True) traces a model
# that calls it: the op is opaque to the compiler, its fake version gives the output shapes.
@torch.library.custom_op("scdfast::infonce", mutates_args=())
def _infonce_op(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, inv_t: float,
                query_ids: torch.Tensor | None, queue_ids: torch.Tensor | None, normalize: bool,
                k_grad: bool, queue_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, dL/dq, dL/dk, dL/dqueue) in fp32; the last two are empty unless asked for.
    With `normalize`, q and k are normalised inside and the gradients are w.r.t. the raw ones."""
    n = q.shape[0]
    loss_rows, lse, dq = rows_pass(q, k, queue, inv_t, None, query_ids, queue_ids, normalize)
    q_unit = _unit(q)[0] if normalize and (k_grad or queue_grad) else q
    dk = q.new_empty(0, dtype=torch.float32)
    if k_grad:
        dk = _positive_grad(loss_rows, q_unit, inv_t, 1.0 / n)
        if normalize:
            dk = _normalize_backward(dk, *_unit(k))
    dqueue = q.new_empty(0, dtype=torch.float32)  # a distinct tensor: outputs may not alias
    if queue_grad:
        weight = torch.full((n,), 1.0 / n, device=q.device, dtype=torch.float32)
        dqueue = columns_pass(q_unit, queue, lse, weight, inv_t, None, query_ids, queue_ids)
    return loss_rows.mean(), dq / n, dk, dqueue


@_infonce_op.register_fake
def _(q, k, queue, inv_t, query_ids, queue_ids, normalize, k_grad, queue_grad):
    f32 = torch.float32
    return (q.new_empty((), dtype=f32), q.new_empty(q.shape, dtype=f32),
            q.new_empty(k.shape if k_grad else (0,), dtype=f32),
            q.new_empty(queue.shape if queue_grad else (0,), dtype=f32))


def _infonce_setup(ctx, inputs, output):
    q, k, queue = inputs[:3]
    ctx.save_for_backward(*output[1:])
    ctx.dtypes = (q.dtype, k.dtype, queue.dtype)
    ctx.wanted = (True, inputs[7], inputs[8])


def _infonce_backward(ctx, grad, *_unused):
    grads = [(g * grad).to(t) if wanted else None
             for g, t, wanted in zip(ctx.saved_tensors, ctx.dtypes, ctx.wanted)]
    return grads[0], grads[1], grads[2], None, None, None, None, None, None


_infonce_op.register_autograd(_infonce_backward, setup_context=_infonce_setup)


@torch.library.custom_op("scdfast::nt_xent", mutates_args=())
def _nt_xent_op(z1: torch.Tensor, z2: torch.Tensor, inv_t: float,
                normalize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, dL/dz1, dL/dz2) in fp32 over the 2N views."""
    n = z1.shape[0]
    z = torch.cat([z1, z2]).contiguous()                                              # 2N, D
    if normalize:
        z, norm = _unit(z)
    rows = torch.arange(2 * n, device=z.device)
    partner = (rows + n) % (2 * n)
    excl = _excluded(2 * n, rows, partner)
    loss_rows, lse, dq = rows_pass(z, z[partner].contiguous(), z, inv_t, excl)
    weight = torch.full((2 * n,), 1.0 / (2 * n), device=z.device, dtype=torch.float32)
    dz = dq / (2 * n) + columns_pass(z, z, lse, weight, inv_t, excl)
    dz += torch.roll(_positive_grad(loss_rows, z, inv_t, 1.0 / (2 * n)), n, 0)      # row i's positive is z[i+N]
    if normalize:
        dz = _normalize_backward(dz, z, norm)
    return loss_rows.mean(), dz[:n].clone(), dz[n:].clone()


@_nt_xent_op.register_fake
def _(z1, z2, inv_t, normalize):
    f32 = torch.float32
    return z1.new_empty((), dtype=f32), z1.new_empty(z1.shape, dtype=f32), z2.new_empty(z2.shape, dtype=f32)


@torch.library.custom_op("scdfast::clip", mutates_args=())
def _clip_op(a: torch.Tensor, b: torch.Tensor, inv_t: float,
             normalize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean of both directions' losses, dL/da, dL/db) in fp32."""
    n = a.shape[0]
    if normalize:
        (a, a_norm), (b, b_norm) = _unit(a), _unit(b)
    excl = _excluded(n, torch.arange(n, device=a.device))
    w = 0.5 / n
    weight = torch.full((n,), w, device=a.device, dtype=torch.float32)
    loss_ab, lse_ab, da = rows_pass(a, b, b, inv_t, excl)                           # a_i against all b
    loss_ba, lse_ba, db = rows_pass(b, a, a, inv_t, excl)                           # b_j against all a
    da = da * w + columns_pass(b, a, lse_ba, weight, inv_t, excl) + _positive_grad(loss_ba, b, inv_t, w)
    db = db * w + columns_pass(a, b, lse_ab, weight, inv_t, excl) + _positive_grad(loss_ab, a, inv_t, w)
    if normalize:
        da, db = _normalize_backward(da, a, a_norm), _normalize_backward(db, b, b_norm)
    return 0.5 * (loss_ab.mean() + loss_ba.mean()), da, db


@_clip_op.register_fake
def _(a, b, inv_t, normalize):
    f32 = torch.float32
    return a.new_empty((), dtype=f32), a.new_empty(a.shape, dtype=f32), b.new_empty(b.shape, dtype=f32)


def _pair_setup(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)


def _pair_backward(ctx, grad, *_unused):
    da, db = ctx.saved_tensors
    return (da * grad).to(ctx.dtypes[0]), (db * grad).to(ctx.dtypes[1]), None, None


_nt_xent_op.register_autograd(_pair_backward, setup_context=_pair_setup)
_clip_op.register_autograd(_pair_backward, setup_context=_pair_setup)


@torch.library.custom_op("scdfast::scd_loss", mutates_args=())
def _scd_op(qt: torch.Tensor, qs: torch.Tensor, qi: torch.Tensor, kt: torch.Tensor, ks: torch.Tensor,
            ki: torch.Tensor, temporal_queue: torch.Tensor, spatial_queue: torch.Tensor,
            instance_queue: torch.Tensor, inv_t: float, normalize: bool, query_ids: torch.Tensor | None,
            queue_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of the four batch-mean terms, dL/dqt, dL/dqs, dL/dqi) in fp32; keys and queues
    take no gradient (they come from the momentum encoder)."""
    n = qt.shape[0]
    loss_rows, dq = scd_pass((qt, qs, qi), (kt, ks, ki), (temporal_queue, spatial_queue, instance_queue),
                             inv_t, normalize, query_ids, queue_ids)
    return loss_rows.sum() / n, dq[0] / n, dq[1] / n, (dq[2] + dq[3]) / n


@_scd_op.register_fake
def _(qt, qs, qi, kt, ks, ki, temporal_queue, spatial_queue, instance_queue, inv_t, normalize, query_ids,
      queue_ids):
    f32 = torch.float32
    return (qt.new_empty((), dtype=f32), qt.new_empty(qt.shape, dtype=f32), qs.new_empty(qs.shape, dtype=f32),
            qi.new_empty(qi.shape, dtype=f32))


def _scd_setup(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])
    ctx.dtypes = tuple(t.dtype for t in inputs[:3])


def _scd_backward(ctx, grad, *_unused):
    return (*((g * grad).to(t) for g, t in zip(ctx.saved_tensors, ctx.dtypes)), *([None] * 10))


_scd_op.register_autograd(_scd_backward, setup_context=_scd_setup)


def fused_infonce(q, k, queue, temperature, query_ids=None, queue_ids=None, normalize=False):
    return _infonce_op(q.contiguous(), k.contiguous(), queue.contiguous(), 1.0 / temperature,
                       None if query_ids is None else query_ids.to(torch.int64).contiguous(),
                       None if queue_ids is None else queue_ids.to(torch.int64).contiguous(),
                       normalize, k.requires_grad, queue.requires_grad)[0]


def fused_nt_xent(z1, z2, temperature, normalize=False):
    return _nt_xent_op(z1.contiguous(), z2.contiguous(), 1.0 / temperature, normalize)[0]


def fused_clip(a, b, temperature, normalize=False):
    return _clip_op(a.contiguous(), b.contiguous(), 1.0 / temperature, normalize)[0]


def fused_scd_loss(queries, keys, queues, temperature, normalize=False, query_ids=None, queue_ids=None):
    """SCD-Net's four terms in one launch. That launch gives keys and queues no gradient
    and takes queues of one length; otherwise (not SCD-Net's case) the four terms run as
    separate InfoNCE ops."""
    if any(t.requires_grad for t in (*keys, *queues)) or len({t.shape[0] for t in queues}) != 1:
        return sum(fused_infonce(q, k, queue, temperature, query_ids, queue_ids, normalize=normalize)
                   for q, k, queue in scd_terms(queries, keys, queues))
    ids = [None if i is None else i.to(torch.int64).contiguous() for i in (query_ids, queue_ids)]
    return _scd_op(*(t.contiguous() for t in (*queries, *keys, *queues)), 1.0 / temperature, normalize, *ids)[0]
