"""Skeleton layouts: which joints a dataset has and how they connect.

A layout gives everything the model and the augmentations need from a skeleton: the joint
count, the bone edges (child, parent), the left/right permutation a flip applies, the centre
joint and two joint pairs that align a body. Built in: `ntu25` (NTU RGB+D, Kinect v2, exactly
SCDNET.md's graph), `kinect20` (Kinect v1 SDK order, as NW-UCLA ships it; MSR Action3D and
UTD-MHAD are reordered into it), `sbu15` (SBU Kinect Interaction) and `coco17` (the COCO
keypoints of 2D pose estimators such as HRNet, as pyskl publishes them). A layout is `planar`
when its samples are 2D: the three channels are then x, y and the keypoint's confidence score,
which rotation and shear leave alone (they act in the image plane) and the bone and motion
streams carry as the joint's own score. A custom layout is a JSON file with the same fields
(0-based indices; `planar` may be left out, meaning 3D), e.g.

    {"name": "hand5", "num_joints": 5, "edges": [[1, 0], [2, 1], [3, 0], [4, 0]],
     "flip": [0, 1, 2, 4, 3], "center": 0, "align_vertical": [0, 1], "align_horizontal": [3, 4]}

The spatial mask zeroes `masked_joints` joints: 8 of 25 in the paper, scaled with the joint
count elsewhere (round(8 V / 25): 6 of 20 for kinect20, 5 of 15 for sbu15, 5 of 17 for coco17).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from scdfast.errors import ScdError
from scdfast.fileio import read_json

PAPER_MASKED_JOINTS, PAPER_JOINTS = 8, 25


@dataclass(frozen=True)
class SkeletonLayout:
    name: str
    num_joints: int
    edges: tuple[tuple[int, int], ...]
    """(child, parent), 0-based; joints that are no edge's child are roots (their bone is zero)."""
    flip: tuple[int, ...]
    """flip[v]: the joint whose coordinates land on joint v when left and right swap."""
    center: int
    align_vertical: tuple[int, int]
    """A joint pair whose bone is turned parallel to +z when a dataset is normalised."""
    align_horizontal: tuple[int, int]
    """A joint pair (right, left shoulder) whose bone is turned parallel to +x."""
    planar: bool = False
    """2D keypoints: channels (x, y, score) instead of (x, y, z)."""

    def __post_init__(self) -> None:
        v = self.num_joints
        where = f"skeleton layout {self.name!r}"
        if v < 2:
            raise ScdError(f"{where}: num_joints={v}; need at least 2")
        joints = [j for edge in self.edges for j in edge] + [self.center, *self.align_vertical,
                                                              *self.align_horizontal]
        if any(not 0 <= j < v for j in joints):
            raise ScdError(f"{where}: a joint index is outside [0, {v})")
        if len(self.flip) != v or sorted(self.flip) != list(range(v)):  # the length first: v may be huge
            raise ScdError(f"{where}: flip must be a permutation of 0..{v - 1}")
        children = [c for c, _ in self.edges]
        if len(set(children)) != len(children):
            raise ScdError(f"{where}: a joint is the child of two edges")
        loop = next((c for c, p in self.edges if c == p), None)
        if loop is not None:
            raise ScdError(f"{where}: edge ({loop}, {loop}) joins a joint to itself")
        parent = dict(self.edges)
        for joint in parent:  # each child's chain of parents must end at a root
            seen, at = {joint}, parent[joint]
            while at in parent:
                if at in seen:
                    raise ScdError(f"{where}: the edges form a cycle through joint {at}; a layout is a tree")
                seen.add(at)
                at = parent[at]

    @property
    def masked_joints(self) -> int:
        return max(1, round(PAPER_MASKED_JOINTS * self.num_joints / PAPER_JOINTS))

    @property
    def bone_parent(self) -> np.ndarray:
        """parent[v] for the bone stream; a root is its own parent, so its bone is zero."""
        parent = np.arange(self.num_joints, dtype=np.int64)
        for child, p in self.edges:
            parent[child] = p
        return parent

    @property
    def flip_permutation(self) -> np.ndarray:
        return np.asarray(self.flip, dtype=np.int64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "layout") -> SkeletonLayout:
        fields = ("name", "num_joints", "edges", "flip", "center", "align_vertical", "align_horizontal", "planar")
        missing = [f for f in fields[:-1] if f not in values]
        if missing:
            raise ScdError(f"{source}: missing field(s) {', '.join(missing)}")
        unknown = sorted(map(str, set(values) - set(fields)))
        if unknown:
            raise ScdError(f"{source}: unknown field(s) {', '.join(unknown)} (a layout has {', '.join(fields)})")

        def indices(field: str, value, count: int | None = None) -> tuple[int, ...]:
            if not isinstance(value, (list, tuple)) or (count is not None and len(value) != count) \
                    or not all(isinstance(j, int) and not isinstance(j, bool) for j in value):
                shape = f"{count} joint indices" if count else "a list of joint indices"
                raise ScdError(f"{source}: {field}={value!r}: expected {shape} (integers from 0)")
            return tuple(value)

        planar = values.get("planar", False)
        if not isinstance(planar, bool):
            raise ScdError(f"{source}: planar={planar!r}: expected true (2D keypoints with scores) or false (3D)")
        for field in ("num_joints", "center"):
            if not isinstance(values[field], int) or isinstance(values[field], bool):
                raise ScdError(f"{source}: {field}={values[field]!r}: expected an integer")
        if not isinstance(values["edges"], (list, tuple)):
            raise ScdError(f"{source}: edges={values['edges']!r}: expected a list of [child, parent] pairs")
        edges = tuple(indices(f"edges[{i}]", e, 2) for i, e in enumerate(values["edges"]))
        flip = indices("flip", values["flip"])
        align = [indices(f, values[f], 2) for f in ("align_vertical", "align_horizontal")]
        try:
            return cls(name=str(values["name"]), num_joints=values["num_joints"], edges=edges, flip=flip,
                       center=values["center"], align_vertical=align[0], align_horizontal=align[1],
                       planar=planar)
        except ScdError as exc:
            raise ScdError(f"{source}: {exc}" if source != "layout" else str(exc)) from None


