"""The losses as modules in the conventions of the projects they replace (lightly,
pytorch-metric-learning, open_clip, SupContrast): one line swaps theirs for scdfast's.

Each is a thin wrapper over scdfast.losses, whose docstrings give the exact formulas. Common
arguments: `temperature` (a float, or a tensor / nn.Parameter that learns), `reduction`
("mean", "sum", "none"), `backend` ("auto", "torch", "triton"), `precision` ("tf32", "ieee"),
`check_finite` (one device read per call; off for a loop that guards its loss itself).
Normalisation happens inside where the replaced loss does it (`normalize`).
"""
from __future__ import annotations

import torch
from torch import nn

import torch.nn.functional as F

from scdfast import losses as functional
from scdfast.errors import ScdError
from scdfast.nn.memory_bank import MemoryBank


class _Loss(nn.Module):
    def __init__(self, temperature, normalize: bool, reduction: str, backend: str, precision: str, check_finite: bool):
        super().__init__()
        functional.check_reduction(reduction)
        self.temperature = temperature     # an nn.Parameter registers itself, and learns
        self.normalize, self.reduction = normalize, reduction
        self.options = dict(backend=backend, precision=precision, check_finite=check_finite)

    def extra_repr(self) -> str:
        t = self.temperature
        shown = f"{float(t.detach()):.4g} (tensor)" if isinstance(t, torch.Tensor) else f"{t:g}"
        return f"temperature={shown}, normalize={self.normalize}, reduction={self.reduction!r}"


class InfoNCELoss(_Loss):
    """MoCo's InfoNCE: each query against its positive key and a set of negatives.

    `forward(query, positive_key, negative_keys=None, query_ids=None)`: query, positive_key
    (N, D); negative_keys (K, D) in any strides, or, when omitted, the `memory_bank`'s keys,
    read in place. With a bank that tracks ids, `query_ids` (N,) leave each query's own older
    keys out of its negatives. After the loss, the positive keys are enqueued into the bank
    (detached) when the query takes a gradient, as lightly's memory bank does.
    reduction="none": (N,). normalize (default True): L2-normalise query and keys inside.
    """

    def __init__(self, temperature=0.2, memory_bank: MemoryBank | None = None, normalize: bool = True,
                 reduction: str = "mean", backend: str = "auto", precision: str = "tf32", check_finite: bool = True):
        super().__init__(temperature, normalize, reduction, backend, precision, check_finite)
        self.memory_bank = memory_bank

    def forward(self, query: torch.Tensor, positive_key: torch.Tensor, negative_keys: torch.Tensor | None = None,
                query_ids: torch.Tensor | None = None) -> torch.Tensor:
        if negative_keys is not None:
            return functional.infonce(query, positive_key, negative_keys, self.temperature,
                                      normalize=self.normalize, reduction=self.reduction, **self.options)
        if self.memory_bank is None:
            raise ScdError("InfoNCELoss: give negative_keys, or build the loss with a memory_bank")
        return _against_bank(self, self.memory_bank, query, positive_key, query_ids)


def _against_bank(loss: _Loss, bank: MemoryBank, query: torch.Tensor, positive_key: torch.Tensor,
                  query_ids: torch.Tensor | None) -> torch.Tensor:
    """InfoNCE against the bank's keys as they are, then the positives enqueued (when the
    query takes a gradient: a training step)."""
    bank.check_width("query", query.shape[-1])
    if bank.ids is not None and query_ids is None:
        raise ScdError("the memory bank tracks ids; give query_ids")
    if bank.ids is None and query_ids is not None:
        raise ScdError("query_ids given, but the memory bank was built with track_ids=False")
    keys = bank.keys
    backend = functional.resolve_backend(loss.options["backend"], loss.options["precision"], query, positive_key, keys)
    if backend == "torch":
        keys = keys.clone()  # the reference keeps the keys for its backward; the enqueue below writes them in place
    value = functional.infonce(query, positive_key, keys, loss.temperature, query_ids, bank.ids,
                               normalize=loss.normalize, reduction=loss.reduction, **loss.options)
    if query.requires_grad:
        keys = positive_key.detach()
        bank.enqueue(F.normalize(keys, dim=1) if loss.normalize else keys, query_ids)
    return value


