"""NumPy reference of SCD-Net's view generation (SCDNET.md, 'Pretraining views').

Randomness is separated from the transforms: `draw_views` makes every random number a
batch of views consumes (a `ViewDraws` of arrays with a leading view axis), and
`make_views` applies them. Faster implementations take the same draws and must give the
same views. A sample is (C, T, V, M); a batch (N, C, T, V, M).

A planar layout's samples are (x, y, score): the rotation turns the image plane by the main
axis's angle, the shear keeps its two in-plane terms, and the score channel is the joint's
own score in every stream (motion and bone difference the coordinates only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scdfast.data.layouts import NTU25, SkeletonLayout
from scdfast.graph import structural_mask_scores

TEMPORAL_SEGMENTS = 16
MASKED_SEGMENTS = 6
MASKED_JOINTS = NTU25.masked_joints  # 8 of 25, the paper's; other layouts scale it
MASK_SEED_JOINTS = 5
EVAL_KEEP_RATIO = 0.95
_MASK_SCORES: dict[SkeletonLayout, np.ndarray] = {}


def _mask_scores(layout: SkeletonLayout) -> np.ndarray:
    if layout not in _MASK_SCORES:
        _MASK_SCORES[layout] = structural_mask_scores(layout)
    return _MASK_SCORES[layout]


# ---- single-sample transforms ----------------------------------------------------------

def crop_length(num_frames: int, ratio: float, window: int) -> int:
    """L = min(max(floor(num_frames * r), window), num_frames)."""
    return int(min(max(int(np.floor(num_frames * ratio)), window), num_frames))


def resize_frames(x: np.ndarray, start: int, length: int, window: int) -> np.ndarray:
    """Frames [start, start+length) of x resized to `window` frames by linear interpolation
    with align_corners=False (PyTorch's bilinear along one axis)."""
    src = (np.arange(window) + 0.5) * (length / window) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, length - 1)
    w = (src - i0).astype(np.float32)[None, :, None, None]
    return (1.0 - w) * x[:, start + i0] + w * x[:, start + i1]


def to_motion(x: np.ndarray, planar: bool = False) -> np.ndarray:
    """motion[t] = x[t+1] - x[t]; the last frame is zero. Planar: channel 2 keeps the score."""
    out = np.zeros_like(x)
    out[:, :-1] = x[:, 1:] - x[:, :-1]
    if planar:
        out[2, :-1] = x[2, :-1]
    return out


def to_bone(x: np.ndarray, layout: SkeletonLayout = NTU25) -> np.ndarray:
    """bone[v] = x[v] - x[parent(v)]; the root's bone is zero. Planar: channel 2 keeps the score."""
    out = x - x[:, :, layout.bone_parent]
    if layout.planar:
        out[2] = x[2]
    return out


def to_representation(x: np.ndarray, representation: str, layout: SkeletonLayout = NTU25) -> np.ndarray:
    if representation == "joint":
        return x
    if representation == "motion":
        return to_motion(x, layout.planar)
    if representation == "bone":
        return to_bone(x, layout)
    raise ValueError(f"representation {representation!r}: use joint, motion or bone")


def rotation_matrix(axis: int, degrees: float) -> np.ndarray:
    """The matrix that rotates a column vector about x (0), y (1) or z (2)."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
    if axis == 1:
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])


def apply_linear(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """xyz' = matrix @ xyz at every frame, joint and body."""
    return np.einsum("ij,jtvm->itvm", matrix, x).astype(x.dtype)


