"""MSR Action3D (the `Real3D` skeleton release) -> a dataset directory in the `kinect20` layout.

Each `aXX_sYY_eZZ_skeleton3D.txt` has 20*T rows of `x y z confidence`, 20 rows a frame, in
MSR Action3D's joint order, which is reordered into Kinect v1's. The standard cross-subject
protocol over all 20 actions trains on the odd subjects (1, 3, 5, 7, 9) and tests on the even
ones. `--files LIST` restricts the run to the names in LIST (e.g. the release's
files_used_in_cvpr12_paper.txt, 557 sequences); the release's one all-zero sequence
(a13_s09_e02) is refused as malformed unless --skip-bad.
"""
from __future__ import annotations

import os
import re

import numpy as np

from scdfast.data.importer import read_each, require_both_splits, write_sequences
from scdfast.data.layouts import KINECT20
from scdfast.errors import ScdError

# kinect20 joint k takes MSR joint MSR_TO_KINECT20[k] (both 0-based here).
MSR_TO_KINECT20 = np.array([7, 4, 3, 20, 1, 8, 10, 12, 2, 9, 11, 13, 5, 14, 16, 18, 6, 15, 17, 19]) - 1
_NAME = re.compile(r"^a(\d\d)_s(\d\d)_e(\d\d)_skeleton3D$")


def read_sequence(path: str) -> np.ndarray:
    """(T, 20, 3) in MSR order; errors name the file and line."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 4:
                raise ScdError(f"{path}: line {number}: expected 4 values (x y z confidence), got {len(tokens)}")
            try:
                rows.append([float(t) for t in tokens[:3]])
            except ValueError:
                raise ScdError(f"{path}: line {number}: non-numeric value in {line.strip()!r}") from None
    if not rows:
        raise ScdError(f"{path}: zero frames")
    if len(rows) % KINECT20.num_joints:
        raise ScdError(f"{path}: {len(rows)} rows is not a whole number of 20-joint frames (truncated?)")
    seq = np.asarray(rows, dtype=np.float32).reshape(-1, KINECT20.num_joints, 3)
    if not np.isfinite(seq).all():
        raise ScdError(f"{path}: contains NaN or Inf")
    if not seq.any():
        raise ScdError(f"{path}: every coordinate is zero (no skeleton recorded)")
    return seq


def prepare_msr3d(raw: str, out: str, files: str | None = None, skip_bad: bool = False,
                  progress: bool = True) -> dict:
    if not os.path.isdir(raw):
        raise ScdError(f"--raw {raw}: no such directory")
    names = sorted(f for f in os.listdir(raw) if _NAME.match(f.removesuffix(".txt")))
    if files is not None:
        try:
            with open(files) as f:  # names with or without the _skeleton3D.txt suffix
                wanted = {w.removesuffix(".txt").removesuffix("_skeleton3D") for w in f.read().split()}
        except OSError as exc:
            raise ScdError(f"--files {files}: unreadable ({exc.strerror})") from None
        names = [n for n in names if n.removesuffix("_skeleton3D.txt") in wanted]
    if not names:
        raise ScdError(f"--raw {raw}: no aXX_sYY_eZZ_skeleton3D.txt files")
    splits: dict[str, list] = {"train": [], "val": []}
    skipped: list[str] = []
    paths = [os.path.join(raw, name) for name in names]
    for path, seq in read_each(paths, read_sequence, skip_bad, skipped, "msr3d: read", progress):
        stem = os.path.basename(path).removesuffix(".txt")
        action, subject = (int(g) for g in _NAME.match(stem).groups()[:2])
        splits["train" if subject % 2 else "val"].append((stem, seq[:, MSR_TO_KINECT20][:, None], action - 1))
    require_both_splits(splits, f"--raw {raw} (odd subjects train, even test)")
    return write_sequences(out, KINECT20, splits, skipped, sources={"--raw": raw})
