"""The losses scdfast's modules replace, as benchmark providers: lightly's and
pytorch-metric-learning's NTXentLoss, open_clip's ClipLoss (pip install 'scdfast[peers]').

Each maker returns {provider: loss(a, b)} for two (N, D) views or pairs; a peer that cannot
be imported is a string saying why, which the benchmarks report instead of a time.
"""
from __future__ import annotations

import importlib


def _peer(module: str, attribute: str):
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as e:  # noqa: BLE001 - a peer that does not import is reported, not fatal
        return f"{module} not importable: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"


def ntxent_peers(device) -> dict:
    """SimCLR's NT-Xent over [a; b] (temperature 0.5), as each peer is called."""
    import torch
    providers = {}
    lightly = _peer("lightly.loss", "NTXentLoss")
    providers["lightly"] = lightly if isinstance(lightly, str) else lightly(temperature=0.5)
    pml = _peer("pytorch_metric_learning.losses", "NTXentLoss")
    if isinstance(pml, str):
        providers["pml"] = pml
    else:
        pml_loss = pml(temperature=0.5)

        def pml_call(a, b):
            labels = torch.arange(a.shape[0], device=a.device).repeat(2)
            return pml_loss(torch.cat([a, b]), labels)
        providers["pml"] = pml_call
    return providers


def clip_peers(device) -> dict:
    """CLIP's loss at logit scale 1 / 0.07, as open_clip's ClipLoss is called."""
    import torch
    peer = _peer("open_clip.loss", "ClipLoss")
    if isinstance(peer, str):
        return {"open_clip": peer}
    loss, scale = peer(), torch.tensor(1 / 0.07, device=device)
    return {"open_clip": lambda a, b: loss(a, b, scale)}
