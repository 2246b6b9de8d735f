"""MoCo pretraining of SCD-Net: the entry point (`pretrain`) and resuming (`load_resume_state`).

One step: two views per sample (query, key) from the batched augmentation kernels, momentum
update, keys from the key encoder, queries from the query encoder, the four-term loss, SGD,
enqueue (scdfast.train.step). The loop around it is scdfast.train.trainer.Trainer.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from scdfast.augment.batched import compile_cpu_kernels_ahead
from scdfast.compat import check_state, read_checkpoint, require_fields
from scdfast.config import PretrainConfig, SCDConfig, from_dict
from scdfast.data import SkeletonSet
from scdfast.data.dataset import dataset_identity
from scdfast.errors import ScdError
from scdfast.fileio import read_json
from scdfast.models.moco import state_shapes
from scdfast.train.trainer import CHECKPOINT_FORMAT, PretrainResult, Trainer, check_same_dataset, steps_per_epoch


def load_resume_state(run_dir: str) -> dict:
    """The newest checkpoint of a run directory, checked to be this run's: a pretraining
    checkpoint whose configs are those of the run's config.json and whose weights fit them
    (keys, shapes, finite values). Its configs are rebuilt as `model_config` and
    `pretrain_config`, and config.json's dataset as `data`."""
    path = os.path.join(run_dir, "checkpoints", "last.pt")
    if not os.path.isfile(path):
        raise ScdError(f"--resume {run_dir}: no checkpoint at {path}")
    state = read_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ScdError(f"--resume {run_dir}: {path} is not an scdfast pretraining checkpoint")
    require_fields(state, ("model_config", "pretrain_config", "step", "model", "optimizer", "random"), path,
                   CHECKPOINT_FORMAT)
    record_path = os.path.join(run_dir, "config.json")
    record = read_json(record_path) if os.path.isfile(record_path) else None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), dict) for k in ("model", "pretrain")):
        raise ScdError(f"--resume {run_dir}: {record_path} is missing or holds no model and pretrain sections; "
                       "it is not a pretraining run directory")
    for section, kind, key in (("model", SCDConfig, "model_config"), ("pretrain", PretrainConfig, "pretrain_config")):
        ours, theirs = from_dict(kind, state[key], f"checkpoint {path}"), from_dict(kind, record[section], record_path)
        differs = next((f.name for f in dataclasses.fields(kind) if getattr(ours, f.name) != getattr(theirs, f.name)),
                       None)
        if differs is not None:
            raise ScdError(f"--resume {run_dir}: {path} is not this run's checkpoint: its {section}.{differs} is "
                           f"{getattr(ours, differs)!r}, config.json's {getattr(theirs, differs)!r}; resume the "
                           "run directory that wrote it")
        state[key] = ours
    check_state(state["model"], state_shapes(state["model_config"]), path, "the SCD-Net its config describes")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise ScdError(f"--resume {run_dir}: {path}: step {state['step']!r} is not a step count")
    if not isinstance(record.get("data"), str):
        raise ScdError(f"--resume {run_dir}: {record_path} names no dataset ('data')")
    state["data"] = record["data"]
    return state


def compile_views_ahead(config: PretrainConfig, device: torch.device) -> None:
    """Where the views will come from the CPU kernels, compile them on a thread from now on."""
    if device.type == "cpu" and config.augment == "batched":
        compile_cpu_kernels_ahead()


def pretrain(model_config: SCDConfig, config: PretrainConfig, train: SkeletonSet, run_dir: str,
             device: torch.device, progress: bool = True, resume: dict | None = None,
             data: str = "synthetic") -> PretrainResult | None:
    """Pretrain, or with `resume` (from load_resume_state) continue exactly where that
    checkpoint stopped: the same data order, views, dropout and optimiser state follow, and
    the epoch's running loss, so metrics.csv and best.pt equal an uninterrupted run's. Resuming
    a finished run does nothing and returns None."""
    if resume is not None:
        check_same_dataset(resume, dataset_identity(train, data))
        if resume["step"] >= steps_per_epoch(model_config, config, train) * config.epochs:
            return None
    compile_views_ahead(config, device)
    return Trainer(model_config, config, train, run_dir, device, progress, resume, data).run()
