"""Datasets as arrays: loading, validating and selecting the source named by `--data`.

A dataset directory holds, per split (train, val):
  {split}_data_joint.npy  (N, 3, T, V, M) float32, memory-mapped
  {split}_label.pkl       pickled (sample names, 0-based int labels)
  {split}_num_frame.npy   optional (N,) int; when absent, frames up to the last non-zero one
and optionally skeleton.json ({"layout": "kinect20"} or a custom layout's fields); without
it, V = 25 means the NTU layout. `--data synthetic` is the built-in generator instead.
"""
from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np

from scdfast.data.label_file import read_label_file
from scdfast.data.layouts import BUILT_IN, NTU25, SkeletonLayout, get_layout
from scdfast.data.synthetic import SkeletonSet, is_synthetic, synthetic_layout, synthetic_splits, synthetic_train
from scdfast.errors import ScdError

SPLITS = ("train", "val")
_CHUNK = 256  # samples validated per read, to bound memory on large memory-mapped arrays


def check_shape(shape: tuple[int, ...], source: str, num_joints: int = 25, num_bodies: int | None = None) -> None:
    """Refuse an array shape the model cannot take, before anything is sized from it."""
    if len(shape) != 5:
        raise ScdError(f"{source}: expected 5 axes (N, C, T, V, M), got shape {shape}")
    n, c, t, v, m = shape
    if c != 3:
        raise ScdError(f"{source}: expected 3 coordinates on axis 1, got {c}")
    if v != num_joints:
        raise ScdError(f"{source}: expected {num_joints} joints on axis 3 (the skeleton layout's), got {v}")
    if num_bodies is not None and m != num_bodies:
        raise ScdError(f"{source}: expected {num_bodies} bodies on axis 4, got {m}")
    if m == 0:
        raise ScdError(f"{source}: the array holds no bodies (axis 4 is empty)")
    if t == 0:
        raise ScdError(f"{source}: the array holds no frames (axis 2 is empty)")
    if n == 0:
        raise ScdError(f"{source}: the array holds no samples")


def validate(data: np.ndarray, num_frames: np.ndarray, labels: np.ndarray, source: str,
             num_joints: int = 25, num_bodies: int | None = None) -> None:
    """Refuse arrays the model cannot take, naming the file and the fault."""
    check_shape(data.shape, source, num_joints, num_bodies)
    n, c, t, v, m = data.shape
    if num_frames.shape != (n,) or labels.shape != (n,):
        raise ScdError(f"{source}: {n} samples but {num_frames.shape[0]} frame counts and {labels.shape[0]} labels")
    bad = np.flatnonzero((num_frames < 1) | (num_frames > t))
    if bad.size:
        raise ScdError(f"{source}: num_frames[{bad[0]}] = {num_frames[bad[0]]} is outside [1, {t}]")
    if (labels < 0).any():
        raise ScdError(f"{source}: labels must be 0-based non-negative integers (found {labels.min()})")
    moving = False
    for lo in range(0, n, _CHUNK):
        chunk = np.asarray(data[lo:lo + _CHUNK])
        if not np.isfinite(chunk).all():
            sample = lo + int(np.flatnonzero(~np.isfinite(chunk).reshape(chunk.shape[0], -1).all(1))[0])
            raise ScdError(f"{source}: sample {sample} contains NaN or Inf")
        moving = moving or bool(chunk.any())
    if not moving:
        warnings.warn(f"{source}: every coordinate of every sample is zero; nothing can be learned from it",
                      stacklevel=2)


def frames_until_last_nonzero(data: np.ndarray) -> np.ndarray:
    """Per sample, 1 + the index of the last frame with any non-zero coordinate (at least 1)."""
    out = np.empty(data.shape[0], dtype=np.int64)
    for lo in range(0, data.shape[0], _CHUNK):
        moving = np.abs(np.asarray(data[lo:lo + _CHUNK])).sum(axis=(1, 3, 4)) > 0         # n, T
        last = data.shape[2] - np.argmax(moving[:, ::-1], axis=1)
        out[lo:lo + moving.shape[0]] = np.where(moving.any(1), last, 1)
    return out