def rotate(x: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Rotate about x, then y, then z by degrees[0..2]."""
    for axis in range(3):
        x = apply_linear(x, rotation_matrix(axis, float(degrees[axis])))
    return x


def shear_matrix(values: np.ndarray) -> np.ndarray:
    """Ones on the diagonal, the six off-diagonals in row-major order."""
    m = np.eye(3)
    m[0, 1], m[0, 2], m[1, 0], m[1, 2], m[2, 0], m[2, 1] = values
    return m


def planar_degrees(degrees: np.ndarray, main_axis: int) -> np.ndarray:
    """A planar layout's rotation: the main axis's angle, about the image normal (z)."""
    return np.array([0.0, 0.0, degrees[main_axis]])


def planar_shear(values: np.ndarray) -> np.ndarray:
    """A planar layout's shear: the in-plane terms (x by y, y by x); the score is not sheared."""
    return np.array([values[0], 0.0, values[2], 0.0, 0.0, 0.0])


def flip(x: np.ndarray, layout: SkeletonLayout = NTU25) -> np.ndarray:
    return x[:, :, layout.flip_permutation]


def masked_joints(seeds: np.ndarray, layout: SkeletonLayout = NTU25) -> np.ndarray:
    """The 8 joints (the layout's count) with the highest summed rows of B = (I + A)^2 over the
    5 seed joints. Ties go to the higher joint index (a stable sort, then the last ones), so
    the rule is deterministic."""
    score = _mask_scores(layout)[np.asarray(seeds)].sum(0)
    return np.argsort(score, kind="stable")[-layout.masked_joints:]


def spatial_mask(x: np.ndarray, seeds: np.ndarray, layout: SkeletonLayout = NTU25) -> np.ndarray:
    out = x.copy()
    out[:, :, masked_joints(seeds, layout)] = 0
    return out


def temporal_mask(x: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Zero the given segments of T / 16 frames each."""
    out = x.copy()
    seg = x.shape[1] // TEMPORAL_SEGMENTS
    for s in segments:
        out[:, s * seg:(s + 1) * seg] = 0
    return out


def center_crop(x: np.ndarray, num_frames: int, window: int) -> np.ndarray:
    """Evaluation input: keep the central 95% of the frames, resized to `window`."""
    start = int((1 - EVAL_KEEP_RATIO) * num_frames / 2)
    return resize_frames(x, start, num_frames - 2 * start, window)


# ---- random draws and batches ----------------------------------------------------------

@dataclass
class ViewDraws:
    """Every random number for a batch of views; arrays have a leading view axis."""

    crop_length: np.ndarray       # (B,) int: L
    crop_start: np.ndarray        # (B,) int: start in [0, num_frames - L]
    rotate: np.ndarray            # (B,) bool
    rotate_degrees: np.ndarray    # (B, 3): angles about x, y, z
    rotate_axis: np.ndarray       # (B,) int: the main axis, whose angle is U[0, 30]
    flip: np.ndarray              # (B,) bool
    shear: np.ndarray             # (B,) bool
    shear_values: np.ndarray      # (B, 6): off-diagonals, row-major
    spatial_mask: np.ndarray      # (B,) bool
    mask_seeds: np.ndarray        # (B, 5) int: seed joints, with replacement
    temporal_mask: np.ndarray     # (B,) bool
    masked_segments: np.ndarray   # (B, 6) int: distinct segments


def draw_views(rng: np.random.Generator, num_frames: np.ndarray, window: int,
               crop_ratio: tuple[float, float] = (0.1, 1.0), num_joints: int = 25,
               probability: float = 0.5) -> ViewDraws:
    """Draw one view per entry of num_frames (pass a sample twice for two views)."""
    nf = np.asarray(num_frames, dtype=np.int64)
    b = nf.shape[0]
    ratio = rng.uniform(crop_ratio[0], crop_ratio[1], size=b)
    length = np.minimum(np.maximum(np.floor(nf * ratio).astype(np.int64), window), nf)
    start = np.minimum((rng.random(b) * (nf - length + 1)).astype(np.int64), nf - length)
    main_axis = rng.integers(0, 3, size=b)
    degrees = rng.uniform(0.0, 1.0, size=(b, 3))
    degrees[np.arange(b), main_axis] = rng.uniform(0.0, 30.0, size=b)
    segments = np.argsort(rng.random((b, TEMPORAL_SEGMENTS)), axis=1)[:, :MASKED_SEGMENTS]
    return ViewDraws(
        crop_length=length, crop_start=start,
        rotate=rng.random(b) < probability, rotate_degrees=degrees, rotate_axis=main_axis,
        flip=rng.random(b) < probability,
        shear=rng.random(b) < probability, shear_values=rng.uniform(-1.0, 1.0, size=(b, 6)),
        spatial_mask=rng.random(b) < probability,
        mask_seeds=rng.integers(0, num_joints, size=(b, MASK_SEED_JOINTS)),
        temporal_mask=rng.random(b) < probability, masked_segments=segments,
    )


def make_view(x: np.ndarray, draws: ViewDraws, i: int, window: int, representation: str = "joint",
              layout: SkeletonLayout = NTU25) -> np.ndarray:
    """View i of `draws` from sample x (C, T, V, M): crop-resize, representation, then
    rotate, flip, shear, spatial mask, temporal mask, each only where drawn."""
    v = resize_frames(x, int(draws.crop_start[i]), int(draws.crop_length[i]), window)
    v = to_representation(v, representation, layout)
    if draws.rotate[i]:
        degrees = draws.rotate_degrees[i]
        v = rotate(v, planar_degrees(degrees, int(draws.rotate_axis[i])) if layout.planar else degrees)
    if draws.flip[i]:
        v = flip(v, layout)
    if draws.shear[i]:
        values = draws.shear_values[i]
        v = apply_linear(v, shear_matrix(planar_shear(values) if layout.planar else values))
    if draws.spatial_mask[i]:
        v = spatial_mask(v, draws.mask_seeds[i], layout)
    if draws.temporal_mask[i]:
        v = temporal_mask(v, draws.masked_segments[i])
    return np.ascontiguousarray(v, dtype=np.float32)


def make_views(data: np.ndarray, draws: ViewDraws, window: int, representation: str = "joint",
               layout: SkeletonLayout = NTU25) -> np.ndarray:
    """(B, C, T, V, M) samples, one per view -> (B, C, window, V, M) views."""
    return np.stack([make_view(data[i], draws, i, window, representation, layout) for i in range(data.shape[0])])


def eval_views(data: np.ndarray, num_frames: np.ndarray, window: int, representation: str = "joint",
               layout: SkeletonLayout = NTU25) -> np.ndarray:
    """Deterministic evaluation inputs: centre crop, resize, representation."""
    return np.stack([to_representation(center_crop(data[i], int(num_frames[i]), window), representation, layout)
                     for i in range(data.shape[0])]).astype(np.float32)