def _one_based(pairs) -> tuple[tuple[int, int], ...]:
    return tuple((c - 1, p - 1) for c, p in pairs)


NTU25 = SkeletonLayout(
    name="ntu25", num_joints=25,
    edges=_one_based(((1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
                      (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
                      (20, 19), (22, 23), (23, 8), (24, 25), (25, 12))),
    flip=(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 20, 23, 24, 21, 22),
    center=1, align_vertical=(0, 1), align_horizontal=(8, 4))

# Kinect v1 SDK order (NW-UCLA's): 1 hip centre, 2 spine, 3 shoulder centre, 4 head, 5-8 left arm,
# 9-12 right arm, 13-16 left leg, 17-20 right leg. Edges as CTR-GCN's NW-UCLA graph (the root is
# the shoulder centre, as NTU's is the spine at the shoulders).
KINECT20 = SkeletonLayout(
    name="kinect20", num_joints=20,
    edges=_one_based(((1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10), (12, 11),
                      (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19))),
    flip=(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15),
    center=1, align_vertical=(0, 1), align_horizontal=(8, 4))

# SBU Kinect Interaction: 1 head, 2 neck, 3 torso, 4-6 left arm, 7-9 right arm, 10-12 left leg,
# 13-15 right leg.
SBU15 = SkeletonLayout(
    name="sbu15", num_joints=15,
    edges=_one_based(((1, 2), (2, 3), (4, 2), (5, 4), (6, 5), (7, 2), (8, 7), (9, 8), (10, 3), (11, 10), (12, 11),
                      (13, 3), (14, 13), (15, 14))),
    flip=(0, 1, 2, 6, 7, 8, 3, 4, 5, 12, 13, 14, 9, 10, 11),
    center=2, align_vertical=(2, 1), align_horizontal=(6, 3))

# COCO-17 keypoints, 2D: 0 nose, 1-2 left/right eye, 3-4 left/right ear, 5-6 shoulders,
# 7-8 elbows, 9-10 wrists, 11-12 hips, 13-14 knees, 15-16 ankles (left first). A tree rooted at
# the nose, as the graphs of 2D skeleton models draw it (pyskl's `coco`).
COCO17 = SkeletonLayout(
    name="coco17", num_joints=17,
    edges=((1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 0), (7, 5), (8, 6), (9, 7), (10, 8), (11, 5), (12, 6),
           (13, 11), (14, 12), (15, 13), (16, 14)),
    flip=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
    center=0, align_vertical=(11, 5), align_horizontal=(6, 5), planar=True)

BUILT_IN = {layout.name: layout for layout in (NTU25, KINECT20, SBU15, COCO17)}


def get_layout(spec: str | dict | SkeletonLayout) -> SkeletonLayout:
    """A layout from a built-in name, a dict of fields, or a path to a JSON file of them; a dict
    or file may also be {"layout": a built-in name or a dict of fields} (skeleton.json's form)."""
    if isinstance(spec, SkeletonLayout):
        return spec
    if isinstance(spec, str) and spec in BUILT_IN:
        return BUILT_IN[spec]
    source = "layout"
    if isinstance(spec, str):
        if not os.path.isfile(spec):
            raise ScdError(f"skeleton layout {spec!r}: not one of {', '.join(BUILT_IN)} and no such file")
        source, spec = spec, read_json(spec)
    if isinstance(spec, dict) and set(spec) == {"layout"}:
        spec = spec["layout"]
        if isinstance(spec, str) and spec in BUILT_IN:
            return BUILT_IN[spec]
    if not isinstance(spec, dict):
        raise ScdError(f"{source}: {spec!r} is not one of {', '.join(BUILT_IN)} nor an object of a layout's fields")
    return SkeletonLayout.from_dict(spec, source)


def centred(seq: np.ndarray, layout: SkeletonLayout) -> np.ndarray:
    """(T, M, V, 3) minus the centre joint of body 0 in frame 0; absent (all-zero) bodies stay zero."""
    present = np.abs(seq).sum(axis=(2, 3), keepdims=True) > 0                        # T, M, 1, 1
    return np.where(present, seq - seq[0, 0, layout.center], 0.0).astype(np.float32)