def _read_num_frames(path: str) -> np.ndarray:
    """{split}_num_frame.npy: a 1-D array of integers (no pickled objects are ever loaded)."""
    try:
        frames = np.load(path, allow_pickle=False)
    except Exception as exc:  # an object array (needs pickle), a truncated or foreign file
        raise ScdError(f"{path}: not a .npy array of frame counts ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(frames, np.ndarray) or frames.ndim != 1 or frames.dtype.kind not in "iu":
        shape = getattr(frames, "shape", "?")
        raise ScdError(f"{path}: expected a 1-D array of integer frame counts, got {getattr(frames, 'dtype', '?')} "
                       f"of shape {shape}")
    return frames.astype(np.int64)


def _read_labels(path: str) -> np.ndarray:
    return read_label_file(path)[1]


LAYOUT_FILE = "skeleton.json"


def dataset_layout(root: str) -> SkeletonLayout:
    """The layout a dataset directory declares in skeleton.json, or ntu25."""
    path = os.path.join(root, LAYOUT_FILE)
    return get_layout(path) if os.path.isfile(path) else NTU25


def load_split(root: str, split: str, layout: SkeletonLayout = NTU25, num_bodies: int | None = None) -> SkeletonSet:
    data_path = os.path.join(root, f"{split}_data_joint.npy")
    if not os.path.isfile(data_path):
        raise ScdError(f"{data_path}: no such file (a dataset directory holds {split}_data_joint.npy)")
    try:
        data = np.load(data_path, mmap_mode="r")
    except Exception as exc:
        raise ScdError(f"{data_path}: not a readable .npy array ({exc.__class__.__name__})") from None
    if data.dtype != np.float32:
        raise ScdError(f"{data_path}: expected float32, got {data.dtype}")
    check_shape(data.shape, data_path, layout.num_joints, num_bodies)
    labels = _read_labels(os.path.join(root, f"{split}_label.pkl"))
    frames_path = os.path.join(root, f"{split}_num_frame.npy")
    if os.path.isfile(frames_path):
        num_frames = _read_num_frames(frames_path)
    else:
        num_frames = frames_until_last_nonzero(data)
    validate(data, num_frames, labels, data_path, layout.num_joints, num_bodies)
    return SkeletonSet(data=data, num_frames=num_frames, labels=labels, layout=layout)


def load_dataset(source: str, seed: int = 0) -> tuple[SkeletonSet, SkeletonSet]:
    """(train, test) for `--data`: 'synthetic' or a dataset directory."""
    if is_synthetic(source):
        return synthetic_splits(seed=seed, layout=synthetic_layout(source))
    train = load_training_split(source, seed)
    test = load_split(source, "val", train.layout, num_bodies=train.data.shape[4])
    return train, test


def load_training_split(source: str, seed: int = 0) -> SkeletonSet:
    """The training split of `--data` alone, as `load_dataset` returns it: what pretraining
    reads. The test split is then neither drawn (synthetic) nor read and checked (a directory's
    val_data_joint.npy, which `validate` reads through)."""
    if is_synthetic(source):
        return synthetic_train(seed=seed, layout=synthetic_layout(source))
    if not os.path.exists(source):
        raise ScdError(f"--data {source}: no such file or directory")
    if not os.path.isdir(source):
        raise ScdError(f"--data {source}: expected a dataset directory or 'synthetic'")
    return load_split(source, "train", dataset_layout(source))


def num_classes(train: SkeletonSet, test: SkeletonSet, stated: int | None = None) -> int:
    """The class count: `stated` (--num-classes), every label below it; else max label + 1,
    on which the two splits must agree, so that one stray label cannot size the classifier."""
    if stated is not None:
        if stated < 1:
            raise ScdError(f"--num-classes {stated}: must be >= 1")
        for name, split in (("training", train), ("test", test)):
            if int(split.labels.max()) >= stated:
                raise ScdError(f"labels: the {name} split has label {int(split.labels.max())}, "
                               f"outside [0, {stated}) of --num-classes {stated}")
        return stated
    top_train, top_test = int(train.labels.max()), int(test.labels.max())
    if top_train != top_test:
        raise ScdError(f"labels: the training split's go up to {top_train} and the test split's to {top_test}, "
                       "so the class count is unclear; give --num-classes N for a dataset of N classes")
    return top_train + 1


def dataset_identity(train: SkeletonSet, source: str) -> dict:
    """What a resumed run checks it reads again: the source, shapes, a fingerprint of labels,
    frame counts and three samples, and the SHA-256 of every sample's values (one streamed read
    of the array, so a change to any sample is seen)."""
    n = len(train)
    digest = hashlib.sha256()
    for part in (np.ascontiguousarray(train.labels), np.ascontiguousarray(train.num_frames)):
        digest.update(part.tobytes())
    for i in sorted({0, n // 2, n - 1}):
        digest.update(np.ascontiguousarray(train.data[i]).tobytes())
    content = hashlib.sha256()
    for lo in range(0, n, _CHUNK):
        content.update(np.ascontiguousarray(train.data[lo:lo + _CHUNK]).data)
    return {"data": source, "samples": n, "shape": list(train.data.shape), "fingerprint": digest.hexdigest()[:16],
            "sha256": content.hexdigest()}


def layout_spec(layout: SkeletonLayout) -> str | dict:
    """What SCDConfig.layout stores: a built-in's name, or a custom layout's fields."""
    return layout.name if BUILT_IN.get(layout.name) == layout else layout.to_dict()


def model_shape(train: SkeletonSet) -> dict:
    """The SCDConfig fields a dataset fixes: joints, bodies, channels and layout."""
    return {"num_joints": train.layout.num_joints, "num_bodies": int(train.data.shape[4]),
            "in_channels": int(train.data.shape[1]), "layout": layout_spec(train.layout)}
