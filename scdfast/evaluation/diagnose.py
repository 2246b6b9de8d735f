"""`scdfast diagnose`: the collapse readings of any checkpoint, on samples of a dataset.

The readings are the pretraining monitor's (scdfast.train.collapse), taken on the evaluation
crops of up to `samples` training samples, once in train mode (dropout and batch statistics, as
the monitor sees them during pretraining) and once in eval mode (what the downstream protocols
read). A pretraining checkpoint, scdfast's or the authors', has the three projection heads; a
downstream one has only the feature, whose spread and effective rank are reported.
"""
from __future__ import annotations

import copy
import csv
import os
from dataclasses import dataclass

import numpy as np
import torch

from scdfast.compat import (
    load_official_checkpoint,
    load_official_downstream,
    read_checkpoint,
    require_fields,
    strict_load,
)
from scdfast.config import SCDConfig, from_dict
from scdfast.data import load_training_split
from scdfast.errors import ScdError
from scdfast.evaluation.encoders import DOWNSTREAM_FORMAT, PRETRAIN_FORMAT, downstream_model, resolve_checkpoint
from scdfast.evaluation.features import eval_batch
from scdfast.models import SCDNet
from scdfast.models.moco import unit_clues
from scdfast.train.collapse import COLLAPSE_STD, FIELDS, HEADS, CollapseReading, feature_spread, rankme, readings


@dataclass
class Subject:
    """What a checkpoint holds, for diagnosis."""

    path: str
    kind: str                       # a sentence: whose checkpoint, of what
    config: SCDConfig
    encoder: torch.nn.Module        # PretrainingEncoder or DownstreamEncoder
    heads: bool                     # the projection heads are there
    data: str | None                # the dataset it was trained on, where recorded
    representation: str
    step: int | None = None


def load_subject(path: str) -> Subject:
    """A run directory or a checkpoint file: scdfast's pretraining or downstream checkpoint, or
    either of the authors' (paper-size)."""
    path = resolve_checkpoint(path)
    payload = read_checkpoint(path)
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind in (PRETRAIN_FORMAT, DOWNSTREAM_FORMAT):
        require_fields(payload, ("model_config", "model"), path, f"scdfast {kind}")
    if kind == PRETRAIN_FORMAT:
        config = from_dict(SCDConfig, payload["model_config"], f"checkpoint {path}")
        model = SCDNet(config)
        strict_load(model, payload["model"], path, "the SCD-Net its config describes")
        stream = payload.get("pretrain_config", {}).get("representation", "joint")
        return Subject(path, "scdfast pretraining checkpoint", config, model.query_encoder, True,
                       payload.get("data"), stream, payload.get("step"))
    if kind == DOWNSTREAM_FORMAT:
        model, config = downstream_model(payload, path)
        return Subject(path, "scdfast downstream checkpoint", config, model, False, payload.get("data"),
                       payload.get("representation", "joint"))
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else {}
    if any(k.removeprefix("module.").startswith("encoder_q.") for k in state):
        model = load_official_checkpoint(path)  # reads the file again: compat loads from paths
        return Subject(path, "the authors' pretraining checkpoint", model.config, model.query_encoder, True, None,
                       "joint")
    model = load_official_downstream(path)
    return Subject(path, "the authors' downstream checkpoint", SCDConfig.paper(), model, False, None, "joint")


@torch.no_grad()
def _read(subject: Subject, x: torch.Tensor, train_mode: bool) -> dict:
    # train mode updates BatchNorm's running statistics: a copy takes that pass, so the eval
    # pass reads the checkpoint's own
    encoder = copy.deepcopy(subject.encoder) if train_mode else subject.encoder
    encoder.train(train_mode)
    if subject.heads:
        *projections, features = encoder(x, with_features=True)
        values = readings(unit_clues(projections), features).tolist()
        out = dict(zip(FIELDS, values))
        out["collapsed"] = CollapseReading.from_values(0, values, x.shape[0], projections[0].shape[1]).collapsed
    else:
        features = encoder.features(x)
        out = {"feature_spread": feature_spread(features).item()}
    out["feature_rankme"] = rankme(features).item()
    return out


def _data_for(subject: Subject, data: str | None) -> str:
    if data is not None:
        return data
    if subject.data == "synthetic" or (subject.data and os.path.isdir(subject.data)):
        return subject.data
    recorded = f"it was trained on {subject.data}, which is not here" if subject.data else "it records no dataset"
    raise ScdError(f"diagnose {subject.path}: give --data DIR ({recorded})")


