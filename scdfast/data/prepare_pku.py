"""PKU-MMD (parts I and II) skeleton text and action labels -> a dataset directory (ntu25,
T = 300, M = 2), the array layout SCD-Net trains NTU on.

PKU-MMD records long sequences with several actions each:
  - skeleton `<SEQ>.txt`: a frame per line, 150 values: person 1's 25 joints x (x, y, z), then
    person 2's (zeros where only one person is present); the joints are in NTU's order;
  - label `<SEQ>.txt`: an action per line, `action_id, start_frame, end_frame, confidence`,
    action ids 1-based;
  - a split file (the dataset's `cross-subject.txt` or `cross-view.txt`): a line naming the
    training sequences and one naming the validation sequences, each followed by the names.
Each labelled interval becomes one sample: frames start..end with start a 0-based row of the
skeleton file and end inclusive, as the public PKU-MMD preprocessing scripts cut them. The sample
then gets NTU's body order and normalisation (`prepare_ntu`: the more energetic person first, at
most 300 frames, padding, centring on body 0's spine, alignment), so PKU and NTU arrays are alike.
"""
from __future__ import annotations

import os
import re

import numpy as np

from scdfast.data.importer import read_each
from scdfast.data.layouts import NTU25
from scdfast.data.prepare_ntu import JOINTS, MAX_BODIES, MAX_FRAMES, normalise, select_bodies
from scdfast.data.text_numbers import all_numeric, parse_numbers
from scdfast.data.writer import DatasetWriter
from scdfast.errors import ScdError

_VALUES = MAX_BODIES * JOINTS * 3   # 150 per frame
_SEQUENCE = re.compile(r"[A-Za-z0-9]+-[LMR]")  # 0002-L (part I), A01N01-M (part II)


def read_split(path: str) -> dict[str, set[str]]:
    """{"train": names, "val": names} from a PKU-MMD split file: names after a line that says
    "train" go to train, after one that says "valid" or "test" to val."""
    if not os.path.isfile(path):
        raise ScdError(f"--split {path}: no such file")
    split, named = None, {"train": set(), "val": set()}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            lowered = line.lower()
            if "train" in lowered:
                split, line = "train", line.split(":", 1)[-1]
            elif "valid" in lowered or "test" in lowered:
                split, line = "val", line.split(":", 1)[-1]
            names = _SEQUENCE.findall(line)
            if names and split is None:
                raise ScdError(f"--split {path}: line {number}: sequence names before a 'training' or "
                               f"'validation' heading")
            named[split or "train"].update(names)
    if not named["train"] or not named["val"]:
        empty = " and ".join(s for s in ("train", "val") if not named[s])
        raise ScdError(f"--split {path}: no {empty} sequence names (expected a training and a validation list "
                       f"of names like 0002-L)")
    both = named["train"] & named["val"]
    if both:
        raise ScdError(f"--split {path}: {sorted(both)[0]} is listed for both training and validation")
    return named


def read_labels(path: str) -> list[tuple[int, int, int]]:
    """[(0-based action, first frame, last frame)] of a label file; errors name the line."""
    if not os.path.isfile(path):
        raise ScdError(f"{path}: no label file for this sequence")
    actions = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = [v.strip() for v in line.replace(",", " ").split()]
            if len(fields) < 3:
                raise ScdError(f"{path}: line {number}: expected 'action, start, end, confidence', "
                               f"got {line.strip()!r}")
            try:
                action, start, end = (int(v) for v in fields[:3])
            except ValueError:
                raise ScdError(f"{path}: line {number}: non-integer action or frame in {line.strip()!r}") from None
            if action < 1:
                raise ScdError(f"{path}: line {number}: action id {action} (ids start at 1)")
            if start < 0 or end < start:
                raise ScdError(f"{path}: line {number}: interval {start}..{end} is empty or negative")
            actions.append((action - 1, start, end))
    if not actions:
        raise ScdError(f"{path}: no actions")
    return actions


