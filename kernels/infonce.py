"""Fused InfoNCE in Triton: the loss and its gradients from streamed tiles, never the N x K logits.

For a query q_i, its positive k_i and negatives c_j (a queue, or the batch itself), temperature T:

    s_ip = q_i . k_i / T,   s_ij = q_i . c_j / T   (masked columns: s_ij = -inf)
    loss_i = lse_i - s_ip,  lse_i = log(exp(s_ip) + sum_j exp(s_ij))
    dloss_i/dq_i = (p_ip k_i + sum_j p_ij c_j - k_i) / T,   p = exp(s - lse)
    dloss_i/dk_i = (p_ip - 1) q_i / T,   dloss/dc_j = sum_i w_i p_ij q_i / T   (w_i: row i's weight)
    dloss_i/d(1/T) = q_i . (p_ip k_i + sum_j p_ij c_j - k_i)   (a learnable temperature)

The negatives are split across programs, as flash-decoding splits a key sequence:
`_rows_split_kernel` runs one program per (block of rows, slice of the negatives, term) and
streams its slice in BLOCK_K tiles, keeping the running max m (opened at s_ip, a finite
reference, so a slice whose columns are all masked stays finite), the running sum
l = sum_j exp(s_ij - m) and the softmax-weighted sum of candidates acc = sum_j exp(s_ij - m) c_j.
`_rows_combine_kernel` merges the slices' partials with the positive into loss_i, lse_i and
the gradients of q_i and k_i. When the negatives need gradients (NT-Xent, CLIP, a trained
queue), `_columns_kernel` makes the transposed pass with the saved lse, split over the rows.
It recomputes p_ij = exp(s_ij - lse_i), so it must see the very q_i the logits were made of:
with normalisation inside, the rows' inverse norms are computed once (`inverse_norms`), every
kernel scales its rows by them, and the caller of the columns pass rebuilds q_i with the same
single fp32 product.
The number of slices follows N, K and the SM count, so a small batch against a long queue
still fills the chip.

Masks are computed in the kernel from compact inputs: the in-batch exclusions (column == the
positive's row; column == the row itself) from the row index, and instance ids (a negative
whose id equals its query's id is excluded). Inputs are fp32 or bf16. bf16 tiles go to the
tensor cores as bf16 and fp32 tiles as tf32 by default (`precision="ieee"` keeps fp32 dots
exact); every accumulation, the softmax and the outputs are fp32.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from scdfast.errors import ScdError

NEG_INF = tl.constexpr(float("-inf"))
MAX_WIDTH = 512            # widest embedding the kernels take; a wider one runs the reference
PRECISIONS = ("tf32", "ieee")
DTYPES = (torch.float32, torch.bfloat16)
# in-batch exclusions: none (a queue), the positive's column (CLIP), also the row's own (NT-Xent)
NO_EXCLUSION, EXCLUDE_POSITIVE, EXCLUDE_SELF_AND_POSITIVE = 0, 1, 2


# ---- helpers shared by the kernels --------------------------------------------------------------

@triton.jit
def _tile_offsets(rows, dims, stride_row, stride_dim):
    """Element offsets of a (rows, dims) tile, in int64 so that K x D beyond 2**31 is safe."""
    return rows.to(tl.int64)[:, None] * stride_row + dims.to(tl.int64)[None, :] * stride_dim


@triton.jit
def _load_tile(ptr, rows, dims, n_rows, D, stride_row, stride_dim):
    """A (rows, dims) tile in the tensor's dtype, zero outside (n_rows, D)."""
    mask = (rows < n_rows)[:, None] & (dims < D)[None, :]
    return tl.load(ptr + _tile_offsets(rows, dims, stride_row, stride_dim), mask=mask, other=0.0)


@triton.jit
def _load_rows(ptr, rows, dims, n_rows, D, stride_row, stride_dim, inv_norm_ptr, NORMALIZE: tl.constexpr):
    """A (rows, dims) fp32 tile, L2-normalised when NORMALIZE by the rows' 1 / max(||x||, 1e-12)
    read from inv_norm_ptr, and that factor for the backward (1 without NORMALIZE)."""
    tile = _load_tile(ptr, rows, dims, n_rows, D, stride_row, stride_dim).to(tl.float32)
    inv_norm = tl.full([tile.shape[0]], 1.0, tl.float32)
    if NORMALIZE:
        inv_norm = tl.load(inv_norm_ptr + rows, mask=rows < n_rows, other=1.0)
        tile = tile * inv_norm[:, None]
    return tile, inv_norm


