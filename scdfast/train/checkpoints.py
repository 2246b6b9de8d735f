"""Pretraining checkpoints: the last N by step, the best by epoch loss, and `last.pt`.

Every file is written atomically (temporary file, fsync, rename), so a crash or a full disk
while saving leaves every earlier checkpoint as it was. `last.pt` is a hard link to the
newest step file (a copy where links are not possible), so it costs no second write.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile

import torch

from scdfast.train.rundir import TMP_PREFIX, save_checkpoint

_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def random_states() -> dict:
    """The random states a step consumes beyond the counter-based augmentation (which needs
    only the seed and the step): torch's CPU and CUDA generators (dropout)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class CheckpointKeeper:
    def __init__(self, directory: str, keep_last: int = 3, enabled: bool = True):
        self.directory, self.keep_last = directory, max(1, keep_last)
        self.enabled = enabled  # False on ranks other than 0: one writer per run
        os.makedirs(directory, exist_ok=True)

    @property
    def last(self) -> str:
        return os.path.join(self.directory, "last.pt")

    @property
    def best(self) -> str:
        return os.path.join(self.directory, "best.pt")

    def step_files(self) -> list[str]:
        """Step checkpoints, oldest first."""
        found = sorted((int(m.group(1)), name) for name in os.listdir(self.directory)
                       if (m := _STEP_FILE.match(name)))
        return [os.path.join(self.directory, name) for _, name in found]

    def save(self, state: dict, step: int) -> str:
        path = os.path.join(self.directory, f"step-{step:08d}.pt")
        if not self.enabled:
            return path
        self._write(state, path)
        self._point_last_at(path)
        for old in self.step_files()[:-self.keep_last]:
            os.unlink(old)
        return path

    def save_best(self, state: dict) -> None:
        if self.enabled:
            self._write(state, self.best)

    @staticmethod
    def _write(state: dict, path: str) -> None:
        save_checkpoint(state, path)  # a failed write is a one-line ScdError; earlier files intact

    def _point_last_at(self, path: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.directory)
        os.close(fd)
        os.unlink(tmp)
        try:
            try:
                os.link(path, tmp)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(path, tmp)
            os.replace(tmp, self.last)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
