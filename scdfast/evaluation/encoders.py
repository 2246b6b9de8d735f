"""The encoders a protocol evaluates: a pretraining run's query encoder, a fine-tuned
downstream model, either kind of the authors' checkpoints, or a random initialisation."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from scdfast.compat import check_state, load_official_downstream, read_checkpoint, require_fields, strict_load
from scdfast.config import SCDConfig, from_dict, to_dict
from scdfast.errors import ScdError
from scdfast.models import DownstreamEncoder
from scdfast.models.moco import state_shapes

PRETRAIN_FORMAT = "scdfast-pretrain-v1"
DOWNSTREAM_FORMAT = "scdfast-downstream-v1"


@dataclass
class EncoderSource:
    """One encoder to evaluate, and what identifies it (for the feature cache and reports)."""

    label: str                  # "pretrained" or "random init"
    model: DownstreamEncoder
    config: SCDConfig
    representation: str         # the stream it was trained on: joint, motion or bone
    identity: str               # the checkpoint file and its version, or the random seed and config
    checkpoint: str | None = None
    pretrain_data: str | None = None  # the dataset it was pretrained on, where known


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run directory whose checkpoints/last.pt is taken."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoints", "last.pt")
    if not os.path.isfile(path):
        raise ScdError(f"--checkpoint {path}: no such file")
    return path


def _file_identity(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def load_encoder(path: str, num_classes: int, seed: int = 0) -> EncoderSource:
    """The encoder in `path` with a classifier for `num_classes` classes: for a pretraining
    checkpoint a new one, drawn from `seed` (as random_encoder's weights are), for a downstream
    one the stored one (whose class count must match)."""
    path = resolve_checkpoint(path)
    payload = read_checkpoint(path)
    torch.manual_seed(seed)
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind in (PRETRAIN_FORMAT, DOWNSTREAM_FORMAT):
        require_fields(payload, ("model_config", "model"), path, f"scdfast {kind}")
    if kind == PRETRAIN_FORMAT:
        config = from_dict(SCDConfig, payload["model_config"], f"checkpoint {path}")
        # the whole model is checked, as diagnose and --resume check it, though only its clue encoder is used
        check_state(payload["model"], state_shapes(config), path, "the SCD-Net its config describes")
        model = DownstreamEncoder(config, num_classes)
        prefix = "query_encoder.encoder."
        state = {k.removeprefix(prefix): v for k, v in payload["model"].items() if k.startswith(prefix)}
        strict_load(model.encoder, state, path, "the clue encoder its config describes")
        pretrain = payload.get("pretrain_config", {})
        return EncoderSource("pretrained", model, config, pretrain.get("representation", "joint"),
                             _file_identity(path), path, payload.get("data"))
    if kind == DOWNSTREAM_FORMAT:
        model, config = downstream_model(payload, path)
        classes = model.fc.out_features
        if classes != num_classes:
            raise ScdError(f"checkpoint {path}: its classifier has {classes} classes, the dataset has {num_classes}")
        return EncoderSource("pretrained", model, config, payload.get("representation", "joint"),
                             _file_identity(path), path, payload.get("pretrain_data"))
    model = load_official_downstream(path, num_classes)
    return EncoderSource("pretrained", model, SCDConfig.paper(), "joint", _file_identity(path), path)


def downstream_model(payload: dict, path: str) -> tuple[DownstreamEncoder, SCDConfig]:
    """The fine-tuned model of an scdfast downstream checkpoint (read, fields checked), with
    its stored classifier."""
    config = from_dict(SCDConfig, payload["model_config"], f"checkpoint {path}")
    if "fc.weight" not in payload["model"]:
        raise ScdError(f"checkpoint {path}: a downstream checkpoint without its classifier (fc.weight)")
    model = DownstreamEncoder(config, payload["model"]["fc.weight"].shape[0])
    strict_load(model, payload["model"], path, "the downstream model its config describes")
    return model, config


def random_encoder(config: SCDConfig, num_classes: int, seed: int, representation: str) -> EncoderSource:
    """A randomly initialised encoder; the same seed and config give the same weights."""
    torch.manual_seed(seed)
    model = DownstreamEncoder(config, num_classes)
    return EncoderSource("random init", model, config, representation, f"random:{seed}:{sorted(to_dict(config).items())}")


def downstream_checkpoint(source: EncoderSource, model: DownstreamEncoder, data: str, extra: dict) -> dict:
    """What a fine-tuned model is saved as: loadable by `load_encoder` with its classifier."""
    return {"format": DOWNSTREAM_FORMAT, "model_config": to_dict(source.config), "model": model.state_dict(),
            "representation": source.representation, "data": data, "pretrain_data": source.pretrain_data,
            "initialised_from": source.checkpoint or source.label, **extra}