@triton.jit
def _dot_operand(x, like_ptr, LOW_PRECISION_DOT: tl.constexpr):
    """x as the tensor cores take it: in the inputs' bf16 when LOW_PRECISION_DOT, else fp32."""
    if LOW_PRECISION_DOT:
        x = x.to(like_ptr.dtype.element_ty)
    else:
        x = x.to(tl.float32)
    return x


@triton.jit
def _through_normalize(grad, unit, inv_norm, NORMALIZE: tl.constexpr):
    """The gradient w.r.t. x from the one w.r.t. u = x / ||x||: (g - u (u . g)) / ||x||."""
    if NORMALIZE:
        grad = (grad - unit * tl.sum(unit * grad, axis=1)[:, None]) * inv_norm[:, None]
    return grad


@triton.jit
def _valid_negatives(rows, cols, N, K, row_ids, cid_ptr, k_shift,
                     IN_BATCH: tl.constexpr, HAS_IDS: tl.constexpr):
    """(rows, cols) mask: True where column `cols` is a negative of each row."""
    valid = (cols < K)[None, :] & (rows < N)[:, None]
    if IN_BATCH >= 1:  # the positive is counted once, as the positive
        valid = valid & (cols[None, :] != ((rows + k_shift) % N)[:, None])
    if IN_BATCH == 2:
        valid = valid & (cols[None, :] != rows[:, None])
    if HAS_IDS:
        col_ids = tl.load(cid_ptr + cols, mask=cols < K, other=-1)
        valid = valid & (col_ids[None, :] != row_ids[:, None])
    return valid


@triton.jit
def _row_ids(qid_ptr, rows, N, HAS_IDS: tl.constexpr):
    ids = tl.zeros([rows.shape[0]], dtype=tl.int64)
    if HAS_IDS:
        ids = tl.load(qid_ptr + rows, mask=rows < N, other=-2)
    return ids


