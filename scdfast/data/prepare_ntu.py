"""NTU RGB+D 60/120 raw `.skeleton` files -> a dataset directory (ntu25, T = 300, M = 2).

The preprocessing the field uses (SCDNET.md, "NTU RGB+D preprocessing"), vectorised:
  1. bodies by their position in each frame's list, at most 4; keep the 2 with the largest
     motion energy (the sum over x, y, z of the std of the body's non-zero frames);
  2. at most 300 frames; pad: a body whose first frame is empty has its non-empty frames moved
     to the front, and the empty tail after its frames is filled by repeating them;
  3. subtract joint 1 (spine middle) of body 0, frame by frame, from every body (zeros stay zero);
  4. rotate every sample so that body 0's bone joint 0 -> joint 1 in frame 0 is parallel to +z,
     then so that the vector from joint 4 (left shoulder) to joint 8 (right shoulder) is
     parallel to +x (the AGCN code's `rshoulder - lshoulder`).
Samples on the public missing-skeleton lists (302 in NTU-60, 535 in NTU-120; shipped in
ntu_missing/) are left out. Splits: cross-subject by performer, cross-view by camera (2, 3
train), cross-setup by setup (even train). Files are parsed in parallel worker processes and
streamed into a memory-mapped output.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor
from importlib import resources

import numpy as np

from scdfast.data.importer import read_each
from scdfast.data.layouts import NTU25
from scdfast.data.text_numbers import parse_numbers
from scdfast.data.writer import DatasetWriter
from scdfast.errors import ScdError

MAX_FRAMES, MAX_BODIES, KINECT_BODIES, JOINTS = 300, 2, 4, 25
TRAIN_SUBJECTS_60 = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
TRAIN_SUBJECTS_120 = TRAIN_SUBJECTS_60 + (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81,
                                          82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
TRAIN_CAMERAS = (2, 3)
BENCHMARKS = {"ntu60": ("xsub", "xview"), "ntu120": ("xsub", "xset")}
_NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")


def missing_skeletons(dataset: str) -> set[str]:
    text = resources.files("scdfast.data").joinpath("ntu_missing", f"{dataset}.txt").read_text()
    return {line.strip() for line in text.split() if line.strip()}


def is_training(name: str, dataset: str, benchmark: str) -> bool:
    setup, camera, subject, _, _ = (int(g) for g in _NAME.match(name).groups())
    if benchmark == "xsub":
        return subject in (TRAIN_SUBJECTS_60 if dataset == "ntu60" else TRAIN_SUBJECTS_120)
    if benchmark == "xview":
        return camera in TRAIN_CAMERAS
    return setup % 2 == 0  # xset


# ---- parsing ------------------------------------------------------------------------------

def read_skeleton(path: str) -> np.ndarray:
    """(KINECT_BODIES, T, 25, 3) float64 xyz; a body is its position in each frame's list.

    Every value of the file is parsed in one compiled pass and the structure walked by offsets; a
    file that does not fit that walk is read again line by line, which names the line at fault."""
    with open(path) as f:
        text = f.read()
    xyz = _read_tokens(text)
    if xyz is None:
        xyz = _read_lines(path, text.splitlines())
    if not np.isfinite(xyz).all():
        raise ScdError(f"{path}: contains NaN or Inf")
    return xyz


def _read_tokens(text: str) -> np.ndarray | None:
    """The fast path, or None when the file is malformed (the slow path then says how)."""
    values = parse_numbers(text)
    if values is None:
        return None
    n, at = len(values), 1
    if n == 0 or values[0] != int(values[0]) or values[0] <= 0:
        return None
    frames = int(values[0])
    xyz = np.zeros((KINECT_BODIES, frames, JOINTS, 3))
    lines = 1 + frames
    for t in range(frames):
        if at >= n:
            return None
        bodies = int(values[at])
        at += 1
        lines += bodies * (2 + JOINTS)
        for m in range(bodies):
            at += 10                                  # the body's info line
            if at >= n or values[at] != JOINTS or at + 1 + JOINTS * 12 > n:
                return None
            if m < KINECT_BODIES:
                xyz[m, t] = values[at + 1: at + 1 + JOINTS * 12].reshape(JOINTS, 12)[:, :3]
            at += 1 + JOINTS * 12
    # token counts alone cannot see a value moved to another line: the line count must fit too
    if at != n or text.strip().count("\n") + 1 != lines:
        return None
    return xyz


def _read_lines(path: str, lines: list[str]) -> np.ndarray:
    """The slow path: line by line, naming the line at fault."""
    at = 0

    def take(what: str) -> str:
        nonlocal at
        if at >= len(lines):
            raise ScdError(f"{path}: line {at + 1}: the file ends where {what} should be (truncated?)")
        at += 1
        return lines[at - 1]

    def integer(what: str) -> int:
        line = take(what)
        try:
            return int(line.strip())
        except ValueError:
            raise ScdError(f"{path}: line {at}: expected {what}, got {line.strip()!r}") from None

    frames = integer("the frame count")
    if frames <= 0:
        raise ScdError(f"{path}: line 1: zero frames")
    xyz = np.zeros((KINECT_BODIES, frames, JOINTS, 3))
    for t in range(frames):
        bodies = integer(f"the body count of frame {t + 1}")
        for m in range(bodies):
            take(f"body {m + 1}'s info line of frame {t + 1}")
            joints = integer("a joint count")
            if joints != JOINTS:
                raise ScdError(f"{path}: line {at}: {joints} joints, expected {JOINTS}")
            first = at
            block = [take(f"joint {j + 1} of frame {t + 1}") for j in range(JOINTS)]
            try:
                values = np.array(" ".join(block).split(), dtype=np.float64)
            except ValueError:
                bad = next(i for i, line in enumerate(block) if not _numeric(line))
                raise ScdError(f"{path}: line {first + bad + 1}: non-numeric value in {block[bad].strip()!r}") from None
            if values.size != JOINTS * 12:
                bad = next(i for i, line in enumerate(block) if len(line.split()) != 12)
                raise ScdError(f"{path}: line {first + bad + 1}: expected 12 values per joint, "
                               f"got {len(block[bad].split())}")
            if m < KINECT_BODIES:
                xyz[m, t] = values.reshape(JOINTS, 12)[:, :3]
    if any(line.strip() for line in lines[at:]):
        raise ScdError(f"{path}: line {at + 1}: content after the {frames} frames the header announces")
    return xyz


def _numeric(line: str) -> bool:
    try:
        [float(v) for v in line.split()]
        return True
    except ValueError:
        return False


# ---- body selection and normalisation -------------------------------------------------------

def select_bodies(xyz: np.ndarray) -> np.ndarray:
    """The MAX_BODIES bodies of largest motion energy, most energetic first: (2, T, 25, 3)."""
    energy = np.zeros(xyz.shape[0])
    for m, body in enumerate(xyz):
        valid = body.sum(axis=(1, 2)) != 0
        if valid.any():
            energy[m] = body[valid].std(axis=(0, 1)).sum()  # std of each coordinate over frames and joints
    return xyz[np.argsort(energy)[::-1][:MAX_BODIES]]


def _rotation(v: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The rotation about v x target that turns v's direction into target's (Rodrigues)."""
    axis = np.cross(v, target)
    if np.abs(axis).sum() < 1e-6 or np.abs(v).sum() < 1e-6:
        return np.eye(3)
    axis = axis / np.linalg.norm(axis)
    angle = np.arccos(np.clip(np.dot(v / np.linalg.norm(v), target), -1.0, 1.0))
    if abs(angle) < 1e-6:
        return np.eye(3)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def normalise(bodies: np.ndarray) -> np.ndarray:
    """(2, T, 25, 3) -> (2, 300, 25, 3) float32: padded, centred and aligned (steps 2-4)."""
    s = np.zeros((MAX_BODIES, MAX_FRAMES, JOINTS, 3))
    t = min(bodies.shape[1], MAX_FRAMES)
    s[:, :t] = bodies[:, :t]
    if s.sum() == 0:
        return s.astype(np.float32)
    for person in s:                                                    # pad
        frame_sums = person.sum(axis=(1, 2))
        if person.sum() == 0:
            continue
        if frame_sums[0] == 0:
            kept = person[frame_sums != 0].copy()
            person[:] = 0
            person[: len(kept)] = kept
            frame_sums = person.sum(axis=(1, 2))
        for i in np.flatnonzero(frame_sums == 0):
            if person[i:].sum() == 0:
                person[i:] = np.resize(person[:i], (MAX_FRAMES - i, JOINTS, 3)) if i else 0
                break
    centre = s[0, :, 1:2].copy()                                        # T, 1, 3: joint 1 of body 0
    for m in range(MAX_BODIES):
        if s[m].sum() == 0:
            continue
        keep = (s[m].sum(axis=-1) != 0)[..., None]                      # T, V, 1
        s[m] = (s[m] - centre) * keep
    for (a, b), target in (((0, 1), np.array([0.0, 0.0, 1.0])), ((4, 8), np.array([1.0, 0.0, 0.0]))):
        rotation = _rotation(s[0, 0, b] - s[0, 0, a], target)
        live = s.sum(axis=(2, 3)) != 0                                  # M, T: frames that are not empty
        s[live] = s[live] @ rotation.T
    return s.astype(np.float32)


