"""pyskl / MMAction2 skeleton annotation files <-> scdfast dataset directories.

The format (pyskl's and MMAction2's `PoseDataset`): a pickled dict with
  split        {name: [frame_dir, ...]}, e.g. xsub_train, xsub_val, xview_train, ...
  annotations  [{frame_dir, label, total_frames, keypoint (M, T, V, C) float,
                 keypoint_score (M, T, V) for 2D, img_shape (h, w), original_shape}, ...]
Two layouts are recognised from (V, C): NTU-25 in 3D (25, 3; camera coordinates in metres, as
pyskl publishes NTU RGB+D) and COCO-17 in 2D (17, 2, with scores; HRNet keypoints in pixels).

Importing 3D applies `prepare ntu`'s body selection and normalisation (SCDNET.md's NTU
preprocessing), so a pyskl file of NTU samples prepares equal to their raw .skeleton files;
with `normalise_ntu=False` (`--normalise none`) 3D keypoints are stored as given. Importing 2D
keeps the first two persons (pyskl's `FormatGCNInput`), stores (x, y, score) with x and y
normalised by the image size as pyskl's `PreNormalize2D` does, x' = (x - w/2) / (w/2),
y' = (y - h/2) / (h/2), and keeps each sample's image size in `{split}_img_shape.npy`.

Exporting writes the dataset's samples, each with its frames and its bodies up to the last
non-empty one: 2D in pixels again, 3D as stored. So a file of at most two persons per sample
exports back equal to itself (to float32 rounding of the pixel scaling) when its samples were
stored as given (2D always; 3D with --normalise none); an NTU-normalised import exports the
normalised coordinates, which the raw ones cannot be recovered from (body order, padding).
"""
from __future__ import annotations

import os
import pickle

import numpy as np
from tqdm.auto import tqdm

from scdfast.data.array_pickle import read_array_pickle
from scdfast.data.dataset import dataset_layout, load_split
from scdfast.data.label_file import read_label_file
from scdfast.data.layouts import COCO17, NTU25, SkeletonLayout
from scdfast.data.prepare_ntu import MAX_BODIES, MAX_FRAMES, normalise, select_bodies
from scdfast.data.writer import DatasetWriter
from scdfast.errors import ScdError
from scdfast.fileio import atomic_write

BODIES_2D = 2  # pyskl's FormatGCNInput(num_person=2)


# ---- reading and checking the annotation file -----------------------------------------------

def split_names(split: str) -> tuple[str, str]:
    """--split xsub -> (xsub_train, xsub_val); --split TRAIN,TEST names both lists."""
    if "," in split:
        names = tuple(part.strip() for part in split.split(","))
        if len(names) != 2 or not all(names):
            raise ScdError(f"--split {split}: give one name (xsub: xsub_train and xsub_val) or two, TRAIN,TEST")
        return names
    return f"{split}_train", f"{split}_val"


def _field(ann: dict, key: str, where: str):
    if key not in ann:
        if key == "keypoint" and "raw_file" in ann:
            raise ScdError(f"{where}: no 'keypoint' field; its keypoints are in a separate file ('raw_file', "
                           "pyskl's sharded Kinetics-400 layout), which prepare pyskl does not read")
        raise ScdError(f"{where}: no {key!r} field")
    return ann[key]


