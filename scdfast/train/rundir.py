"""The run directory: resolved config, metrics CSV and checkpoints.

Written so that nothing already there is damaged: every file goes through a temporary file,
fsync and rename (and the directory is fsynced after it), so a crash or a full disk never
leaves a half-written file in place of a good one, and a write that fails is one line naming
the file and the free space. One process writes a run at a time (an advisory lock the OS
releases on any exit). A run directory is new, empty, or one scdfast made (it holds the
RUN_MARKER file); any other folder is refused, so a user's own files are never written over
or cleaned up as temporaries. A new run refuses a directory that holds a run unless told to
overwrite it, and then removes only the files scdfast writes there.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import fnmatch
import json
import os
import shutil
import time

import torch

from scdfast.errors import ScdError
from scdfast.fileio import TMP_PREFIX, atomic_write, current_umask, write_error  # noqa: F401 (also re-exported)

LOCK_FILE = ".lock"
RUN_MARKER = ".scdfast-run"         # in every run directory scdfast made: the command that made it
# What scdfast writes in a run directory (pretraining and protocols); --overwrite removes these only.
RUN_FILES = ("config.json", "metrics.csv", "steps.csv", "report.json", "curves.png", "results.json", "results.md",
             "scores.npz", "confusion-*.png", "embedding-*.png", TMP_PREFIX + "*", LOCK_FILE)
RUN_SUBDIRS = {"checkpoints": ("step-*.pt", "best.pt", "last.pt", "*-joint.pt", "*-motion.pt", "*-bone.pt",
                               TMP_PREFIX + "*"),
               "tensorboard": ("events.out.tfevents.*",)}
RUN_EVIDENCE = ("config.json", "results.json", "report.json", "metrics.csv", "steps.csv")


def check_output_file(path: str, option: str, signature: str, overwrite: bool = False) -> None:
    """Refuse, before any work, an existing file at `path` that does not begin with `signature`
    (the mark of an earlier output of the same command), unless `overwrite`."""
    if os.path.isfile(path) and not overwrite:
        with open(path, "rb") as f:
            head = f.read(len(signature.encode()))
        if head != signature.encode():
            raise ScdError(f"{option} {path}: exists and is not a file this command wrote; choose another "
                           "name, or pass --overwrite to replace it")


def write_output_file(path: str, option: str, text: str, signature: str, overwrite: bool = False) -> None:
    """A file a command writes where the user says (`report --out`, `diagnose --json`): `text`
    begins with `signature`, which marks the file as this command's. An existing file is replaced
    only when it begins with the same signature (an earlier output) or with `overwrite`; any
    other file is refused, so a typo cannot replace a user's data."""
    if not text.startswith(signature):
        raise ValueError("the text must begin with its signature")
    check_output_file(path, option, signature, overwrite)
    atomic_write(path, lambda f: f.write(text), mode="w")


def save_checkpoint(obj: dict, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj: dict, path: str) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode="w")


def holds_run(run_dir: str) -> bool:
    if any(os.path.exists(os.path.join(run_dir, name)) for name in RUN_EVIDENCE):
        return True
    checkpoints = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(checkpoints) and any(n.endswith(".pt") for n in os.listdir(checkpoints))


