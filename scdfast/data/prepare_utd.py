"""UTD-MHAD skeletons (`aA_sS_tT_skeleton.mat`, MATLAB v5) -> a dataset directory in `kinect20`.

Each file holds `d_skel` of shape (20, 3, T): joints x xyz x frames, in metres. UTD-MHAD lists
the joints head first (head, shoulder centre, spine, hip centre, then the limbs in the Kinect
v1 SDK order), so the first four are reversed into the SDK order. The standard cross-subject
protocol trains on subjects 1, 3, 5, 7 and tests on 2, 4, 6, 8; the label is the action aA.
"""
from __future__ import annotations

import os
import re

import numpy as np

from scdfast.data.importer import read_each, require_both_splits, write_sequences
from scdfast.data.layouts import KINECT20
from scdfast.errors import ScdError

# kinect20 joint k takes UTD joint UTD_TO_KINECT20[k] (0-based): hip centre, spine, shoulder
# centre, head, then the same limb order.
UTD_TO_KINECT20 = np.array([3, 2, 1, 0, *range(4, 20)])
_NAME = re.compile(r"^a(\d+)_s(\d+)_t(\d+)_skeleton\.mat$")


def read_sequence(path: str) -> np.ndarray:
    """(T, 20, 3) in UTD-MHAD's joint order; errors name the file and the field."""
    from scipy.io import loadmat
    try:
        content = loadmat(path)
    except Exception as exc:  # noqa: BLE001 -- scipy raises many kinds for a damaged file
        raise ScdError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    if "d_skel" not in content:
        raise ScdError(f"{path}: no d_skel variable")
    skel = np.asarray(content["d_skel"])
    if skel.ndim != 3 or skel.shape[:2] != (KINECT20.num_joints, 3):
        raise ScdError(f"{path}: d_skel has shape {skel.shape}, expected (20, 3, T)")
    if skel.shape[2] == 0:
        raise ScdError(f"{path}: d_skel has zero frames")
    if not np.issubdtype(skel.dtype, np.number) or not np.isfinite(skel).all():
        raise ScdError(f"{path}: d_skel holds non-numeric, NaN or Inf values")
    return skel.transpose(2, 0, 1).astype(np.float32)


def prepare_utd(raw: str, out: str, skip_bad: bool = False, progress: bool = True) -> dict:
    if not os.path.isdir(raw):
        raise ScdError(f"--raw {raw}: no such directory")
    names = sorted(f for f in os.listdir(raw) if _NAME.match(f))
    if not names:
        raise ScdError(f"--raw {raw}: no aA_sS_tT_skeleton.mat files")
    splits: dict[str, list] = {"train": [], "val": []}
    skipped: list[str] = []
    paths = [os.path.join(raw, name) for name in names]
    for path, seq in read_each(paths, read_sequence, skip_bad, skipped, "utd-mhad: read", progress):
        name = os.path.basename(path)
        action, subject, _ = (int(g) for g in _NAME.match(name).groups())
        splits["train" if subject % 2 else "val"].append((name.removesuffix(".mat"), seq[:, UTD_TO_KINECT20][:, None],
                                                          action - 1))
    require_both_splits(splits, f"--raw {raw} (odd subjects train, even test)")
    return write_sequences(out, KINECT20, splits, skipped, sources={"--raw": raw})