@triton.jit
def _online_softmax_update(m, l, acc, s, c, PRECISION: tl.constexpr):
    """Fold one tile of logits s (rows, cols) and its candidates c (cols, dims) into the
    running max m, sum l and weighted sum acc, rescaling what came before."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(s - m_new[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c, input_precision=PRECISION)
    return m_new, l, acc


@triton.jit
def _split_range(split, tiles_per_split, BLOCK: tl.constexpr, total):
    """[first, last) of the elements that slice `split` streams."""
    first = split * tiles_per_split * BLOCK
    return first, tl.minimum(first + tiles_per_split * BLOCK, total)


# ---- kernels -------------------------------------------------------------------------------------

@triton.jit
def _rows_split_kernel(
    q_ptr, k_ptr,                   # queries, positives: (terms, N, D) by the strides below
    c0_ptr, c1_ptr, c2_ptr,         # negatives (K, D); term t streams c0, or (SCD_TERMS) c0 c0 c1 c2
    qid_ptr, cid_ptr,               # (N,), (K,) int64 instance ids (HAS_IDS)
    m_ptr, l_ptr, acc_ptr,          # out: (terms, S, N), (terms, S, N), (terms, S, N, D) fp32 partials
    q_inv_ptr, k_inv_ptr,           # (NORMALIZE) (terms, N) fp32 1 / max(||q_i||, 1e-12), the same of k
    inv_t_ptr,                      # () fp32 1 / T, read on the device (a learnable temperature needs no sync)
    N, K, D, k_shift,               # sizes; the positive of row i is row (i + k_shift) % N of k
    stride_qt, stride_qn, stride_qd, stride_kt, stride_kn, stride_kd, stride_cn, stride_cd,
    tiles_per_split,                # BLOCK_K tiles of negatives per slice
    IN_BATCH: tl.constexpr, HAS_IDS: tl.constexpr, NORMALIZE: tl.constexpr, SCD_TERMS: tl.constexpr,
    LOW_PRECISION_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    split = tl.program_id(1)
    term = tl.program_id(2)
    num_splits = tl.num_programs(1)
    inv_t = tl.load(inv_t_ptr)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    c_ptr = c0_ptr
    if SCD_TERMS:  # SCD-Net's pairing: (qt, ki | instance), (qs, ki | instance), (qi, kt | temporal), (qi, ks | spatial)
        if term == 2:
            c_ptr = c1_ptr
        elif term == 3:
            c_ptr = c2_ptr
    q, _ = _load_rows(q_ptr + term * stride_qt, rows, dims, N, D, stride_qn, stride_qd, q_inv_ptr + term * N,
                      NORMALIZE)
    k, _ = _load_rows(k_ptr + term * stride_kt, (rows + k_shift) % N, dims, N, D, stride_kn, stride_kd,
                      k_inv_ptr + term * N, NORMALIZE)
    m = tl.sum(q * k, axis=1) * inv_t                                              # s_ip: the max's reference
    l = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    q = _dot_operand(q, c_ptr, LOW_PRECISION_DOT)
    row_ids = _row_ids(qid_ptr, rows, N, HAS_IDS)
    first, last = _split_range(split, tiles_per_split, BLOCK_K, K)
    for start in range(first, last, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        c = _dot_operand(_load_tile(c_ptr, cols, dims, K, D, stride_cn, stride_cd), c_ptr,
                         LOW_PRECISION_DOT)                                              # BLOCK_K, BLOCK_D
        s = tl.dot(q, tl.trans(c), input_precision=PRECISION) * inv_t                    # BLOCK_N, BLOCK_K
        s = tl.where(_valid_negatives(rows, cols, N, K, row_ids, cid_ptr, k_shift, IN_BATCH, HAS_IDS), s, NEG_INF)
        m, l, acc = _online_softmax_update(m, l, acc, s, c, PRECISION)
    partial = (term * num_splits + split) * N + rows
    row_ok = rows < N
    tl.store(m_ptr + partial, m, mask=row_ok)
    tl.store(l_ptr + partial, l, mask=row_ok)
    tl.store(acc_ptr + _tile_offsets(partial, dims, D, 1), acc, mask=row_ok[:, None] & (dims < D)[None, :])


@triton.jit
def _rows_combine_kernel(
    q_ptr, k_ptr,                   # the split kernel's queries and positives
    m_ptr, l_ptr, acc_ptr,          # its partials
    loss_ptr, lse_ptr, dscale_ptr,  # out: (terms, N) fp32 per-row loss, lse and dloss_i / d(1 / T)
    dq_ptr, dk_ptr,                 # out: (terms, N, D) fp32 gradients of loss_i w.r.t. q_i and its positive (K_GRAD)
    q_inv_ptr, k_inv_ptr,           # the split kernel's inverse norms, the same tensors (NORMALIZE)
    inv_t_ptr, N, D, num_splits, k_shift,
    stride_qt, stride_qn, stride_qd, stride_kt, stride_kn, stride_kd,
    NORMALIZE: tl.constexpr, K_GRAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    term = tl.program_id(1)
    inv_t = tl.load(inv_t_ptr)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    tile_ok = row_ok[:, None] & (dims < D)[None, :]
    q, q_inv = _load_rows(q_ptr + term * stride_qt, rows, dims, N, D, stride_qn, stride_qd, q_inv_ptr + term * N,
                          NORMALIZE)
    k, k_inv = _load_rows(k_ptr + term * stride_kt, (rows + k_shift) % N, dims, N, D, stride_kn, stride_kd,
                          k_inv_ptr + term * N, NORMALIZE)
    s_pos = tl.sum(q * k, axis=1) * inv_t
    m = s_pos                       # the positive opens the merge: l = exp(s_pos - m) = 1, acc = k
    l = tl.full([BLOCK_N], 1.0, tl.float32)
    acc = k
    for split in range(0, num_splits):
        partial = (term * num_splits + split) * N + rows
        m_split = tl.load(m_ptr + partial, mask=row_ok, other=0.0)
        m_new = tl.maximum(m, m_split)
        alpha, beta = tl.exp(m - m_new), tl.exp(m_split - m_new)
        l = l * alpha + tl.load(l_ptr + partial, mask=row_ok, other=0.0) * beta
        acc = acc * alpha[:, None] + tl.load(acc_ptr + _tile_offsets(partial, dims, D, 1), mask=tile_ok,
                                             other=0.0) * beta[:, None]
        m = m_new
    lse = m + tl.log(l)
    out_rows = term * N + rows
    tl.store(loss_ptr + out_rows, lse - s_pos, mask=row_ok)
    tl.store(lse_ptr + out_rows, lse, mask=row_ok)
    expected = acc / l[:, None] - k                     # softmax-weighted candidates minus the positive
    # every logit is (1 / T) q . c, so dloss_i / d(1 / T) = q_i . expected_i (a learnable temperature's gradient)
    tl.store(dscale_ptr + out_rows, tl.sum(q * expected, axis=1), mask=row_ok)
    dq = _through_normalize(expected * inv_t, q, q_inv, NORMALIZE)
    tl.store(dq_ptr + _tile_offsets(out_rows, dims, D, 1), dq, mask=tile_ok)
    if K_GRAD:
        dk = (tl.exp(s_pos - lse) - 1.0)[:, None] * q * inv_t
        tl.store(dk_ptr + _tile_offsets(out_rows, dims, D, 1), _through_normalize(dk, k, k_inv, NORMALIZE),
                 mask=tile_ok)


@triton.jit
def _columns_kernel(
    q_ptr, c_ptr,                   # queries (N, D), negatives (K, D), both as the row pass saw them
    lse_ptr, w_ptr,                 # (N,) fp32: the row pass's lse, each row's weight (its loss's incoming gradient)
    qid_ptr, cid_ptr,               # the row pass's ids (HAS_IDS)
    dc_ptr,                         # out: (S, K, D) fp32 partial sums over row slices of w_i p_ij q_i / T
    inv_t_ptr, N, K, D, k_shift,
    stride_qn, stride_qd, stride_cn, stride_cd, tiles_per_split,
    IN_BATCH: tl.constexpr, HAS_IDS: tl.constexpr, LOW_PRECISION_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    split = tl.program_id(1)
    inv_t = tl.load(inv_t_ptr)
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, BLOCK_D)
    c = _dot_operand(_load_tile(c_ptr, cols, dims, K, D, stride_cn, stride_cd), c_ptr,
                     LOW_PRECISION_DOT)                                                  # BLOCK_K, BLOCK_D
    acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    first, last = _split_range(split, tiles_per_split, BLOCK_N, N)
    for start in range(first, last, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        q = _dot_operand(_load_tile(q_ptr, rows, dims, N, D, stride_qn, stride_qd), c_ptr, LOW_PRECISION_DOT)
        lse = tl.load(lse_ptr + rows, mask=rows < N, other=0.0)
        w = tl.load(w_ptr + rows, mask=rows < N, other=0.0)
        row_ids = _row_ids(qid_ptr, rows, N, HAS_IDS)
        s = tl.dot(q, tl.trans(c), input_precision=PRECISION) * inv_t                    # BLOCK_N, BLOCK_K
        valid = _valid_negatives(rows, cols, N, K, row_ids, cid_ptr, k_shift, IN_BATCH, HAS_IDS)
        # masked before the exp: an excluded logit can exceed lse and overflow it
        p = tl.exp(tl.where(valid, s - lse[:, None], NEG_INF)) * w[:, None]
        acc += tl.dot(tl.trans(p).to(c.dtype), q, input_precision=PRECISION)
    tl.store(dc_ptr + _tile_offsets(split * K + cols, dims, D, 1), acc * inv_t,
             mask=(cols < K)[:, None] & (dims < D)[None, :])


# ---- launch configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class TileConfig:
    """One candidate: rows and columns per tile, warps and software-pipelining stages."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# The candidates the autotuner times on a GPU (the first is the pick without one), per BLOCK_D,