def _ours(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def clear_run(run_dir: str) -> list[str]:
    """Remove the files scdfast writes in a run directory (and its subfolders once empty);
    everything else stays. Returns what was removed."""
    removed = []
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name in RUN_SUBDIRS and os.path.isdir(path):
            for inner in os.listdir(path):
                if _ours(inner, RUN_SUBDIRS[name]) and os.path.isfile(os.path.join(path, inner)):
                    os.unlink(os.path.join(path, inner))
                    removed.append(os.path.join(path, inner))
            if not os.listdir(path):
                os.rmdir(path)
        elif name != LOCK_FILE and _ours(name, RUN_FILES) and os.path.isfile(path):
            os.unlink(path)
            removed.append(path)
    return removed


def remove_stale_temporaries(run_dir: str) -> None:
    """Temporary files of writes a kill interrupted (only a locked run's own, so none in use)."""
    for folder in (run_dir, os.path.join(run_dir, "checkpoints")):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(TMP_PREFIX) and os.path.isfile(os.path.join(folder, name)):
                    os.unlink(os.path.join(folder, name))


_LOCKS: dict[str, int] = {}


def lock_run_dir(run_dir: str) -> None:
    """Hold run_dir's advisory lock for the rest of this process (the OS releases it on any
    exit, a kill included); a second writer gets a one-line error."""
    key = os.path.realpath(run_dir)
    if key in _LOCKS:
        return
    path = os.path.join(run_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise ScdError(f"--run-dir {run_dir}: another scdfast process (pid {owner}) is writing it; "
                           "wait for it or choose another directory") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[key] = fd
    remove_stale_temporaries(run_dir)


def release_run_dir(run_dir: str) -> None:
    fd = _LOCKS.pop(os.path.realpath(run_dir), None)
    if fd is not None:
        os.close(fd)


def _check_ours(run_dir: str, resume: bool) -> None:
    """Refuse a non-empty folder scdfast did not make (no RUN_MARKER). A run being resumed may
    predate the marker: its checkpoint, checked by the caller, shows whose it is."""
    if resume or os.path.isfile(os.path.join(run_dir, RUN_MARKER)):
        return
    present = sorted(set(os.listdir(run_dir)) - {LOCK_FILE})
    if present:
        raise ScdError(f"--run-dir {run_dir}: a folder scdfast did not make (it holds {present[0]} and no "
                       f"{RUN_MARKER}); give a new or empty folder, or the run directory of an earlier scdfast run")


class RunDir:
    """The run directory of one command: made (or, with `overwrite`, cleared of scdfast's
    files) and locked on entry; a directory this command made and left with nothing in it
    (the command was refused) is removed on exit.

        with RunDir(args.run_dir, "pretrain", overwrite=args.overwrite) as run_dir: ...
    """

    def __init__(self, run_dir: str | None, command: str, overwrite: bool = False, resume: bool = False):
        if run_dir is None:
            run_dir = os.path.join("runs", f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path, self.command, self.overwrite, self.resume = run_dir, command, overwrite, resume
        self.created = self.marked = False

    def __enter__(self) -> str:
        run_dir = self.path
        if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 owns, checks and locks the directory
            return run_dir
        if os.path.exists(run_dir) and not os.path.isdir(run_dir):
            raise ScdError(f"--run-dir {run_dir}: exists and is not a directory")
        self.created = not os.path.exists(run_dir)
        if not self.created:
            _check_ours(run_dir, self.resume)
        os.makedirs(run_dir, exist_ok=True)
        lock_run_dir(run_dir)
        if not self.resume and holds_run(run_dir):
            if not self.overwrite:
                release_run_dir(run_dir)
                raise ScdError(f"--run-dir {run_dir}: holds an earlier run; continue it with --resume {run_dir} "
                               "(pretrain), choose another directory, or pass --overwrite to replace its scdfast files")
            clear_run(run_dir)
        marker = os.path.join(run_dir, RUN_MARKER)
        if not os.path.isfile(marker):
            atomic_write(marker, lambda f: json.dump({"command": self.command}, f), mode="w")
            self.marked = True
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        return run_dir

    def __exit__(self, exc_type, exc, tb) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return
        release_run_dir(self.path)
        if exc_type is None or holds_run(self.path) or not (self.created or self.marked):
            return
        clear_run(self.path)  # a refused command leaves the folder as it found it
        if self.marked:
            os.unlink(os.path.join(self.path, RUN_MARKER))
        if self.created and not [n for n in os.listdir(self.path) if n != LOCK_FILE]:
            shutil.rmtree(self.path)


def _upgrade_header(path: str, fields: list[str]) -> None:
    """A CSV written by an earlier version (a resumed run) gains the columns added since,
    empty in its old rows; one whose columns are not a subset of `fields` is refused."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)
    if header == fields:
        return
    unknown = [h for h in header if h not in fields]
    if unknown:
        raise ScdError(f"{path}: column {unknown[0]!r} is not one this run writes ({', '.join(fields)})")

    def write(f):
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write(path, write, mode="w")


class MetricsCSV:
    """Append-only CSV, one row per call, flushed at once so a crash keeps every row."""

    def __init__(self, path: str, fields: list[str], enabled: bool = True):
        self.path, self.fields, self.enabled = path, fields, enabled
        if not enabled:  # a rank other than 0 of a multi-process run writes nothing
            return
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        if not new:
            _upgrade_header(path, fields)
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=fields)
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, **row) -> None:
        if self.enabled:
            try:
                self._writer.writerow(row)
                self._file.flush()
            except OSError as exc:
                raise write_error(self.path, exc) from exc

    def close(self) -> None:
        if self.enabled:
            self._file.close()
