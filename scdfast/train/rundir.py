"""The run directory: resolved config, metrics CSV and checkpoints, written so that a crash
never leaves a half-written file in place of a good one (temporary file, fsync, rename)."""
from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from scdfast.errors import ScdError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(obj: dict, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj: dict, path: str) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode="w")


def prepare_run_dir(run_dir: str | None, command: str) -> str:
    """Create (or reuse) the run directory; default runs/<command>-<timestamp>."""
    if run_dir is None:
        run_dir = os.path.join("runs", f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ScdError(f"--run-dir {run_dir}: exists and is not a directory")
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    return run_dir


class MetricsCSV:
    """Append-only CSV, one row per call, flushed at once so a crash keeps every row."""

    def __init__(self, path: str, fields: list[str], enabled: bool = True):
        self.path, self.fields, self.enabled = path, fields, enabled
        if not enabled:  # a rank other than 0 of a multi-process run writes nothing
            return
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=fields)
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, **row) -> None:
        if self.enabled:
            self._writer.writerow(row)
            self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
