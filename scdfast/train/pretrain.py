"""MoCo pretraining of SCD-Net: the entry point (`pretrain`) and resuming (`load_resume_state`).

One step: two views per sample (query, key) from the batched augmentation kernels, momentum
update, keys from the key encoder, queries from the query encoder, the four-term loss, SGD,
enqueue (scdfast.train.step). The loop around it is scdfast.train.trainer.Trainer.
"""
from __future__ import annotations

import os

import torch

from scdfast.compat import read_checkpoint, require_fields
from scdfast.config import PretrainConfig, SCDConfig
from scdfast.data import SkeletonSet
from scdfast.data.dataset import dataset_identity
from scdfast.errors import ScdError
from scdfast.train.trainer import CHECKPOINT_FORMAT, PretrainResult, Trainer, check_same_dataset, steps_per_epoch


def load_resume_state(run_dir: str) -> dict:
    """The newest checkpoint of a run directory, checked to be a pretraining checkpoint."""
    path = os.path.join(run_dir, "checkpoints", "last.pt")
    if not os.path.isfile(path):
        raise ScdError(f"--resume {run_dir}: no checkpoint at {path}")
    state = read_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ScdError(f"--resume {run_dir}: {path} is not an scdfast pretraining checkpoint")
    require_fields(state, ("model_config", "pretrain_config", "step", "model", "optimizer", "random"), path,
                   CHECKPOINT_FORMAT)
    return state


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
    return Trainer(model_config, config, train, run_dir, device, progress, resume, data).run()
