"""Writing a dataset directory so that a failed or interrupted run never leaves a half-written
one in place: everything goes into a temporary sibling directory, which replaces the target
in one rename at the end (an older directory of that name is removed only after that)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile

import numpy as np

from scdfast.data.dataset import LAYOUT_FILE, layout_spec
from scdfast.data.layouts import SkeletonLayout
from scdfast.errors import ScdError


class DatasetWriter:
    """with DatasetWriter(out, layout) as w: w.split("train", shape) -> a memory-mapped array to
    fill; w.finish_split("train", names, labels, num_frames). Committed on a clean exit."""

    def __init__(self, out_dir: str, layout: SkeletonLayout):
        self.out_dir, self.layout = os.path.abspath(out_dir), layout
        parent = os.path.dirname(self.out_dir)
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ScdError(f"--out {out_dir}: exists and is not a directory")
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_dir)}.tmp-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result is an ordinary directory
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

    def write_text(self, name: str, text: str) -> None:
        with open(os.path.join(self.tmp, name), "w") as f:
            f.write(text)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._arrays.clear()  # drop the memory maps before the directory moves
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        with open(os.path.join(self.tmp, LAYOUT_FILE), "w") as f:
            json.dump({"layout": layout_spec(self.layout)}, f)
        old = None
        if os.path.exists(self.out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_dir)}.old-", dir=os.path.dirname(self.out_dir))
            os.rmdir(old)
            os.rename(self.out_dir, old)
        os.rename(self.tmp, self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

