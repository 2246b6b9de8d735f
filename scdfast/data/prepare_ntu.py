"""NTU RGB+D 60/120 raw `.skeleton` files -> a dataset directory (ntu25, T = 300, M = 2).

The preprocessing the field uses (SCDNET.md, "NTU RGB+D preprocessing"), compiled with Numba
(the file's structure walk, body selection and normalisation each run as one native loop):
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

import numba
import numpy as np

from scdfast.data.importer import read_each
from scdfast.data.layouts import NTU25
from scdfast.data.text_numbers import POWERS, all_numeric, is_blank, parse_at
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

    One compiled pass walks the file's structure line by line, parsing x, y, z of each joint
    and checking the other values' count and characters; a file that does not fit that walk is
    read again line by line in Python, which names the line at fault."""
    with open(path, "rb") as f:
        raw = f.read()
    buf = np.frombuffer(raw + b"\n", dtype=np.uint8)  # a final newline: every line scan stops there
    frames = _frame_count(buf, POWERS)
    xyz = None
    if frames > 0:
        xyz = np.zeros((KINECT_BODIES, frames, JOINTS, 3))
        if not _walk(buf, POWERS, xyz):
            xyz = None
    if xyz is None:
        xyz = _read_lines(path, raw.decode("ascii", errors="replace").splitlines())
    if not np.isfinite(xyz).all():
        raise ScdError(f"{path}: contains NaN or Inf")
    return xyz


# Byte classes for the line scan: 1 a character of a number, 2 a blank, 0 anything else.
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[np.frombuffer(b"0123456789.+-eE", dtype=np.uint8)] = 1
_BYTE_CLASS[np.frombuffer(b" \t\r", dtype=np.uint8)] = 2


@numba.njit(cache=True)
def _line_end(buf, i):
    """(values on the rest of the line from i, index of the next line; -1 for a character that
    no number has). Token by token, without bounds checks inside the line: `read_skeleton`'s
    buffer ends in a newline, whose class (0) stops every loop."""
    if i < 0 or i >= buf.shape[0]:
        return 0, -1
    tokens = 0
    while True:
        while _BYTE_CLASS[buf[i]] == 2:
            i += 1
        if _BYTE_CLASS[buf[i]] != 1:
            break
        tokens += 1
        while _BYTE_CLASS[buf[i]] == 1:
            i += 1
    return tokens, (i + 1 if buf[i] == 10 else -1)


@numba.njit(cache=True)
def _integer_line(buf, i, powers):
    """The line at i holds one integer: (it, next line), next line -1 when it does not."""
    while i < buf.shape[0] and (buf[i] == 32 or buf[i] == 9):
        i += 1
    if i >= buf.shape[0] or is_blank(buf[i]):
        return 0, -1
    value, i = parse_at(buf, i, powers)
    if i < 0 or value != int(value):
        return 0, -1
    rest, i = _line_end(buf, i)
    return int(value), (i if rest == 0 else -1)


@numba.njit(cache=True)
def _frame_count(buf, powers):
    count, at = _integer_line(buf, 0, powers)
    return count if at > 0 else -1


@numba.njit(cache=True)
def _walk(buf, powers, xyz):
    """Fill xyz (KINECT_BODIES, T, 25, 3) from the file; False where its structure is off."""
    _, at = _integer_line(buf, 0, powers)
    for t in range(xyz.shape[1]):
        bodies, at = _integer_line(buf, at, powers)
        if at < 0:
            return False
        for m in range(bodies):
            info, at = _line_end(buf, at)
            if at < 0 or info != 10:
                return False
            joints, at = _integer_line(buf, at, powers)
            if at < 0 or joints != JOINTS:
                return False
            for j in range(JOINTS):
                for c in range(3):
                    while at < buf.shape[0] and (buf[at] == 32 or buf[at] == 9):
                        at += 1
                    if at >= buf.shape[0] or is_blank(buf[at]):
                        return False
                    value, at = parse_at(buf, at, powers)
                    if at < 0:
                        return False
                    if m < xyz.shape[0]:
                        xyz[m, t, j, c] = value
                rest, at = _line_end(buf, at)
                if at < 0 or rest != 9:
                    return False
    while at < buf.shape[0]:  # nothing but blanks after the last frame
        if not is_blank(buf[at]):
            return False
        at += 1
    return True


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
                bad = next(i for i, line in enumerate(block) if not all_numeric(line))
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


# ---- body selection and normalisation -------------------------------------------------------

def select_bodies(xyz: np.ndarray) -> np.ndarray:
    """The MAX_BODIES bodies of largest motion energy, most energetic first: (2, T, 25, 3)."""
    return xyz[np.argsort(_energies(xyz))[::-1][:MAX_BODIES]]


