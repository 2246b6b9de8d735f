"""NW-UCLA (the `all_sqe` JSON release) -> a dataset directory in the `kinect20` layout.

Each `<aAA_sSS_eEE_vVV>.json` holds {"file_name", "skeletons": (T, 20, 3) in metres, "label"}.
The standard cross-view protocol trains on views 1 and 2 and tests on view 3. Labels are
0-based in action order (a01..a06, a08, a09, a11, a12; a07 and a10 do not exist) and must agree
with each file's own `label` field. One body per sample (M = 1); T is the longest sequence.
Every sequence is translated so that its spine joint (joint 2) in the first frame sits at the
origin, as NTU's normalisation centres on its spine joint.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from scdfast.data.importer import read_each, require_both_splits, write_sequences
from scdfast.data.layouts import KINECT20
from scdfast.errors import ScdError

ACTIONS = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)
TRAIN_VIEWS, TEST_VIEWS = (1, 2), (3,)
_NAME = re.compile(r"^a(\d\d)_s(\d\d)_e(\d\d)_v(\d\d)$")


@dataclass
class Sequence:
    name: str
    skeleton: np.ndarray    # (T, 20, 3) float32
    label: int              # 0-based
    view: int


def read_sequence(path: str) -> Sequence:
    """One JSON file, checked; errors name the file (and the line for malformed JSON)."""
    name = os.path.splitext(os.path.basename(path))[0]
    match = _NAME.match(name)
    if not match:
        raise ScdError(f"{path}: the name is not aAA_sSS_eEE_vVV")
    action, view = int(match.group(1)), int(match.group(4))
    if action not in ACTIONS:
        raise ScdError(f"{path}: action a{action:02d} is not an NW-UCLA action")
    try:
        with open(path) as f:
            record = json.load(f)
    except json.JSONDecodeError as exc:
        raise ScdError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScdError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or "skeletons" not in record:
        raise ScdError(f"{path}: no 'skeletons' field")
    if record["skeletons"] == []:
        raise ScdError(f"{path}: zero frames")
    try:
        skeleton = np.asarray(record["skeletons"], dtype=np.float32)
    except (TypeError, ValueError):
        raise ScdError(f"{path}: 'skeletons' holds a non-numeric value or ragged frames") from None
    if skeleton.ndim != 3 or skeleton.shape[1:] != (KINECT20.num_joints, 3):
        raise ScdError(f"{path}: expected 'skeletons' of shape (T, 20, 3), got {skeleton.shape}")
    if not np.isfinite(skeleton).all():
        raise ScdError(f"{path}: 'skeletons' contains NaN or Inf")
    label = ACTIONS.index(action)
    if "label" in record and int(record["label"]) - 1 != label:
        raise ScdError(f"{path}: its label field {record['label']} disagrees with action a{action:02d}")
    return Sequence(name=name, skeleton=skeleton, label=label, view=view)


def prepare_ucla(raw: str, out: str, skip_bad: bool = False, progress: bool = True) -> dict:
    """Write the dataset directory `out` from the JSON files in `raw`; returns counts."""
    if not os.path.isdir(raw):
        raise ScdError(f"--raw {raw}: no such directory")
    files = sorted(f for f in os.listdir(raw) if f.endswith(".json"))
    if not files:
        raise ScdError(f"--raw {raw}: no .json files (expected NW-UCLA's all_sqe folder)")
    splits: dict[str, list] = {"train": [], "val": []}
    skipped: list[str] = []
    paths = [os.path.join(raw, name) for name in files]
    for _, seq in read_each(paths, read_sequence, skip_bad, skipped, "ucla: read", progress):
        split = "train" if seq.view in TRAIN_VIEWS else "val" if seq.view in TEST_VIEWS else None
        if split is not None:
            splits[split].append((seq.name, seq.skeleton[:, None], seq.label))
    require_both_splits(splits, f"--raw {raw} (views 1-2 train, 3 test)")
    return write_sequences(out, KINECT20, splits, skipped, sources={"--raw": raw})