def convert(path: str) -> tuple[np.ndarray, int]:
    """One file -> ((3, 300, 25, 2) float32, frame count)."""
    xyz = read_skeleton(path)
    data = normalise(select_bodies(xyz))
    return data.transpose(3, 1, 2, 0), min(xyz.shape[1], MAX_FRAMES)


# ---- the command ---------------------------------------------------------------------------

def prepare_ntu(raw: str, out: str, dataset: str = "ntu60", benchmark: str = "xsub", skip_bad: bool = False,
                jobs: int | None = None, progress: bool = True) -> dict:
    if dataset not in BENCHMARKS:
        raise ScdError(f"--dataset {dataset}: choose ntu60 or ntu120")
    if benchmark not in BENCHMARKS[dataset]:
        raise ScdError(f"--benchmark {benchmark}: {dataset} has {' and '.join(BENCHMARKS[dataset])}")
    if not os.path.isdir(raw):
        raise ScdError(f"--raw {raw}: no such directory")
    missing = missing_skeletons(dataset)
    last_setup = 17 if dataset == "ntu60" else 32
    names = []
    for f in sorted(os.listdir(raw)):
        stem = f.removesuffix(".skeleton")
        match = _NAME.match(stem)
        if f.endswith(".skeleton") and match and int(match.group(1)) <= last_setup and stem not in missing:
            names.append(stem)
    if not names:
        raise ScdError(f"--raw {raw}: no SsssCcccPpppRrrrAaaa.skeleton files of {dataset}")
    splits = {"train": [n for n in names if is_training(n, dataset, benchmark)],
              "val": [n for n in names if not is_training(n, dataset, benchmark)]}
    for split, stems in splits.items():
        if not stems:
            raise ScdError(f"--raw {raw}: no file of the {split} split of {dataset} {benchmark}")
    skipped: list[str] = []
    counts = {}
    with DatasetWriter(out, NTU25) as writer, ProcessPoolExecutor(jobs or os.cpu_count()) as pool:
        for split, stems in splits.items():
            array = writer.split(split, (len(stems), 3, MAX_FRAMES, JOINTS, MAX_BODIES))
            kept, frames = [], []
            paths = [os.path.join(raw, s + ".skeleton") for s in stems]
            for path, (data, length) in read_each(paths, convert, skip_bad, skipped, f"ntu: {split}", progress, pool):
                array[len(kept)] = data  # streamed: never the whole split in memory
                kept.append(os.path.basename(path).removesuffix(".skeleton"))
                frames.append(length)
            if not kept:
                raise ScdError(f"--raw {raw}: the {split} split of {dataset} {benchmark} has no usable file")
            if len(kept) < len(stems):  # files were skipped: keep the filled rows only
                writer.shrink(split, len(kept))
            writer.finish_split(split, kept, [int(s[-3:]) - 1 for s in kept], frames)
            counts[split] = len(kept)
        if skipped:
            writer.write_text("skipped.txt", "\n".join(skipped) + "\n")
    return {**counts, "skipped": len(skipped), "frames": MAX_FRAMES}