@numba.njit(cache=True)
def _energies(xyz):
    """Per body: the sum over x, y, z of the std of its non-empty frames (over frames and joints)."""
    bodies, frames, joints, _ = xyz.shape
    energy = np.zeros(bodies)
    for m in range(bodies):
        count, total, squares = 0, np.zeros(3), np.zeros(3)
        for t in range(frames):
            if xyz[m, t].sum() == 0:
                continue
            count += joints
            for j in range(joints):
                for c in range(3):
                    total[c] += xyz[m, t, j, c]
        if count == 0:
            continue
        mean = total / count
        for t in range(frames):  # two passes, as np.std: no cancellation in a one-pass formula
            if xyz[m, t].sum() == 0:
                continue
            for j in range(joints):
                for c in range(3):
                    squares[c] += (xyz[m, t, j, c] - mean[c]) ** 2
        energy[m] = np.sqrt(squares / count).sum()
    return energy


@numba.njit(cache=True)
def _rotation(v, target):
    """The rotation about v x target that turns v's direction into target's (Rodrigues)."""
    axis = np.cross(v, target)
    if np.abs(axis).sum() < 1e-6 or np.abs(v).sum() < 1e-6:
        return np.eye(3)
    axis = axis / np.linalg.norm(axis)
    angle = np.arccos(min(max(np.dot(v / np.linalg.norm(v), target), -1.0), 1.0))
    if abs(angle) < 1e-6:
        return np.eye(3)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


@numba.njit(cache=True)
def _padded_frames(person, src):
    """src[t]: the frame of `person` (T <= MAX_FRAMES, 25, 3) that padded frame t shows, -1
    for an empty one. A body whose first frame is empty has its non-empty frames moved to
    the front; the empty tail after its last frame repeats its frames from the start."""
    frames = person.shape[0]
    filled = 0
    for t in range(frames):
        total = 0.0
        for j in range(person.shape[1]):
            total += person[t, j, 0] + person[t, j, 1] + person[t, j, 2]
        if total != 0:
            src[filled] = t
            filled += 1
    if filled == 0:
        src[:] = -1
        return
    if src[0] == 0:  # the first frame holds the body: frames keep their places, empty ones too
        filled = src[filled - 1] + 1
        for t in range(filled):
            src[t] = t
    for t in range(filled, src.shape[0]):
        src[t] = src[(t - filled) % filled]


@numba.njit(cache=True)
def _normalise(bodies, out):
    """bodies (2, T, 25, 3) float64 -> out (3, MAX_FRAMES, 25, 2) float32 in one pass over the
    output: each padded frame is looked up, centred and rotated by both alignments at once (the
    second alignment's vector is taken as the first rotation's image of it, so the product of
    the two rotations is what rotating twice gives)."""
    t_in = min(bodies.shape[1], MAX_FRAMES)
    src = np.empty((MAX_BODIES, MAX_FRAMES), dtype=np.int64)
    for m in range(MAX_BODIES):
        _padded_frames(bodies[m, :t_in], src[m])
    centre = np.zeros((MAX_FRAMES, 3))                                           # joint 1 of body 0
    for t in range(MAX_FRAMES):
        if src[0, t] >= 0:
            centre[t] = bodies[0, src[0, t], 1]
    first = np.zeros((JOINTS, 3))                                                # body 0, frame 0, centred
    if src[0, 0] >= 0:
        for j in range(JOINTS):
            joint = bodies[0, src[0, 0], j]
            if joint[0] + joint[1] + joint[2] != 0:
                first[j] = joint - centre[0]
    up = _rotation(first[1] - first[0], np.array([0.0, 0.0, 1.0]))
    across = _rotation(up @ (first[8] - first[4]), np.array([1.0, 0.0, 0.0]))
    r = across @ up
    out[:] = 0
    for m in range(MAX_BODIES):
        for t in range(MAX_FRAMES):
            frame = src[m, t]
            if frame < 0:
                continue
            for j in range(JOINTS):
                x, y, z = bodies[m, frame, j, 0], bodies[m, frame, j, 1], bodies[m, frame, j, 2]
                if x + y + z == 0:                                               # untracked joints stay zero
                    continue
                x, y, z = x - centre[t, 0], y - centre[t, 1], z - centre[t, 2]
                for c in range(3):
                    out[c, t, j, m] = r[c, 0] * x + r[c, 1] * y + r[c, 2] * z


def normalise(bodies: np.ndarray) -> np.ndarray:
    """(2, T, 25, 3) -> (3, 300, 25, 2) float32, the dataset layout: padded, centred and
    aligned (steps 2-4), computed in float64."""
    out = np.empty((3, MAX_FRAMES, JOINTS, MAX_BODIES), dtype=np.float32)
    _normalise(np.ascontiguousarray(bodies, dtype=np.float64), out)
    return out


def convert(path: str) -> tuple[np.ndarray, int]:
    """One file -> ((3, 300, 25, 2) float32, frame count)."""
    xyz = read_skeleton(path)
    return normalise(select_bodies(xyz)), min(xyz.shape[1], MAX_FRAMES)


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
    with DatasetWriter(out, NTU25, {"--raw": raw}) as writer, ProcessPoolExecutor(jobs or os.cpu_count()) as pool:
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