# for tensor-core dots (tf32, bf16) and for exact fp32 FMA dots (ieee), whose operands take far
# more registers. Every one passes the compile gate on sm_80 and sm_90: no spills, shared memory
# within the per-block limit. (Triton's tf32x3 spilled at every width from 64 up on sm_80 and
# from 128 up on sm_90 with these tiles, so it is not offered.)
TILE_CANDIDATES: dict[str, dict[int, tuple[TileConfig, ...]]] = {
    "tensor_cores": {
        16: (TileConfig(64, 64, 4, 3), TileConfig(128, 64, 8, 3)),
        32: (TileConfig(64, 64, 4, 3), TileConfig(128, 64, 8, 3)),
        64: (TileConfig(64, 64, 4, 3), TileConfig(64, 32, 4, 3)),
        128: (TileConfig(64, 64, 8, 3), TileConfig(32, 64, 4, 3)),
        256: (TileConfig(64, 32, 8, 2), TileConfig(32, 32, 4, 2)),
        512: (TileConfig(16, 32, 4, 2), TileConfig(16, 32, 4, 1)),
    },
    "fma": {
        16: (TileConfig(32, 32, 4, 2), TileConfig(16, 32, 8, 1)),
        32: (TileConfig(32, 32, 8, 2), TileConfig(16, 32, 8, 1)),
        64: (TileConfig(16, 32, 8, 1),),
        128: (TileConfig(16, 32, 8, 1),),
    },
}
FMA_MAX_WIDTH = max(TILE_CANDIDATES["fma"])  # precision="ieee" beyond it runs the reference
COMBINE_BLOCK_N = {16: 64, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4}
PROGRAMS_PER_SM = 4        # slices are added until the grid holds this many programs per SM
INTERPRETER_SMS = 2        # what the split heuristic assumes under TRITON_INTERPRET