def monitor_history(run_dir: str) -> dict | None:
    """What a pretraining run's monitor logged (steps.csv): its readings and the first step
    that read collapse; None where there are no readings (another kind of run, or one from
    before the monitor)."""
    path = os.path.join(run_dir, "steps.csv")
    if not os.path.isfile(path):
        return None
    read, first = 0, None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            stds = [row.get(f"std_{h}") for h in HEADS]
            if not all(stds):
                continue
            read += 1
            if first is None and not min(float(s) for s in stds) >= COLLAPSE_STD:
                first = int(row["step"])
    return {"readings": read, "first_collapse_step": first} if read else None


def diagnose(path: str, data: str | None = None, samples: int = 256, seed: int = 0,
             device: torch.device | None = None) -> dict:
    """The readings of the checkpoint at `path` in train and eval mode, as a dict."""
    device = device or torch.device("cpu")
    subject = load_subject(path)
    source = _data_for(subject, data)
    train = load_training_split(source, seed=seed)
    if train.data.shape[3] != subject.config.num_joints:
        raise ScdError(f"--data {source}: {train.data.shape[3]} joints, the encoder takes {subject.config.num_joints}")
    index = np.sort(np.random.default_rng(seed).permutation(len(train))[:samples])
    x = eval_batch(train, index, subject.config.window, subject.representation).to(device)
    subject.encoder.to(device)
    torch.manual_seed(seed)  # dropout in train mode
    report = {"checkpoint": subject.path, "kind": subject.kind, "data": source, "samples": len(index),
              "step": subject.step, "heads": subject.heads, "threshold": COLLAPSE_STD,
              "train_mode": _read(subject, x, True), "eval_mode": _read(subject, x, False)}
    run_dir = os.path.dirname(os.path.dirname(subject.path))
    if os.path.basename(os.path.dirname(subject.path)) == "checkpoints" and \
            os.path.isfile(os.path.join(run_dir, "steps.csv")):
        report["monitor"] = monitor_history(run_dir)
    return report


def format_report(report: dict) -> str:
    step = f" at step {report['step']}" if report.get("step") is not None else ""
    lines = [f"{report['checkpoint']}: {report['kind']}{step}; {report['samples']} samples of {report['data']}"]
    heads = HEADS
    if report["heads"]:
        lines.append(f"{'mode':6s} {'std x sqrt(dim) t / s / i':>27s} {'RankMe t / s / i':>20s} "
                     f"{'feature spread':>15s} {'feature RankMe':>15s}")
    else:
        lines.append(f"{'mode':6s} {'feature spread':>15s} {'feature RankMe':>15s}")
    for mode in ("train_mode", "eval_mode"):
        r = report[mode]
        if report["heads"]:
            std = " / ".join(f"{r[f'std_{h}']:.3f}" for h in heads)
            rank = " / ".join(f"{r[f'rankme_{h}']:.1f}" for h in heads)
            lines.append(f"{mode[:-5]:6s} {std:>27s} {rank:>20s} {r['feature_spread']:>15.3f} {r['feature_rankme']:>15.1f}")
        else:
            lines.append(f"{mode[:-5]:6s} {r['feature_spread']:>15.3f} {r['feature_rankme']:>15.1f}")
    if report["heads"]:
        collapsed = report["train_mode"]["collapsed"] or report["eval_mode"]["collapsed"]
        lines.append(f"verdict: {'COLLAPSED' if collapsed else 'no collapse'} (a head's std x sqrt(dim) below "
                     f"{report['threshold']} is collapse; near 1 is healthy)")
    else:
        lines.append("verdict: a downstream checkpoint has no projection heads; a feature spread near 0 means "
                     "the classifier sees nearly one input for every sample")
    history = report.get("monitor", False)
    if history is None:
        lines.append("the run's steps.csv holds no monitor readings (it was written before scdfast had the monitor)")
    elif history:
        first = history["first_collapse_step"]
        count = history["readings"]
        lines.append(f"the run's monitor ({count} reading{'s' if count != 1 else ''} in steps.csv) "
                     + ("never read collapse" if first is None else f"first read collapse at step {first}"))
    return "\n".join(lines)