def _integer(value, where: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ScdError(f"{where}: {value!r} is not an integer >= {low}")
    return int(value)


def read_annotations(path: str, split: str) -> tuple[dict, dict, SkeletonLayout]:
    """({"train": [names], "val": [names]}, {frame_dir: annotation}, layout) of the file."""
    payload = read_array_pickle(path)
    if not isinstance(payload, dict) or not isinstance(payload.get("split"), dict) \
            or not isinstance(payload.get("annotations"), list):
        raise ScdError(f"--ann {path}: not a pyskl annotation file (a dict with 'split' and 'annotations')")
    held = payload["split"]
    train, val = split_names(split)
    for name in (train, val):
        if name not in held:
            raise ScdError(f"--ann {path}: no split {name!r}; the file holds {', '.join(map(str, sorted(held)))}")
        if not isinstance(held[name], (list, tuple)) or not all(isinstance(n, str) for n in held[name]):
            raise ScdError(f"--ann {path}: split {name!r} is not a list of frame_dir names")
        if not held[name]:
            raise ScdError(f"--ann {path}: split {name!r} is empty")
    by_name: dict = {}
    for i, ann in enumerate(payload["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("frame_dir"), str):
            raise ScdError(f"--ann {path}: annotations[{i}] is not a dict with a str 'frame_dir'")
        by_name[ann["frame_dir"]] = ann
    wanted = {"train": list(held[train]), "val": list(held[val])}
    for names in wanted.values():
        absent = next((n for n in names if n not in by_name), None)
        if absent is not None:
            raise ScdError(f"--ann {path}: split lists {absent!r}, which no annotation has")
    first = by_name[wanted["train"][0]]
    return wanted, by_name, _detect_layout(first, f"--ann {path}: annotation {first['frame_dir']!r}")


def _detect_layout(ann: dict, where: str) -> SkeletonLayout:
    keypoint = _field(ann, "keypoint", where)
    if not isinstance(keypoint, np.ndarray) or keypoint.ndim != 4:
        raise ScdError(f"{where}: keypoint is not an (M, T, V, C) array")
    v, c = keypoint.shape[2:]
    if (v, c) == (25, 3):
        return NTU25
    if (v, c) == (17, 2):
        return COCO17
    raise ScdError(f"{where}: keypoint of shape {keypoint.shape}: V={v}, C={c} is neither NTU-25 3D (25, 3) "
                   "nor COCO-17 2D (17, 2)")


def _sample(ann: dict, layout: SkeletonLayout, where: str) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """(keypoint (M, T, V, C), score (M, T, V) or None, label, frames), checked."""
    keypoint = _field(ann, "keypoint", where)
    dims = 2 if layout.planar else 3
    if not isinstance(keypoint, np.ndarray) or keypoint.ndim != 4 or keypoint.shape[2:] != (layout.num_joints, dims):
        shape = getattr(keypoint, "shape", type(keypoint).__name__)
        raise ScdError(f"{where}: keypoint of shape {shape}; this file's first sample is "
                       f"(M, T, {layout.num_joints}, {dims})")
    m, t = keypoint.shape[:2]
    if m == 0 or t == 0:
        raise ScdError(f"{where}: keypoint of shape {keypoint.shape} holds no {'person' if m == 0 else 'frame'}")
    frames = _integer(_field(ann, "total_frames", where), f"{where}: total_frames", 1)
    if frames != t:
        raise ScdError(f"{where}: total_frames is {frames} but keypoint has {t} frames")
    label = _integer(_field(ann, "label", where), f"{where}: label")
    score = None
    if layout.planar:
        score = _field(ann, "keypoint_score", where)
        if not isinstance(score, np.ndarray) or score.shape != keypoint.shape[:3]:
            raise ScdError(f"{where}: keypoint_score of shape {getattr(score, 'shape', '?')}, expected "
                           f"{keypoint.shape[:3]} (M, T, V)")
    if not np.isfinite(keypoint).all() or (score is not None and not np.isfinite(score).all()):
        raise ScdError(f"{where}: keypoint or keypoint_score contains NaN or Inf")
    return keypoint, score, label, frames


def _image_shape(ann: dict, where: str) -> tuple[int, int]:
    shape = _field(ann, "img_shape", where)
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ScdError(f"{where}: img_shape {shape!r} is not (height, width)")
    return _integer(shape[0], f"{where}: img_shape height", 1), _integer(shape[1], f"{where}: img_shape width", 1)


# ---- import ----------------------------------------------------------------------------------

def _ntu_sample(keypoint: np.ndarray) -> tuple[np.ndarray, int]:
    """(M, T, 25, 3) camera coordinates -> ((3, 300, 25, 2), frames) exactly as `prepare ntu`."""
    bodies = np.zeros((max(keypoint.shape[0], MAX_BODIES), *keypoint.shape[1:]))
    bodies[: keypoint.shape[0]] = keypoint
    return normalise(select_bodies(bodies)), min(keypoint.shape[1], MAX_FRAMES)


def _as_given(keypoint: np.ndarray, score: np.ndarray | None, shape: tuple[int, int] | None,
              frames: int) -> np.ndarray:
    """(M, T, V, C) -> (3, frames, V, 2): the first two persons as given; 2D: x and y by image
    size (pyskl's PreNormalize2D), the score as the third channel."""
    m = min(keypoint.shape[0], BODIES_2D)
    out = np.zeros((3, frames, keypoint.shape[2], BODIES_2D), dtype=np.float32)
    values = keypoint[:m].astype(np.float64).transpose(3, 1, 2, 0)                    # C, T, V, m
    if score is None:
        out[:, :, :, :m] = values
        return out
    h, w = shape
    out[0, :, :, :m] = (values[0] - w / 2) / (w / 2)
    out[1, :, :, :m] = (values[1] - h / 2) / (h / 2)
    out[2, :, :, :m] = score[:m].transpose(1, 2, 0)
    return out


def prepare_pyskl(ann: str, out: str, split: str = "xsub", normalise_ntu: bool = True, skip_bad: bool = False,
                  progress: bool = True) -> dict:
    """Write the samples of one split pair of a pyskl annotation file as a dataset directory.
    3D samples get `prepare ntu`'s body selection and normalisation unless not `normalise_ntu`
    (then they are stored as given, the first two persons, as 2D samples always are)."""
    if not os.path.isfile(ann):
        raise ScdError(f"--ann {ann}: no such file")
    wanted, by_name, layout = read_annotations(ann, split)
    skipped: list[str] = []
    checked = {}
    for part, names in wanted.items():  # every sample checked before the output is sized
        kept = []
        for name in names:
            where = f"--ann {ann}: annotation {name!r}"
            try:
                sample = _sample(by_name[name], layout, where)
                shape = _image_shape(by_name[name], where) if layout.planar else None
            except ScdError as exc:
                if not skip_bad:
                    raise ScdError(f"{exc} (--skip-bad leaves such samples out)") from None
                skipped.append(str(exc))
                continue
            kept.append((name, sample, shape))
        if not kept:
            raise ScdError(f"--ann {ann}: the {part} split has no usable sample")
        checked[part] = kept
    as_ntu = normalise_ntu and not layout.planar
    frames = MAX_FRAMES if as_ntu else max(s[3] for kept in checked.values() for _, s, _ in kept)
    bodies = MAX_BODIES if as_ntu else BODIES_2D
    with DatasetWriter(out, layout, {"--ann": ann}) as writer:
        for part, kept in checked.items():
            array = writer.split(part, (len(kept), 3, frames, layout.num_joints, bodies))
            names, labels, shapes = [n for n, _, _ in kept], [s[2] for _, s, _ in kept], [s for _, _, s in kept]
            lengths = []
            for i in tqdm(range(len(kept)), desc=f"pyskl: {part}", unit="sample", disable=not progress):
                keypoint, score, _, length = kept[i][1]
                if as_ntu:
                    array[i], length = _ntu_sample(keypoint)
                else:
                    array[i, :, :length] = _as_given(keypoint, score, shapes[i], length)
                lengths.append(length)
                kept[i] = None  # written: the last reference to its arrays goes
                by_name.pop(names[i], None)
            writer.finish_split(part, names, labels, lengths)
            if layout.planar:
                writer.save_array(f"{part}_img_shape.npy", np.asarray(shapes, dtype=np.int64))
        if skipped:
            writer.write_text("skipped.txt", "\n".join(skipped) + "\n")
    return {"train": len(checked["train"]), "val": len(checked["val"]), "skipped": len(skipped), "frames": frames,
            "layout": layout.name}


# ---- export ----------------------------------------------------------------------------------

def _read_image_shapes(root: str, split: str, samples: int) -> np.ndarray:
    path = os.path.join(root, f"{split}_img_shape.npy")
    if not os.path.isfile(path):
        raise ScdError(f"--data {root}: a 2D dataset without {split}_img_shape.npy, so its pixels cannot be "
                       "restored (prepare it with scdfast prepare pyskl)")
    try:
        shapes = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ScdError(f"{path}: not a .npy array of image sizes ({str(exc).splitlines()[0][:120]})") from None
    if shapes.shape != (samples, 2) or shapes.dtype.kind not in "iu" or (shapes < 1).any():
        raise ScdError(f"{path}: expected ({samples}, 2) positive integer (height, width) rows, got {shapes.dtype} "
                       f"of shape {shapes.shape}")
    return shapes


def _annotation(sample: np.ndarray, frames: int, label: int, name: str, planar: bool, shape) -> dict:
    """One dataset sample (C, T, V, M) -> a pyskl annotation of its frames and its bodies."""
    seq = np.asarray(sample[:, :frames], dtype=np.float64).transpose(3, 1, 2, 0)      # M, T, V, C
    present = np.flatnonzero(np.abs(seq).reshape(seq.shape[0], -1).sum(1) > 0)
    seq = seq[: max(1, present[-1] + 1 if present.size else 1)]
    ann = {"frame_dir": name, "label": int(label), "total_frames": int(frames)}
    if planar:
        h, w = (int(v) for v in shape)
        keypoint = np.empty((*seq.shape[:3], 2), dtype=np.float32)
        keypoint[..., 0] = seq[..., 0] * (w / 2) + w / 2
        keypoint[..., 1] = seq[..., 1] * (h / 2) + h / 2
        ann.update(keypoint=keypoint, keypoint_score=seq[..., 2].astype(np.float32), img_shape=(h, w),
                   original_shape=(h, w))
    else:
        ann["keypoint"] = seq.astype(np.float32)
    return ann


def export_pyskl(data: str, out: str, split: str = "xsub", overwrite: bool = False, progress: bool = True) -> dict:
    """Write dataset directory `data` as a pyskl annotation file `out` (a new file, or --overwrite)."""
    if not os.path.isdir(data):
        raise ScdError(f"--data {data}: no such dataset directory")
    if os.path.isdir(out):
        raise ScdError(f"--out {out}: is a directory; give the annotation file's name")
    if os.path.lexists(out) and not overwrite:
        raise ScdError(f"--out {out}: exists; choose another name, or pass --overwrite to replace it")
    if os.path.dirname(os.path.realpath(out)) == os.path.realpath(data):
        raise ScdError(f"--out {out}: lies inside --data {data}, which holds only the files prepare writes; "
                       "write the annotation file elsewhere")
    layout = dataset_layout(data)
    listed = dict(zip(("train", "val"), split_names(split)))
    splits = {part: load_split(data, part, layout) for part in listed}
    frame_dirs = {part: read_label_file(os.path.join(data, f"{part}_label.pkl"))[0]
                  or [f"{part}_{i:06d}" for i in range(len(samples))] for part, samples in splits.items()}
    every = frame_dirs["train"] + frame_dirs["val"]
    renamed = len(set(every)) != len(every)
    if renamed:  # pyskl finds a sample by its frame_dir: each must be unique in the file
        frame_dirs = {part: [f"{part}_{name}" for name in names] for part, names in frame_dirs.items()}
        if len(set(frame_dirs["train"] + frame_dirs["val"])) != len(every):
            raise ScdError(f"--data {data}: a sample name repeats within a split, and pyskl finds samples by name")
    result = {"split": {}, "annotations": []}
    for part, samples in splits.items():
        shapes = _read_image_shapes(data, part, len(samples)) if layout.planar else [None] * len(samples)
        for i in tqdm(range(len(samples)), desc=f"export: {part}", unit="sample", disable=not progress):
            result["annotations"].append(_annotation(samples.data[i], int(samples.num_frames[i]),
                                                     int(samples.labels[i]), frame_dirs[part][i], layout.planar,
                                                     shapes[i]))
        result["split"][listed[part]] = list(frame_dirs[part])
    atomic_write(out, lambda f: pickle.dump(result, f, protocol=4))
    return {"train": len(splits["train"]), "val": len(splits["val"]), "layout": layout.name, "renamed": renamed}