def read_skeleton(path: str) -> np.ndarray:
    """(T, 2, 25, 3) float64; errors name the file and line."""
    with open(path) as f:
        text = f.read()
    lines = text.strip().splitlines()
    values = parse_numbers(text)
    if values is None or len(values) != len(lines) * _VALUES:  # say which line is at fault
        for number, line in enumerate(lines, start=1):
            tokens = line.split()
            if len(tokens) != _VALUES:
                raise ScdError(f"{path}: line {number}: expected {_VALUES} values (2 persons x 25 joints x 3), "
                               f"got {len(tokens)}")
            if not all_numeric(line):
                raise ScdError(f"{path}: line {number}: non-numeric value")
        values = np.array(text.split(), dtype=np.float64)
    if not lines:
        raise ScdError(f"{path}: zero frames")
    if not np.isfinite(values).all():
        raise ScdError(f"{path}: contains NaN or Inf")
    return values.reshape(len(lines), MAX_BODIES, JOINTS, 3)


def cut_samples(skeleton_path: str, actions: list[tuple[int, int, int]],
                label_path: str) -> list[tuple[int, np.ndarray, int]]:
    """[(action, (3, 300, 25, 2) float32, frames)] for each interval `read_labels(label_path)`
    gave for one sequence."""
    xyz = read_skeleton(skeleton_path)
    samples = []
    for action, start, end in actions:
        if end >= len(xyz):
            raise ScdError(f"{label_path}: interval {start}..{end} ends past the {len(xyz)} frames of {skeleton_path}")
        clip = select_bodies(xyz[start:end + 1].transpose(1, 0, 2, 3))           # M, T, V, 3
        samples.append((action, normalise(clip), min(end + 1 - start, MAX_FRAMES)))
    return samples


def prepare_pku(raw: str, labels: str, split: str, out: str, skip_bad: bool = False, progress: bool = True) -> dict:
    for option, folder in (("--raw", raw), ("--labels", labels)):
        if not os.path.isdir(folder):
            raise ScdError(f"{option} {folder}: no such directory")
    named = read_split(split)
    listed = sorted(named["train"] | named["val"])
    present = [n for n in listed if os.path.isfile(os.path.join(raw, n + ".txt"))]
    if not present:
        raise ScdError(f"--raw {raw}: none of the {len(listed)} sequences {split} lists has a <name>.txt "
                       f"skeleton file here")
    skipped: list[str] = []
    # Label files are small: read them all first, so each split's array is sized before any
    # skeleton is parsed, and samples then stream into it (never the dataset twice in memory).
    intervals = dict(read_each([os.path.join(labels, n + ".txt") for n in present], read_labels, skip_bad, skipped,
                               "pku: labels", progress))
    counts = {}
    with DatasetWriter(out, NTU25, {"--raw": raw, "--labels": labels}) as writer:
        for name in ("train", "val"):
            sequences = [n for n in present if n in named[name] and os.path.join(labels, n + ".txt") in intervals]
            total = sum(len(intervals[os.path.join(labels, n + ".txt")]) for n in sequences)
            if total == 0:
                raise ScdError(f"--raw {raw}: the {name} split has no labelled sample")
            array = writer.split(name, (total, 3, MAX_FRAMES, JOINTS, MAX_BODIES))
            names, actions, frames = [], [], []
            paths = [os.path.join(raw, n + ".txt") for n in sequences]

            def read(path: str) -> list:
                label_path = os.path.join(labels, os.path.basename(path))
                return cut_samples(path, intervals[label_path], label_path)

            for path, samples in read_each(paths, read, skip_bad, skipped, f"pku: {name}", progress):
                sequence = os.path.basename(path).removesuffix(".txt")
                for i, (action, data, length) in enumerate(samples):
                    array[len(names)] = data
                    names.append(f"{sequence}_{i:03d}")
                    actions.append(action)
                    frames.append(length)
            if not names:
                raise ScdError(f"--raw {raw}: the {name} split has no usable sequence")
            if len(names) < total:  # sequences were skipped: keep the filled rows only
                writer.shrink(name, len(names))
            writer.finish_split(name, names, actions, frames)
            counts[name] = len(names)
        if skipped:
            writer.write_text("skipped.txt", "\n".join(skipped) + "\n")
    return {**counts, "skipped": len(skipped), "frames": MAX_FRAMES}
