"""Contrastive losses with a selectable backend.

`backend="torch"` runs the plain-PyTorch reference (scdfast.losses.reference). Every entry
point validates its inputs first, so a wrong shape or setting fails before any compute.
"""
from __future__ import annotations

import torch

from scdfast.errors import ScdError
from scdfast.losses import reference

BACKENDS = ("auto", "torch", "triton")


def _kernels():
    """scdfast.kernels.infonce, or None where Triton cannot be imported."""
    try:
        from scdfast.kernels import infonce
    except ImportError:
        return None
    return infonce


def _resolve_backend(backend: str, precision: str, *tensors: torch.Tensor) -> str:
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


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:  # also refuses NaN
        raise ScdError(f"temperature={temperature}: must be > 0")


def _check_matrix(name: str, t: torch.Tensor, width: int | None = None) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ScdError(f"{name}: expected a 2-D (rows, D) tensor, got {shape}")
    if width is not None and t.shape[1] != width:
        raise ScdError(f"{name}: embedding width {t.shape[1]} differs from the queries' {width}")
    if not t.dtype.is_floating_point:
        raise ScdError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, temperature: float,
                check_finite: bool) -> None:
    """Two (N, D) sets of matched embeddings (NT-Xent views, CLIP pairs)."""
    _check_matrix(name_a, a)
    _check_matrix(name_b, b, a.shape[1])
    if a.shape[0] != b.shape[0]:
        raise ScdError(f"{name_b}: {b.shape[0]} rows, {name_a} has {a.shape[0]}")
    _check_temperature(temperature)
    if check_finite:
        _check_finite(**{name_a: a, name_b: b})


def _check_finite(**tensors: torch.Tensor) -> None:
    """One device read for all the tensors; the names are looked up only on failure."""
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()])
    if not bool(finite.all()):
        bad = next(name for name, ok in zip(tensors, finite.tolist()) if not ok)
        raise ScdError(f"{bad}: contains NaN or Inf")


def _check_ids(query_ids: torch.Tensor | None, queue_ids: torch.Tensor | None, n: int, k: int) -> None:
    if (query_ids is None) != (queue_ids is None):
        missing = "query_ids" if query_ids is None else "queue_ids"
        raise ScdError(f"{missing} is required when the other ids are given")
    if query_ids is not None and (query_ids.shape != (n,) or queue_ids.shape != (k,)):
        raise ScdError(f"ids: query_ids must be ({n},) and queue_ids ({k},), "
                       f"got {tuple(query_ids.shape)} and {tuple(queue_ids.shape)}")


def infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2,
            query_ids: torch.Tensor | None = None, queue_ids: torch.Tensor | None = None,
            backend: str = "auto", normalize: bool = False, check_finite: bool = True,
            precision: str = "tf32") -> torch.Tensor:
    """MoCo InfoNCE, mean over the N queries.

    q, k: (N, D) queries and their positive keys; queue: (K, D) negatives. With ids, a
    negative whose id equals its query's id is left out (a sample's own older key).
    `normalize=True` L2-normalises q and k inside. `check_finite` reads a flag from the
    device (one sync); turn it off in a throughput loop that guards the loss itself.
    `precision` is the fused kernels' for fp32 inputs: "tf32" (tensor cores, about 1e-3
    relative error) or "ieee" (exact fp32 products on the FMA units, D <= 128; wider runs
    the reference); bf16 inputs always take bf16 products.
    """
    _check_matrix("q", q)
    _check_matrix("k", k, q.shape[1])
    _check_matrix("queue", queue, q.shape[1])
    if k.shape[0] != q.shape[0]:
        raise ScdError(f"k: {k.shape[0]} positives for {q.shape[0]} queries")
    _check_temperature(temperature)
    _check_ids(query_ids, queue_ids, q.shape[0], queue.shape[0])
    if check_finite:
        _check_finite(q=q, k=k, queue=queue)
    if _resolve_backend(backend, precision, q, k, queue) == "triton":
        from scdfast.kernels.ops import fused_infonce
        return fused_infonce(q, k, queue, temperature, query_ids, queue_ids, normalize, precision)
    return reference.infonce_ref(q, k, queue, temperature, query_ids, queue_ids, normalize)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, backend: str = "auto",
            normalize: bool = False, check_finite: bool = True, precision: str = "tf32") -> torch.Tensor:
    """SimCLR's NT-Xent over the 2N views of (z1, z2), each (N, D)."""
    _check_pair("z1", z1, "z2", z2, temperature, check_finite)
    if _resolve_backend(backend, precision, z1, z2) == "triton":
        from scdfast.kernels.ops import fused_nt_xent
        return fused_nt_xent(z1, z2, temperature, normalize, precision)
    return reference.nt_xent_ref(z1, z2, temperature, normalize)


def clip_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07, backend: str = "auto",
              normalize: bool = False, check_finite: bool = True, precision: str = "tf32") -> torch.Tensor:
    """CLIP's symmetric cross-entropy over N matched pairs (a_i, b_i)."""
    _check_pair("a", a, "b", b, temperature, check_finite)
    if _resolve_backend(backend, precision, a, b) == "triton":
        from scdfast.kernels.ops import fused_clip
        return fused_clip(a, b, temperature, normalize, precision)
    return reference.clip_ref(a, b, temperature, normalize)


def scd_loss(queries, keys, queues, temperature: float = 0.2, backend: str = "auto",
             normalize: bool = False, check_finite: bool = True, query_ids: torch.Tensor | None = None,
             queue_ids: torch.Tensor | None = None, precision: str = "tf32") -> torch.Tensor:
    """SCD-Net's four-term interactive InfoNCE.

    queries (qt, qs, qi), keys (kt, ks, ki): (N, D) each, L2-normalised unless `normalize`;
    queues (temporal, spatial, instance): (K, D) each. With ids (query_ids (N,), queue_ids (K,),
    one per row of all three queues, which are filled together), a queue key of the query's
    own sample is no negative: on a dataset not much larger than K, each sample's key from
    the epoch before is still queued.
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
    _check_temperature(temperature)
    if len({t.shape[0] for t in queues}) == 1:
        _check_ids(query_ids, queue_ids, n, queues[0].shape[0])
    elif query_ids is not None:
        raise ScdError("scd_loss: ids need the three queues to have one length (one id per row of each)")
    if check_finite:
        _check_finite(**dict(zip(("qt", "qs", "qi", "kt", "ks", "ki"), (*queries, *keys))),
                      **dict(zip(("temporal_queue", "spatial_queue", "instance_queue"), queues)))
    if _resolve_backend(backend, precision, *queries, *keys, *queues) == "triton":
        from scdfast.kernels.ops import fused_infonce, fused_scd_loss, one_launch_fits
        if one_launch_fits(keys, queues):
            return fused_scd_loss(queries, keys, queues, temperature, normalize, query_ids, queue_ids, precision)
        return sum(fused_infonce(q, k, queue, temperature, query_ids, queue_ids, normalize, precision)
                   for q, k, queue in reference.scd_terms(queries, keys, queues))
    return reference.scd_loss_ref(queries, keys, queues, temperature, normalize, query_ids, queue_ids)


__all__ = ["BACKENDS", "clip_loss", "infonce", "nt_xent", "scd_loss"]