class NTXentLoss(_Loss):
    """SimCLR's NT-Xent, called as lightly's or as pytorch-metric-learning's NTXentLoss:

    - `loss(out0, out1)` (lightly): two (N, D) views; each view's positive is its pair, every
      other view in the batch (every rank's, with `gather_distributed`) a negative. Mean over
      the 2N views. With `memory_bank_size` > 0 (or a `memory_bank`), lightly's MoCo mode:
      out0 against out1 and the bank's keys, then out1 enqueued.
    - `loss(out0, out1, labels=labels)`: views of one label are all positives (SupCon's L_out).
    - `loss(embeddings, labels)` (pytorch-metric-learning: an integer second argument): one
      loss per positive pair, the other labels' rows the negatives (`losses.nt_xent_pairs`).

    normalize (default True, as both): L2-normalise inside. The default temperature is
    lightly's 0.5 (pytorch-metric-learning's is 0.07: pass it when replacing that one).
    """

    def __init__(self, temperature=0.5, memory_bank_size: int | tuple[int, int] = 0, gather_distributed: bool = False,
                 memory_bank: MemoryBank | None = None, normalize: bool = True, reduction: str = "mean",
                 backend: str = "auto", precision: str = "tf32", check_finite: bool = True):
        super().__init__(temperature, normalize, reduction, backend, precision, check_finite)
        self.gather_distributed = gather_distributed
        size = memory_bank_size[0] if isinstance(memory_bank_size, (tuple, list)) else memory_bank_size
        if memory_bank is None and size:
            dim = memory_bank_size[1] if isinstance(memory_bank_size, (tuple, list)) else None
            memory_bank = MemoryBank(size, dim, gather_distributed=gather_distributed) if dim else None
            self._pending_bank_size = None if dim else size   # the width is known at the first call
        else:
            self._pending_bank_size = None
        self.memory_bank = memory_bank

    def forward(self, out0: torch.Tensor, out1: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(out1, torch.Tensor) and out1.dim() == 1 and not out1.dtype.is_floating_point:
            if labels is not None:
                raise ScdError("NTXentLoss(embeddings, labels): the labels were given twice")
            return functional.nt_xent_pairs(out0, out1, self.temperature, normalize=self.normalize,
                                            reduction=self.reduction, **self.options)
        if self._pending_bank_size:
            self.memory_bank = MemoryBank(self._pending_bank_size, out0.shape[1], dtype=out0.dtype,
                                          gather_distributed=self.gather_distributed).to(out0.device)
            self._pending_bank_size = None
        if self.memory_bank is not None:
            if labels is not None:
                raise ScdError("NTXentLoss: labels are not taken with a memory bank (its keys have none)")
            return _against_bank(self, self.memory_bank, out0, out1, None)
        return functional.nt_xent(out0, out1, self.temperature, normalize=self.normalize, labels=labels,
                                  gather_distributed=self.gather_distributed, reduction=self.reduction, **self.options)


class SupConLoss(_Loss):
    """Supervised contrastive loss (Khosla et al. 2020, L_out), called as SupContrast's or as
    pytorch-metric-learning's SupConLoss: `loss(features, labels)`, features (N, V, D) (V
    views) or (N, D) (one view, pytorch-metric-learning), labels (N,). Every other view in the
    batch is in an anchor's denominator and the views of its label are its positives; anchors
    without a positive are left out of the mean. normalize (default True, as
    pytorch-metric-learning; SupContrast expects unit features, on which it changes only the
    gradient's radial part). `gather_distributed` takes two views per sample.
    """

    def __init__(self, temperature=0.1, gather_distributed: bool = False, normalize: bool = True,
                 reduction: str = "mean", backend: str = "auto", precision: str = "tf32", check_finite: bool = True):
        super().__init__(temperature, normalize, reduction, backend, precision, check_finite)
        self.gather_distributed = gather_distributed

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return functional.supcon(features, labels, self.temperature, normalize=self.normalize,
                                 gather_distributed=self.gather_distributed, reduction=self.reduction, **self.options)


class ClipLoss(_Loss):
    """CLIP's symmetric contrastive loss, called as open_clip's ClipLoss:
    `loss(image_features, text_features, logit_scale, output_dict=False)`. `logit_scale` is
    the multiplier 1 / T (open_clip's `logit_scale.exp()`, learnable); without it the
    module's `temperature` is used. `labels` (N,) make pairs of one label positives of each
    other. `gather_with_grad` / `local_loss` as open_clip's (local_loss needs
    gather_with_grad here). normalize (default False, as open_clip: its models normalise).
    `cache_labels`, `rank`, `world_size` are accepted for open_clip's signature; the ranks come
    from the process group.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, temperature=0.07,
                 normalize: bool = False, reduction: str = "mean", backend: str = "auto", precision: str = "tf32",
                 check_finite: bool = True):
        super().__init__(temperature, normalize, reduction, backend, precision, check_finite)
        if use_horovod:
            raise ScdError("ClipLoss: use_horovod=True is not supported; use torch.distributed (gather_with_grad)")
        if local_loss and not gather_with_grad and world_size > 1:
            raise ScdError("ClipLoss: local_loss=True needs gather_with_grad=True here")
        self.local_loss, self.gather_with_grad = local_loss and gather_with_grad, gather_with_grad

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor | float | None = None, output_dict: bool = False,
                labels: torch.Tensor | None = None):
        loss = functional.clip_loss(image_features, text_features, self.temperature, normalize=self.normalize,
                                    logit_scale=logit_scale, labels=labels, gather_with_grad=self.gather_with_grad,
                                    local_loss=self.local_loss, reduction=self.reduction, **self.options)
        return {"contrastive_loss": loss} if output_dict else loss


class SCDLoss(_Loss):
    """SCD-Net's four-term interactive InfoNCE: `loss(queries, keys, queues, query_ids=None,
    queue_ids=None)` with queries (qt, qs, qi), keys (kt, ks, ki), (N, D) each, and queues
    (temporal, spatial, instance), (K, D) each (e.g. three MemoryBanks' `keys`). normalize
    (default False: SCDNet hands over unit clues). reduction="none": (N,), each sample's four
    terms summed."""

    def __init__(self, temperature=0.2, normalize: bool = False, reduction: str = "mean", backend: str = "auto",
                 precision: str = "tf32", check_finite: bool = True):
        super().__init__(temperature, normalize, reduction, backend, precision, check_finite)

    def forward(self, queries, keys, queues, query_ids: torch.Tensor | None = None,
                queue_ids: torch.Tensor | None = None) -> torch.Tensor:
        return functional.scd_loss(queries, keys, queues, self.temperature, normalize=self.normalize,
                                   query_ids=query_ids, queue_ids=queue_ids, reduction=self.reduction, **self.options)
