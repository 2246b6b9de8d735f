"""Load checkpoints written by the authors' public SCD-Net code.

Their pretraining checkpoint is a dict whose 'state_dict' holds `encoder_q.*`, `encoder_k.*`,
three queues stored (D, K) and their pointers; a downstream checkpoint holds `encoder.*` and
`fc.*`. Sub-module names inside the encoders are the same as ours, so the mapping is a
prefix rename plus a transpose of the queues. A DataParallel `module.` prefix is accepted.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from scdfast.config import SCDConfig
from scdfast.errors import ScdError
from scdfast.models import DownstreamEncoder, SCDNet

_QUEUE_KEYS = {"t": "temporal", "s": "spatial", "i": "instance"}


def read_checkpoint(path: str | os.PathLike):
    """The object stored in a checkpoint file, tensors on the CPU, no code executed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScdError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; the message says which
        raise ScdError(f"checkpoint {path}: cannot be read as a PyTorch checkpoint ({exc.__class__.__name__})") from None


def require_fields(payload: dict, fields: tuple[str, ...], path: str, kind: str) -> None:
    """A format-tagged checkpoint must hold its fields: a one-line error for one that does not."""
    for field in fields:
        if field not in payload:
            raise ScdError(f"checkpoint {path}: an {kind} checkpoint without its {field!r} entry (incomplete or damaged)")
    if "model" in fields and not isinstance(payload["model"], dict):
        raise ScdError(f"checkpoint {path}: its 'model' entry is not a state dict")


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    payload = read_checkpoint(path)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ScdError(f"checkpoint {path}: expected a dict with a 'state_dict' entry")
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_to_scdfast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official pretraining state dict to SCDNet's keys; queues become (K, D)."""
    out = {}
    for key, value in state.items():
        if key.startswith("encoder_q."):
            out["query_encoder." + key.removeprefix("encoder_q.")] = value
        elif key.startswith("encoder_k."):
            out["key_encoder." + key.removeprefix("encoder_k.")] = value
        elif key[:1] in _QUEUE_KEYS and key[1:] == "_queue":
            out[f"{_QUEUE_KEYS[key[0]]}_queue"] = value.t().contiguous()                # K, D
        elif key[:1] in _QUEUE_KEYS and key[1:] == "_queue_ptr":
            out[f"{_QUEUE_KEYS[key[0]]}_queue_ptr"] = value
        else:
            out[key] = value  # reported as unexpected by the strict load
    return out


def check_state(state: dict, expected: dict[str, torch.Size], path: str, what: str) -> None:
    """The one rule every command loads weights by: `state` has exactly the keys of `expected`
    (no missing, no extra), each tensor of its shape and finite. A one-line ScdError otherwise:
    NaN weights would otherwise surface as a linear-algebra traceback, or train to divergence."""
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ScdError(f"checkpoint {path}: its state dict holds something other than named tensors")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
                   for k in set(state) & set(expected) if state[k].shape != expected[k])
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ScdError(f"checkpoint {path} does not fit {what}: " + "; ".join(problems))
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise ScdError(f"checkpoint {path}: {broken[0]}{more} hold NaN or Inf values (the run that wrote it "
                       "diverged, or the file is damaged); use an earlier checkpoint")


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    """check_state against `module`'s own state dict, then load it."""
    check_state(state, {k: v.shape for k, v in module.state_dict().items()}, path, what)
    module.load_state_dict(state, strict=True)


def load_official_checkpoint(path: str | os.PathLike, config: SCDConfig | None = None) -> SCDNet:
    """An SCDNet (paper size unless `config` says otherwise) holding the authors' weights,
    queues and pointers."""
    path = os.fspath(path)
    state = official_to_scdfast(_read_state_dict(path))
    model = SCDNet(config or SCDConfig.paper())
    strict_load(model, state, path, "SCD-Net's pretraining model")
    return model


def load_official_downstream(path: str | os.PathLike, num_classes: int | None = None,
                             config: SCDConfig | None = None) -> DownstreamEncoder:
    """A DownstreamEncoder from either kind of official checkpoint.

    From a pretraining checkpoint the query encoder's clue encoder is taken and the
    classifier is freshly initialised (`num_classes` required); a downstream checkpoint
    (`encoder.*`, `fc.*`) loads whole.
    """
    path = os.fspath(path)
    raw = _read_state_dict(path)
    config = config or SCDConfig.paper()
    if any(k.startswith("encoder_q.encoder.") for k in raw):
        if num_classes is None:
            raise ScdError(f"checkpoint {path} is a pretraining checkpoint: give num_classes for the new classifier")
        model = DownstreamEncoder(config, num_classes)
        encoder_state = {k.removeprefix("encoder_q.encoder."): v for k, v in raw.items()
                         if k.startswith("encoder_q.encoder.")}
        strict_load(model.encoder, encoder_state, path, "SCD-Net's clue encoder")
        return model
    if "fc.weight" not in raw:
        raise ScdError(f"checkpoint {path}: neither a pretraining (encoder_q.*) nor a downstream (encoder.*, fc.*) checkpoint")
    classes = raw["fc.weight"].shape[0]
    if num_classes is not None and num_classes != classes:
        raise ScdError(f"checkpoint {path}: its classifier has {classes} classes, the dataset has {num_classes}")
    model = DownstreamEncoder(config, classes)
    strict_load(model, raw, path, "SCD-Net's downstream encoder")
    return model