def as_device_scalar(x: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A () fp32 tensor on `device` for a scalar the kernels read from memory."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float32).reshape(())
    return torch.full((), x, device=device, dtype=torch.float32)


def block_width(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def num_slices(other_programs: int, tiles: int, sm_count: int) -> tuple[int, int]:
    """(slices, tiles per slice) for a pass whose grid has `other_programs` programs besides
    the split axis and `tiles` tiles to stream: enough slices for PROGRAMS_PER_SM programs per
    SM, none of them empty."""
    wanted = triton.cdiv(PROGRAMS_PER_SM * sm_count, max(other_programs, 1))
    per_slice = triton.cdiv(tiles, max(1, min(wanted, tiles)))
    return triton.cdiv(tiles, per_slice), per_slice


def device_sm_count(device: torch.device) -> int:
    if device.type == "cuda" and not interpreted():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


def low_precision_dot(*tensors: torch.Tensor) -> bool:
    """bf16 tiles go to the tensor cores as bf16 when every operand is bf16 (the interpreter
    computes bf16 products wrongly, so there they are widened to fp32 at load)."""
    return all(t.dtype == torch.bfloat16 for t in tensors) and not interpreted()


def check_dtypes(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in DTYPES:
            raise ScdError(f"the fused kernels take float32 or bfloat16 inputs, got {t.dtype}; "
                           "use backend='torch' for other dtypes")


def fits(d: int, precision: str = "tf32") -> bool:
    return d <= (FMA_MAX_WIDTH if precision == "ieee" else MAX_WIDTH)


def tile_family(precision: str) -> str:
    return "fma" if precision == "ieee" else "tensor_cores"


_WIDE_WARNED = False


def warn_too_wide(d: int, precision: str) -> None:
    """One warning per process that a width beyond the kernels ran the PyTorch reference."""
    global _WIDE_WARNED
    if not _WIDE_WARNED:
        _WIDE_WARNED = True
        limit = FMA_MAX_WIDTH if precision == "ieee" else MAX_WIDTH
        warnings.warn(f"embedding width {d} > {limit} (precision={precision!r}): the fused kernels do not take it; "
                      "running the PyTorch reference (N x K logits in memory)", stacklevel=3)


# ---- launch plans: the launchers and the compile gate build the same ones ------------------------

@dataclass
class Launch:
    """One kernel launch: the kernel, its grid, arguments and compile-time settings."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    meta: dict

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)

    def compile_only(self):
        """Compile for the active driver's target without launching (the compile gate)."""
        return self.kernel.warmup(*self.args, grid=self.grid, **self.meta)


@dataclass
class RowsProblem:
    """Terms x N queries with positives against K negatives, as the row pass reads them."""

    q: torch.Tensor                 # (terms, N, D)
    k: torch.Tensor                 # (terms, N, D)
    negatives: tuple                # 1 tensor (K, D), or 3 with SCD-Net's term-to-queue pairing
    inv_t: float | torch.Tensor     # 1 / T: a float, or a () tensor on the inputs' device
    k_shift: int = 0
    in_batch: int = NO_EXCLUSION
    query_ids: torch.Tensor | None = None
    queue_ids: torch.Tensor | None = None
    normalize: bool = False
    k_grad: bool = False
    precision: str = "tf32"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        terms, n, d = self.q.shape
        return terms, n, self.negatives[0].shape[0], d


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """(terms, N) fp32 1 / max(||x_i||, 1e-12) of (terms, N, D) rows, as F.normalize divides.
    Computed once, here, and read by every kernel that normalises, so that the columns pass sees
    exactly the q_i the logits and lse were made of: each kernel's own reduction (its own tile
    layout and summation order) would not promise that, and the split kernel storing its norms
    for the backward spilled registers in the compile gate."""
    return x.float().square().sum(-1).sqrt().clamp_min(1e-12).reciprocal()


def rows_launches(p: RowsProblem, tile: TileConfig, sm_count: int) -> tuple[Launch, Launch, dict]:
    """The split and combine launches of a row pass, and the outputs they write."""
    terms, n, k_rows, d = p.shape
    block_d = block_width(d)
    row_blocks = triton.cdiv(n, tile.block_n)
    slices, per_slice = num_slices(row_blocks * terms, max(1, triton.cdiv(k_rows, tile.block_k)), sm_count)
    device, f32 = p.q.device, torch.float32
    m = torch.empty(terms, slices, n, device=device, dtype=f32)
    l = torch.empty_like(m)
    acc = torch.empty(terms, slices, n, d, device=device, dtype=f32)
    out = {name: torch.empty(terms, n, device=device, dtype=f32) for name in ("loss", "lse", "dscale")}
    out |= {"dq": torch.empty(terms, n, d, device=device, dtype=f32),
            "dk": torch.empty(terms, n, d, device=device, dtype=f32) if p.k_grad else m,
            "q_inv": inverse_norms(p.q) if p.normalize else m}
    k_inv = inverse_norms(p.k) if p.normalize else m
    c0, c1, c2 = (p.negatives * 3)[:3] if len(p.negatives) == 1 else p.negatives
    ids = (p.query_ids, p.queue_ids) if p.query_ids is not None else (m, m)
    strides = (*p.q.stride(), *p.k.stride())
    inv_t = as_device_scalar(p.inv_t, device)
    split = Launch(_rows_split_kernel, (row_blocks, slices, terms),
                   (p.q, p.k, c0, c1, c2, *ids, m, l, acc, out["q_inv"], k_inv, inv_t, n, k_rows, d, p.k_shift,
                    *strides, *c0.stride(), per_slice),
                   dict(IN_BATCH=p.in_batch, HAS_IDS=p.query_ids is not None, NORMALIZE=p.normalize,
                        SCD_TERMS=len(p.negatives) == 3, LOW_PRECISION_DOT=low_precision_dot(p.q, p.k, c0),
                        PRECISION=p.precision, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, BLOCK_D=block_d,
                        num_warps=tile.num_warps, num_stages=tile.num_stages))
    combine_n = COMBINE_BLOCK_N[block_d]
    combine = Launch(_rows_combine_kernel, (triton.cdiv(n, combine_n), terms),
                     (p.q, p.k, m, l, acc, out["loss"], out["lse"], out["dscale"], out["dq"], out["dk"], out["q_inv"],
                      k_inv, inv_t, n, d, slices, p.k_shift, *strides),
                     dict(NORMALIZE=p.normalize, K_GRAD=p.k_grad, BLOCK_N=combine_n, BLOCK_D=block_d,
                          num_warps=4 if block_d <= 128 else 8))
    return split, combine, out


def columns_launch(q, c, lse, inv_t, weights, tile: TileConfig, sm_count: int, k_shift=0,
                   in_batch=NO_EXCLUSION, query_ids=None, queue_ids=None, precision="tf32") -> tuple[Launch, torch.Tensor]:
    """The columns pass and its (slices, K, D) output, to be summed over slices. `weights` (N,)
    fp32 are the rows' weights (a float: every row's)."""
    n, d = q.shape
    k_rows = c.shape[0]
    col_blocks = triton.cdiv(k_rows, tile.block_k)
    slices, per_slice = num_slices(col_blocks, max(1, triton.cdiv(n, tile.block_n)), sm_count)
    dc = torch.empty(slices, k_rows, d, device=q.device, dtype=torch.float32)
    ids = (query_ids, queue_ids) if query_ids is not None else (lse, lse)
    if not isinstance(weights, torch.Tensor):
        weights = torch.full((n,), weights, device=q.device, dtype=torch.float32)
    launch = Launch(_columns_kernel, (col_blocks, slices),
                    (q, c, lse, weights, *ids, dc, as_device_scalar(inv_t, q.device), n, k_rows, d, k_shift,
                     *q.stride(), *c.stride(),
                     per_slice),
                    dict(IN_BATCH=in_batch, HAS_IDS=query_ids is not None, LOW_PRECISION_DOT=low_precision_dot(q, c),
                         PRECISION=precision, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, BLOCK_D=block_width(d),
                         num_warps=tile.num_warps, num_stages=tile.num_stages))
    return launch, dc


# ---- autotuning: on a GPU, the fastest candidate per problem class; elsewhere the first ---------

_TUNED: dict[tuple, TileConfig] = {}


def _bucket(x: int) -> int:
    return triton.next_power_of_2(max(1, x))


def pick_tile(kind: str, key: tuple, device: torch.device, run_with) -> TileConfig:
    """The candidate for `kind` at this (BLOCK_D, precision, dtypes, flags, size buckets) key:
    timed once per process on a GPU with Triton's do_bench, the first candidate without one."""
    block_d, precision = key[:2]
    candidates = TILE_CANDIDATES[tile_family(precision)][block_d]
    if device.type != "cuda" or interpreted() or len(candidates) == 1:
        return candidates[0]
    full_key = (kind, device.index, *key)
    if full_key not in _TUNED:
        times = [triton.testing.do_bench(lambda t=tile: run_with(t), warmup=5, rep=20) for tile in candidates]
        _TUNED[full_key] = candidates[min(range(len(candidates)), key=times.__getitem__)]
    return _TUNED[full_key]


# ---- passes ---------------------------------------------------------------------------------------

def rows_pass(p: RowsProblem) -> dict:
    """{loss, lse, dscale, q_inv: (terms, N); dq, dk: (terms, N, D)} fp32 for a row problem: each
    row's loss and its gradients (w.r.t. 1 / T, q_i and its positive; through the normalisation
    when p.normalize), unweighted: the caller scales them by the rows' incoming gradients; q_inv
    (p.normalize) the 1 / ||q_i|| the logits were made with."""
    terms, n, k_rows, d = p.shape
    sm_count = device_sm_count(p.q.device)

    def run(tile):
        split, combine, out = rows_launches(p, tile, sm_count)
        split.run()
        combine.run()
        return out
    key = (block_width(d), p.precision, p.q.dtype, p.negatives[0].dtype, p.in_batch, p.query_ids is not None, p.normalize,
           len(p.negatives), _bucket(n * terms), _bucket(k_rows))
    return run(pick_tile("rows", key, p.q.device, run))


def columns_pass(q, c, lse, inv_t, weights, k_shift=0, in_batch=NO_EXCLUSION, query_ids=None, queue_ids=None,
                 precision="tf32") -> torch.Tensor:
    """dc (K, D) fp32: the gradient reaching the negatives, sum_i w_i p_ij q_i / T."""
    sm_count = device_sm_count(q.device)

    def run(tile):
        launch, dc = columns_launch(q, c, lse, inv_t, weights, tile, sm_count, k_shift, in_batch, query_ids,
                                    queue_ids, precision)
        launch.run()
        return dc[0] if dc.shape[0] == 1 else dc.sum(0)
    key = (block_width(q.shape[1]), precision, q.dtype, c.dtype, in_batch, query_ids is not None,
           _bucket(q.shape[0]), _bucket(c.shape[0]))
    return run(pick_tile("columns", key, q.device, run))
