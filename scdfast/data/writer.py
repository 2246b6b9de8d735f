"""Writing a dataset directory so that a failed or interrupted run never leaves a half-written
one in place, and nothing scdfast did not write is ever removed.

Everything goes into a temporary sibling directory (marked with the writing process), which
replaces the target in one rename at the end. The target may be a new or empty folder, or a
complete earlier output of scdfast: one holding the marker file that lists what scdfast wrote
there and nothing else. A marker may list only the plain file names prepare writes
(DATASET_FILES): a dataset folder is handed from person to person, and a forged marker must not
name a file elsewhere. Anything else is refused before any work, and so is an output folder
that is, holds or lies inside a source folder (--raw). An --out that is a symbolic link is
resolved once: the dataset is written and replaced at its target, and the link stays. A
temporary folder that a killed run left behind is removed by the next run for the same target.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import tempfile

import numpy as np

from scdfast.data.dataset import LAYOUT_FILE, layout_spec
from scdfast.data.layouts import SkeletonLayout
from scdfast.errors import ScdError
from scdfast.fileio import current_umask, fsync_dir, read_json


MARKER = ".scdfast-dataset"        # written last: JSON listing the files scdfast wrote
WRITING = ".scdfast-writing"        # in a temporary folder while it is written: host and pid
REPLACED = ".replaced"              # an earlier output, moved aside for the moment of the swap
SKIPPED = "skipped.txt"              # the files --skip-bad left out, and why
# Every file prepare writes (the marker besides): the only names a marker may list.
DATASET_FILES = frozenset({f"{split}_{kind}" for split in ("train", "val")
                           for kind in ("data_joint.npy", "label.pkl", "num_frame.npy", "img_shape.npy")}
                          | {LAYOUT_FILE, SKIPPED})


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _marker_files(folder: str, shown: str | None = None) -> list[str] | None:
    """The files the marker of `folder` lists, or None where it has no marker. A marker that is
    unreadable or lists anything but DATASET_FILES (a path, '..', a name prepare never writes) is
    refused: it was not written by scdfast, and nothing it names may be deleted."""
    path, shown = os.path.join(folder, MARKER), f"--out {shown or folder}"
    if not os.path.lexists(path):
        return None
    if not os.path.isfile(path) or os.path.islink(path):
        raise ScdError(f"{shown}: its {MARKER} is not a plain file, so not scdfast's; "
                       "choose a new folder or empty this one yourself")
    marker = read_json(path, f"{shown}: {MARKER}")
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, list):
        raise ScdError(f"{shown}: {MARKER} holds no list of files, so it is not scdfast's; "
                       "choose a new folder or empty this one yourself")
    foreign = next((name for name in files if not isinstance(name, str) or name not in DATASET_FILES | {MARKER}),
                   None)
    if foreign is not None:
        raise ScdError(f"{shown}: {MARKER} lists {foreign!r}, which is not a file scdfast prepare writes "
                       f"({', '.join(sorted(DATASET_FILES))}); the marker was not written by scdfast: choose a "
                       "new folder or empty this one yourself")
    return files


def check_output_dir(out_dir: str, sources: dict[str, str] | None = None) -> None:
    """Refuse, before any work, an output folder that prepare may not replace: a file, a
    folder that is, holds or lies inside a source, or a non-empty folder that is not a
    complete scdfast output holding only its own files. `sources`: {option: path}."""
    out = os.path.realpath(out_dir)
    for option, source in (sources or {}).items():
        src = os.path.realpath(source)
        if _inside(out, src) or _inside(src, out):
            where = "is" if out == src else ("lies inside" if _inside(out, src) else "holds")
            raise ScdError(f"--out {out_dir}: {where} {option} {source}; write the dataset to a folder of its own")
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise ScdError(f"--out {out_dir}: exists and is not a directory")
    present = set(os.listdir(out))
    if not present:
        return
    ours = _marker_files(out, out_dir)
    if ours is None:
        raise ScdError(f"--out {out_dir}: a non-empty folder scdfast did not write (no {MARKER}); "
                       "choose a new folder or empty this one yourself")
    foreign = sorted(present - set(ours) - {MARKER, REPLACED})
    if foreign:
        raise ScdError(f"--out {out_dir}: holds {foreign[0]}, which scdfast did not write; "
                       "move it away or choose a new folder")
    replaced = os.path.join(out, REPLACED)
    if REPLACED in present and (os.path.islink(replaced) or not os.path.isdir(replaced)):
        raise ScdError(f"--out {out_dir}: holds {REPLACED}, which is not a folder scdfast left; "
                       "move it away or choose a new folder")
    if REPLACED in present:
        _marker_files(replaced, os.path.join(out_dir, REPLACED))  # checked as strictly as the folder's own


def _process_alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return True  # another machine's: never ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out_dir: str) -> list[str]:
    """Temporary folders of earlier writes of `out_dir` whose writing process is gone."""
    parent, base = os.path.split(os.path.abspath(out_dir))
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if not (name.startswith(f".{base}.tmp-") and os.path.isdir(path)):
            continue
        try:
            owner = read_json(os.path.join(path, WRITING))
            alive = _process_alive(str(owner["host"]), int(owner["pid"]))
        except (ScdError, ValueError, KeyError, TypeError, OverflowError):
            continue  # not a folder this writer marked: leave it
        if not alive:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _remove_replaced(out_dir: str) -> None:
    """Delete the earlier output moved aside by a swap: the files its marker lists, then the
    marker and the (then empty) folder; a file it does not list stays, and so does the folder."""
    old = os.path.join(out_dir, REPLACED)
    if os.path.islink(old) or not os.path.isdir(old):
        return
    for name in _marker_files(old) or []:
        if os.path.isfile(os.path.join(old, name)) or os.path.islink(os.path.join(old, name)):
            os.unlink(os.path.join(old, name))
    if os.path.isfile(os.path.join(old, MARKER)):
        os.unlink(os.path.join(old, MARKER))
    if not os.listdir(old):
        os.rmdir(old)


class DatasetWriter:
    """with DatasetWriter(out, layout, sources) as w: w.split("train", shape) -> a memory-mapped
    array to fill; w.finish_split("train", names, labels, num_frames). Committed on a clean exit."""

    def __init__(self, out_dir: str, layout: SkeletonLayout, sources: dict[str, str] | None = None):
        check_output_dir(out_dir, sources)
        # a link is resolved once: the dataset replaces its target and the link stays a link
        self.out_dir, self.layout = os.path.realpath(out_dir), layout
        parent = os.path.dirname(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        _remove_replaced(self.out_dir)  # a swap a kill interrupted
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_dir)}.tmp-", dir=parent)
        os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the result is an ordinary directory
        with open(os.path.join(self.tmp, WRITING), "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
        self._arrays: dict[str, np.memmap] = {}

    def __enter__(self) -> DatasetWriter:
        return self

    def split(self, name: str, shape: tuple[int, ...]) -> np.memmap:
        """A zero-filled float32 array for split `name` ("train" or "val"), written in place."""
        array = np.lib.format.open_memmap(os.path.join(self.tmp, f"{name}_data_joint.npy"), mode="w+",
                                          dtype=np.float32, shape=shape)
        self._arrays[name] = array
        return array

    def shrink(self, name: str, rows: int) -> np.memmap:
        """Keep the first `rows` samples of split `name` (after files were skipped)."""
        old = self._arrays.pop(name)
        old.flush()
        path = os.path.join(self.tmp, f"{name}_data_joint.npy")
        smaller = np.lib.format.open_memmap(path + ".part", mode="w+", dtype=np.float32, shape=(rows, *old.shape[1:]))
        for lo in range(0, rows, 256):
            hi = min(lo + 256, rows)
            smaller[lo:hi] = old[lo:hi]
        smaller.flush()
        del old
        os.replace(path + ".part", path)
        self._arrays[name] = smaller
        return smaller

    def finish_split(self, name: str, sample_names: list[str], labels: list[int], num_frames) -> None:
        self._arrays.pop(name).flush()
        with open(os.path.join(self.tmp, f"{name}_label.pkl"), "wb") as f:
            pickle.dump((list(sample_names), [int(y) for y in labels]), f)
        np.save(os.path.join(self.tmp, f"{name}_num_frame.npy"), np.asarray(num_frames, dtype=np.int64))

    def save_array(self, name: str, array: np.ndarray) -> None:
        """A small per-sample array beside the data (e.g. `train_img_shape.npy`)."""
        if name not in DATASET_FILES or not name.endswith(".npy"):
            raise ValueError(f"{name!r} is not one of the dataset's .npy files (DATASET_FILES)")
        np.save(os.path.join(self.tmp, name), array, allow_pickle=False)

    def write_text(self, name: str, text: str) -> None:
        if name not in DATASET_FILES:
            raise ValueError(f"{name!r} is not one of the dataset files a marker may list (DATASET_FILES)")
        with open(os.path.join(self.tmp, name), "w") as f:
            f.write(text)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._arrays.clear()  # drop the memory maps before the directory moves
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        with open(os.path.join(self.tmp, LAYOUT_FILE), "w") as f:
            json.dump({"layout": layout_spec(self.layout)}, f)
        os.unlink(os.path.join(self.tmp, WRITING))
        with open(os.path.join(self.tmp, MARKER), "w") as f:
            json.dump({"files": sorted(os.listdir(self.tmp))}, f)
        for name in os.listdir(self.tmp):  # durable before the rename makes them the dataset
            with open(os.path.join(self.tmp, name), "rb") as f:
                os.fsync(f.fileno())
        try:
            check_output_dir(self.out_dir)  # nothing foreign arrived while we worked
        except ScdError:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        parent = os.path.dirname(self.out_dir)
        if os.path.exists(self.out_dir):
            os.rename(self.out_dir, os.path.join(self.tmp, REPLACED))  # the earlier output, inside ours
            os.rename(self.tmp, self.out_dir)
            _remove_replaced(self.out_dir)
        else:
            os.rename(self.tmp, self.out_dir)
        fsync_dir(parent)

