"""SBU Kinect Interaction (clean release) -> a dataset directory in the `sbu15` layout.

Files are `<set sAAsBB>/<class 01..08>/<run>/skeleton_pos.txt`, one comma-separated row per frame:
the frame number, then 15 joints x (x, y, z) of person A, then of person B (M = 2). The values
are normalised; the dataset's README maps them to millimetres (X = 1280 - 2560 x,
Y = 960 - 1920 y, Z = 10000 z / 7.8125), which is applied here, in metres. The standard
protocol is 5-fold cross-validation over the participant pairs: `--fold k` tests on fold k
and trains on the other four.
"""
from __future__ import annotations

import os

import numpy as np

from scdfast.data.importer import read_each, require_both_splits, write_sequences
from scdfast.data.layouts import SBU15
from scdfast.errors import ScdError

FOLDS = (
    ("s01s02", "s03s04", "s05s02", "s06s04"),
    ("s02s03", "s02s07", "s03s05", "s05s03"),
    ("s01s03", "s01s07", "s07s01", "s07s03"),
    ("s02s01", "s02s06", "s03s02", "s03s06"),
    ("s04s02", "s04s03", "s04s06", "s06s02", "s06s03"),
)
CLASSES = 8
_VALUES = 1 + 2 * SBU15.num_joints * 3  # 91


def read_sequence(path: str) -> np.ndarray:
    """(T, 2, 15, 3) in metres; errors name the file and line."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            tokens = line.strip().rstrip(",").split(",")
            if len(tokens) != _VALUES:
                raise ScdError(f"{path}: line {number}: expected {_VALUES} comma-separated values "
                               f"(frame, 2 persons x 15 joints x 3), got {len(tokens)}")
            try:
                rows.append([float(t) for t in tokens[1:]])
            except ValueError:
                raise ScdError(f"{path}: line {number}: non-numeric value") from None
    if not rows:
        raise ScdError(f"{path}: zero frames")
    xyz = np.asarray(rows, dtype=np.float64).reshape(-1, 2, SBU15.num_joints, 3)
    if not np.isfinite(xyz).all():
        raise ScdError(f"{path}: contains NaN or Inf")
    metres = np.stack([1280 - 2560 * xyz[..., 0], 960 - 1920 * xyz[..., 1], xyz[..., 2] * 10000 / 7.8125],
                      axis=-1) / 1000.0
    return metres.astype(np.float32)


def prepare_sbu(raw: str, out: str, fold: int = 1, skip_bad: bool = False, progress: bool = True) -> dict:
    if not 1 <= fold <= len(FOLDS):
        raise ScdError(f"--fold {fold}: choose 1..{len(FOLDS)}")
    if not os.path.isdir(raw):
        raise ScdError(f"--raw {raw}: no such directory")
    known = {pair for pairs in FOLDS for pair in pairs}
    found = []
    for pair in sorted(os.listdir(raw)):
        if pair not in known:
            continue
        for label in range(1, CLASSES + 1):
            class_dir = os.path.join(raw, pair, f"{label:02d}")
            if os.path.isdir(class_dir):
                found += [(pair, label, run) for run in sorted(os.listdir(class_dir))
                          if os.path.isfile(os.path.join(class_dir, run, "skeleton_pos.txt"))]
    if not found:
        raise ScdError(f"--raw {raw}: no <pair>/<class>/<run>/skeleton_pos.txt files of SBU's participant pairs")
    splits: dict[str, list] = {"train": [], "val": []}
    skipped: list[str] = []
    paths = [os.path.join(raw, pair, f"{label:02d}", run, "skeleton_pos.txt") for pair, label, run in found]
    sequences = dict(read_each(paths, read_sequence, skip_bad, skipped, "sbu: read", progress))
    for (pair, label, run), path in zip(found, paths):
        if path in sequences:
            split = "val" if pair in FOLDS[fold - 1] else "train"
            splits[split].append((f"{pair}_{label:02d}_{run}", sequences[path], label - 1))
    require_both_splits(splits, f"--raw {raw} (fold {fold})")
    return write_sequences(out, SBU15, splits, skipped, bodies=2, sources={"--raw": raw})
