"""Contrastive losses with a selectable backend: MoCo's InfoNCE, SimCLR's NT-Xent, supervised
contrastive (SupCon), CLIP, and SCD-Net's four-term loss.

`backend="torch"` runs the plain-PyTorch reference (scdfast.losses.reference); "triton" the
fused kernels; "auto" the kernels where they compute what was asked. Every entry point
validates its inputs first, so a wrong shape or setting fails before any compute.

Shared arguments:
- `temperature`: a float, or a () tensor that learns (its gradient comes from the fused pass);
  must be finite and > 0.
- `reduction`: "mean" (default), "sum", or "none" (one loss per row, as documented per loss).
- `normalize`: L2-normalise the embeddings inside (off by default here; scdfast.nn's modules
  default to what the loss they replace does).
- `check_finite`: refuse NaN/Inf inputs and a bad tensor temperature, with one device read;
  turn it off in a throughput loop that guards the loss itself.
- `precision`: the fused kernels' for fp32 inputs: "tf32" (tensor cores, about 1e-3 relative
  error) or "ieee" (exact fp32 products, D <= 128; wider runs the reference); bf16 inputs
  always take bf16 products.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scdfast.errors import ScdError
from scdfast.losses import reference
from scdfast.losses import gather as ranks

BACKENDS = ("auto", "torch", "triton")
REDUCTIONS = ("mean", "sum", "none")


def _kernels():
    """scdfast.kernels.infonce, or None where Triton cannot be imported."""
    try:
        from scdfast.kernels import infonce
    except ImportError:
        return None
    return infonce


def resolve_backend(backend: str, precision: str, *tensors: torch.Tensor) -> str:
    """"auto" takes the kernels only where they compute what was asked (CUDA tensors of a dtype
    and width they take; never float64 through fp32 kernels); "triton" insists, except on a
    width beyond the kernels, which runs the reference with one warning."""
    if backend not in BACKENDS:
        raise ScdError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    kernels = _kernels()
    if kernels is not None and precision not in kernels.PRECISIONS:
        raise ScdError(f"precision={precision!r}: choose one of {', '.join(kernels.PRECISIONS)}")
    if backend == "torch":
        return backend
    if backend == "auto":
        if kernels is None:
            return "torch"
        takes = all(t.is_cuda and t.dtype in kernels.DTYPES for t in tensors)
        return "triton" if takes and kernels.fits(tensors[0].shape[1], precision) else "torch"
    if kernels is None:
        raise ScdError("backend='triton': the Triton kernels are not installed (scdfast.kernels)")
    kernels.check_dtypes(*tensors)
    if not kernels.fits(tensors[0].shape[1], precision):
        kernels.warn_too_wide(tensors[0].shape[1], precision)
        return "torch"
    return backend


# ---- input checks ---------------------------------------------------------------------------------

class _Checks:
    """The checks of one call: shapes and settings at once, values (NaN/Inf, a tensor
    temperature's sign) gathered and read from the device once."""

    def __init__(self, check_finite: bool):
        self.check_finite = check_finite
        self.flags: dict[str, torch.Tensor] = {}

    def finite(self, **tensors: torch.Tensor) -> None:
        if self.check_finite:
            self.flags |= {f"{name}: contains NaN or Inf": torch.isfinite(t).all() for name, t in tensors.items()}

    def temperature(self, value, name: str = "temperature") -> None:
        if isinstance(value, torch.Tensor):
            if not value.dtype.is_floating_point or value.numel() != 1:
                raise ScdError(f"{name}: expected a float or a one-element floating-point tensor, "
                               f"got {value.dtype} of shape {tuple(value.shape)}")
            if self.check_finite:
                self.flags[f"{name}: must be finite and > 0"] = (torch.isfinite(value) & (value > 0)).all()
        elif not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ScdError(f"{name}={value!r}: must be finite and > 0")

    def run(self) -> None:
        if not self.flags:
            return
        flags = list(self.flags.values())
        ok = torch.stack([flag.to(flags[0].device) for flag in flags])
        if not bool(ok.all()):
            raise ScdError(next(message for message, good in zip(self.flags, ok.tolist()) if not good))


def _check_matrix(name: str, t: torch.Tensor, width: int | None = None) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ScdError(f"{name}: expected a 2-D (rows, D) tensor, got {shape}")
    if width is not None and t.shape[1] != width:
        raise ScdError(f"{name}: embedding width {t.shape[1]} differs from the queries' {width}")
    if not t.dtype.is_floating_point:
        raise ScdError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Two (N, D) sets of matched embeddings (NT-Xent views, CLIP pairs)."""
    _check_matrix(name_a, a)
    _check_matrix(name_b, b, a.shape[1])
    if a.shape[0] != b.shape[0]:
        raise ScdError(f"{name_b}: {b.shape[0]} rows, {name_a} has {a.shape[0]}")


def _check_labels(labels: torch.Tensor | None, n: int, what: str) -> None:
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ScdError(f"labels: expected one per {what} ({n},), got {shape}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ScdError(f"labels: expected an integer tensor, got {labels.dtype}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ScdError(f"reduction={reduction!r}: choose one of {', '.join(REDUCTIONS)}")


def _check_ids(query_ids: torch.Tensor | None, queue_ids: torch.Tensor | None, n: int, k: int) -> None:
    if (query_ids is None) != (queue_ids is None):
        missing = "query_ids" if query_ids is None else "queue_ids"
        raise ScdError(f"{missing} is required when the other ids are given")
    if query_ids is not None and (query_ids.shape != (n,) or queue_ids.shape != (k,)):
        raise ScdError(f"ids: query_ids must be ({n},) and queue_ids ({k},), "
                       f"got {tuple(query_ids.shape)} and {tuple(queue_ids.shape)}")


def _reduce(rows: torch.Tensor, reduction: str, count: torch.Tensor | None = None) -> torch.Tensor:
    """`count`: how many rows the mean is over, where some rows do not count (no positive)."""
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    return total / count.clamp_min(1) if count is not None else total / rows.shape[0]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| computed in at least fp32 and rounded once to x's dtype (in bf16 the norm
    would be rounded too)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=1).to(x.dtype)


def _inv_t(temperature, device: torch.device) -> torch.Tensor:
    """1 / T as the fused kernels read it: a () fp32 tensor on `device`, differentiable when T is."""
    if isinstance(temperature, torch.Tensor):
        return temperature.to(device=device, dtype=torch.float32).reshape(()).reciprocal()
    return torch.full((), 1.0 / temperature, device=device, dtype=torch.float32)


# ---- MoCo ---------------------------------------------------------------------------------------

def infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature=0.2,
            query_ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None,
            backend: str = "auto", normalize: bool = False, check_finite: bool = True,
            precision: str = "tf32", reduction: str = "mean") -> torch.Tensor:
    """MoCo InfoNCE: q, k (N, D) queries and their positive keys; queue (K, D) negatives, in any
    strides (a (D, K) bank passed as `bank.t()` is read in place). With ids (N,) and (K,), a
    negative whose id equals its query's id is left out (a sample's own older key).
    reduction="none": (N,)."""
    _check_matrix("q", q)
    _check_matrix("k", k, q.shape[1])
    _check_matrix("queue", queue, q.shape[1])
    if k.shape[0] != q.shape[0]:
        raise ScdError(f"k: {k.shape[0]} positives for {q.shape[0]} queries")
    check_reduction(reduction)
    _check_ids(query_ids, queue_ids, q.shape[0], queue.shape[0])
    checks = _Checks(check_finite)
    checks.temperature(temperature)
    checks.finite(q=q, k=k, queue=queue)
    checks.run()
    if resolve_backend(backend, precision, q, k, queue) == "triton":
        from scdfast.kernels.ops import fused_infonce
        rows = fused_infonce(q, k, queue, _inv_t(temperature, q.device), query_ids, queue_ids, normalize, precision)
    else:
        rows = reference.infonce_ref(q, k, queue, temperature, query_ids, queue_ids, normalize)
    return _reduce(rows, reduction)


# ---- in-batch: NT-Xent, SupCon, CLIP ------------------------------------------------------------

def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature=0.5, backend: str = "auto",
            normalize: bool = False, check_finite: bool = True, precision: str = "tf32",
            labels: torch.Tensor | None = None, gather_distributed: bool = False,
            reduction: str = "mean") -> torch.Tensor:
    """SimCLR's NT-Xent over the 2N views of (z1, z2), each (N, D): view i's positive is its
    pair, every other view a negative. With `labels` (N,), every other view of the same label
    is a positive too: supervised contrastive (SupCon's L_out over two views). With
    `gather_distributed`, each rank's views are contrasted with every rank's (gradients sent
    home). reduction="none": (2N,), z1's views first."""
    _check_pair("z1", z1, "z2", z2)
    _check_labels(labels, z1.shape[0], "pair")
    check_reduction(reduction)
    rank, world = ranks.require_process_group("gather_distributed") if gather_distributed else (0, 1)
    checks = _Checks(check_finite)
    checks.temperature(temperature)
    checks.finite(z1=z1, z2=z2)
    checks.run()
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    if normalize:
        z = _unit(z)
    fused = resolve_backend(backend, precision, z1, z2) == "triton"
    if not gather_distributed:
        if fused:
            from scdfast.kernels.ops import fused_views_rows
            rows = fused_views_rows(z, _inv_t(temperature, z.device), n, _views(labels), precision)[0]
        else:
            rows = reference.nt_xent_ref(z[:n], z[n:], temperature, labels=labels)
        return _reduce(rows, reduction)
    # every rank's views as columns [all z1; all z2]; a row's own sample (itself, its pair) by ids
    columns = torch.cat([ranks.gather_with_grad(z[:n]), ranks.gather_with_grad(z[n:])])
    sample = torch.arange(n, device=z.device)
    row_ids, col_ids = _views(sample + rank * n), _views(torch.arange(world * n, device=z.device))
    row_labels, col_labels = (_views(labels), _views(ranks.gather(labels))) if labels is not None else (None, None)
    if fused:
        from scdfast.kernels.infonce import NO_EXCLUSION
        from scdfast.kernels.ops import fused_in_batch
        rows = fused_in_batch(z, z, columns, _inv_t(temperature, z.device), n, NO_EXCLUSION, row_ids, col_ids,
                              row_labels, col_labels, self_in_columns=True, precision=precision)[0]
    else:  # without labels, a view's positives are its sample's other view: the sample is the label
        self_column = torch.cat([sample, sample + world * n]) + rank * n
        rows = reference.supcon_rows_ref(z, columns, self_column, row_ids if labels is None else row_labels,
                                         col_ids if labels is None else col_labels, temperature)
    return _reduce(rows, reduction)


def positive_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors, positives): every ordered pair (i, j), i != j, of rows with one label, grouped
    by label, built from the sorted labels (O(pairs), no N x N mask). Their count depends on
    the labels, so this reads one number from the device."""
    m = labels.shape[0]
    order = labels.argsort(stable=True)
    ordered = labels[order]
    first = torch.ones(m, dtype=torch.bool, device=labels.device)
    first[1:] = ordered[1:] != ordered[:-1]
    group = first.long().cumsum(0) - 1                                  # per sorted position
    starts = first.nonzero().squeeze(1)
    sizes = torch.diff(starts, append=torch.tensor([m], device=labels.device))
    start_of = starts[group]
    partners = sizes[group] - 1
    anchor = torch.repeat_interleave(torch.arange(m, device=labels.device), partners)
    offset = torch.arange(anchor.shape[0], device=labels.device) - torch.repeat_interleave(partners.cumsum(0) - partners,
                                                                                         partners)
    offset += offset >= (torch.arange(m, device=labels.device) - start_of)[anchor]   # skip the anchor itself
    return order[anchor], order[start_of[anchor] + offset]


def nt_xent_pairs(embeddings: torch.Tensor, labels: torch.Tensor, temperature=0.07, backend: str = "auto",
                  normalize: bool = True, check_finite: bool = True, precision: str = "tf32",
                  reduction: str = "mean") -> torch.Tensor:
    """NT-Xent per positive pair, as pytorch-metric-learning's NTXentLoss computes it:
    embeddings (M, D), labels (M,); for every pair (a, p) of one label, -log of
    exp(s_ap) / (exp(s_ap) + sum over the rows of other labels exp(s_an)). SimCLR is the case
    of labels [0..N-1, 0..N-1] over [z1; z2]. It is MoCo's InfoNCE with the batch as the queue
    and the labels as ids (a row of the anchor's label is no negative), so the fused path is
    `infonce`'s. reduction="none": one loss per pair, in `positive_pairs(labels)` order."""
    _check_matrix("embeddings", embeddings)
    _check_labels(labels, embeddings.shape[0], "embedding")
    check_reduction(reduction)
    checks = _Checks(check_finite)
    checks.temperature(temperature)
    checks.finite(embeddings=embeddings)
    checks.run()
    if normalize:
        embeddings = _unit(embeddings)
    anchors, positives = positive_pairs(labels)
    if anchors.numel() == 0:  # no label seen twice: nothing to contrast (a zero that keeps the graph)
        return embeddings[:0, 0] if reduction == "none" else embeddings.sum() * 0.0
    return infonce(embeddings[anchors], embeddings[positives], embeddings, temperature, labels[anchors], labels,
                   backend=backend, check_finite=False, precision=precision, reduction=reduction)


def _views(per_pair: torch.Tensor | None) -> torch.Tensor | None:
    """One value per pair -> one per view of [z1; z2]."""
    return None if per_pair is None else torch.cat([per_pair, per_pair])


def supcon(features: torch.Tensor, labels: torch.Tensor, temperature=0.1, backend: str = "auto",
           normalize: bool = False, check_finite: bool = True, precision: str = "tf32",
           gather_distributed: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Supervised contrastive loss, L_out of Khosla et al. 2020: features (N, V, D), V views of
    N samples (or (N, D), one view), labels (N,). Each of the N * V anchors is contrasted with
    every other view in the batch; its positives are the views of its label. An anchor without
    a positive (a label seen once, with one view) is left out of the mean. With two views this
    is `nt_xent(features[:, 0], features[:, 1], labels=labels)`, which `gather_distributed`
    needs. reduction="none": (V * N,), view-major (all first views, then the second), 0 for an
    anchor without a positive."""
    if isinstance(features, torch.Tensor) and features.dim() == 2:
        features = features[:, None]
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ScdError(f"features: expected (N, views, D) or (N, D), got {shape}")
    n, views, d = features.shape
    _check_labels(labels, n, "sample")
    if views == 2:
        return nt_xent(features[:, 0], features[:, 1], temperature, backend, normalize, check_finite, precision,
                       labels=labels, gather_distributed=gather_distributed, reduction=reduction)
    if gather_distributed:
        raise ScdError(f"supcon: gather_distributed=True takes two views per sample, got {views}")
    if n * views < 2:
        raise ScdError(f"features: {n * views} anchor; contrasting needs at least 2")
    _check_matrix("features", features.reshape(n * views, d))
    check_reduction(reduction)
    checks = _Checks(check_finite)
    checks.temperature(temperature)
    checks.finite(features=features)
    checks.run()
    z = features.transpose(0, 1).reshape(views * n, d)
    if normalize:
        z = _unit(z)
    anchor_labels = labels.repeat(views)
    if resolve_backend(backend, precision, z) == "triton":
        from scdfast.kernels.ops import fused_views_rows
        rows, npos = fused_views_rows(z, _inv_t(temperature, z.device), n if views > 1 else 1, anchor_labels,
                                      precision)
        rows = torch.where(npos > 0, rows, torch.zeros_like(rows))
    else:
        index = torch.arange(views * n, device=z.device)
        rows = reference.supcon_rows_ref(z, z, index, anchor_labels, anchor_labels, temperature)
        npos = (anchor_labels[:, None] == anchor_labels[None, :]).sum(1) - 1
    return _reduce(rows, reduction, (npos > 0).sum())


def clip_loss(a: torch.Tensor, b: torch.Tensor, temperature=0.07, backend: str = "auto",
              normalize: bool = False, check_finite: bool = True, precision: str = "tf32",
              logit_scale: torch.Tensor | float | None = None, labels: torch.Tensor | None = None,
              gather_with_grad: bool = False, local_loss: bool = False, reduction: str = "mean") -> torch.Tensor:
    """CLIP's symmetric cross-entropy over N matched pairs (a_i, b_i), each (N, D).

    `logit_scale` (open_clip's, the multiplier 1 / T, learnable) replaces `temperature`. With
    `labels` (N,), pairs of the same label are positives of each other (duplicate captions).
    With `gather_with_grad`, every rank's pairs are gathered with gradients: `local_loss=True`
    contrasts this rank's rows with every rank's columns (open_clip's local_loss), otherwise
    every rank computes the global loss. reduction="none": (N,), each pair's two directions
    averaged (with local_loss, this rank's pairs)."""
    _check_pair("a", a, "b", b)
    _check_labels(labels, a.shape[0], "pair")
    check_reduction(reduction)
    if local_loss and not gather_with_grad:
        raise ScdError("clip_loss: local_loss=True contrasts with other ranks' pairs; it needs gather_with_grad=True")
    rank, world = ranks.require_process_group("gather_with_grad") if gather_with_grad else (0, 1)
    checks = _Checks(check_finite)
    if logit_scale is not None:
        checks.temperature(logit_scale, "logit_scale")
        temperature = 1.0 / logit_scale
    else:
        checks.temperature(temperature)
    checks.finite(a=a, b=b)
    checks.run()
    if normalize:
        a, b = _unit(a), _unit(b)
    fused = resolve_backend(backend, precision, a, b) == "triton"
    inv_t = None
    if fused:  # open_clip's logit_scale is 1 / T itself: no reciprocal on its gradient's way
        inv_t = (logit_scale.to(device=a.device, dtype=torch.float32).reshape(())
                 if isinstance(logit_scale, torch.Tensor) else _inv_t(temperature, a.device))
    if gather_with_grad and not local_loss:
        a, b = ranks.gather_with_grad(a), ranks.gather_with_grad(b)
        labels = ranks.gather(labels) if labels is not None else None
    if not local_loss:
        if fused:
            from scdfast.kernels.ops import fused_clip_rows
            rows = 0.5 * (fused_clip_rows(a, b, inv_t, labels, precision) + fused_clip_rows(b, a, inv_t, labels, precision))
        else:
            rows = reference.clip_ref(a, b, temperature, labels=labels)
        return _reduce(rows, reduction)
    n = a.shape[0]
    all_a, all_b = ranks.gather_with_grad(a), ranks.gather_with_grad(b)
    row_ids = torch.arange(n, device=a.device) + rank * n
    col_ids = torch.arange(world * n, device=a.device)
    row_labels, col_labels = (labels, ranks.gather(labels)) if labels is not None else (None, None)
    if fused:
        from scdfast.kernels.infonce import NO_EXCLUSION
        from scdfast.kernels.ops import fused_in_batch

        def direction(x, positives, columns):  # the pair's own column is left out by its id, added as the positive
            return fused_in_batch(x, positives, columns, inv_t, 0, NO_EXCLUSION, row_ids, col_ids, row_labels, col_labels,
                                  precision=precision)[0]
    else:
        def direction(x, positives, columns):
            positive = (row_ids[:, None] == col_ids[None, :] if labels is None
                        else row_labels[:, None] == col_labels[None, :])
            return reference.contrastive_rows((x @ columns.t()) / temperature, None, positive)
    return _reduce(0.5 * (direction(a, b, all_b) + direction(b, a, all_a)), reduction)


# ---- SCD-Net ------------------------------------------------------------------------------------

def scd_loss(queries, keys, queues, temperature=0.2, backend: str = "auto",
             normalize: bool = False, check_finite: bool = True, query_ids: torch.Tensor | None = None,
             queue_ids: torch.Tensor | None = None, precision: str = "tf32", reduction: str = "mean") -> torch.Tensor:
    """SCD-Net's four-term interactive InfoNCE.

    queries (qt, qs, qi), keys (kt, ks, ki): (N, D) each, L2-normalised unless `normalize`;
    queues (temporal, spatial, instance): (K, D) each. With ids (query_ids (N,), queue_ids (K,),
    one per row of all three queues, which are filled together), a queue key of the query's
    own sample is no negative: on a dataset not much larger than K, each sample's key from
    the epoch before is still queued. "mean" is the sum of the four terms' batch means;
    reduction="none": (N,), each sample's four terms summed.
    """
    if len(queries) != 3 or len(keys) != 3 or len(queues) != 3:
        raise ScdError("scd_loss: queries, keys and queues must each be 3 tensors (temporal, spatial, instance)")
    width = queries[0].shape[1] if isinstance(queries[0], torch.Tensor) and queries[0].dim() == 2 else None
    for names, group in ((("qt", "qs", "qi"), queries), (("kt", "ks", "ki"), keys),
                         (("temporal_queue", "spatial_queue", "instance_queue"), queues)):
        for name, t in zip(names, group):
            _check_matrix(name, t, width)
    n = queries[0].shape[0]
    for name, t in zip(("qs", "qi", "kt", "ks", "ki"), (*queries[1:], *keys)):
        if t.shape[0] != n:
            raise ScdError(f"{name}: {t.shape[0]} rows, qt has {n}")
    check_reduction(reduction)
    if len({t.shape[0] for t in queues}) == 1:
        _check_ids(query_ids, queue_ids, n, queues[0].shape[0])
    elif query_ids is not None:
        raise ScdError("scd_loss: ids need the three queues to have one length (one id per row of each)")
    checks = _Checks(check_finite)
    checks.temperature(temperature)
    checks.finite(**dict(zip(("qt", "qs", "qi", "kt", "ks", "ki"), (*queries, *keys))),
                  **dict(zip(("temporal_queue", "spatial_queue", "instance_queue"), queues)))
    checks.run()
    if resolve_backend(backend, precision, *queries, *keys, *queues) == "triton":
        from scdfast.kernels.ops import fused_infonce, fused_scd_loss, one_launch_fits
        inv_t = _inv_t(temperature, queries[0].device)
        if one_launch_fits(keys, queues):
            rows = fused_scd_loss(queries, keys, queues, inv_t, normalize, query_ids, queue_ids, precision).sum(0)
        else:
            rows = sum(fused_infonce(q, k, queue, inv_t, query_ids, queue_ids, normalize, precision)
                       for q, k, queue in reference.scd_terms(queries, keys, queues))
    else:
        rows = reference.scd_loss_ref(queries, keys, queues, temperature, normalize, query_ids, queue_ids)
    return _reduce(rows, reduction)


__all__ = ["BACKENDS", "REDUCTIONS", "clip_loss", "infonce", "nt_xent", "nt_xent_pairs", "positive_pairs", "scd_loss",
           "supcon"]
